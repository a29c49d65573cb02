"""The corpus's attempt record: one :class:`Attempt` per thing a program tries (the tables are ``files.py``, host
files, and ``processes.py``: network, processes, resources, exits), the corpus's limits, and what the sandbox
documents as not contained (:data:`DOCUMENTED_LIMITS`)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

from rlhf.sandbox.records import SandboxLimits

CORPUS_LIMITS = SandboxLimits(cpu_seconds=1, wall_seconds=3, memory_mb=256, max_processes=16)
_MARGIN_S = 10.0  # "ends in bounded time": the wall-clock limit plus this


@dataclass(frozen=True)
class Attempt:
    name: str
    group: str  # read | write | network | escape | exhaustion | exit
    goal: str  # what the program tries (one line)
    program: str
    checks: tuple[str, ...]  # besides ran / no_leak / group_gone / bounded
    enforced_by: str  # what contains it: "kernel: ..." (holds whatever the program does) or "python guard: ..."
    tests: str | None = None  # set: run_tests(program, tests); else run_python(program)
    limits: dict[str, Any] = field(default_factory=dict)  # SandboxLimits overrides


def attempt(name: str, group: str, goal: str, program: str, checks: tuple[str, ...], enforced_by: str,
       tests: str | None = None, **limits: Any) -> Attempt:
    return Attempt(name, group, goal, textwrap.dedent(program).strip() + "\n", checks, enforced_by,
                   textwrap.dedent(tests).strip() + "\n" if tests else None, limits)


# what contains an attempt (its `enforced_by`)
ROOT = "kernel: private root (not in the view)"
ROOT_RO = "kernel: private root (only the runtime is visible, read-only; /tmp is private)"
SECCOMP = "kernel: seccomp (EPERM)"
NET = "kernel: seccomp socket() + empty network namespace"
TOKEN = "completion token (run_tests passes only if the tests ran to their end)"

READ_OPEN = """
try:
    print(open($path).read())
except Exception as e:
    print("BLOCKED", type(e).__name__)
"""


DOCUMENTED_LIMITS: tuple[tuple[str, str], ...] = (
    ("forge the completion token", "a program that walks the bootstrap's frames (sys._getframe(1).f_locals) finds "
     "the per-run token and the done pipe, writes it and exits 0: run_tests then counts the tests as passed. "
     "The token stops plain early exits, not code written against the bootstrap."),
    ("game assert-based tests in-process", "objects whose __eq__ is always true, sys.settrace jumping over the "
     "assert lines, patching the helpers the tests call: the tests run in the program's interpreter."),
    ("timing side channels", "the program can time itself, the machine's load, caches and other tenants' "
     "activity (wall clock, perf counters through rdtsc); nothing hides time."),
    ("read the runtime it is given", "the interpreter, the standard library, its shared libraries and the "
     "python_paths/readonly_paths of the task are readable by design (read-only)."),
    ("use N times the CPU and memory", "RLIMIT_CPU and RLIMIT_AS are per process: N processes get N budgets "
     "within the wall-clock limit; RLIMIT_NPROC does not bind root (the group kill does)."),
    ("kernel exploits", "the program shares the host's kernel; seccomp removes some attack surface (io_uring, "
     "bpf, userfaultfd, keyrings, perf, mount APIs), not all."),
)
