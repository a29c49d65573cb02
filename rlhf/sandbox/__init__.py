"""The sandbox: run untrusted Python programs (model-written code) in a constrained child process.

Used by code-execution rewards (``rewards/verifiable/code_tests.py``). Floor 1 of the platform's layering: it imports
only the Python standard library.

Public API: :class:`SandboxLimits`, :class:`SandboxResult`, :func:`run_python`, :func:`run_tests`,
:func:`group_processes` (a test hook), :func:`isolation_layers` and ``STATUSES``.

Modules
-------
* ``records.py``: :class:`SandboxLimits` and :class:`SandboxResult`.
* ``bootstrap.py``: the program text that runs inside the child (init process, in-child guards, completion token).
* ``kernel.py``: what the kernel offers and the isolation set up between fork and exec (rlimits, namespaces, mounts,
  id maps, capability drop, seccomp filter; the ``_KERNEL`` probe).
* ``supervision.py``: :func:`run_python` / :func:`run_tests`: launching, supervising, capturing output, killing the
  process group, classifying the result.

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

from rlhf.sandbox.records import STATUSES, SandboxLimits, SandboxResult
from rlhf.sandbox.supervision import group_processes, isolation_layers, run_python, run_tests

__all__ = [
    "STATUSES",
    "SandboxLimits",
    "SandboxResult",
    "group_processes",
    "isolation_layers",
    "run_python",
    "run_tests",
]
