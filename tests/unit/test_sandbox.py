"""The code-execution sandbox (rlhf.sandbox) against hostile programs, and the ``code_tests`` reward plugin.

Hostile cases: endless loops, fork bombs, memory bombs, writes outside the working directory, sockets, reading the
parent's secrets, endless output, processes left behind. Several run in four modes: the default private
file-system view with every kernel layer this machine allows; the host_readonly view with the same layers; and
(host_readonly, as a program may only run there by opting in) without namespaces and with rlimits only (no
namespaces, no seccomp), so that the Python-level guards and the process-group kill are tested on their own as
well. The private view itself (what it shows, what it refuses, the opt-in) and the output contract have their own
tests; the hostile-program corpus is tests/unit/test_sandbox_corpus.py. Bounds on time are generous (the suite
must not be flaky on a loaded 2-core machine); the limits used are small (CPU 1 s, wall 2-3 s).

Run: pytest tests/unit/test_sandbox.py -q
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest

from rewards.api import RewardPluginError, build_scorer, list_plugins, resolve_plugin
from rewards.verifiable.code_tests import CodeTests, extract_code
from rlhf.config.schema import RewardComponentConfig
from rlhf.sandbox import SandboxLimits, SandboxResult, group_processes, isolation_layers, run_python, run_tests
from rlhf.sandbox import kernel as sandbox_kernel
from rlhf.sandbox import rootfs
from rlhf.sandbox import supervision as sandbox_supervision
from rlhf.sandbox.corpus import processes_with

FAST = SandboxLimits(cpu_seconds=1, wall_seconds=3, memory_mb=256, max_processes=16)
HOST = dataclasses.replace(FAST, filesystem="host_readonly")
BOUND_S = 20.0  # "returns in bounded time": far above the limits, far below a hang
PRIVATE = "private_root" in isolation_layers()
needs_private = pytest.mark.skipif(not PRIVATE, reason="the kernel refuses the private view on this machine")


class Mode(NamedTuple):
    name: str
    limits: SandboxLimits


KERNEL_MODES = {  # name: (what the kernel offers, the file-system view asked for)
    "private": (lambda k: k, "private"),
    "host_readonly": (lambda k: k, "host_readonly"),
    "no_namespaces": (lambda k: dataclasses.replace(k, unshare=None), "host_readonly"),
    "rlimits_only": (lambda k: dataclasses.replace(k, unshare=None, prctl=None), "host_readonly"),
}


@pytest.fixture(params=sorted(KERNEL_MODES))
def mode(request, monkeypatch) -> Mode:
    """Run the test in the private view, the host_readonly view, without namespaces, and with rlimits only."""
    patch, filesystem = KERNEL_MODES[request.param]
    if filesystem == "private" and not PRIVATE:
        pytest.skip("the kernel refuses the private view on this machine")
    monkeypatch.setattr(sandbox_kernel, "_KERNEL", patch(sandbox_kernel._KERNEL))
    return Mode(request.param, dataclasses.replace(FAST, filesystem=filesystem))


def live_members(pgid: int) -> list[int]:
    """Non-zombie processes of a process group, scanned from /proc independently of the module's own helper."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            data = (entry / "stat").read_bytes()
        except OSError:
            continue
        state, _ppid, pgrp = data[data.rfind(b")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            pids.append(int(entry.name))
    return pids




def assert_contained(result: SandboxResult) -> None:
    assert result.pgid is not None
    assert live_members(result.pgid) == []
    assert group_processes(result.pgid) == []


def sandbox_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("rlhf-sandbox-")}


# --------------------------------------------------------------------------- ordinary programs


def test_ok_program_reads_stdin_and_writes_stdout():
    result = run_python("name = input()\nprint('hello', name[::-1])", stdin="abc\n")
    assert result.status == "ok" and result.returncode == 0 and result.completed
    assert result.stdout == "hello cba\n" and result.stderr == ""
    assert not result.truncated and result.wall_seconds < BOUND_S
    assert_contained(result)


def test_nonzero_exit_exception_and_syntax_error_are_failed():
    assert run_python("import sys; sys.exit(3)").status == "failed"
    crashed = run_python("def f():\n    raise ValueError('boom')\nf()")
    assert crashed.status == "failed" and crashed.returncode == 1
    assert "ValueError: boom" in crashed.stderr and 'File "main.py", line 2' in crashed.stderr
    assert "_sandbox_bootstrap" not in crashed.stderr  # the bootstrap's own frame is hidden
    broken = run_python("def f(:\n    pass")
    assert broken.status == "failed" and "SyntaxError" in broken.stderr


def test_exit_and_quit_work_without_site():
    result = run_python("print(1)\nexit()\nprint(2)")
    assert result.status == "ok" and result.stdout == "1\n"
    assert run_python("quit(4)").returncode == 4


def test_working_directory_is_private_and_deleted(mode):
    before = sandbox_dirs()
    program = "import os\nopen('data.txt', 'w').write('x')\nprint(os.getcwd())\nprint(os.environ['HOME'])\n" \
              "print(__file__)"
    result = run_python(program, limits=mode.limits)
    assert result.status == "ok", result.stderr
    # the private view puts it at /sandbox; the host view's real path is reported as /sandbox (output contract)
    assert result.stdout.split() == ["/sandbox", "/sandbox", "/sandbox/main.py"]
    assert sandbox_dirs() - before == set()  # the host directory is gone


def test_limits_and_env_are_validated():
    with pytest.raises(ValueError, match="cpu_seconds"):
        SandboxLimits(cpu_seconds=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=1.5)
    with pytest.raises(ValueError, match="filesystem must be one of private, host_readonly"):
        SandboxLimits(filesystem="host")
    with pytest.raises(ValueError, match="absolute path"):
        SandboxLimits(readonly_paths=("relative/path",))
    with pytest.raises(ValueError, match="list of absolute paths"):
        SandboxLimits(python_paths="/a/path")
    for covering in ("/", "/tmp", "/proc/1", "/dev", "/sandbox/x"):
        with pytest.raises(ValueError, match="would cover"):
            SandboxLimits(readonly_paths=(covering,))
    assert SandboxLimits(readonly_paths=["/a//b/"]).readonly_paths == ("/a/b",)  # normalised, a tuple
    with pytest.raises(ValueError, match="PYTHONPATH"):
        run_python("pass", env={"PYTHONPATH": "/somewhere"})
    assert run_python("import os; print(os.environ['GREETING'])", env={"GREETING": "hi"}).stdout == "hi\n"


# --------------------------------------------------------------------------- the private file-system view


@needs_private
def test_private_view_shows_only_the_runtime():
    program = (
        "import os, sys\n"
        "print(sorted(os.listdir('/')))\n"
        "print(sorted(os.listdir('/dev')))\n"
        "print(os.path.exists('/etc'), os.path.exists('/proc'), os.path.exists('/sys'), os.path.exists('/home'))\n"
        "import _io\n"
        "for target in (os.path.dirname(os.__file__) + '/x.py', '/x', '/dev/x', os.__file__,\n"
        "               os.path.dirname(sys.executable) + '/x'):\n"
        "    try:\n"
        "        _io.FileIO(target, 'a')\n"
        "        print('writable', target)\n"
        "    except OSError as e:\n"
        "        print(e.strerror)\n"
    )
    result = run_python(program, limits=FAST)
    assert result.status == "ok", result.stderr
    top, dev, absent, *writes = result.stdout.splitlines()
    exposed = rootfs.exposure(rootfs.runtime_paths())
    runtime_top = {Path(p).parts[1] for p in [*exposed.dirs, *(x for x, _ in exposed.links), *(x for x, _ in
                                                                                             exposed.binds)]}
    assert set(eval(top)) == {"sandbox", "tmp", "dev"} | runtime_top
    assert eval(dev) == ["null", "random", "shm", "urandom", "zero"]
    assert absent == "False False False False"
    assert writes == ["Read-only file system"] * 5
    assert {"private_root", "readonly_fs", "proc_hidden"} <= set(result.isolation)


@needs_private
def test_a_file_written_outside_before_the_run_cannot_be_read(tmp_path):
    secret = tmp_path / "hidden_tests.py"
    token = f"SECRET-{uuid.uuid4().hex}"
    secret.write_text(token)
    program = f"try:\n    print(open({str(secret)!r}).read())\nexcept OSError as e:\n    print(type(e).__name__)"
    private = run_python(program, limits=FAST)
    assert private.status == "ok" and private.stdout == "FileNotFoundError\n" and token not in private.stdout
    opted_in = run_python(program, limits=HOST)  # the weaker view shows the host's files: the reason it is opt-in
    assert opted_in.stdout == token + "\n"


@needs_private
def test_private_tmp_and_workdir_are_writable_private_and_bounded():
    tag = uuid.uuid4().hex
    program = (
        f"open('/tmp/{tag}', 'w').write('x')\nopen('here', 'w').write('x')\n"
        "import os\nprint(sorted(os.listdir('/tmp')), sorted(os.listdir('.')))\n"
        "try:\n    open('big', 'wb').write(b'x' * 900_000)\n    open('big2', 'wb').write(b'x' * 900_000)\n"
        "except OSError as e:\n    print(e.strerror)\n"
    )
    result = run_python(program, limits=dataclasses.replace(FAST, scratch_mb=1))
    assert result.status == "ok", result.stderr
    assert result.stdout.splitlines() == [f"['{tag}'] ['here', 'main.py']", "No space left on device"]
    assert not Path(f"/tmp/{tag}").exists()


@needs_private
def test_readonly_and_python_paths_are_visible_read_only(tmp_path):
    package = tmp_path / "site"
    package.mkdir()
    (package / "task_helpers.py").write_text("ANSWER = 42\n")
    data = tmp_path / "data.txt"
    data.write_text("shared data\n")
    program = (
        "import task_helpers\nprint(task_helpers.ANSWER)\n"
        f"print(open({str(data)!r}).read().strip())\n"
        f"import _io\ntry:\n    _io.FileIO({str(data)!r}, 'a')\nexcept OSError as e:\n    print(e.strerror)\n"
        f"import os\nprint(sorted(os.listdir({str(tmp_path)!r})))\n"
    )
    limits = dataclasses.replace(FAST, python_paths=(str(package),), readonly_paths=(str(data),))
    result = run_python(program, limits=limits)
    assert result.status == "ok", result.stderr
    assert result.stdout.splitlines() == ["42", "shared data", "Read-only file system", "['data.txt', 'site']"]
    without = run_python(program, limits=FAST)
    assert without.status == "failed" and "ModuleNotFoundError" in without.stderr
    # python_paths also reach sys.path in the host view
    assert run_python("import task_helpers", limits=dataclasses.replace(HOST, python_paths=(str(package),))).ok


def test_a_program_larger_than_the_file_size_limit_still_runs(mode):
    big = "x = '" + "a" * 1_500_000 + "'\nprint(len(x))\nopen('copy', 'w').write(x)\n"  # 1.5 MB > max_file_bytes
    result = run_python(big, limits=mode.limits)
    assert result.stdout == "1500000\n"
    assert result.status == "failed" and "File too large" in result.stderr  # RLIMIT_FSIZE holds for the program


@needs_private
def test_a_missing_readonly_path_is_an_error(tmp_path):
    result = run_python("print('ran')", limits=dataclasses.replace(FAST, readonly_paths=(str(tmp_path / "nope"),)))
    assert result.status == "error" and "nope does not exist" in result.stderr and result.stdout == ""


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(sandbox_supervision, "_warned_refused", False)


@pytest.mark.parametrize("kernel_change", ["unshare_refused", "no_unshare", "pivot_root_refused", "uid_map_refused"])
def test_the_private_view_is_refused_not_weakened(kernel_change, monkeypatch, caplog, fresh_warning, tmp_path):
    """Where the kernel refuses any step of the private view, the program never starts (and says how to opt in)."""
    k = sandbox_kernel._KERNEL
    changes = {
        "unshare_refused": lambda: dataclasses.replace(k, unshare=lambda flags: -1),
        "no_unshare": lambda: dataclasses.replace(k, unshare=None),
        "pivot_root_refused": lambda: dataclasses.replace(k, pivot_root=lambda new, old: -1),
        # only the user-namespace path may enter namespaces: where the kernel refuses CLONE_NEWUSER at this moment
        # (gVisor refuses it, EINVAL, in a child forked from a process that has run torch's thread pool) the
        # sandbox would otherwise take its no-user-namespace path and this case would test nothing
        "uid_map_refused": lambda: dataclasses.replace(
            k, unshare=lambda flags: k.unshare(flags) if flags & sandbox_kernel._CLONE_NEWUSER else -1),
    }
    if kernel_change != "no_unshare" and not PRIVATE:
        pytest.skip("the kernel refuses the private view on this machine")
    if kernel_change == "uid_map_refused":
        monkeypatch.setattr(sandbox_kernel, "_map_ids", lambda plan: False)
    monkeypatch.setattr(sandbox_kernel, "_KERNEL", changes[kernel_change]())
    marker = tmp_path / "ran"
    program = f"import _io\n_io.FileIO({str(marker)!r}, 'w').write(b'x')\nprint('ran')"
    with caplog.at_level(logging.WARNING, logger="rlhf.sandbox.supervision"):
        first = run_python(program, limits=FAST)
        second = run_python(program, limits=FAST)
    for result in (first, second):
        assert result.status == "error" and result.stdout == "" and "ran" not in result.stdout, (
            result.status, result.isolation, result.stderr[-800:])
        assert "refused to run the program" in result.stderr and "filesystem='host_readonly'" in result.stderr
        assert "private_root" not in result.isolation
    assert not marker.exists()  # the program never ran
    warnings = [r for r in caplog.records if "private file-system view is not available" in r.getMessage()]
    assert len(warnings) == 1  # said once
    if kernel_change == "pivot_root_refused":
        assert "pivot_root" in first.stderr
    if kernel_change == "unshare_refused":
        assert "mount namespace" in first.stderr
    opted_in = run_python("print('ran')", limits=HOST)  # the weaker view still runs, by name
    assert opted_in.status == "ok" and opted_in.stdout == "ran\n"


# --------------------------------------------------------------------------- the output contract


def test_output_drops_controls_and_escapes_and_replaces_bad_utf8(mode):
    program = (
        "import sys\n"
        "sys.stdout.buffer.write(b'a\\x00b\\x1b[31mred\\x1b[0m\\x07c\\x1b]0;title\\x07d\\r\\n\\xff\\xfeok\\t\\n')\n"
        "sys.stdout.buffer.write('\\u202egnp.exe\\u202c \\x85\\x9b done\\n'.encode())\n"
    )
    result = run_python(program, limits=mode.limits)
    assert result.status == "ok", result.stderr
    assert result.stdout == "abredcd\r\n\ufffd\ufffdok\t\ngnp.exe  done\n"


def test_host_paths_and_the_completion_token_are_scrubbed(mode):
    program = (
        "import os, sys\n"
        "cwd = os.getcwd()\n"
        "print(cwd, os.path.realpath('.'), os.environ['HOME'])\n"
        "print(cwd[:4] + '\\x00\\x1b[0m' + cwd[4:])\n"  # split by controls: still found
        "token = sys._getframe(1).f_locals['nonce'].decode()\n"  # the bootstrap's frame (a documented limit)
        "print('token', token, token[:5] + '\\x07' + token[5:])\n"
        "print(token, file=sys.stderr)\n"
    )
    result = run_tests(program, "pass", mode.limits)
    assert result.status == "ok", result.stderr
    assert result.stdout == "/sandbox /sandbox /sandbox\n/sandbox\ntoken [token] [token]\n"
    assert result.stderr == "[token]\n"


def test_truncation_is_marked_and_cut_at_a_character_boundary():
    limits = dataclasses.replace(FAST, max_output_bytes=11)
    result = run_python("import sys\nsys.stdout.write('ab' + 'é' * 10)\nsys.stderr.write('b' * 11)", limits=limits)
    assert result.status == "ok" and result.truncated
    # 11 bytes would end inside the fifth é: its first byte is dropped, not shown as U+FFFD
    assert result.stdout == "abéééé\n[sandbox] stdout truncated: 10 of 22 bytes kept\n"
    assert result.stderr == "b" * 11  # at the cap exactly: not truncated


# --------------------------------------------------------------------------- hostile programs


def test_infinite_loop_times_out(mode):
    start = time.monotonic()
    result = run_python("while True:\n    pass", limits=mode.limits)
    assert result.status == "timeout"
    assert time.monotonic() - start < BOUND_S
    assert_contained(result)


def test_sleeping_program_hits_the_wall_clock_limit():
    start = time.monotonic()
    result = run_python("import time\ntime.sleep(1000)", limits=dataclasses.replace(FAST, wall_seconds=1.5))
    assert result.status == "timeout" and result.returncode == -signal.SIGKILL
    assert "wall-clock limit" in result.stderr
    assert time.monotonic() - start < BOUND_S
    assert_contained(result)


def test_fork_bomb_is_contained_and_the_machine_still_works():
    start = time.monotonic()
    result = run_python("import os\nwhile True:\n    os.fork()", limits=dataclasses.replace(FAST, wall_seconds=2))
    assert result.status != "ok"
    assert time.monotonic() - start < BOUND_S
    assert_contained(result)  # no live process of the bomb's group survives
    after = run_python("print('still fine')", limits=FAST)
    assert after.status == "ok" and after.stdout == "still fine\n"


@pytest.mark.parametrize(
    "program,allowed",
    [
        ("x = bytearray(10**10)", {"memory"}),
        # usually "memory"; a process left without the memory to print its MemoryError ends "failed" or "killed"
        ("x = []\nwhile True:\n    x.append(' ' * 100_000)", {"memory", "failed", "killed", "timeout"}),
    ],
    ids=["one_huge_allocation", "growing_list"],
)
def test_memory_bomb_is_stopped(program, allowed):
    start = time.monotonic()
    result = run_python(program, limits=FAST)
    assert result.status in allowed
    assert time.monotonic() - start < BOUND_S
    assert_contained(result)


def test_writes_outside_the_working_directory_never_reach_the_host(mode):
    tag = uuid.uuid4().hex
    in_tmp = Path(f"/tmp/evil_{tag}")
    in_home = Path.home() / f"evil_{tag}"
    try:
        tmp_write = run_python(f"open({str(in_tmp)!r}, 'w').write('pwned')", limits=mode.limits)
        home_write = run_python(f"open({str(in_home)!r}, 'w').write('pwned')", limits=mode.limits)
        assert not in_tmp.exists() and not in_home.exists()
        if mode.name == "private":
            assert tmp_write.status == "ok"  # the private /tmp took it
        else:
            assert tmp_write.status == "failed"
        assert home_write.status == "failed"
        for result in [home_write] + ([] if mode.name == "private" else [tmp_write]):
            assert "PermissionError" in result.stderr or "Read-only file system" in result.stderr
        # "~" inside the sandbox is the sandbox's own directory, not the user's home
        tilde = run_python(f"import os\nopen(os.path.expanduser('~/evil_{tag}'), 'w').write('x')", limits=mode.limits)
        assert tilde.status == "ok" and not in_home.exists()
    finally:
        for target in (in_tmp, in_home):
            target.unlink(missing_ok=True)


@pytest.mark.skipif("readonly_fs" not in isolation_layers(), reason="no mount namespace on this machine")
def test_read_only_file_system_stops_writes_the_python_guard_misses():
    target = Path(f"/tmp/evil_{uuid.uuid4().hex}")
    try:
        result = run_python(f"import _io\n_io.FileIO({str(target)!r}, 'w').write(b'pwned')", limits=HOST)
        assert result.status == "failed" and "Read-only file system" in result.stderr
        assert not target.exists()
        private = run_python(f"import _io\n_io.FileIO({str(target)!r}, 'w').write(b'pwned')", limits=FAST)
        assert private.status == ("ok" if PRIVATE else "error") and not target.exists()  # the private /tmp
    finally:
        target.unlink(missing_ok=True)


def test_socket_to_a_loopback_listener_is_refused(mode):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        attempts = [
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
            f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))",
        ]
        for program in attempts:
            result = run_python(program, limits=mode.limits)
            assert result.status == "failed" and "PermissionError" in result.stderr
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody ever connected


