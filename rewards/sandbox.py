"""Run untrusted Python programs (model-written code) in a constrained child process, for code-execution rewards.

Public API: :class:`SandboxLimits`, :class:`SandboxResult`, :func:`run_python`, :func:`run_tests`,
:func:`group_processes` (a test hook) and :func:`isolation_layers`.

How one run works
-----------------
The parent writes the program into a fresh temporary directory and starts ``python -S -s -B -c <bootstrap>`` there
with ``subprocess.Popen``: a new session (so a new process group), a scrubbed environment (``PATH=/usr/bin:/bin``,
``HOME=TMPDIR=<the directory>``, ``LANG``/``LC_ALL``, ``PYTHONHASHSEED=0``; nothing of the parent's environment),
stdout/stderr on pipes, stdin from a temporary file (or /dev/null). Between fork and exec a ``preexec_fn`` sets
resource limits and, where the kernel allows it, enters new namespaces and installs a seccomp filter (below). The
bootstrap forks a small init process, which forks the process that runs the program; the init reaps and reports
the program's exit status, which the outer process reproduces as its own. The parent reads both pipes with a bounded
reader, enforces the wall-clock limit, SIGKILLs the whole process group on timeout and again once the program has
exited (stragglers: background children, fork bombs), reaps, and deletes the directory.

Guarantees enforced by the kernel (hold whatever the program does)
------------------------------------------------------------------
* ``RLIMIT_CPU`` (SIGXCPU at the soft limit, SIGKILL one second later), ``RLIMIT_AS`` (address space per process),
  ``RLIMIT_FSIZE`` (size of any file written), ``RLIMIT_CORE=0``. Each process of the program has its own CPU and
  memory budget: a program with N processes can use up to N times these (bounded by the wall-clock limit).
* Wall-clock limit: the parent SIGKILLs the process group. ``killpg`` is atomic with respect to ``fork``, so a fork
  bomb dies with its group. The same group kill runs after a normal exit, so nothing the program started outlives it.
* ``RLIMIT_NPROC`` is set to (tasks of this uid now + ``max_processes`` + 2 for the bootstrap): it counts every
  task of the real uid, not just the program's. The kernel does *not* enforce it for uid 0 (even inside a user
  namespace) or holders of CAP_SYS_RESOURCE/CAP_SYS_ADMIN: as root a fork bomb is contained only by the group kill
  and the time limits (measured here: ~4,000 processes and ~2.5 GB within a 3 s wall limit, all killed).
* Namespaces, when ``unshare`` works (unprivileged user namespaces, or root): a user namespace (the program loses
  every capability it had in the parent's namespace: it cannot raise its hard limits back, undo mounts, or
  ``setns`` out), an empty network namespace (no interface but a down loopback: no network at all, not even the
  parent's 127.0.0.1), a PID namespace (the program cannot see or signal processes outside it, and the kernel kills
  everything in it when its init exits), an IPC namespace, and a mount namespace in which every mount is remounted
  read-only except the working directory, ``/dev/shm`` is a private 16 MiB tmpfs and ``/proc`` is hidden under an
  empty tmpfs (so ``/proc/<parent>/environ`` cannot leak the parent's secrets).
* seccomp (x86-64 and aarch64, with ``no_new_privs``): ``socket()`` fails with EPERM (``socketpair`` still works, so
  asyncio and multiprocessing pipes do), as do ptrace / process_vm_* / pidfd_getfd / perf_event_open / bpf /
  userfaultfd / io_uring, mount and namespace syscalls, keyrings, ``setsid``/``setpgid`` (the program cannot leave
  its process group, so the group kill reaches all of it), ``kill(-1, ...)`` and ``clone`` with namespace flags;
  ``clone3`` reports ENOSYS (libc falls back to ``clone``).
* The bounding capability set is emptied and SECBIT_NOROOT set, so an ``exec`` as uid 0 gains no capabilities.

Which of these took effect is reported per run in :attr:`SandboxResult.isolation` (e.g. ``"net_ns"``,
``"readonly_fs"``, ``"seccomp"``); :func:`isolation_layers` probes once. A layer the kernel refuses is skipped
silently: on a machine without user namespaces (e.g. some container runtimes, or Ubuntu's AppArmor restriction)
only the rlimits, the group kill, seccomp and the Python-level guards remain.

Best-effort guarantees (Python-level; a determined program can get around them, e.g. through ``ctypes``)
--------------------------------------------------------------------------------------------------------
* Network: before the program runs, ``socket.socket``/``_socket.socket`` are replaced by classes whose construction
  raises PermissionError (wrapping an existing fd, as ``socketpair`` does, is allowed), and
  ``create_connection``/``create_server``/``getaddrinfo``/``gethostbyname*`` raise PermissionError.
* Writes outside the working directory: ``open``/``io.open``/``os.open`` in a writing mode, and
  ``os.remove/unlink/rmdir/mkdir/rename/replace``, raise PermissionError for paths that do not resolve inside the
  working directory (``/dev/null``, ``/dev/stdout`` and ``/dev/stderr`` are allowed). ``dir_fd``-relative calls,
  ``_io.FileIO`` and subprocesses are not covered. Without the mount namespace this guard, ``cwd``/``HOME``/``TMPDIR``
  pointing into the directory and ``RLIMIT_FSIZE`` are all that stands between the program and the file system.
* Test completion: :func:`run_tests` counts a run as passed only if the test code ran to its end. The bootstrap writes
  a random per-run token to a private pipe after the last statement; ``sys.exit(0)``/``os._exit(0)`` inside the
  program therefore fail. A program that inspects the bootstrap's frames could find the token.

What a program can still do
---------------------------
* Read files: it runs under the parent's uid (shown as 65534 inside the user namespace, but the kernel's uid is
  unchanged), so it can read whatever that uid can read; the mount namespace only makes things read-only (and hides
  /proc). Only its stdout/stderr (truncated) and exit status come back, and it has no network, so what it reads can
  at most end up in logs. Run the reward workers as a dedicated unprivileged user, or in a container, when the
  machine holds secrets in files.
* Without the PID namespace, signal the parent's other processes of that uid by pid (``kill(-1)`` stays blocked
  while seccomp is on). Without the mount namespace, read ``/proc/<pid>/environ`` of the parent.
* As root without user namespaces *and* without seccomp it keeps root's capabilities (a warning is logged).
* Game assert-based tests in-process (e.g. return an object whose ``__eq__`` is always true); side channels; kernel
  exploits. None of this is addressed.

Linux only for the kernel layers; the Python-level guards work on any POSIX system. The ``preexec_fn`` makes
``Popen`` fork the parent (no vfork): it only makes syscalls, so a multi-threaded parent is fine, but forking a
parent with a large address space costs page-table copies: run rewards in a modest worker process, not the trainer.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import platform
import resource
import secrets
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable, Sequence

__all__ = [
    "STATUSES",
    "SandboxLimits",
    "SandboxResult",
    "group_processes",
    "isolation_layers",
    "run_python",
    "run_tests",
]

logger = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("ok", "failed", "timeout", "memory", "killed", "error")

_GRACE_SECONDS = 1.0  # after exit/kill: how long to wait for the pipes to reach EOF
_KILL_DEADLINE_SECONDS = 2.0  # how long to keep SIGKILLing a process group that still has live members
_STDERR_TAIL_BYTES = 4096  # kept beyond the truncation limit, to classify MemoryError at the end of long stderr
_BOOTSTRAP_PROCESSES = 2  # the outer process and the init process of the bootstrap


# --------------------------------------------------------------------------- public records


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


# --------------------------------------------------------------------------- public functions


def run_python(
    source: str,
    *,
    stdin: str = "",
    limits: SandboxLimits = SandboxLimits(),
    env: dict[str, str] | None = None,
) -> SandboxResult:
    """Run ``source`` as ``__main__`` of a sandboxed Python process; never raises for anything the program does.

    ``env`` adds variables to the minimal environment (names starting with PYTHON or LD_ are refused: they would
    change how the interpreter or the loader behaves). Status "ok" means exit code 0; see :class:`SandboxResult`.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    return _run_files([("main.py", source)], stdin=stdin, limits=limits, env=env)


