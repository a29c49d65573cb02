"""The sandbox: run untrusted Python programs (model-written code) in a constrained child process.

Used by code-execution rewards (``rewards/verifiable/code_tests.py``). Floor 1 of the platform's layering: it imports
only the Python standard library.

Public API: :class:`SandboxLimits`, :class:`SandboxResult`, :func:`run_python`, :func:`run_tests`,
:func:`group_processes` (a test hook), :func:`isolation_layers`, ``STATUSES``, ``FILESYSTEMS`` and ``WORKDIR``.

Modules
-------
* ``records.py``: :class:`SandboxLimits` and :class:`SandboxResult` (whose docstring is the output contract).
* ``bootstrap.py``: the program text that runs inside the child (init process, in-child guards, completion token).
* ``kernel.py``: what the kernel offers and the isolation set up between fork and exec (rlimits, namespaces, the
  file-system view, id maps, capability drop, seccomp filter; the ``_KERNEL`` probe).
* ``rootfs.py``: the private root: which host paths the runtime needs, and the ordered mount operations (computed
  in the parent, run by ``kernel.py`` in the child).
* ``supervision.py``: :func:`run_python` / :func:`run_tests`: launching, supervising, killing the process group,
  classifying the result, refusing runs the kernel cannot isolate.
* ``output.py``: the bounded capture of stdout/stderr and the cleaned text the result carries (the output contract).
* ``corpus/``: the hostile-program corpus and its verdicts (run by ``tests/unit/test_sandbox_corpus.py`` and
  ``bench/sandbox_corpus.py``), and the documented limits.

How one run works
-----------------
The parent writes the program into a fresh temporary directory and starts ``python -S -s -B -c <bootstrap>`` (the
real interpreter behind ``sys.executable``) with ``subprocess.Popen``: a new session (so a new process group), a
scrubbed environment (``PATH=/usr/bin:/bin``, ``HOME=/sandbox``, ``TMPDIR=/tmp``, ``LANG``/``LC_ALL``,
``PYTHONHASHSEED=0``; nothing of the parent's environment), stdout/stderr on pipes, stdin from a temporary file
(or /dev/null). Between fork and exec a ``preexec_fn`` sets resource limits, enters new namespaces, builds the
file-system view and installs a seccomp filter (below). The bootstrap forks a small init process, which forks the
process that runs the program; the init reaps and reports the program's exit status, which the outer process
reproduces as its own. The parent reads both pipes with a bounded reader, enforces the wall-clock limit, SIGKILLs
the whole process group on timeout and again once the program has exited (stragglers: background children, fork
bombs), reaps, cleans the output (:class:`SandboxResult`) and deletes the directory.

The file-system view (``SandboxLimits.filesystem``)
---------------------------------------------------
* ``"private"`` (the default): a fresh root, pivoted into, the old root detached (``rootfs.py`` lists each step).
  The program sees ``/sandbox`` (its working directory: a tmpfs of ``scratch_mb`` with its scripts), a private
  ``/tmp`` and ``/dev/shm`` (tmpfs), ``/dev/null``, ``/dev/zero``, ``/dev/random``, ``/dev/urandom``, and,
  read-only at their host paths, the interpreter, the standard library, the shared libraries they load (found
  with ``ldd``), the C.UTF-8 locale and the time-zone database, plus the task's ``python_paths`` (also put on
  ``sys.path``) and ``readonly_paths``. Nothing else of the host: no /etc, no /proc, no /sys, no home
  directories, datasets, checkpoints, repository or tests. It needs a mount namespace (a user namespace when not
  root) and ``pivot_root``; **where the kernel refuses any step, the run is refused** (status "error", the program
  never starts, the message names the opt-in, a warning is logged once) rather than run with a weaker view.
* ``"host_readonly"`` (opt-in, by name only): the host's file system, every mount remounted read-only except the
  working directory, ``/dev/shm`` private and ``/proc`` hidden under an empty tmpfs, where a mount namespace is
  available; without one, only the Python-level write guard and ``RLIMIT_FSIZE``. Every file the parent's uid can
  read is readable.

Guarantees enforced by the kernel (hold whatever the program does)
------------------------------------------------------------------
* ``RLIMIT_CPU`` (SIGXCPU at the soft limit, SIGKILL one second later), ``RLIMIT_AS`` (address space per process),
  ``RLIMIT_FSIZE`` (size of any file written), ``RLIMIT_NOFILE`` (``max_open_files``), ``RLIMIT_CORE=0``. Each
  process of the program has its own CPU and memory budget: a program with N processes can use up to N times these
  (bounded by the wall-clock limit).
* Wall-clock limit: the parent SIGKILLs the process group. ``killpg`` is atomic with respect to ``fork``, so a fork
  bomb dies with its group. The same group kill runs after a normal exit, so nothing the program started outlives it.
* ``RLIMIT_NPROC`` is set to (tasks of this uid now + ``max_processes`` + 2 for the bootstrap): it counts every
  task of the real uid, not just the program's. The kernel does *not* enforce it for uid 0 (even inside a user
  namespace) or holders of CAP_SYS_RESOURCE/CAP_SYS_ADMIN: as root a fork bomb is contained only by the group kill
  and the time limits (measured here: ~4,000 processes and ~2.5 GB within a 3 s wall limit, all killed).
* In the private view: the host's files are not there to read or write (only the runtime and the task's declared
  paths, read-only); disk use is bounded by the tmpfs sizes (``scratch_mb`` for /sandbox and /tmp, 16 MiB for
  /dev/shm); no raw devices; no /proc (no other process's environment, memory maps or mounts).
* Namespaces (entered whenever ``unshare`` works; the private view requires the mount namespace): a user namespace
  (the program loses every capability it had in the parent's namespace: it cannot raise its hard limits back, undo
  mounts, ``chroot`` or ``setns`` out), an empty network namespace (no interface but a down loopback: no network
  at all, not even the parent's 127.0.0.1 or its abstract Unix sockets), a PID namespace (the program cannot see or
  signal processes outside it, and the kernel kills everything in it when its init exits), an IPC namespace and a
  mount namespace (the view above).
* seccomp (x86-64 and aarch64, with ``no_new_privs``): ``socket()`` fails with EPERM (``socketpair`` still works, so
  asyncio and multiprocessing pipes do), as do ptrace / process_vm_* / pidfd_getfd / perf_event_open / bpf /
  userfaultfd / io_uring, mount, umount2, pivot_root, the new mount API and namespace syscalls, keyrings,
  ``setsid``/``setpgid`` (the program cannot leave its process group, so the group kill reaches all of it),
  ``kill(-1, ...)`` and ``clone`` with namespace flags; ``clone3`` reports ENOSYS (libc falls back to ``clone``).
* The bounding capability set is emptied and SECBIT_NOROOT set, so an ``exec`` as uid 0 gains no capabilities.
  The private view is refused if the program would keep capabilities (no user namespace and no capability drop).

Which of these took effect is reported per run in :attr:`SandboxResult.isolation` (``"private_root"``,
``"readonly_fs"``, ``"proc_hidden"``, ``"net_ns"``, ``"seccomp"``, ...); :func:`isolation_layers` probes once.
Apart from the private view, a layer the kernel refuses is skipped: in the host_readonly view on a machine without
user namespaces (some container runtimes, Ubuntu's AppArmor restriction) only the rlimits, the group kill, seccomp
and the Python-level guards remain.

Best-effort guarantees (Python-level; a determined program can get around them, e.g. through ``ctypes``)
--------------------------------------------------------------------------------------------------------
* Network: before the program runs, ``socket.socket``/``_socket.socket`` are replaced by classes whose construction
  raises PermissionError (wrapping an existing fd, as ``socketpair`` does, is allowed), and
  ``create_connection``/``create_server``/``getaddrinfo``/``gethostbyname*`` raise PermissionError.
* Writes outside the working directory (and, in the private view, /tmp and /dev/shm): ``open``/``io.open``/
  ``os.open`` in a writing mode, and ``os.remove/unlink/rmdir/mkdir/rename/replace``, raise PermissionError for
  other paths (``/dev/null``, ``/dev/stdout`` and ``/dev/stderr`` are allowed). ``dir_fd``-relative calls,
  ``_io.FileIO`` and subprocesses are not covered. In the host_readonly view without a mount namespace this guard,
  ``cwd``/``HOME``/``TMPDIR`` pointing into the directory and ``RLIMIT_FSIZE`` are all that stands between the
  program and the file system.
* Test completion: :func:`run_tests` counts a run as passed only if the test code ran to its end. The bootstrap writes
  a random per-run token to a private pipe after the last statement; ``sys.exit(0)``/``os._exit(0)``, atexit or
  excepthook tricks, killing its own init or process group, or writing guesses to every descriptor therefore fail.
  A program that inspects the bootstrap's frames could find the token (below). The token never appears in the
  result's text (replaced by ``[token]``).

What a program can still do
---------------------------
* Read what it is given: the interpreter, the standard library, the shared libraries they load, the locale and
  time-zone data, and the task's ``python_paths``/``readonly_paths`` (read-only). In the host_readonly view: every
  file the parent's uid can read (it runs under that uid, shown as 65534 inside the user namespace), and
  ``/proc/<pid>/environ`` of the parent's processes when there is no mount namespace; only its stdout/stderr
  (truncated) and exit status come back, and it has no network, so what it reads can reach logs and rewards.
* Forge test completion or game the tests in-process: walk ``sys._getframe(1).f_locals`` to the bootstrap's token
  and done pipe; return objects whose ``__eq__`` is always true; jump over ``assert`` lines with ``sys.settrace``;
  patch the helpers the tests call. The tests run in the program's interpreter; nothing here addresses this.
* Use N times the CPU and memory limits with N processes, within the wall-clock limit (and, as root, more
  processes than ``max_processes``).
* Time things: timing side channels (the machine's load, caches, other tenants) are not hidden.
* Without the PID namespace (host_readonly view without namespaces), signal the parent's other processes of that
  uid by pid (``kill(-1)`` stays blocked while seccomp is on). As root without user namespaces *and* without
  seccomp it keeps root's capabilities (a warning is logged; the private view refuses to run).
* Exploit the kernel: it shares the host's kernel; seccomp removes some attack surface, not all.

Linux only for the kernel layers (the private view needs them); the Python-level guards work on any POSIX system,
in the host_readonly view. The ``preexec_fn`` makes ``Popen`` fork the parent (no vfork): it only makes syscalls,
so a multi-threaded parent is fine, but forking a parent with a large address space costs page-table copies: run
rewards in a modest worker process, not the trainer.
"""

from rlhf.sandbox.records import FILESYSTEMS, STATUSES, WORKDIR, SandboxLimits, SandboxResult
from rlhf.sandbox.supervision import group_processes, isolation_layers, run_python, run_tests

__all__ = [
    "FILESYSTEMS",
    "STATUSES",
    "WORKDIR",
    "SandboxLimits",
    "SandboxResult",
    "group_processes",
    "isolation_layers",
    "run_python",
    "run_tests",
]
