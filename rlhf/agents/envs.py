"""Built-in text environments for the multi-turn agent demos (tiny models, plain transcripts, CPU).

* ``calculator`` (:class:`CalculatorEnv`): "48213+90872=" with tools ``add`` / ``subtract``; the episode ends at
  the first turn without a tool call. ``score`` gives ``correct`` (the last integer of the final turn, outside
  any ``<call>...</call>``, equals the answer) and ``used_tool``. A turn that is only a call has no answer, so
  stopping right after the call never scores: the model must copy the tool's result into its next turn::

      48213+90872=<call>add(48213, 90872)</call><obs>139085</obs>\\n139085</s>

* ``math_tools`` (:class:`MathToolsEnv`): for real models on math rows with an ``answer``: tools ``calculate``
  (rlhf.agents.tools, exact arithmetic) and ``python`` (a program run in the platform's sandbox); ``correct`` is
  the last number of the final turn (tool calls excluded) against the answer.

* ``guess_number`` (:class:`GuessNumberEnv`): gym-like; each turn is one guess (the recipe stops turns at "\\n").
  The observation after a wrong guess is ``higher LO-HI`` / ``lower LO-HI``, the candidates still consistent with
  all feedback so far, so equal knowledge gives equal text (GiGPO anchor states); a turn that is not an integer
  gets ``error LO-HI``. Per-step reward ``success``; ``score`` gives ``solved`` and ``turns``::

      guess 1-16\\n8\\n<obs>higher 9-16</obs>\\n12\\n<obs>lower 9-11</obs>\\n11\\n

Every character these environments write (digits, "-", the words above) appears in the rows written by
data/make_agent_tasks.py, so a tiny tokenizer trained on those rows never produces ``<unk>`` for them. (The word
for a non-integer guess is "error", not "invalid": "n", "v", "a", "d" appear nowhere in the game's data.)
"""

from __future__ import annotations

import re

from rlhf.agents.env import Step, environment
from rlhf.agents.tools import calculate, run_python

_INT = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_TOOL_SPANS = re.compile(r"<tool_call>.*?(?:</tool_call>|$)|<call>.*?(?:</call>|$)", re.DOTALL)
_CALL_SPAN = re.compile(r"<call>.*?(?:</call>|$)", re.DOTALL)  # a call, closed or cut off by the token budget


def last_integer(text: str) -> int | None:
    """The last integer written in ``text`` outside tool calls (None when there is none)."""
    found = _INT.findall(_CALL_SPAN.sub(" ", text))
    return int(found[-1]) if found else None


@environment("calculator")
class CalculatorEnv:
    """Add or subtract two 4-5 digit integers with the help of exact ``add`` / ``subtract`` tools."""

    def reset(self, *, prompt: str, answer: str | int, **row) -> None:
        self.answer = int(answer)
        self.calls = 0
        return None  # the row's prompt ("48213+90872=") is the first message

    def add(self, a: int, b: int) -> int:
        """Add two integers and return the sum a + b.

        Args:
            a: the first integer.
            b: the second integer.
        """
        self.calls += 1
        return a + b

    def subtract(self, a: int, b: int) -> int:
        """Subtract b from a and return the difference a - b.

        Args:
            a: the integer to subtract from.
            b: the integer to subtract.
        """
        self.calls += 1
        return a - b

    def score(self, response: str) -> dict[str, float]:
        """``correct``: the last integer of the final turn (calls excluded) is the answer; ``used_tool``: any tool
        ran in this episode."""
        return {"correct": float(last_integer(response) == self.answer), "used_tool": float(self.calls > 0)}


@environment("guess_number")
class GuessNumberEnv:
    """Find a hidden integer in [low, high] from "higher" / "lower" feedback, one guess per turn."""

    INVALID = "error"  # the word for a turn that is not an integer (its letters are in the game's corpus)

    def reset(self, *, prompt: str, target: int, low: int = 1, high: int = 16, **row) -> None:
        self.target, self.low, self.high = int(target), int(low), int(high)
        if not self.low <= self.target <= self.high:
            raise ValueError(f"guess_number: target {self.target} is outside [{self.low}, {self.high}]")
        self.turns = 0
        self.solved = False
        return None  # the row's prompt ("guess 1-16\n") is the first message

    def step(self, action: str) -> Step:
        """One guess: the first line of the turn, an integer (surrounding spaces allowed)."""
        self.turns += 1
        lines = action.strip().splitlines()
        text = lines[0].strip() if lines else ""
        if not _INT.fullmatch(text):
            return Step(f"{self.INVALID} {self.low}-{self.high}", {"success": 0.0}, False)
        guess = int(text)
        if guess == self.target:
            self.solved = True
            return Step(None, {"success": 1.0}, True)
        if guess < self.target:
            self.low = max(self.low, guess + 1)
            word = "higher"
        else:
            self.high = min(self.high, guess - 1)
            word = "lower"
        return Step(f"{word} {self.low}-{self.high}", {"success": 0.0}, False)

    def score(self, response: str) -> dict[str, float]:
        """``solved``: the target was guessed; ``turns``: how many turns (guesses, invalid ones included)."""
        return {"solved": float(self.solved), "turns": float(self.turns)}


@environment("math_tools")
class MathToolsEnv:
    """Solve a math problem with a calculator and a sandboxed Python interpreter (real models: GSM8K-style rows
    with an ``answer`` column); ``correct`` when the final turn's last number equals the answer."""

    def reset(self, *, answer: str | int | float, **row) -> None:
        self.answer = float(str(answer).replace(",", "").strip())
        self.calls = 0
        return None  # the row's prompt is the first message

    def calculate(self, expression: str) -> str:
        """Evaluate an arithmetic expression exactly (+ - * / // % ** and parentheses).

        Args:
            expression: the expression, e.g. "(48213 + 90872) * 3".
        """
        self.calls += 1
        return calculate(expression)

    def python(self, code: str) -> str:
        """Run a Python program in a sandbox (no network, 5 s) and show what it prints.

        Args:
            code: the program; print the values you need.
        """
        self.calls += 1
        return run_python(code, timeout_s=5.0)

    def score(self, response: str) -> dict[str, float]:
        """``correct``: the last number of the final turn (calls excluded) equals the answer; ``used_tool``."""
        numbers = _NUMBER.findall(_TOOL_SPANS.sub(" ", response).replace(",", ""))
        correct = bool(numbers) and abs(float(numbers[-1]) - self.answer) <= 1e-6 * max(1.0, abs(self.answer))
        return {"correct": float(correct), "used_tool": float(self.calls > 0)}
