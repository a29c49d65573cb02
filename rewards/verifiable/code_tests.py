"""Built-in reward ``code_tests``: run the code in the completion against the sample's assert-based tests, sandboxed.

Recipe use::

    rewards:
      - {name: tests, plugin: code_tests}                                   # 1.0 if every test passes, else 0.0
      - {name: tests, plugin: code_tests, args: {partial: true, parallel: 4, wall_seconds: 10}}
      - {name: tests, plugin: code_tests, args: {python_paths: [/opt/task-env/site-packages]}}  # packages tests use
      - {name: tests, plugin: code_tests, args: {filesystem: host_readonly}}  # the weaker view, by name only

The dataset needs a ``tests`` column. Each value is one of:

* a str: one block of Python test code (``assert f(2) == 4`` lines, or a ``check()`` harness) run after the program
  in the same namespace; the sample scores 1.0 if it runs to its end, else 0.0;
* a list of str: independent test cases, each run after the program on its own. Without ``partial`` the sample
  scores 1.0 only if all pass; with ``partial: true`` it scores the fraction that pass (all cases are first run
  together in one process; only when that fails is each case run in its own sandbox to count the passes);
* None, "" or []: no tests, so the reward does not apply to the sample (None, NaN in the reward vector).

The program is the last fenced ```python (or ```py) block of the completion, else its last fenced block of any
language, else the whole completion; an unterminated last fence (a truncated generation) counts as a block.
Every run is a separate sandboxed process (see ``rlhf.sandbox``): a hostile, crashing or endless program is a
failed sample (0.0), never an exception. Args: cpu_seconds, wall_seconds, memory_mb, max_processes (per run; see
``SandboxLimits``), partial, parallel (sandboxes run at once; each uses about one CPU core while it runs),
python_paths (package directories the tests may import: read-only, on ``sys.path``), readonly_paths (more host
files the program may read), filesystem.

The program sees a private file-system view: its working directory, a private /tmp, the Python runtime (read-only)
and nothing else of the host, so it cannot read the tests, the dataset or anything else on the machine. Where the
kernel refuses that view (no user or mount namespaces), building the reward fails with an error naming the opt-in:
``filesystem: host_readonly`` shows the host's files read-only (writes stay confined) and is the only other value.
Keep the component's ``timeout_s`` above (batch size / parallel) x wall_seconds x runs per sample.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from rewards.api import reward
from rlhf.sandbox import SandboxLimits, SandboxResult, isolation_layers, run_tests

logger = logging.getLogger(__name__)

_PYTHON_TAGS = ("python", "python3", "py")


@reward("code_tests")
class CodeTests:
    """1.0 if the completion's code passes the `tests` column's assert-based tests in a sandbox, else 0.0.

    `tests` per sample: a str (one block), a list of str (independent cases; with partial=true the score is the
    fraction passed), or None/empty (not applicable). Args: cpu_seconds, wall_seconds, memory_mb, max_processes,
    partial, parallel, python_paths, readonly_paths, filesystem ("private", the default, or "host_readonly").
    """

    def __init__(
        self,
        cpu_seconds: float = 2.0,
        wall_seconds: float = 5.0,
        memory_mb: int = 256,
        max_processes: int = 16,
        partial: bool = False,
        parallel: int = 2,
        filesystem: str = "private",
        python_paths: Sequence[str] = (),
        readonly_paths: Sequence[str] = (),
    ) -> None:
        if not isinstance(partial, bool):
            raise ValueError(f"partial must be true or false, got {partial!r}")
        if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
            raise ValueError(f"parallel must be an integer >= 1, got {parallel!r}")
        self.limits = SandboxLimits(  # raises ValueError naming the bad limit
            cpu_seconds=cpu_seconds, wall_seconds=wall_seconds, memory_mb=memory_mb, max_processes=max_processes,
            filesystem=filesystem, python_paths=_paths(python_paths, "python_paths"),
            readonly_paths=_paths(readonly_paths, "readonly_paths"),
        )
        if filesystem == "private" and "private_root" not in isolation_layers():
            raise ValueError(
                "code_tests: the kernel refuses the sandbox's private file-system view here (no user or mount "
                "namespace), so model-written programs could read every file this process can read; set "
                "`args: {filesystem: host_readonly}` to run them anyway with the host's files visible (read-only)"
            )
        self.partial = partial
        self.parallel = parallel

    def __call__(self, prompts: list[str], completions: list[str], *, tests: Sequence[Any]) -> list[float | None]:
        cases = [_test_cases(value, index) for index, value in enumerate(tests)]
        if len(cases) != len(completions):
            raise ValueError(f"code_tests: {len(cases)} tests values for {len(completions)} completions")
        jobs = [(str(completion), case) for completion, case in zip(completions, cases)]
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(jobs)), thread_name_prefix="code_tests") as pool:
            return list(pool.map(lambda job: self._score(*job), jobs))

    def _score(self, completion: str, cases: str | list[str] | None) -> float | None:
        """The sample's score; anything that goes wrong while running the program makes it 0.0."""
        if cases is None:
            return None
        try:
            program = extract_code(completion)
            if isinstance(cases, str):
                return 1.0 if self._passes(program, cases) else 0.0
            if self._passes(program, "\n\n".join(cases)):
                return 1.0
            if not self.partial or len(cases) == 1:
                return 0.0
            return sum(self._passes(program, case) for case in cases) / len(cases)
        except Exception:  # a bug here must not take the batch down; the sample just fails
            logger.exception("code_tests: scoring a sample failed; it scores 0.0")
            return 0.0

    def _passes(self, program: str, tests: str) -> bool:
        result = run_tests(program, tests, self.limits)
        if result.status == "error":  # the sandbox itself failed (e.g. no free process slot): retry once
            time.sleep(0.1)
            result = run_tests(program, tests, self.limits)
            if result.status == "error":
                logger.warning("code_tests: the sandbox failed twice; the sample scores 0.0: %s", _last_line(result))
        return result.ok


def extract_code(completion: str) -> str:
    """The program in a completion: the last ```python/```py fenced block, else the last fenced block, else all."""
    blocks: list[tuple[str, str]] = []  # (language tag, code)
    tag: str | None = None  # None: outside a fence
    body: list[str] = []
    for line in completion.splitlines(keepends=True):
        stripped = line.strip()
        if tag is None:
            if stripped.startswith("```"):
                info = stripped[3:].strip().split()
                tag, body = (info[0].lower() if info else ""), []
        elif stripped == "```":
            blocks.append((tag, "".join(body)))
            tag = None
        else:
            body.append(line)
    if tag is not None:  # an unterminated last fence: a generation cut off by the length limit
        blocks.append((tag, "".join(body)))
    python = [code for language, code in blocks if language in _PYTHON_TAGS]
    if python:
        return python[-1]
    return blocks[-1][1] if blocks else completion


def _test_cases(value: Any, index: int) -> str | list[str] | None:
    """Validate one `tests` value: a str, a list/tuple of str, or None; empty counts as None (not applicable)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, (list, tuple)) and all(isinstance(case, str) for case in value):
        cases = [case for case in value if case.strip()]
        return cases or None
    raise ValueError(
        f"code_tests: sample {index}: the `tests` column must hold a str, a list of str, or None; "
        f"got {type(value).__name__}"
    )


def _paths(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):  # a single path written without brackets
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of absolute paths, got {value!r}")
    return tuple(value)


def _last_line(result: SandboxResult) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else result.status