def run_tests(program: str, tests: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``program`` and then the assert-based ``tests`` in the same ``__main__`` namespace; "ok" only if both ran
    to the end and the process exited with code 0.

    The two are compiled separately (so nothing in the program, such as an unterminated string or a trailing
    backslash, can swallow the tests) but share one namespace, as if the tests were appended to the program.
    A program that exits early (``sys.exit(0)``, ``os._exit(0)``) before the tests finish is "failed".
    """
    if not isinstance(program, str) or not isinstance(tests, str):
        raise TypeError("program and tests must be str")
    result = _run_files([("program.py", program), ("tests.py", tests)], stdin="", limits=limits, env=None)
    if result.status == "ok" and not result.completed:
        note = "[sandbox] the process exited with code 0 before the tests finished (early exit); counted as failed\n"
        return replace(result, status="failed", stderr=result.stderr + note)
    return result


def group_processes(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, from /proc. Test hook: empty after every run."""
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) >= 3 and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            found.append(int(name))
    return found


@lru_cache(maxsize=1)
def isolation_layers() -> frozenset[str]:
    """The kernel isolation layers a sandboxed run gets on this machine (probed once with a trivial program)."""
    return frozenset(run_python("pass", limits=SandboxLimits(wall_seconds=30.0)).isolation)


