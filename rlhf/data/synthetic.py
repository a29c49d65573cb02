"""Synthetic tasks generated in memory: integer arithmetic ("12+7=" -> "19") for CPU demos and tests.

    train_rows, eval_rows = make_arithmetic(SyntheticArithmeticConfig(max_operand=20), seed=0)

Every (a, op, b) with a, b in [min_operand, max_operand] is enumerated once, shuffled with ``seed``; the first
``n_eval`` become the eval set and the next ``n_train`` (capped by what is left) the train set, so no prompt is in
both. The eval set depends only on the operand range, the ops and the seed, not on ``n_train``.

``chatter`` makes the SFT targets messy the way scraped or weakly-labelled data is: that fraction of the train
rows' completions carry a trailing remark after the answer ("42 ok", "42 = 42"). The ``answer`` column stays
clean, and eval rows are never touched. Format and length rewards then have something to fix.
"""

from __future__ import annotations

import random

from rlhf.config.schema import SyntheticArithmeticConfig

CHATTER = (" ok", " done", " !", " = {answer}", " is it", " {answer} {answer}")

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_row(a: int, op: str, b: int) -> dict[str, str]:
    """One row: ``{"prompt": "12+7=", "completion": "19", "answer": "19"}`` (answers may be negative)."""
    answer = str(OPS[op](a, b))
    return {"prompt": f"{a}{op}{b}=", "completion": answer, "answer": answer}


def make_arithmetic(cfg: SyntheticArithmeticConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """Return ``(train_rows, eval_rows)``, disjoint by prompt; ``n_train`` is capped by the pairs left over."""
    unknown = [op for op in cfg.ops if op not in OPS]
    if unknown:
        raise ValueError(f"data.synthetic.ops: unknown ops {unknown}; valid ops are {sorted(OPS)}")
    ops = list(dict.fromkeys(cfg.ops))  # drop duplicate ops: a repeated op would repeat prompts
    operands = range(cfg.min_operand, cfg.max_operand + 1)
    triples = [(a, op, b) for op in ops for a in operands for b in operands]
    if cfg.n_eval >= len(triples):
        raise ValueError(
            f"data.synthetic.n_eval={cfg.n_eval} leaves no training rows: operands "
            f"[{cfg.min_operand}, {cfg.max_operand}] with ops {ops} give only {len(triples)} distinct problems"
        )
    random.Random(seed).shuffle(triples)
    eval_rows = [arithmetic_row(*t) for t in triples[: cfg.n_eval]]
    train_rows = [arithmetic_row(*t) for t in triples[cfg.n_eval : cfg.n_eval + cfg.n_train]]
    rng = random.Random(seed + 1)
    for row in train_rows:
        if rng.random() < cfg.chatter:
            row["completion"] += rng.choice(CHATTER).format(answer=row["answer"])
    return train_rows, eval_rows
