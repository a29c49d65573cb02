"""The sandbox's public records: the limits of a run (:class:`SandboxLimits`) and its outcome (:class:`SandboxResult`).

Standard library only; every other module of the package builds on these.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

__all__ = ["FILESYSTEMS", "STATUSES", "WORKDIR", "SandboxLimits", "SandboxResult"]

STATUSES: tuple[str, ...] = ("ok", "failed", "timeout", "memory", "killed", "error")

# "private": a fresh root holding only the Python runtime (read-only), the working directory, a private /tmp and
# four device nodes; the default, and the only mode in which untrusted programs run unless the caller opts out.
# "host_readonly": the host's file system, read-only where the kernel allows it (the weaker mode, by name only).
FILESYSTEMS: tuple[str, ...] = ("private", "host_readonly")

# Where the program's working directory is, as the program and the result's text see it (see SandboxResult).
WORKDIR = "/sandbox"

_RESERVED_TOP = ("sandbox", "proc", "dev")  # top-level directories of the private view that paths may not cover


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits and the file-system view of one sandboxed run (per process, except wall_seconds,
    max_processes and the tmpfs sizes).

    ``filesystem``: "private" (default) or "host_readonly" (see :data:`FILESYSTEMS`); where the kernel refuses the
    private view, a "private" run is refused (status "error", the message names the opt-in) and never started.
    ``readonly_paths``: more host files or directories the program may read (shown at the same path, read-only)
    in the private view, e.g. a data directory or the shared libraries a declared package loads from outside its
    own directory. ``python_paths``: directories of packages the task declares (e.g. a site-packages directory):
    read-only in the private view and appended to ``sys.path`` in both views.
    """

    cpu_seconds: float = 2.0  # RLIMIT_CPU, rounded up to whole seconds: SIGXCPU, then SIGKILL 1 s later
    wall_seconds: float = 5.0  # the whole process group is SIGKILLed after this
    memory_mb: int = 256  # RLIMIT_AS (virtual address space of each process)
    max_processes: int = 16  # RLIMIT_NPROC headroom over the uid's current task count (not enforced for root)
    max_output_bytes: int = 64_000  # per stream; the rest is read and dropped
    max_file_bytes: int = 1_000_000  # RLIMIT_FSIZE
    filesystem: str = "private"
    readonly_paths: tuple[str, ...] = ()
    python_paths: tuple[str, ...] = ()
    scratch_mb: int = 32  # private view: size of the working directory's tmpfs and of /tmp's (each)
    max_open_files: int = 256  # RLIMIT_NOFILE

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number of seconds, got {value!r}")
        for name in ("memory_mb", "max_processes", "max_output_bytes", "max_file_bytes", "scratch_mb",
                     "max_open_files"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive integer, got {value!r}")
        if self.filesystem not in FILESYSTEMS:
            raise ValueError(f"SandboxLimits.filesystem must be one of {', '.join(FILESYSTEMS)}, "
                             f"got {self.filesystem!r}")
        for name in ("readonly_paths", "python_paths"):
            object.__setattr__(self, name, _check_paths(name, getattr(self, name)))


def _check_paths(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"SandboxLimits.{name} must be a list of absolute paths, got {value!r}")
    paths = []
    for path in value:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path or os.pathsep in path:
            raise ValueError(f"SandboxLimits.{name}: {path!r} is not an absolute path (without NUL or "
                             f"{os.pathsep!r})")
        normal = os.path.normpath(path)
        top = normal.split("/")[1]
        if normal in ("/", "/tmp") or top in _RESERVED_TOP:
            raise ValueError(f"SandboxLimits.{name}: {path!r} would cover the sandbox's own /, /tmp, /sandbox, "
                             f"/proc or /dev (to show the whole host, use filesystem='host_readonly')")
        paths.append(normal)
    return tuple(paths)


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    ``status``: "ok" (exit code 0), "failed" (nonzero exit), "timeout" (wall or CPU limit), "memory" (MemoryError or
    allocation failure), "killed" (another signal), "error" (the sandbox itself failed, or refused to run the
    program; the program may not have run).

    ``stdout`` and ``stderr`` are a contract for whoever reads them (a reward, an agent tool, a log):

    * the program's bytes decoded as UTF-8, undecodable bytes replaced by U+FFFD;
    * terminal escape sequences (CSI/OSC) and control characters removed, except ``\\n``, ``\\t`` and ``\\r``
      (C0, DEL, C1, and the bidirectional-override characters U+202A-U+202E and U+2066-U+2069);
    * the host path of the run's working directory (which the program sees only in the "host_readonly" view)
      replaced by :data:`WORKDIR` (``/sandbox``), the path the private view gives it, so the text is the same in
      both views; the per-run completion token replaced by ``[token]``;
    * at most ``max_output_bytes`` of the program's bytes per stream (cut at a character boundary); when more
      was written, ``truncated`` is true and the text ends with a line ``[sandbox] stdout truncated: N of M bytes
      kept``;
    * lines the sandbox adds itself start with ``[sandbox]`` and come last in ``stderr`` (e.g. the wall-clock
      kill, an early exit under :func:`~rlhf.sandbox.run_tests`, a refusal).
    """

    status: str
    returncode: int | None  # negative: killed by that signal (as in subprocess)
    stdout: str
    stderr: str
    wall_seconds: float
    cpu_seconds: float = 0.0  # user + system time of the program's processes that were reaped
    truncated: bool = False  # stdout or stderr exceeded max_output_bytes
    completed: bool = False  # every statement ran (no early sys.exit/os._exit, no uncaught exception)
    pgid: int | None = None  # the process group of the run (all killed when the run returns)
    isolation: tuple[str, ...] = field(default=())  # kernel layers that took effect, e.g. ("private_root", "seccomp")

    @property
    def ok(self) -> bool:
        return self.status == "ok"