@pytest.mark.skipif("seccomp" not in isolation_layers(), reason="no seccomp on this machine")
def test_seccomp_blocks_raw_sockets_setsid_and_kill_all():
    probe = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.socket(2, 1, 0), ctypes.get_errno())\n"
        "for call in (os.setsid, lambda: os.setpgid(0, 0), lambda: os.kill(-1, 0)):\n"
        "    try:\n"
        "        call()\n"
        "        print('allowed')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )
    result = run_python(probe, limits=FAST)
    assert result.status == "ok", result.stderr
    assert result.stdout.split() == ["-1", "1", "refused", "refused", "refused"]  # socket(): -1, EPERM


def test_parent_secrets_are_not_visible(mode, monkeypatch):
    monkeypatch.setenv("RLHF_TEST_SECRET", "s3cr3t")
    result = run_python("import os\nprint(dict(os.environ))", limits=mode.limits)
    assert result.status == "ok"
    assert "s3cr3t" not in result.stdout and "RLHF_TEST_SECRET" not in result.stdout
    assert "PATH" in result.stdout


@pytest.mark.skipif("proc_hidden" not in isolation_layers(), reason="/proc is not hidden on this machine")
@pytest.mark.parametrize("limits", [FAST, HOST], ids=["private", "host_readonly"])
def test_parent_environ_in_proc_is_hidden(monkeypatch, limits):
    monkeypatch.setenv("RLHF_TEST_SECRET", "s3cr3t")
    program = f"try:\n    print(open('/proc/{os.getpid()}/environ', 'rb').read())\nexcept OSError as e:\n    print(e)"
    result = run_python(program, limits=limits)
    assert "s3cr3t" not in result.stdout


