"""The code-execution sandbox (rlhf.sandbox) against hostile programs, and the ``code_tests`` reward plugin.

Hostile cases: endless loops, fork bombs, memory bombs, writes outside the working directory, sockets, reading the
parent's secrets, endless output, processes left behind. Several run three times: with every kernel layer this
machine allows, without namespaces, and with rlimits only (no namespaces, no seccomp), so that the Python-level
guards and the process-group kill are tested on their own as well. Bounds on time are generous (the suite must not
be flaky on a loaded 2-core machine); the limits used are small (CPU 1 s, wall 2-3 s).

Run: pytest tests/unit/test_sandbox.py -q
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from rewards.api import RewardPluginError, build_scorer, list_plugins, resolve_plugin
from rewards.verifiable.code_tests import CodeTests, extract_code
from rlhf.config.schema import RewardComponentConfig
from rlhf.sandbox import SandboxLimits, SandboxResult, group_processes, isolation_layers, run_python, run_tests
from rlhf.sandbox import kernel as sandbox_kernel

FAST = SandboxLimits(cpu_seconds=1, wall_seconds=3, memory_mb=256, max_processes=16)
BOUND_S = 20.0  # "returns in bounded time": far above the limits, far below a hang

KERNEL_MODES = {
    "full": lambda k: k,
    "no_namespaces": lambda k: dataclasses.replace(k, unshare=None),
    "rlimits_only": lambda k: dataclasses.replace(k, unshare=None, prctl=None),
}


@pytest.fixture(params=sorted(KERNEL_MODES))
def kernel_mode(request, monkeypatch):
    """Run the test with all kernel layers, without namespaces, and with rlimits only."""
    monkeypatch.setattr(sandbox_kernel, "_KERNEL", KERNEL_MODES[request.param](sandbox_kernel._KERNEL))
    return request.param


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


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                if state not in (b"Z", b"X"):
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def assert_contained(result: SandboxResult) -> None:
    assert result.pgid is not None
    assert live_members(result.pgid) == []
    assert group_processes(result.pgid) == []


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


def test_working_directory_is_private_and_deleted():
    result = run_python("import os\nopen('data.txt', 'w').write('x')\nprint(os.getcwd())\nprint(os.environ['HOME'])")
    assert result.status == "ok"
    cwd, home = result.stdout.split()
    assert cwd == home and "rlhf-sandbox-" in cwd
    assert not os.path.exists(cwd)


def test_limits_and_env_are_validated():
    with pytest.raises(ValueError, match="cpu_seconds"):
        SandboxLimits(cpu_seconds=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=1.5)
    with pytest.raises(ValueError, match="PYTHONPATH"):
        run_python("pass", env={"PYTHONPATH": "/somewhere"})
    assert run_python("import os; print(os.environ['GREETING'])", env={"GREETING": "hi"}).stdout == "hi\n"


# --------------------------------------------------------------------------- hostile programs


def test_infinite_loop_times_out(kernel_mode):
    start = time.monotonic()
    result = run_python("while True:\n    pass", limits=FAST)
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


def test_writes_outside_the_working_directory_are_refused(kernel_mode):
    tag = uuid.uuid4().hex
    in_tmp = Path(f"/tmp/evil_{tag}")
    in_home = Path.home() / f"evil_{tag}"
    try:
        for target in (in_tmp, in_home):
            result = run_python(f"open({str(target)!r}, 'w').write('pwned')", limits=FAST)
            assert result.status == "failed"
            assert "PermissionError" in result.stderr or "Read-only file system" in result.stderr
            assert not target.exists()
        # "~" inside the sandbox is the sandbox's own directory, not the user's home
        tilde = run_python(f"import os\nopen(os.path.expanduser('~/evil_{tag}'), 'w').write('x')", limits=FAST)
        assert tilde.status == "ok" and not in_home.exists()
    finally:
        for target in (in_tmp, in_home):
            target.unlink(missing_ok=True)


@pytest.mark.skipif("readonly_fs" not in isolation_layers(), reason="no mount namespace on this machine")
def test_read_only_file_system_stops_writes_the_python_guard_misses():
    target = Path(f"/tmp/evil_{uuid.uuid4().hex}")
    try:
        result = run_python(f"import _io\n_io.FileIO({str(target)!r}, 'w').write(b'pwned')", limits=FAST)
        assert result.status == "failed" and "Read-only file system" in result.stderr
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_socket_to_a_loopback_listener_is_refused(kernel_mode):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        attempts = [
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
            f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))",
        ]
        for program in attempts:
            result = run_python(program, limits=FAST)
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


def test_parent_secrets_are_not_visible(kernel_mode, monkeypatch):
    monkeypatch.setenv("RLHF_TEST_SECRET", "s3cr3t")
    result = run_python("import os\nprint(dict(os.environ))", limits=FAST)
    assert result.status == "ok"
    assert "s3cr3t" not in result.stdout and "RLHF_TEST_SECRET" not in result.stdout
    assert "PATH" in result.stdout


@pytest.mark.skipif("proc_hidden" not in isolation_layers(), reason="/proc is not hidden on this machine")
def test_parent_environ_in_proc_is_hidden(monkeypatch):
    monkeypatch.setenv("RLHF_TEST_SECRET", "s3cr3t")
    program = f"try:\n    print(open('/proc/{os.getpid()}/environ', 'rb').read())\nexcept OSError as e:\n    print(e)"
    result = run_python(program, limits=FAST)
    assert "s3cr3t" not in result.stdout


def test_printing_forever_is_truncated_and_bounded():
    start = time.monotonic()
    limits = dataclasses.replace(FAST, max_output_bytes=10_000)
    result = run_python("while True:\n    print('x' * 1000)", limits=limits)
    assert result.status == "timeout" and result.truncated
    assert 0 < len(result.stdout) <= 10_000
    assert time.monotonic() - start < BOUND_S


def test_grandchild_sleeper_is_killed_when_the_program_exits(kernel_mode):
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
        result = run_python(program, limits=FAST)
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
