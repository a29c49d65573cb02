"""The run's train and eval rows, as the objective's capabilities say what its rows are.

    train_rows, eval_rows = load_data(recipe, seed)

prompts      prompts (+ answers and other columns) to generate from: the data source of the recipe
pairs        (prompt, chosen, rejected) preference pairs from a local file (held-out split unless eval_path)
step_labels  step-labelled solutions (prompt, steps, labels) for PRM training (rlhf/runtime/prm.py)
rm_pairs     preference pairs whose per-head labels (objective.preference_columns) and margins are checked
head_pairs   preference pairs with each head's label (objective.preference_columns) checked and kept in the row
             as ``_labels`` [K floats in {1, -1, 0}] (a multi-head policy, MAH-DPO)
"""

from __future__ import annotations

from typing import Any, Callable


def load_data(recipe: Any, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and eval rows of the recipe's data, in the form its objective trains on."""
    from rlhf.config.registry import capabilities

    return LOADERS[capabilities(recipe.objective).data](recipe, seed)


def _prompts(recipe: Any, seed: int) -> tuple[list[dict], list[dict]]:
    from rlhf.data import load_rows

    return load_rows(recipe.data, seed)


def _step_labels(recipe: Any, seed: int) -> tuple[list[dict], list[dict]]:
    from rlhf.data import load_rows
    from rlhf.runtime.prm import load_prm_rows

    return load_prm_rows(recipe, *load_rows(recipe.data, seed), seed)


def _pairs(recipe: Any, seed: int) -> tuple[list[dict], list[dict]]:
    from rlhf.data import holdout_split
    from rlhf.data.preference import load_preference_rows

    d = recipe.data
    columns = (d.prompt_column, d.chosen_column, d.rejected_column)
    train = load_preference_rows(d.train_path, *columns)
    if d.eval_path:
        evals = load_preference_rows(d.eval_path, *columns)
    else:
        train, evals = holdout_split(train, seed)
    for row in train:
        row.setdefault("completion", row["chosen"])  # the SFT warm-up target, if the recipe has a warm-up
    return train, evals


def _rm_pairs(recipe: Any, seed: int) -> tuple[list[dict], list[dict]]:
    from rlhf.data.preference import check_rm_rows

    c, d = recipe.objective, recipe.data
    train, evals = _pairs(recipe, seed)
    for where, rows in ((d.train_path, train), (d.eval_path or f"{d.train_path} (held-out split)", evals)):
        check_rm_rows(rows, where, c.heads, dict(c.preference_columns or {}), c.margin_column)
    return train, evals


def _head_pairs(recipe: Any, seed: int) -> tuple[list[dict], list[dict]]:
    from rlhf.data.preference import check_rm_rows, rm_label

    c, d = recipe.objective, recipe.data
    columns = {h: c.column_of(h) for h in c.heads}
    train, evals = _pairs(recipe, seed)
    for where, rows in ((d.train_path, train), (d.eval_path or f"{d.train_path} (held-out split)", evals)):
        check_rm_rows(rows, where, c.heads, columns, None)
        for row in rows:
            row["_labels"] = [rm_label(row, columns[h]) for h in c.heads]
    return train, evals


LOADERS: dict[str, Callable[[Any, int], tuple[list[dict], list[dict]]]] = {
    "prompts": _prompts, "pairs": _pairs, "step_labels": _step_labels, "rm_pairs": _rm_pairs,
    "head_pairs": _head_pairs,
}
