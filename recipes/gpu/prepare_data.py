"""Write the local data files some GPU recipes read (data/gpu/*.jsonl), converted from their hub datasets.

    python recipes/gpu/prepare_data.py all                      # or any of: gsm8k math_mix ultrafeedback pku_saferlhf
    python recipes/gpu/prepare_data.py gsm8k --out data/gpu     # (the default --out)

Run it once, with network access, in the directory you launch from (Slurm: a shared file system; the jobs run
there). The recipes that read hub datasets directly (data.source: hf: MATH-lighteval, trl-lib/prm800k) need nothing.
Why the others need a local file:

- openai/gsm8k has two configs (main, socratic) and no default, and a recipe has no key for a dataset's config
  name; the answer column is also a worked solution ending in "#### 72", while the `math_tools` agent environment
  wants the number alone. gsm8k_{train,test}.jsonl: prompt (the question + an instruction to box the answer),
  answer (the number), solution (the worked solution).
- math_mix_{train,test}.jsonl (CGPO's two tasks): GSM8K rows (task gsm8k) and MATH-lighteval rows (task math,
  answer = the solution, whose \\boxed{} answer math_answer reads), shuffled together.
- DPO, MODPO and reward-model training read preference pairs from a local jsonl/parquet file only, with chosen
  and rejected as strings. ultrafeedback_{train,test}.jsonl (HuggingFaceH4/ultrafeedback_binarized, splits
  train_prefs / test_prefs): prompt, chosen and rejected as the assistant replies' text, score_chosen,
  score_rejected. pku_saferlhf_{train,test}.jsonl (PKU-Alignment/PKU-SafeRLHF): chosen = the more helpful
  response (better_response_id), rejected = the other; `harmless` = 1 when the chosen one is also the safer one,
  else -1 (the reward model's harmless head, objective.preference_columns); is_chosen_safe, is_rejected_safe.

The converters are plain functions over the hub rows (tests/unit/test_gpu_recipes.py runs them on rows shaped
like the hub's); only main() downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Any, Callable, Iterable

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def gsm8k_row(row: dict[str, Any]) -> dict[str, Any]:
    """openai/gsm8k (main): question, answer ("...#### 72") -> prompt, answer ("72"), solution."""
    solution = str(row["answer"])
    number = solution.rsplit("####", 1)[-1].strip().replace(",", "")
    return {"prompt": f"{row['question'].strip()}\n{INSTRUCTION}", "answer": number, "solution": solution}


def math_row(row: dict[str, Any]) -> dict[str, Any]:
    """DigitalLearningGmbH/MATH-lighteval: problem, solution (with \\boxed{}), level, type -> prompt, answer."""
    return {"prompt": f"{row['problem'].strip()}\n{INSTRUCTION}", "answer": row["solution"],
            "level": row.get("level"), "type": row.get("type")}


def _assistant_text(messages: Any) -> str:
    """The last assistant message of a chat (UltraFeedback's chosen / rejected), or the text itself."""
    if isinstance(messages, str):
        return messages
    replies = [m["content"] for m in messages if m.get("role") == "assistant"]
    return replies[-1] if replies else ""


def ultrafeedback_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """HuggingFaceH4/ultrafeedback_binarized: prompt, chosen / rejected (chat message lists) -> strings; None for a
    pair the loader would refuse (an empty reply, or chosen == rejected)."""
    chosen, rejected = _assistant_text(row["chosen"]).strip(), _assistant_text(row["rejected"]).strip()
    if not chosen or not rejected or chosen == rejected:
        return None
    return {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
            "score_chosen": row.get("score_chosen"), "score_rejected": row.get("score_rejected")}


def pku_saferlhf_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """PKU-Alignment/PKU-SafeRLHF: prompt, response_0/1, better_response_id, safer_response_id, is_response_k_safe
    -> prompt, chosen (the more helpful), rejected, harmless (1: the chosen one is the safer, -1: the rejected one
    is); None when the two responses are the same text."""
    better = int(row["better_response_id"])
    chosen, rejected = row[f"response_{better}"].strip(), row[f"response_{1 - better}"].strip()
    if not chosen or not rejected or chosen == rejected:
        return None
    return {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
            "harmless": 1 if int(row["safer_response_id"]) == better else -1,
            "is_chosen_safe": bool(row[f"is_response_{better}_safe"]),
            "is_rejected_safe": bool(row[f"is_response_{1 - better}_safe"])}


def convert(rows: Iterable[dict[str, Any]], fn: Callable[[dict[str, Any]], dict[str, Any] | None]) -> list[dict]:
    return [out for out in map(fn, rows) if out is not None]


def math_mix(gsm8k: Iterable[dict[str, Any]], math: Iterable[dict[str, Any]], seed: int = 0) -> list[dict]:
    """GSM8K rows as task gsm8k and MATH rows as task math, shuffled (so eval.max_samples takes both)."""
    rows = [{**gsm8k_row(r), "task": "gsm8k"} for r in gsm8k] + [{**math_row(r), "task": "math"} for r in math]
    random.Random(seed).shuffle(rows)
    return rows


def write_jsonl(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} rows")


def main(argv: list[str] | None = None) -> int:
    names = ("gsm8k", "math_mix", "ultrafeedback", "pku_saferlhf")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("datasets", nargs="+", choices=(*names, "all"))
    p.add_argument("--out", default="data/gpu", help="output directory (default data/gpu)")
    args = p.parse_args(argv)
    from datasets import load_dataset  # downloads: only here

    wanted = names if "all" in args.datasets else args.datasets
    for name in wanted:
        for split in ("train", "test"):
            if name == "gsm8k":
                rows = convert(load_dataset("openai/gsm8k", "main", split=split), gsm8k_row)
            elif name == "math_mix":
                rows = math_mix(load_dataset("openai/gsm8k", "main", split=split),
                                load_dataset("DigitalLearningGmbH/MATH-lighteval", split=split))
            elif name == "ultrafeedback":  # its preference splits are train_prefs / test_prefs
                rows = convert(load_dataset("HuggingFaceH4/ultrafeedback_binarized", split=f"{split}_prefs"),
                               ultrafeedback_row)
            else:
                rows = convert(load_dataset("PKU-Alignment/PKU-SafeRLHF", split=split), pku_saferlhf_row)
            write_jsonl(rows, os.path.join(args.out, f"{name}_{split}.jsonl"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