def test_printing_forever_is_truncated_and_bounded():
    start = time.monotonic()
    limits = dataclasses.replace(FAST, max_output_bytes=10_000)
    result = run_python("while True:\n    print('x' * 1000)", limits=limits)
    assert result.status == "timeout" and result.truncated
    text, marker = result.stdout.rsplit("\n[sandbox] stdout truncated: ", 1)
    assert 0 < len(text) <= 10_000 and set(text) <= {"x", "\n"}
    assert marker.startswith("10000 of ") and marker.endswith(" bytes kept\n")
    assert time.monotonic() - start < BOUND_S


def test_grandchild_sleeper_is_killed_when_the_program_exits(mode):
    marker = f"sandbox-sleeper-{uuid.uuid4().hex}"
    program = (
        "import os, subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; print(1, flush=True); time.sleep(1000)', "
        f"{marker!r}], stdout=subprocess.PIPE)\n"
        "child.stdout.readline()  # the grandchild is running\n"
        "if os.fork() == 0:  # and a daemon-style orphan\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(1000)', {marker!r}])\n"
        "print('spawned')\n"
    )
    try:
        start = time.monotonic()
        result = run_python(program, limits=mode.limits)
        assert result.status == "ok" and result.stdout == "spawned\n", result.stderr
        assert time.monotonic() - start < BOUND_S
        assert_contained(result)
        assert processes_with(marker) == []
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(
    not {"seccomp", "pid_ns"} & isolation_layers(), reason="neither seccomp nor a PID namespace on this machine"
)
def test_a_child_that_calls_setsid_cannot_escape():
    marker = f"sandbox-escapee-{uuid.uuid4().hex}"
    program = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    try:\n"
        "        os.setsid()\n"
        "    except OSError:\n"
        "        pass\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(1000)', {marker!r}])\n"
        "import time\n"
        "time.sleep(0.3)\n"
    )
    try:
        result = run_python(program, limits=FAST)
        assert result.status == "ok", result.stderr
        assert processes_with(marker) == []
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- run_tests


