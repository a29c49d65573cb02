"""The PRM training stage: step-labelled rows -> step-tag loss -> update; evaluation is held-out step accuracy.

    stage = PRMStage(recipe, trainers, train_rows, eval_rows)
    exp = stage.produce(step)       # the next `objective.batch_size` rows, collated
    metrics = stage.consume(exp)    # one optimizer step of the objective's step-tag loss
    scores = stage.evaluate()       # held-out: step accuracy, loss, share of good steps

Rows are ``{"prompt", "steps", "labels"}`` (``rlhf.data.prm``); with the synthetic arithmetic source and
``show_steps``, ``load_prm_rows`` makes them from worked chains, one wrong step in ``error_rate`` of the rows.
The trained model is the policy's checkpoint (``checkpoints/step_N/model``, a HF directory): point the ``prm``
reward plugin's ``model`` arg at it.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlhf.config.schema import Recipe
from rlhf.runtime.pipeline import Experience


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


class PRMStage:
    phase = "prm"

    def __init__(self, recipe: Recipe, trainers: Any, train_rows: list[dict], eval_rows: list[dict]) -> None:
        from rlhf.data import PromptSampler
        from rlhf.models.load import load_tokenizer

        self.recipe, self.trainers, self.cfg = recipe, trainers, recipe.objective
        self.eval_rows = eval_rows[: recipe.eval.max_samples]
        self.tokenizer = load_tokenizer(trainers.model_dir, trust_remote_code=recipe.model.trust_remote_code)
        self.sampler = PromptSampler(train_rows, self.cfg.batch_size, recipe.run.seed)

    def summary_keys(self) -> dict[str, str]:
        return {"loss": "loss/prm", "step accuracy (train batch)": "prm/step_acc"}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def save_checkpoint(self, staged_dir: str) -> None:
        """Nothing besides the model."""

    def start(self, version: int) -> None:
        """Nothing to prepare: no reference, no engines."""

    def _collate(self, rows: list[dict]):
        from rlhf.data.prm import collate_prm

        c = self.cfg
        return collate_prm(self.tokenizer, rows, c.step_tag, c.good, c.bad, c.max_length, c.steps_column,
                           c.labels_column)

    def produce(self, step: int) -> Experience:
        return Experience(step, batch=self._collate(self.sampler.next_batch()))

    def consume(self, exp: Experience) -> dict[str, float]:
        metrics = self.trainers.train_supervised(exp.batch)
        metrics["time/step"] = time.perf_counter() - exp.started
        metrics["throughput/samples_per_s"] = self.cfg.batch_size / max(metrics["time/step"], 1e-9)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out step accuracy and loss (mean over batches of ``batch_size`` rows)."""
        rows = self.eval_rows
        if not rows:
            return {}
        totals: dict[str, float] = {}
        n_batches = 0
        for start in range(0, len(rows), self.cfg.batch_size):
            chunk = rows[start : start + self.cfg.batch_size]
            pad = (-len(chunk)) % self.trainers.world_size  # shards must split evenly: repeat the last row
            metrics = self.trainers.eval_supervised(self._collate(chunk + chunk[-1:] * pad))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v
            n_batches += 1
        mean = {k: v / n_batches for k, v in totals.items()}
        return {"step_acc": mean["prm/step_acc"], "loss": mean["loss/prm"], "good_rate": mean["prm/good_rate"]}