# --------------------------------------------------------------------------- the bootstrap run in the child

# Runs as `python -S -s -B -c _BOOTSTRAP <workdir> <nonce_fd> <done_fd> <script>...` with cwd = workdir.
_BOOTSTRAP = r'''
def _sandbox_bootstrap():
    import os, sys

    workdir, nonce_fd, done_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    scripts = sys.argv[4:]
    nonce = b""
    while True:
        chunk = os.read(nonce_fd, 256)
        if not chunk:
            break
        nonce += chunk
    os.close(nonce_fd)

    def leave(signum, code):
        # End this process as the program ended: killed by the same signal, or with the same exit code.
        if signum:
            import signal
            try:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            except (OSError, ValueError, RuntimeError):
                pass
            os._exit(128 + signum)
        os._exit(code)

    status_r, status_w = os.pipe()
    init = os.fork()
    if init:  # outer process: waits for init, then ends as the program ended (init reports how)
        os.close(status_w)
        os.close(done_fd)
        _, init_status = os.waitpid(init, 0)
        report = b""
        while True:
            chunk = os.read(status_r, 64)
            if not chunk:
                break
            report += chunk
        if report[:1] in (b"S", b"E") and report[1:].isdigit():
            value = int(report[1:])
            leave(value if report[:1] == b"S" else 0, value)
        if os.WIFSIGNALED(init_status):
            leave(os.WTERMSIG(init_status), 0)
        leave(0, os.WEXITSTATUS(init_status) if os.WIFEXITED(init_status) else 1)

    os.close(status_r)
    main = os.fork()
    if main:  # init (pid 1 of the PID namespace, if there is one): reaps everything until the program is reaped
        os.close(done_fd)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                os._exit(1)
            if pid == main:
                break
        if os.WIFSIGNALED(status):
            os.write(status_w, b"S%d" % os.WTERMSIG(status))
        else:
            os.write(status_w, b"E%d" % (os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1))
        os._exit(0)

    os.close(status_w)  # the program's process from here on
    os.set_inheritable(done_fd, False)
    _sandbox_guards(os.path.realpath(workdir))
    bootstrap_code = sys._getframe().f_code
    import __main__
    namespace = __main__.__dict__
    for name in ("_sandbox_bootstrap", "_sandbox_guards"):
        namespace.pop(name, None)
    sys.argv = [scripts[0]]
    try:
        for script in scripts:
            namespace["__file__"] = os.path.join(workdir, script)
            with open(script, "rb") as f:
                code = compile(f.read(), script, "exec", dont_inherit=True)
            exec(code, namespace)
    except SystemExit:
        raise
    except BaseException as exc:
        if isinstance(exc, MemoryError):
            namespace.clear()  # free the program's globals so that the traceback can be printed
        tb = exc.__traceback__
        if tb is not None and tb.tb_frame.f_code is bootstrap_code:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        raise SystemExit(1) from None
    os.write(done_fd, nonce)
    os.close(done_fd)


def _sandbox_guards(root):
    import builtins, errno, io, os, posix, socket, _io, _socket

    def refuse(what, target=None):
        raise PermissionError(errno.EACCES, "sandbox: " + what + " is not allowed", target)

    # -- exit() and quit(), which `site` would have defined (the interpreter runs with -S)
    def exit(code=None):
        raise SystemExit(code)

    builtins.exit = builtins.quit = exit

    # -- network: no new sockets (wrapping an existing fd, as socketpair() does, is fine)
    def check_socket(args, kwargs):
        fileno = kwargs.get("fileno", args[3] if len(args) > 3 else None)
        if fileno is None:
            refuse("network access (creating a socket)")

    class NoSocket(socket.socket):
        def __new__(cls, *args, **kwargs):
            check_socket(args, kwargs)
            return super().__new__(cls, *args, **kwargs)

    class NoRawSocket(_socket.socket):
        def __new__(cls, *args, **kwargs):
            check_socket(args, kwargs)
            return super().__new__(cls, *args, **kwargs)

    def no_network(*args, **kwargs):
        refuse("network access")

    socket.socket = socket.SocketType = NoSocket
    _socket.socket = _socket.SocketType = NoRawSocket
    for module in (socket, _socket):
        for name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
                     "gethostbyaddr", "getnameinfo"):
            if hasattr(module, name):
                setattr(module, name, no_network)

    # -- file system: no writes outside the working directory
    allowed = {"/dev/null", "/dev/stdout", "/dev/stderr"}
    realpath, abspath = os.path.realpath, os.path.abspath

    def inside(path):
        try:
            text = os.fsdecode(os.fspath(path))
        except TypeError:
            return True  # not a path: let the real function raise its own error
        absolute = abspath(text)
        if absolute in allowed:
            return True
        resolved = realpath(absolute)
        return resolved == root or resolved.startswith(root + os.sep) or resolved in allowed

    def check(path, what):
        if not isinstance(path, int) and not inside(path):
            refuse(what + " outside the working directory", path)

    real_open, real_os_open = io.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in str(mode) for c in "wax+"):
            check(file, "writing")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags and dir_fd is None:
            check(path, "writing")
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    builtins.open = io.open = _io.open = guarded_open
    os.open = posix.open = guarded_os_open

    def guard_paths(name, positions):
        real = getattr(os, name)

        def guarded(*args, **kwargs):
            if all(v is None for k, v in kwargs.items() if k.endswith("dir_fd")):
                for i in positions:
                    if i < len(args):
                        check(args[i], name)
            return real(*args, **kwargs)

        setattr(os, name, guarded)
        setattr(posix, name, guarded)

    for name, positions in (("remove", (0,)), ("unlink", (0,)), ("rmdir", (0,)), ("mkdir", (0,)),
                            ("rename", (0, 1)), ("replace", (0, 1))):
        guard_paths(name, positions)


_sandbox_bootstrap()
'''


