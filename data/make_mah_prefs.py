"""Writes data/arithmetic_mah_prefs_{train,eval}.jsonl, the pairs of the MAH-DPO demo (recipes/mah_dpo_tiny_cpu.yaml),
from the arithmetic preference pairs of data/arithmetic_prefs_*.jsonl (deterministic: seeded per split).

    python data/make_mah_prefs.py

Every row keeps prompt, chosen, answer and the per-objective labels `correct` / `concise`, and gains:

- `chatty`: an objective that likes a remark after the answer, the opposite of `concise` on the same pairs
  (-1 on chatter rows: "42 ok" preferred; 0 elsewhere);
- `completion`: the SFT warm-up target: the chosen answer, except for every other `chatter` row, where it is the
  rejected (chattering) one: the warm-up model then chatters on part of its answers, so the mix of the heads has
  a trade-off to move along.

The `correct` pairs (kind `near_miss` in the source: "43" for 42) get a wrong answer far from the right one as
`rejected` (kind `far_miss`): an integer at least FAR_GAP away from the answer, drawn uniformly from the answers'
range [ANSWER_LO, ANSWER_HI]. Why: the 0.9M-parameter demo model cannot separate near misses. Measured
2026-12-07, seed 0, with a one-process replica of the recipe's training (same model, SFT, loss and steps; no
Ray): the SFT model ranks the held-out near-miss pairs right 0.43 of the time, and plain DPO on the `correct`
column alone leaves its held-out pair accuracy at chance (0.37 after 150 steps, 0.40 after 450), so no head could
specialise on it; on far misses the SFT model ranks them right 1.00 of the time and the same plain DPO run
reaches held-out pair accuracy 0.90 (misses of exactly +-10 or +-20: 0.93 and 0.90). The size and sign of the
answer are within the model's reach, its last digit is not.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent
FAR_GAP = 10  # |rejected - answer| >= FAR_GAP
ANSWER_LO, ANSWER_HI = -29, 58  # the range of a +- b for a, b in 0..29 (the source prompts)
SEEDS = {"train": 1, "eval": 2}


def far_miss(answer: int, rng: random.Random) -> int:
    """A wrong answer at least FAR_GAP from ``answer``, uniform over the rest of [ANSWER_LO, ANSWER_HI]."""
    choices = [b for b in range(ANSWER_LO, ANSWER_HI + 1) if abs(b - answer) >= FAR_GAP]
    return rng.choice(choices)


def convert(row: dict, chatter_index: int, rng: random.Random) -> dict:
    """One source row -> one MAH-DPO row (module docstring); ``chatter_index``: 1-based count of chatter rows."""
    out = dict(row)
    out["completion"] = row["chosen"]
    if row["kind"] == "chatter":
        out["completion"] = row["rejected"] if chatter_index % 2 else row["chosen"]
    if row["kind"] == "near_miss":
        out["rejected"] = str(far_miss(int(row["answer"]), rng))
        out["kind"] = "far_miss"
    out["chatty"] = -row["concise"] if row["kind"] == "chatter" else 0
    return out


def main() -> None:
    for split, seed in SEEDS.items():
        rows = [json.loads(line) for line in (DATA / f"arithmetic_prefs_{split}.jsonl").read_text().splitlines()]
        rng = random.Random(seed)
        chatter = 0
        with open(DATA / f"arithmetic_mah_prefs_{split}.jsonl", "w") as f:
            for row in rows:
                chatter += row["kind"] == "chatter"
                f.write(json.dumps(convert(row, chatter, rng)) + "\n")


if __name__ == "__main__":
    main()