def test_run_tests_passes_and_fails():
    program = "def add(a, b):\n    return a + b\n"
    assert run_tests(program, "assert add(1, 2) == 3\nassert add(-1, 1) == 0", FAST).status == "ok"
    failed = run_tests(program, "assert add(1, 2) == 4", FAST)
    assert failed.status == "failed" and "AssertionError" in failed.stderr and "tests.py" in failed.stderr


@pytest.mark.parametrize(
    "exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"], ids=["sys", "os", "raise"]
)
def test_run_tests_early_exit_does_not_pass(exit_call):
    result = run_tests(f"def add(a, b):\n    return 0\n{exit_call}\n", "assert add(1, 2) == 3", FAST)
    assert result.status == "failed" and not result.completed


def test_run_tests_program_cannot_swallow_the_tests():
    for tail in ('s = """', "x = 1 + \\", "if True:"):
        result = run_tests(f"def add(a, b):\n    return 0\n{tail}\n", "assert add(1, 2) == 3", FAST)
        assert result.status == "failed", tail


# --------------------------------------------------------------------------- the code_tests plugin


def score(completions, tests, **args):
    scorer = build_scorer(RewardComponentConfig(name="tests", plugin="code_tests", args=args))
    return scorer(["prompt"] * len(completions), completions, {"tests": tests})