# --------------------------------------------------------------------------- kernel interfaces (Linux)

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_CLONE_NAMESPACE_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 0x20, 0x400, 0x800, 0x1000
_MS_REC, _MS_PRIVATE, _MS_RELATIME, _MS_STRICTATIME = 0x4000, 0x40000, 0x200000, 0x1000000
_MOUNT_OPTION_FLAGS = {  # per-mount options that must be kept when remounting inside a user namespace
    b"nosuid": _MS_NOSUID,
    b"nodev": _MS_NODEV,
    b"noexec": _MS_NOEXEC,
    b"noatime": _MS_NOATIME,
    b"nodiratime": _MS_NODIRATIME,
    b"relatime": _MS_RELATIME,
    b"strictatime": _MS_STRICTATIME,
}

_PR_CAPBSET_READ, _PR_CAPBSET_DROP, _PR_SET_SECUREBITS = 23, 24, 28
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, _PR_SET_NO_NEW_PRIVS = 22, 2, 38
_SECBITS_NOROOT_LOCKED = 0x0F  # NOROOT | NOROOT_LOCKED | NO_SETUID_FIXUP | NO_SETUID_FIXUP_LOCKED

_SECCOMP_RET_KILL_PROCESS, _SECCOMP_RET_ERRNO, _SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_JSET_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06

