"""Built-in process reward ``arithmetic_steps``: a rule-based step checker for chained arithmetic.

For a prompt like ``3+4-5=`` (evaluated left to right) the expected work is one step per line, ``3+4=7`` then
``7-5=2``. Step s scores 1.0 when it reads ``x op y = z`` with z = x op y (the arithmetic is right), x the previous
step's result (or the first operand for the first step) and ``op y`` the prompt's next operation (it follows the
problem); else 0.0. Steps past the prompt's last operation score 0.0, and so does the last step of a solution that
stops before the last operation: otherwise writing fewer steps would dodge step penalties (with group-normalised
step rewards a short wrong solution collects fewer negative terms than a long wrong one). Recipe use::

    process: {segment: newline}
    rewards:
      - {name: steps, plugin: arithmetic_steps, kind: process, outcome: min}

The per-step scores go to the step-level advantages (GRPO, PPO); ``outcome`` summarises them for the outcome value.
"""

from __future__ import annotations

import re
from typing import Any

from rewards.api import process_reward

_NUMBER = r"-?\d+"
_STEP = re.compile(rf"^\s*({_NUMBER})\s*([+\-*])\s*({_NUMBER})\s*=\s*({_NUMBER})\s*$")
_PROBLEM = re.compile(rf"({_NUMBER})((?:\s*[+\-*]\s*{_NUMBER})+)\s*=\s*$")
_OP_TERM = re.compile(rf"\s*([+\-*])\s*({_NUMBER})")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def parse_problem(prompt: str) -> tuple[int, list[tuple[str, int]]] | None:
    """``"3+4-5="`` -> (3, [("+", 4), ("-", 5)]); None when the prompt does not end in such a chain."""
    m = _PROBLEM.search(prompt)
    if m is None:
        return None
    return int(m.group(1)), [(op, int(t)) for op, t in _OP_TERM.findall(m.group(2))]


def check_steps(prompt: str, steps: list[str]) -> list[float] | None:
    """One 0/1 score per step (see the module docstring); None when the prompt is not a chain problem."""
    problem = parse_problem(prompt)
    if problem is None:
        return None
    value, ops = problem
    scores = []
    for s, text in enumerate(steps):
        m = _STEP.match(text)
        ok = False
        if m is not None and s < len(ops):
            x, op, y, z = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            ok = x == value and (op, y) == ops[s] and z == _APPLY[op](x, y)
            value = _APPLY[ops[s][0]](value, ops[s][1])  # the true running result, whatever the step wrote
        scores.append(1.0 if ok else 0.0)
    if scores and len(steps) < len(ops):
        scores[-1] = 0.0  # a solution that stops before the last operation ends on a wrong step
    return scores


@process_reward("arithmetic_steps")
def arithmetic_steps(prompts: list[str], completions: list[str], *, steps: list[list[str]],
                     **_: Any) -> list[list[float] | None]:
    """Per step 1.0 if it is the next correct step of the prompt's chained arithmetic ('3+4=7' then '7-5=2' for
    '3+4-5='), else 0.0. Prompts that are not such chains are not applicable (None)."""
    return [check_steps(p, s) if s else (None if parse_problem(p) is None else 0.0) for p, s in zip(prompts, steps)]
