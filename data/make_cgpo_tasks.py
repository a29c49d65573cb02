"""Writes data/cgpo_tasks_{train,eval}.jsonl: two-task arithmetic prompts for the CGPO demo (deterministic).

    python data/make_cgpo_tasks.py

Task ``add`` ("a+b=") and task ``sub`` ("a-b="), operands 0-15. Columns: prompt, completion (the SFT warm-up target;
30% of train rows carry trailing chatter such as "7 ok"), answer (the clean reference answer, the CGPO baseline
response), task. 40 eval prompts per task are held out; no prompt is in both files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHATTER = (" ok", " done", " is it", " = {answer}")


def rows(seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, held = [], []
    for task, op in (("add", "+"), ("sub", "-")):
        problems = [(a, b) for a in range(16) for b in range(16)]
        rng.shuffle(problems)
        for k, (a, b) in enumerate(problems):
            answer = str(a + b if op == "+" else a - b)
            row = {"prompt": f"{a}{op}{b}=", "completion": answer, "answer": answer, "task": task}
            if k < 40:
                held.append(row)
                continue
            if rng.random() < 0.3:
                row["completion"] += rng.choice(CHATTER).format(answer=answer)
            train.append(row)
    return train, held


def main() -> None:
    here = Path(__file__).resolve().parent
    train, held = rows()
    for name, part in (("cgpo_tasks_train.jsonl", train), ("cgpo_tasks_eval.jsonl", held)):
        with open(here / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)


if __name__ == "__main__":
    main()