def test_plugin_is_found_by_name():
    info = resolve_plugin("code_tests")
    assert info.obj is CodeTests and info.kind == "reward" and info.is_class
    assert "code_tests" in {p.name for p in list_plugins()}


def test_plugin_scores_correct_wrong_broken_and_hostile():
    tests = "assert square(3) == 9\nassert square(-2) == 4"
    completions = [
        "Here you go:\n```python\ndef square(x):\n    return x * x\n```\nDone.",
        "```python\ndef square(x):\n    return x + x\n```",
        "```python\ndef square(x) return x * x\n```",
        "```python\ndef square(x):\n    while True:\n        pass\n```",
        "```python\nimport os\ndef square(x):\n    return 0\nos._exit(0)\n```",
    ]
    values = score(completions, [tests] * 5, cpu_seconds=1, wall_seconds=3, parallel=2)
    assert values == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_plugin_partial_scoring_with_independent_cases():
    cases = ["assert inc(1) == 2", "assert inc(2) == 3", "assert inc(-1) == 0", "assert inc(10) == 11"]
    right, off_at_ten = "def inc(x):\n    return x + 1", "def inc(x):\n    return x + 1 if x < 10 else 0"
    assert score([right, off_at_ten], [cases, cases], partial=True) == [1.0, 0.75]
    assert score([right, off_at_ten], [cases, cases]) == [1.0, 0.0]
    assert score([off_at_ten], [cases[:1]], partial=True) == [1.0]


