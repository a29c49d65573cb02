"""The sandbox's public records: the limits of a run (:class:`SandboxLimits`) and its outcome (:class:`SandboxResult`).

Standard library only; every other module of the package builds on these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["STATUSES", "SandboxLimits", "SandboxResult"]

STATUSES: tuple[str, ...] = ("ok", "failed", "timeout", "memory", "killed", "error")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run (per process, except wall_seconds and max_processes)."""

    cpu_seconds: float = 2.0  # RLIMIT_CPU, rounded up to whole seconds: SIGXCPU, then SIGKILL 1 s later
    wall_seconds: float = 5.0  # the whole process group is SIGKILLed after this
    memory_mb: int = 256  # RLIMIT_AS (virtual address space of each process)
    max_processes: int = 16  # RLIMIT_NPROC headroom over the uid's current task count (not enforced for root)
    max_output_bytes: int = 64_000  # per stream; the rest is read and dropped
    max_file_bytes: int = 1_000_000  # RLIMIT_FSIZE

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number of seconds, got {value!r}")
        for name in ("memory_mb", "max_processes", "max_output_bytes", "max_file_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    ``status``: "ok" (exit code 0), "failed" (nonzero exit), "timeout" (wall or CPU limit), "memory" (MemoryError or
    allocation failure), "killed" (another signal), "error" (the sandbox itself failed; the program may not have run).
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
    isolation: tuple[str, ...] = field(default=())  # kernel layers that took effect, e.g. ("net_ns", "seccomp")

    @property
    def ok(self) -> bool:
        return self.status == "ok"
