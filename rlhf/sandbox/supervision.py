"""The parent side of a sandboxed run: launching, supervising, capturing output, killing, classifying the result.

:func:`run_python` and :func:`run_tests` write the program into a fresh temporary directory, plan the file-system
view (the private root of :mod:`rlhf.sandbox.rootfs`, built on that directory, or the host_readonly view), start
the bootstrap (:mod:`rlhf.sandbox.bootstrap`) with a scrubbed environment and the preexec function of
:mod:`rlhf.sandbox.kernel`, pump stdout/stderr through bounded captures, enforce the wall-clock limit, SIGKILL the
whole process group (on timeout, and again after a normal exit), reap, classify the outcome into a
:class:`~rlhf.sandbox.records.SandboxResult` (whose text follows the output contract written there: see
:func:`rlhf.sandbox.output.clean_text`) and delete the directory. A private view the kernel refuses is a refused run: status "error",
the program never started, and a warning logged once per process.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import replace
from functools import lru_cache
from typing import Callable, Sequence

from rlhf.sandbox import kernel, rootfs
from rlhf.sandbox.bootstrap import _BOOTSTRAP
from rlhf.sandbox.output import TOKEN_PLACEHOLDER, Capture, clean_text
from rlhf.sandbox.records import WORKDIR, SandboxLimits, SandboxResult

__all__ = ["group_processes", "isolation_layers", "run_python", "run_tests"]

logger = logging.getLogger(__name__)

_GRACE_SECONDS = 1.0  # after exit/kill: how long to wait for the pipes to reach EOF
_KILL_DEADLINE_SECONDS = 2.0  # how long to keep SIGKILLing a process group that still has live members
_STDERR_TAIL_BYTES = 4096  # kept beyond the truncation limit, to classify MemoryError at the end of long stderr


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
    """The kernel isolation layers a sandboxed run gets on this machine with the default (private) view, probed
    once with a trivial program. Without "private_root" default runs are refused (a warning is logged once).
    A launch that fails for another reason (e.g. no free process slot) is retried, since the answer is cached."""
    for attempt in range(3):
        result = run_python("pass", limits=SandboxLimits(wall_seconds=30.0))
        if result.status != "error" or "refused to run" in result.stderr:
            break
        time.sleep(0.2 * (attempt + 1))
    return frozenset(result.isolation)


# --------------------------------------------------------------------------- the parent side


_BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def _child_env(workdir: str, tmpdir: str, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(_BASE_ENV, HOME=workdir, TMPDIR=tmpdir)
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or "\0" in key + value or "=" in key or not key:
            raise ValueError(f"sandbox env entries must be str -> str without NUL or '=' in the name, got {key!r}")
        if key.startswith(("PYTHON", "LD_")):
            raise ValueError(f"sandbox env may not set {key!r}: it would change how the interpreter or loader runs")
        env[key] = value
    return env


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
    private = limits.filesystem == "private"
    try:
        child_env = _child_env(WORKDIR if private else workdir, "/tmp" if private else workdir, env)
        for name, source in files:
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
                f.write(source)
        if private and not _can_build_private_root(kernel._KERNEL):
            return _refused(("rlimits",), "the kernel offers no unshare/mount/pivot_root here", start)
        root = rootfs.plan_root(workdir, limits, files) if private else None
        return _launch_and_supervise([name for name, _ in files], workdir, root, child_env, stdin, limits, start)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("sandbox failed to run a program: %s: %s", type(exc).__name__, exc)
        message = str(exc).replace(workdir, WORKDIR)
        return SandboxResult("error", None, "", f"[sandbox] {type(exc).__name__}: {message}\n",
                             time.monotonic() - start)
    finally:
        _remove_tree(workdir)


def _can_build_private_root(k: kernel._Kernel) -> bool:
    return None not in (k.unshare, k.mount, k.umount2, k.pivot_root)


_OPT_IN = ("to run it with the host's files visible (read-only where the kernel allows), opt in by name: "
           "SandboxLimits(filesystem='host_readonly'), or in a recipe "
           "`{plugin: code_tests, args: {filesystem: host_readonly}}`")
_warned_refused = False


def _refused(isolation: tuple[str, ...], reason: str, start: float) -> SandboxResult:
    """The result of a run refused because the private file-system view could not be set up."""
    global _warned_refused
    if not _warned_refused:
        _warned_refused = True
        logger.warning("sandbox: the private file-system view is not available on this machine (%s); untrusted "
                       "programs are refused; %s", reason, _OPT_IN)
    stderr = f"[sandbox] refused to run the program: the private file-system view failed ({reason}); {_OPT_IN}\n"
    return SandboxResult("error", None, "", stderr, time.monotonic() - start, isolation=isolation)


def _launch_and_supervise(
    scripts: list[str],
    workdir: str,
    root: kernel._RootPlan | None,
    env: dict[str, str],
    stdin: str,
    limits: SandboxLimits,
    start: float,
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
        rlimits = kernel._rlimits(limits)
        mounts = kernel._mount_table() if root is None else ()
        plan = kernel._ChildPlan(rlimits, os.fsencode(workdir), mounts, report_w, os.geteuid(), os.getegid(), root)
        inner = WORKDIR if root is not None else workdir
        writable = os.pathsep.join([inner, "/tmp", "/dev/shm"] if root is not None else [inner])
        imports = os.pathsep.join(limits.python_paths)
        argv = [rootfs.interpreter(), "-S", "-s", "-B", "-c", _BOOTSTRAP, inner, str(nonce_r), str(done_w),
                writable, imports, *scripts]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,
                preexec_fn=kernel._make_preexec(plan, kernel._KERNEL),
                pass_fds=(nonce_r, done_w),
                close_fds=True,
            )
        except subprocess.SubprocessError:
            report = _read_available(report_r, wait=0.0).decode(errors="replace")
            if "!" not in report:
                raise
            layers, reason = report.split("!", 1)
            return _refused(tuple(x for x in layers.split(",") if x), reason.replace(workdir, "<new root>"), start)
        for fd in (nonce_r, done_w, report_w):
            close(fd)
        isolation = tuple(x for x in _read_available(report_r, wait=2.0).decode().split(",") if x)
        _warn_if_privileged(isolation)
        scrub = {workdir: WORKDIR, os.path.realpath(workdir): WORKDIR, nonce.decode(): TOKEN_PLACEHOLDER}
        return _supervise(proc, limits, start, done_r, nonce, isolation, scrub)
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
    proc: subprocess.Popen,
    limits: SandboxLimits,
    start: float,
    done_r: int,
    nonce: bytes,
    isolation: tuple[str, ...],
    scrub: dict[str, str],
) -> SandboxResult:
    """Pump the output pipes, enforce the wall-clock limit, kill the group, reap, classify."""
    assert proc.stdout is not None and proc.stderr is not None
    pid = pgid = proc.pid  # start_new_session: the child leads its own group
    out = Capture(limits.max_output_bytes)
    err = Capture(limits.max_output_bytes, tail=_STDERR_TAIL_BYTES)
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
        return SandboxResult("error", None, clean_text(out, "stdout", scrub),
                             clean_text(err, "stderr", scrub) + note, time.monotonic() - start, pgid=pgid)
    proc.returncode = returncode = os.waitstatus_to_exitcode(status)
    completed = _read_available(done_r, wait=0.0) == nonce
    cpu = usage.ru_utime + usage.ru_stime
    stderr = clean_text(err, "stderr", scrub)
    verdict = _classify(timed_out, returncode, cpu, limits, err.tail_text() if err.truncated else stderr)
    if timed_out:
        stderr += f"[sandbox] killed after the wall-clock limit of {limits.wall_seconds:g} s\n"
    return SandboxResult(
        status=verdict,
        returncode=returncode,
        stdout=clean_text(out, "stdout", scrub),
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
