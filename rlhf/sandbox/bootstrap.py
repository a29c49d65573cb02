"""The program that runs inside the sandboxed child: ``_BOOTSTRAP``, the source text passed to ``python -c``.

It is program text, not code of this process: the parent starts ``python -S -s -B -c _BOOTSTRAP <workdir>
<nonce_fd> <done_fd> <writable> <import paths> <script>...`` in the working directory (see
:mod:`rlhf.sandbox.supervision`); ``<writable>`` and ``<import paths>`` are ``os.pathsep``-joined lists (the
directories the write guard allows; directories appended to ``sys.path``). In the child:

* the outer process forks an init process and, once init ends, ends as the program ended (same signal or exit code);
* init (pid 1 of the PID namespace, where there is one) forks the program's process and reaps every process until
  the program's is reaped, then reports its exit status to the outer process through a pipe;
* the program's process installs the in-child guards (``_sandbox_guards``: ``exit``/``quit``, no new sockets, no
  writes outside the working directory; best-effort, Python-level), runs the scripts in order in one ``__main__``
  namespace (the bootstrap's own frame hidden from tracebacks), and, only if the last statement ran, writes the
  per-run nonce to the ``done`` pipe, which is how :func:`rlhf.sandbox.run_tests` tells a finished run from an early
  ``sys.exit(0)``.
"""

# Runs as `python -S -s -B -c _BOOTSTRAP <workdir> <nonce_fd> <done_fd> <writable> <import paths> <script>...`
# with cwd = workdir.
_BOOTSTRAP = r'''
def _sandbox_bootstrap():
    import os, sys

    workdir, nonce_fd, done_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    writable = [path for path in sys.argv[4].split(os.pathsep) if path]
    imports = [path for path in sys.argv[5].split(os.pathsep) if path]
    scripts = sys.argv[6:]
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
    sys.path.extend(imports)
    _sandbox_guards([os.path.realpath(path) for path in writable])
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


def _sandbox_guards(roots):
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

    # -- file system: no writes outside the working directory (and, in the private view, /tmp and /dev/shm)
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
        if resolved in allowed:
            return True
        return any(resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep) for root in roots)

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
