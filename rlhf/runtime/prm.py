"""The rows of PRM training: step-labelled solutions, made from synthetic worked chains or checked from files.

    train_rows, eval_rows = load_prm_rows(recipe, train, evals, seed)

The stage that trains on them is the supervised stage (``rlhf/runtime/supervised.py``, task ``prm_task``):
step-tag loss -> update; evaluation is held-out step accuracy.

Rows are ``{"prompt", "steps", "labels"}`` (``rlhf.data.prm``); with the synthetic arithmetic source and
``show_steps``, ``load_prm_rows`` makes them from worked chains, one wrong step in ``error_rate`` of the rows.
The trained model is the policy's checkpoint (``checkpoints/step_N/model``, a HF directory): point the ``prm``
reward plugin's ``model`` arg at it.
"""

from __future__ import annotations

from rlhf.config.schema import Recipe


def load_prm_rows(recipe: Recipe, train: list[dict], evals: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Step-labelled train/eval rows; synthetic worked chains are labelled here, files are checked row by row."""
    from rlhf.data import DataLoadError
    from rlhf.data.prm import check_row, make_step_labelled

    cfg = recipe.objective
    if recipe.data.source == "synthetic_arithmetic":
        if not recipe.data.synthetic.show_steps:
            raise DataLoadError("objective prm with data.source synthetic_arithmetic needs "
                                "data.synthetic.show_steps: true (the steps are what the PRM judges)")
        return (make_step_labelled(train, seed, cfg.error_rate), make_step_labelled(evals, seed + 1, cfg.error_rate))
    for name, rows in (("data.train_path", train), ("data.eval_path (or the held-out split)", evals)):
        for i, row in enumerate(rows):
            try:
                check_row(row, i, cfg.steps_column, cfg.labels_column)
            except ValueError as exc:
                raise DataLoadError(f"{name}: {exc}") from None
            if row.get(cfg.labels_column) is None:
                raise DataLoadError(f"{name}: PRM data row {i} has no {cfg.labels_column!r} column")
    return train, evals
