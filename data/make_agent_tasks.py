"""Writes data/agent_{calculator,game}_{train,eval}.jsonl: rows for the multi-turn agent demos (deterministic).

    python data/make_agent_tasks.py

Environments: rlhf/agents/envs.py (``calculator``, ``guess_number``). Transcripts are plain text: a tool call ends
at ``</call>``, an observation is ``<obs>{text}</obs>\\n``, the final turn ends with eos (appended by the SFT
collator, not written here).

calculator: {prompt: "48213+90872=", answer: "139085", completion}. Operands have 4-5 digits; the op is "+" or
  "-" (answers may be negative). No answer equals an operand, so a final turn that only repeats the call cannot
  score by accident. ``completion`` (the SFT warm-up target) is a tool-use transcript for TOOL_FRACTION of the
  rows, else the bare answer. No prompt is in both files.
guess_number: {prompt: "guess 1-16\\n", target, low: 1, high: 16, completion}. The demo guesses uniformly from the
  range still consistent with the feedback (a weak but valid policy), one guess per line, and ends with the
  correct guess AND its newline ("...\\n11\\n"), exactly as a rollout ends: the turn stops at "\\n" and the episode
  is done, so the model never writes eos in this game (the collator's eos after the last "\\n" is never sampled).
  Demos with more than MAX_GUESSES guesses are redrawn. The prompt ends with "\\n" so guesses never run into
  the "16". Eval rows have every column but ``completion``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 0
N_TRAIN, N_EVAL = 2000, 200
# Fraction of calculator demos that use a tool (the rest answer directly, right answer): ~25% makes the SFT'd
# policy call the tool sometimes, so RL has tool calls to reinforce and a tool-call rate to raise.
TOOL_FRACTION = 0.5
TOOLS = {"+": "add", "-": "subtract"}
LOW, HIGH = 1, 16
MAX_GUESSES = 5  # the recipe's max_turns; binary search needs at most 4 + 1 here


def operand(rng: random.Random) -> int:
    digits = rng.choice((4, 5))
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def calculator_rows(n: int, rng: random.Random, seen: set[str], demos: bool) -> list[dict]:
    rows: list[dict] = []
    while len(rows) < n:
        a, b, op = operand(rng), operand(rng), rng.choice("+-")
        answer = a + b if op == "+" else a - b
        prompt = f"{a}{op}{b}="
        if prompt in seen or answer in (a, b):  # a == 2b: subtract(a, b) would end on the answer
            continue
        seen.add(prompt)
        row = {"prompt": prompt, "answer": str(answer)}
        if demos:
            call = f"<call>{TOOLS[op]}({a}, {b})</call><obs>{answer}</obs>\n"
            row["completion"] = (call if rng.random() < TOOL_FRACTION else "") + str(answer)
        rows.append(row)
    return rows


def guess_demo(target: int, rng: random.Random) -> str:
    """A transcript of uniform guesses from the consistent range, redrawn until it takes <= MAX_GUESSES."""
    while True:
        low, high, parts = LOW, HIGH, []
        for _ in range(MAX_GUESSES):
            guess = rng.randint(low, high)
            parts.append(f"{guess}\n")
            if guess == target:
                return "".join(parts)
            if guess < target:
                low, word = guess + 1, "higher"
            else:
                high, word = guess - 1, "lower"
            parts.append(f"<obs>{word} {low}-{high}</obs>\n")


def game_rows(n: int, rng: random.Random, demos: bool) -> list[dict]:
    rows = []
    for _ in range(n):
        target = rng.randint(LOW, HIGH)
        row = {"prompt": f"guess {LOW}-{HIGH}\n", "target": target, "low": LOW, "high": HIGH}
        if demos:
            row["completion"] = guess_demo(target, rng)
        rows.append(row)
    return rows


def build(seed: int = SEED) -> dict[str, list[dict]]:
    """The four files' rows by file name."""
    rng = random.Random(seed)
    seen: set[str] = set()
    calc_eval = calculator_rows(N_EVAL, rng, seen, demos=False)  # eval first: it does not depend on N_TRAIN
    calc_train = calculator_rows(N_TRAIN, rng, seen, demos=True)
    game_rng = random.Random(seed + 1)
    game_eval = game_rows(N_EVAL, game_rng, demos=False)
    game_train = game_rows(N_TRAIN, game_rng, demos=True)
    return {
        "agent_calculator_train.jsonl": calc_train,
        "agent_calculator_eval.jsonl": calc_eval,
        "agent_game_train.jsonl": game_train,
        "agent_game_eval.jsonl": game_eval,
    }


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, part in build().items():
        with open(here / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)


if __name__ == "__main__":
    main()
