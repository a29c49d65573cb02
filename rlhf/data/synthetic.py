"""Synthetic tasks generated in memory: integer arithmetic ("12+7=" -> "19") for CPU demos and tests.

    train_rows, eval_rows = make_arithmetic(SyntheticArithmeticConfig(max_operand=20), seed=0)

Every (a, op, b) with a, b in [min_operand, max_operand] is enumerated once, shuffled with ``seed``; the first
``n_eval`` become the eval set and the next ``n_train`` (capped by what is left) the train set, so no prompt is in
both. The eval set depends only on the operand range, the ops and the seed, not on ``n_train``.

``terms`` > 2 gives chains ("3+4-5=", left to right), sampled at random without repeats; ``show_steps`` makes
the completion the worked steps, one per line ("3+4=7\n7-5=2"), for process (step-level) rewards.

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


def chain_row(terms: list[int], ops: list[str], show_steps: bool) -> dict[str, str]:
    """A chain problem "3+4-5=", evaluated left to right. With ``show_steps`` the completion is the work, one step
    per line ("3+4=7\n7-5=2"), and the answer is the last result; otherwise the completion is the answer."""
    value, steps = terms[0], []
    for op, term in zip(ops, terms[1:]):
        result = OPS[op](value, term)
        steps.append(f"{value}{op}{term}={result}")
        value = result
    prompt = str(terms[0]) + "".join(f"{op}{t}" for op, t in zip(ops, terms[1:])) + "="
    answer = str(value)
    return {"prompt": prompt, "completion": "\n".join(steps) if show_steps else answer, "answer": answer}


def _make_chains(cfg: SyntheticArithmeticConfig, ops: list[str], seed: int) -> tuple[list[dict], list[dict]]:
    """Distinct random chains (there are too many to enumerate): eval first, then train, never sharing a prompt."""
    rng = random.Random(seed)
    span = cfg.max_operand - cfg.min_operand + 1
    space = span**cfg.terms * len(ops) ** (cfg.terms - 1)
    wanted = cfg.n_eval + cfg.n_train
    if cfg.n_eval >= space:
        raise ValueError(f"data.synthetic.n_eval={cfg.n_eval} leaves no training rows: only {space} distinct chains")
    seen: set[tuple] = set()
    rows: list[dict] = []
    attempts = 0
    while len(rows) < wanted and attempts < 20 * wanted:
        attempts += 1
        terms = [rng.randint(cfg.min_operand, cfg.max_operand) for _ in range(cfg.terms)]
        chosen = [rng.choice(ops) for _ in range(cfg.terms - 1)]
        key = (*terms, *chosen)
        if key not in seen:
            seen.add(key)
            rows.append(chain_row(terms, chosen, cfg.show_steps))
    return rows[cfg.n_eval :], rows[: cfg.n_eval]


def make_arithmetic(cfg: SyntheticArithmeticConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """Return ``(train_rows, eval_rows)``, disjoint by prompt; ``n_train`` is capped by the pairs left over."""
    unknown = [op for op in cfg.ops if op not in OPS]
    if unknown:
        raise ValueError(f"data.synthetic.ops: unknown ops {unknown}; valid ops are {sorted(OPS)}")
    ops = list(dict.fromkeys(cfg.ops))  # drop duplicate ops: a repeated op would repeat prompts
    if cfg.terms > 2 or cfg.show_steps:
        train_rows, eval_rows = _make_chains(cfg, ops, seed)
        return _add_chatter(train_rows, cfg.chatter, seed), eval_rows
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
    return _add_chatter(train_rows, cfg.chatter, seed), eval_rows


def _add_chatter(train_rows: list[dict], chatter: float, seed: int) -> list[dict]:
    rng = random.Random(seed + 1)
    for row in train_rows:
        if rng.random() < chatter:
            row["completion"] += rng.choice(CHATTER).format(answer=row["answer"])
    return train_rows