def test_plugin_without_tests_is_not_applicable():
    values = score(["def f(): pass", "def f(): pass", "def f(): pass", "def f(): pass"], [None, "", [], "f()"])
    assert [math.isnan(v) for v in values] == [True, True, True, False] and values[3] == 1.0


def test_plugin_rejects_bad_args_and_bad_tests_values():
    with pytest.raises(RewardPluginError, match="parallel must be an integer >= 1"):
        score(["x"], ["assert True"], parallel=0)
    with pytest.raises(RewardPluginError, match="wall_seconds"):
        score(["x"], ["assert True"], wall_seconds=-1)
    with pytest.raises(RewardPluginError, match="sample 1: the `tests` column must hold"):
        score(["x", "x"], ["assert True", 42])


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("```js\nlet a = 1\n```\n```python\nA = 1\n```\n```py\nB = 2\n```\ntext", "B = 2\n"),
        ("```\nC = 3\n```", "C = 3\n"),
        ("```python\nD = 4\n```\n```bash\necho hi\n```", "D = 4\n"),
        ("E = 5\nprint(E)", "E = 5\nprint(E)"),
        ("Sure:\n```python\nF = 6\ndef g(", "F = 6\ndef g("),  # cut off by the length limit
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


def test_sandbox_runs_concurrently_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: run_python(f"print({i} * {i})", limits=FAST), range(8)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]


