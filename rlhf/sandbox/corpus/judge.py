"""Running a corpus attempt in the sandbox and judging it: :func:`run_attempt` runs one against a :class:`Host`,
:func:`judge` lists why it was *not* contained (empty: contained), from the checks every attempt gets and its own
(:data:`CHECKS`)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, replace
from typing import Callable

from rlhf.sandbox.corpus.attempts import _MARGIN_S, CORPUS_LIMITS, Attempt
from rlhf.sandbox.corpus.host import Host, processes_with
from rlhf.sandbox.records import SandboxLimits, SandboxResult
from rlhf.sandbox.supervision import group_processes, run_python, run_tests


@dataclass(frozen=True)
class Outcome:
    attempt: Attempt
    result: SandboxResult
    seconds: float
    failures: tuple[str, ...]  # why it was not contained; empty: contained

    @property
    def contained(self) -> bool:
        return not self.failures


def _has_line(text: str, prefix: str) -> bool:
    return any(line.startswith(prefix) for line in text.splitlines())


def _check_ran(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    return f"the sandbox did not run it: {r.stderr.strip()[-200:]}" if r.status == "error" else None


def _check_no_leak(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    leaked = [s for s in host.sentinels if s in r.stdout or s in r.stderr]
    return f"leaked {len(leaked)} host sentinel(s), e.g. {leaked[0][:60]!r}" if leaked else None


def _check_group_gone(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    alive = group_processes(r.pgid) if r.pgid is not None else []
    return f"processes {alive} of its group outlived the run" if alive else None


def _check_bounded(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    bound = limits.wall_seconds + _MARGIN_S
    return f"took {seconds:.1f} s (bound {bound:.0f} s)" if seconds > bound else None


def _check_failed(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    return "the attempt succeeded (status ok)" if r.status == "ok" else None


def _check_not_passed(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    return "the tests counted as passed" if r.status == "ok" else None


def _check_host_unchanged(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits,
                          seconds: float) -> str | None:
    changed = host.changes()
    return f"changed on the host: {changed}" if changed else None


def _check_no_connection(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits,
                         seconds: float) -> str | None:
    count = host.connections()
    return f"{count} connection(s)/datagram(s) reached the host's listeners" if count else None


def _check_decoy_alive(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    state = host.decoy_state()
    return f"the decoy process is {state}" if state != "alive" else None


def _check_no_survivor(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    deadline = time.monotonic() + 1.0
    while (alive := processes_with(host.marker)) and time.monotonic() < deadline:
        time.sleep(0.05)  # a process killed by the group kill may take a moment to be reaped by its new parent
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return f"processes {alive} outlived the run" if alive else None


def _check_blocked(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    if _has_line(r.stdout, "ESCAPED"):
        return "the probe reports ESCAPED"
    if not _has_line(r.stdout, "BLOCKED"):
        return f"the probe did not report BLOCKED (status {r.status}): {r.stderr.strip()[-200:]!r}"
    return None


def _check_truncated(a: Attempt, r: SandboxResult, host: Host, limits: SandboxLimits, seconds: float) -> str | None:
    cap = limits.max_output_bytes + 200  # the cap plus the truncation line (and the sandbox's own notes)
    if not r.truncated or len(r.stdout) > cap or len(r.stderr) > cap:
        return f"output not capped (truncated={r.truncated}, {len(r.stdout)} / {len(r.stderr)} chars)"
    return None


_Check = Callable[[Attempt, SandboxResult, Host, SandboxLimits, float], "str | None"]
CHECKS: dict[str, _Check] = {
    "ran": _check_ran,
    "no_leak": _check_no_leak,
    "group_gone": _check_group_gone,
    "bounded": _check_bounded,
    "failed": _check_failed,
    "not_passed": _check_not_passed,
    "host_unchanged": _check_host_unchanged,
    "no_connection": _check_no_connection,
    "decoy_alive": _check_decoy_alive,
    "no_survivor": _check_no_survivor,
    "blocked": _check_blocked,
    "truncated": _check_truncated,
}
_ALWAYS = ("ran", "no_leak", "group_gone", "bounded")


def attempt_limits(attempt: Attempt, base: SandboxLimits = CORPUS_LIMITS) -> SandboxLimits:
    return replace(base, **attempt.limits)


def run_attempt(attempt: Attempt, host: Host, base: SandboxLimits = CORPUS_LIMITS) -> Outcome:
    """Run one attempt against the sandbox (``base`` limits, e.g. another ``filesystem``) and judge it."""
    limits = attempt_limits(attempt, base)
    program = host.fill(attempt.program, limits)
    start = time.monotonic()
    if attempt.tests is None:
        result = run_python(program, limits=limits)
    else:
        result = run_tests(program, host.fill(attempt.tests, limits), limits)
    seconds = time.monotonic() - start
    return Outcome(attempt, result, seconds, judge(attempt, result, host, limits, seconds))


def judge(attempt: Attempt, result: SandboxResult, host: Host, limits: SandboxLimits, seconds: float
          ) -> tuple[str, ...]:
    """Why the run was not contained (every check runs, so each one also undoes what it found on the host)."""
    failures = []
    for name in dict.fromkeys(_ALWAYS + attempt.checks):
        reason = CHECKS[name](attempt, result, host, limits, seconds)
        if reason:
            failures.append(f"{name}: {reason}")
    return tuple(failures)
