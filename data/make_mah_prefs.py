"""Writes data/arithmetic_mah_prefs_{train,eval}.jsonl: the arithmetic preference pairs of
data/arithmetic_prefs_*.jsonl with a `completion` column, the SFT warm-up target of the MAH-DPO demo (deterministic).

    python data/make_mah_prefs.py

Every row keeps prompt, chosen, rejected, answer, kind and the per-objective labels `correct` / `concise`, and
gains `chatty`: an objective that likes a remark after the answer, the opposite of `concise` on the same pairs
(-1 on chatter rows: "42 ok" preferred; 0 elsewhere). Its `completion` is the chosen answer, except for every other `chatter` row, where it is the rejected (chattering) one:
the warm-up model then chatters on part of its answers, so the `concise` objective has something to fix and a mix of
the heads has a trade-off to move along.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent


def main() -> None:
    for split in ("train", "eval"):
        rows = [json.loads(line) for line in (DATA / f"arithmetic_prefs_{split}.jsonl").read_text().splitlines()]
        chatter = 0
        with open(DATA / f"arithmetic_mah_prefs_{split}.jsonl", "w") as f:
            for row in rows:
                completion = row["chosen"]
                if row["kind"] == "chatter":
                    chatter += 1
                    completion = row["rejected"] if chatter % 2 else row["chosen"]
                chatty = -row["concise"] if row["kind"] == "chatter" else 0
                f.write(json.dumps({**row, "chatty": chatty, "completion": completion}) + "\n")


if __name__ == "__main__":
    main()