# Syscall numbers from the kernel headers (asm/unistd_64.h for x86-64, asm-generic/unistd.h for aarch64).
_SYSCALLS: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,  # AUDIT_ARCH_X86_64
        {
            "socket": 41, "clone": 56, "kill": 62, "ptrace": 101, "setpgid": 109, "setsid": 112,
            "pivot_root": 155, "mount": 165, "umount2": 166, "add_key": 248, "request_key": 249, "keyctl": 250,
            "unshare": 272, "perf_event_open": 298, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
            "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
        },
    ),
    "aarch64": (
        0xC00000B7,  # AUDIT_ARCH_AARCH64
        {
            "socket": 198, "clone": 220, "kill": 129, "ptrace": 117, "setpgid": 154, "setsid": 157,
            "pivot_root": 41, "mount": 40, "umount2": 39, "add_key": 217, "request_key": 218, "keyctl": 219,
            "unshare": 97, "perf_event_open": 241, "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271,
            "bpf": 280, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
        },
    ),
}
_DENIED_SYSCALLS = (
    "socket", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "perf_event_open", "bpf",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "unshare", "setns", "mount", "umount2",
    "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "add_key",
    "request_key", "keyctl", "setsid", "setpgid",
)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _seccomp_filter(machine: str) -> bytes | None:
    """The classic-BPF seccomp program for ``machine`` (see the module docstring), or None if unsupported."""
    if machine not in _SYSCALLS:
        return None
    audit_arch, nr = _SYSCALLS[machine]
    eperm, enosys = _SECCOMP_RET_ERRNO | errno.EPERM, _SECCOMP_RET_ERRNO | errno.ENOSYS
    prog: list[tuple[int, int, int, int]] = [  # (code, jump-if-true, jump-if-false, k)
        (_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_BPF_JEQ_K, 1, 0, audit_arch),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),  # another ABI (e.g. 32-bit int 0x80 calls)
        (_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":  # x32 syscalls share the arch value and set bit 30 of nr
        prog += [(_BPF_JGE_K, 0, 1, 0x40000000), (_BPF_RET_K, 0, 0, eperm)]
    for name in _DENIED_SYSCALLS:
        prog += [(_BPF_JEQ_K, 0, 1, nr[name]), (_BPF_RET_K, 0, 0, eperm)]
    prog += [(_BPF_JEQ_K, 0, 1, nr["clone3"]), (_BPF_RET_K, 0, 0, enosys)]
    # kill(-1, sig): every process the caller may signal. args[0] low 32 bits (little-endian) at offset 16.
    prog += [
        (_BPF_JEQ_K, 0, 4, nr["kill"]),
        (_BPF_LD_W_ABS, 0, 0, 16),
        (_BPF_JEQ_K, 0, 1, 0xFFFFFFFF),
        (_BPF_RET_K, 0, 0, eperm),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    # clone(flags, ...) with namespace flags
    prog += [
        (_BPF_JEQ_K, 0, 4, nr["clone"]),
        (_BPF_LD_W_ABS, 0, 0, 16),
        (_BPF_JSET_K, 0, 1, _CLONE_NAMESPACE_FLAGS),
        (_BPF_RET_K, 0, 0, eperm),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    prog.append((_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


@dataclass(frozen=True)
class _Kernel:
    """libc entry points and the prebuilt seccomp program (None where unavailable)."""

    unshare: Callable[..., int] | None
    mount: Callable[..., int] | None
    prctl: Callable[..., int] | None
    seccomp_prog: _SockFprog | None
    seccomp_buffer: ctypes.Array | None  # keeps the program's memory alive
    cap_last: int


def _load_kernel() -> _Kernel:
    if not sys.platform.startswith("linux"):
        return _Kernel(None, None, None, None, None, -1)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unshare, mount, prctl = libc.unshare, libc.mount, libc.prctl
    except (OSError, AttributeError):
        return _Kernel(None, None, None, None, None, -1)
    unshare.argtypes, unshare.restype = [ctypes.c_int], ctypes.c_int
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    mount.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    program = _seccomp_filter(platform.machine())
    buffer = prog = None
    if program is not None:
        buffer = ctypes.create_string_buffer(program, len(program))
        prog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            cap_last = int(f.read())
    except (OSError, ValueError):
        cap_last = 40
    return _Kernel(unshare, mount, prctl, prog, buffer, cap_last)


_KERNEL = _load_kernel()


# --------------------------------------------------------------------------- what runs between fork and exec


@dataclass(frozen=True)
class _ChildPlan:
    """Everything the preexec function needs, computed in the parent (the child only makes syscalls)."""

    rlimits: tuple[tuple[int, tuple[int, int]], ...]
    workdir: bytes
    remounts: tuple[tuple[bytes, int, bool], ...]  # (mount point, flags to keep, already read-only)
    report_fd: int
    uid: int  # the parent's effective uid and gid, mapped to nobody (65534) inside the user namespace
    gid: int


def _mount_table() -> tuple[tuple[bytes, int, bool], ...]:
    """(mount point, option flags, is read-only) for every mount of this process, from /proc/self/mountinfo."""
    table: list[tuple[bytes, int, bool]] = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        point = _unescape_mount_path(fields[4])
        options = fields[5].split(b",")
        flags = 0
        for option in options:
            flags |= _MOUNT_OPTION_FLAGS.get(option, 0)
        table.append((point, flags, b"ro" in options))
    return tuple(table)


def _unescape_mount_path(raw: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040 ...)."""
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and len(raw) >= i + 4 and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _make_preexec(plan: _ChildPlan, kernel: _Kernel) -> Callable[[], None]:
    """The preexec_fn: rlimits (mandatory), then namespaces, mounts, capabilities and seccomp (each if possible).

    It runs in the forked child of a possibly multi-threaded parent, so it makes only syscalls (no imports, no
    locks). It writes the names of the layers that took effect to ``plan.report_fd``.
    """

    def preexec() -> None:
        for which, value in plan.rlimits:
            resource.setrlimit(which, value)
        layers = ["rlimits"]
        namespaces = _enter_namespaces(kernel)
        layers += namespaces
        if "user_ns" in namespaces:
            _map_ids(plan)
        if "mount_ns" in namespaces:
            layers += _lock_down_mounts(kernel, plan)
        if kernel.prctl is not None:
            layers += _drop_privileges(kernel)
        os.write(plan.report_fd, ",".join(layers).encode())

    return preexec


def _enter_namespaces(kernel: _Kernel) -> list[str]:
    if kernel.unshare is None:
        return []
    common = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC
    for flags in (_CLONE_NEWUSER | common, common, _CLONE_NEWUSER | _CLONE_NEWNET, _CLONE_NEWNET):
        if kernel.unshare(flags) == 0:
            names = []
            for bit, name in ((_CLONE_NEWUSER, "user_ns"), (_CLONE_NEWNET, "net_ns"), (_CLONE_NEWPID, "pid_ns"),
                              (_CLONE_NEWIPC, "ipc_ns"), (_CLONE_NEWNS, "mount_ns")):
                if flags & bit:
                    names.append(name)
            return names
    return []


def _map_ids(plan: _ChildPlan) -> None:
    """Map the parent's uid/gid to 65534 inside the new user namespace (not 0: exec then grants no capabilities).

    Without a mapping the program could not create files on file systems mounted inside the namespace (the private
    /dev/shm: EOVERFLOW). Failure is harmless: the program then runs with an unmapped uid.
    """
    for path, text in ((b"/proc/self/setgroups", b"deny"), (b"/proc/self/uid_map", b"65534 %d 1" % plan.uid),
                       (b"/proc/self/gid_map", b"65534 %d 1" % plan.gid)):
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)
        except OSError:
            pass


def _lock_down_mounts(kernel: _Kernel, plan: _ChildPlan) -> list[str]:
    """In the new mount namespace: everything read-only except the working directory; private /dev/shm; no /proc."""
    assert kernel.mount is not None
    mount = kernel.mount
    if mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return []  # without private propagation, mounting anything could leak to the parent's namespace
    layers = []
    if mount(plan.workdir, plan.workdir, None, _MS_BIND | _MS_REC, None) == 0:
        readonly = True
        for point, keep, already_ro in plan.remounts:
            if mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | keep, None) != 0 and not already_ro:
                readonly = False
        if readonly:
            layers.append("readonly_fs")
    if mount(b"tmpfs", b"/dev/shm", b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=16m,mode=1777") == 0:
        layers.append("private_shm")
    if mount(b"tmpfs", b"/proc", b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY, b"size=4k,mode=555") == 0:
        layers.append("proc_hidden")
    os.chdir(plan.workdir)  # the cwd must be the bind mount (writable), not the directory under it
    return layers


def _drop_privileges(kernel: _Kernel) -> list[str]:
    assert kernel.prctl is not None
    prctl = kernel.prctl
    layers = []
    prctl(_PR_SET_SECUREBITS, _SECBITS_NOROOT_LOCKED, 0, 0, 0)
    for cap in range(kernel.cap_last + 1):
        prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    if all(prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 0 for cap in range(kernel.cap_last + 1)):
        layers.append("caps_dropped")
    if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        layers.append("no_new_privs")
        if kernel.seccomp_prog is not None:
            address = ctypes.addressof(kernel.seccomp_prog)
            if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, address, 0, 0) == 0:
                layers.append("seccomp")
    return layers


# --------------------------------------------------------------------------- the parent side


_BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def _child_env(workdir: str, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(_BASE_ENV, HOME=workdir, TMPDIR=workdir)
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or "\0" in key + value or "=" in key or not key:
            raise ValueError(f"sandbox env entries must be str -> str without NUL or '=' in the name, got {key!r}")
        if key.startswith(("PYTHON", "LD_")):
            raise ValueError(f"sandbox env may not set {key!r}: it would change how the interpreter or loader runs")
        env[key] = value
    return env


def _tasks_of_uid(uid: int) -> int:
    """Tasks (threads) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                text = f.read()
        except OSError:
            continue
        real_uid = threads = None
        for line in text.splitlines():
            if line.startswith(b"Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            total += threads or 1
    return total


def _rlimits(limits: SandboxLimits) -> tuple[tuple[int, tuple[int, int]], ...]:
    """(resource, (soft, hard)) pairs for the child, never above the parent's own hard limits."""
    cpu = max(1, math.ceil(limits.cpu_seconds))
    memory = limits.memory_mb * 1024 * 1024
    nproc = limits.max_processes + _BOOTSTRAP_PROCESSES
    if os.getuid() != 0:  # RLIMIT_NPROC counts every task of the real uid (and is not enforced for uid 0)
        nproc += _tasks_of_uid(os.getuid())
    wanted = (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
    )
    clamped = []
    for which, (soft, hard) in wanted:
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
        clamped.append((which, (min(soft, hard), hard)))
    return tuple(clamped)


class _Capture:
    """Keeps the first ``limit`` bytes of a stream (and, optionally, its last ``tail`` bytes); drops the rest."""

    def __init__(self, limit: int, tail: int = 0) -> None:
        self.head = bytearray()
        self.limit = limit
        self.total = 0
        self.tail: deque[bytes] = deque()
        self._tail_limit, self._tail_size = tail, 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
        if self._tail_limit:
            self.tail.append(chunk[-self._tail_limit :])
            self._tail_size += len(self.tail[-1])
            while self._tail_size - len(self.tail[0]) >= self._tail_limit:
                self._tail_size -= len(self.tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        return bytes(self.head).decode("utf-8", "replace")

    def tail_text(self) -> str:
        return b"".join(self.tail).decode("utf-8", "replace")


def _run_files(
    files: Sequence[tuple[str, str]], *, stdin: str, limits: SandboxLimits, env: dict[str, str] | None
) -> SandboxResult:
    """Run the given (file name, source) pairs in order in one sandboxed ``__main__``."""
    if not isinstance(limits, SandboxLimits):
        raise TypeError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
    if not isinstance(stdin, str):
        raise TypeError(f"stdin must be a str, got {type(stdin).__name__}")
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rlhf-sandbox-")
    try:
        child_env = _child_env(workdir, env)
        for name, source in files:
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
                f.write(source)
        return _launch_and_supervise([name for name, _ in files], workdir, child_env, stdin, limits, start)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("sandbox failed to run a program: %s: %s", type(exc).__name__, exc)
        return SandboxResult("error", None, "", f"[sandbox] {type(exc).__name__}: {exc}\n", time.monotonic() - start)
    finally:
        _remove_tree(workdir)


def _launch_and_supervise(
    scripts: list[str], workdir: str, env: dict[str, str], stdin: str, limits: SandboxLimits, start: float
) -> SandboxResult:
    nonce = secrets.token_hex(16).encode()
    fds: list[int] = []  # parent-side pipe ends to close at the end

    def pipe() -> tuple[int, int]:
        r, w = os.pipe()
        fds.extend((r, w))
        return r, w

    def close(fd: int) -> None:
        if fd in fds:
            fds.remove(fd)
            os.close(fd)

    stdin_file = None
    try:
        nonce_r, nonce_w = pipe()
        os.write(nonce_w, nonce)
        close(nonce_w)
        done_r, done_w = pipe()
        report_r, report_w = pipe()
        if stdin:
            stdin_file = tempfile.TemporaryFile()
            stdin_file.write(stdin.encode("utf-8"))
            stdin_file.seek(0)
        plan = _ChildPlan(
            _rlimits(limits), os.fsencode(workdir), _mount_table(), report_w, os.geteuid(), os.getegid()
        )
        argv = [sys.executable, "-S", "-s", "-B", "-c", _BOOTSTRAP, workdir, str(nonce_r), str(done_w), *scripts]
        proc = subprocess.Popen(
            argv,
            stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,
            preexec_fn=_make_preexec(plan, _KERNEL),
            pass_fds=(nonce_r, done_w),
            close_fds=True,
        )
        for fd in (nonce_r, done_w, report_w):
            close(fd)
        isolation = tuple(x for x in _read_available(report_r, wait=2.0).decode().split(",") if x)
        _warn_if_privileged(isolation)
        return _supervise(proc, limits, start, done_r, nonce, isolation)
    finally:
        if stdin_file is not None:
            stdin_file.close()
        for fd in list(fds):
            close(fd)


_warned_privileged = False


def _warn_if_privileged(isolation: tuple[str, ...]) -> None:
    """Log once when programs run as root with root's capabilities (no user namespace, capabilities not dropped)."""
    global _warned_privileged
    if os.geteuid() == 0 and not {"user_ns", "caps_dropped"} & set(isolation) and not _warned_privileged:
        _warned_privileged = True
        logger.warning(
            "sandbox: programs run as root with root's capabilities (no user namespace, capabilities not dropped); "
            "only the rlimits, the process-group kill and best-effort Python guards constrain them"
        )


def _supervise(
    proc: subprocess.Popen, limits: SandboxLimits, start: float, done_r: int, nonce: bytes, isolation: tuple[str, ...]
) -> SandboxResult:
    """Pump the output pipes, enforce the wall-clock limit, kill the group, reap, classify."""
    assert proc.stdout is not None and proc.stderr is not None
    pid = pgid = proc.pid  # start_new_session: the child leads its own group
    out = _Capture(limits.max_output_bytes)
    err = _Capture(limits.max_output_bytes, tail=_STDERR_TAIL_BYTES)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout.fileno(), selectors.EVENT_READ, out)
    selector.register(proc.stderr.fileno(), selectors.EVENT_READ, err)
    pidfd = _pidfd_open(pid)
    if pidfd is not None:
        selector.register(pidfd, selectors.EVENT_READ, None)
    deadline = start + limits.wall_seconds
    timed_out = exited = False
    drain_until = math.inf
    try:
        while True:
            now = time.monotonic()
            if not exited and _has_exited(pid):
                exited = True
                _kill_group(pgid)  # the leader is not reaped yet, so pgid cannot have been reused
                drain_until = time.monotonic() + _GRACE_SECONDS
                if pidfd is not None:
                    selector.unregister(pidfd)
            if not exited and not timed_out and now >= deadline:
                timed_out = True
                _signal_group(pgid, signal.SIGKILL)
            streams = sum(1 for key in selector.get_map().values() if key.data is not None)
            if exited and (streams == 0 or now >= drain_until):
                break
            if timed_out and not exited and now >= deadline + 10 * _GRACE_SECONDS:
                logger.error("sandbox: process group %d did not die after SIGKILL", pgid)
                break
            if exited:
                wait = drain_until - now
            elif timed_out:
                wait = 0.05
            else:
                wait = deadline - now
            if pidfd is None and not exited:
                wait = min(wait, 0.01)
            for key, _ in selector.select(max(0.0, wait)):
                if key.data is None:
                    continue  # the pidfd: exit is checked at the top of the loop
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.feed(chunk)
                else:
                    selector.unregister(key.fd)
    finally:
        selector.close()
        if pidfd is not None:
            os.close(pidfd)
        _kill_group(pgid)
        proc.stdout.close()
        proc.stderr.close()
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:  # reaped behind our back (someone called waitpid(-1)): the status is lost
        proc.returncode = -1
        note = "[sandbox] the program's exit status was lost (reaped elsewhere)\n"
        return SandboxResult("error", None, out.text(), err.text() + note, time.monotonic() - start, pgid=pgid)
    proc.returncode = returncode = os.waitstatus_to_exitcode(status)
    completed = _read_available(done_r, wait=0.0) == nonce
    cpu = usage.ru_utime + usage.ru_stime
    stderr = err.text()
    verdict = _classify(timed_out, returncode, cpu, limits, err.tail_text() if err.truncated else stderr)
    if timed_out:
        stderr += f"[sandbox] killed after the wall-clock limit of {limits.wall_seconds:g} s\n"
    return SandboxResult(
        status=verdict,
        returncode=returncode,
        stdout=out.text(),
        stderr=stderr,
        wall_seconds=time.monotonic() - start,
        cpu_seconds=cpu,
        truncated=out.truncated or err.truncated,
        completed=completed and returncode == 0,
        pgid=pgid,
        isolation=isolation,
    )


def _classify(timed_out: bool, returncode: int, cpu: float, limits: SandboxLimits, stderr_tail: str) -> str:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "ok"
    if returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= math.ceil(limits.cpu_seconds)):
            return "timeout"
    if "MemoryError" in stderr_tail or "Cannot allocate memory" in stderr_tail:
        return "memory"
    return "killed" if returncode < 0 else "failed"


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has terminated, without reaping it (the zombie keeps its pid and pgid reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)  # type: ignore[attr-defined]  # Linux >= 5.3, Python >= 3.9
    except (AttributeError, OSError):
        return None


def _signal_group(pgid: int, sig: int) -> bool:
    """killpg; False if the group has no member left (not even a zombie)."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials (setuid binary without no_new_privs)
        logger.warning("sandbox: not allowed to signal process group %d", pgid)
        return False


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group until none of its members is alive (zombies do not count)."""
    end = time.monotonic() + _KILL_DEADLINE_SECONDS
    while _signal_group(pgid, signal.SIGKILL) and group_processes(pgid):
        if time.monotonic() > end:
            logger.error("sandbox: processes %s of group %d survive SIGKILL", group_processes(pgid), pgid)
            return
        time.sleep(0.005)


def _read_available(fd: int, wait: float) -> bytes:
    """Read what ``fd`` holds (up to 64 KiB): waits at most ``wait`` s for the first byte, never blocks after."""
    os.set_blocking(fd, False)
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        if wait > 0:
            selector.select(wait)
        while len(data) < 65536:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
    return data


def _remove_tree(path: str) -> None:
    """Delete the working directory, whatever permissions the program left on its files."""

    def make_writable_and_retry(function: Callable, target: str, _exc: object) -> None:
        try:
            parent = os.path.dirname(target)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, stat.S_IRWXU)
            function(target)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)
    if os.path.exists(path):
        logger.warning("sandbox: could not delete %s", path)