def test_sandbox_python_is_this_interpreter():
    result = run_python("import sys\nprint(sys.version_info[:2])")
    assert result.stdout.strip() == str(tuple(sys.version_info[:2]))


def test_plugin_filesystem_and_paths_args(tmp_path):
    package = tmp_path / "site"
    package.mkdir()
    (package / "task_helpers.py").write_text("def double(x):\n    return 2 * x\n")
    completion = "```python\nfrom task_helpers import double\ndef quad(x):\n    return double(double(x))\n```"
    tests = "assert quad(3) == 12"
    assert score([completion], [tests], python_paths=[str(package)]) == [1.0]
    assert score([completion], [tests], python_paths=str(package), filesystem="host_readonly") == [1.0]
    assert score([completion], [tests]) == [0.0]  # not declared: not importable
    with pytest.raises(RewardPluginError, match="filesystem must be one of private, host_readonly"):
        score(["x"], ["assert True"], filesystem="host")
    with pytest.raises(RewardPluginError, match="absolute path"):
        score(["x"], ["assert True"], readonly_paths=["data/x"])


@needs_private
def test_plugin_cannot_read_a_hidden_answer_file(tmp_path):
    answer = tmp_path / "answers.txt"
    answer.write_text("1234567")
    completion = f"```python\ndef solve():\n    return int(open({str(answer)!r}).read())\n```"
    assert score([completion], ["assert solve() == 1234567"]) == [0.0]
    assert score([completion], ["assert solve() == 1234567"], filesystem="host_readonly") == [1.0]


def test_plugin_refuses_to_build_without_the_private_view(monkeypatch):
    import rewards.verifiable.code_tests as code_tests

    monkeypatch.setattr(code_tests, "isolation_layers", lambda: frozenset({"rlimits", "seccomp"}))
    with pytest.raises(RewardPluginError, match=r"args: \{filesystem: host_readonly\}"):
        score(["x"], ["assert True"])
    assert score(["x = 1"], ["assert x == 1"], filesystem="host_readonly") == [1.0]
