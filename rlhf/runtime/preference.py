"""The offline preference stage (DPO, IPO, cDPO): fixed (prompt, chosen, rejected) pairs, no rollouts.

    stage = PreferenceStage(recipe, trainers, objective, train_rows, eval_rows)
    metrics = stage.step(step)      # one optimizer step on `objective.batch_size` pairs
    scores = stage.evaluate()       # held-out pairs: preference accuracy, implicit-reward margin, loss

The reference model's log-probs of every pair are computed once, when the stage starts, and cached with the
rows (as TRL's precompute_ref_log_probs); the reference model is then dropped from the training ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlhf.config.schema import Recipe


@dataclass
class PairBatch:
    """Preference pairs plus their cached reference logps, sharded together over the training ranks."""

    batch: Any  # rlhf.data.preference.PreferenceBatch, (B, T) tensors
    ref_logps: Tensor | None  # (B, 2) [chosen, rejected] summed reference logps; None when reference-free

    @property
    def batch_size(self) -> int:
        return self.batch.batch_size

    def slice(self, start: int, stop: int) -> "PairBatch":
        ref = None if self.ref_logps is None else self.ref_logps[start:stop]
        return PairBatch(self.batch.slice(start, stop), ref)

    def to(self, device: Any) -> "PairBatch":
        return PairBatch(self.batch.to(device), None if self.ref_logps is None else self.ref_logps.to(device))


class PreferenceStage:
    phase = "dpo"

    def __init__(self, recipe: Recipe, trainers, objective, train_rows: list[dict], eval_rows: list[dict]) -> None:
        from rlhf.data import PromptSampler
        from rlhf.models.load import load_tokenizer

        self.recipe, self.trainers, self.objective = recipe, trainers, objective
        self.cfg = recipe.objective
        self.train_rows, self.eval_rows = train_rows, eval_rows[: recipe.eval.max_samples]
        self.tokenizer = load_tokenizer(trainers.model_dir, trust_remote_code=recipe.model.trust_remote_code)
        self.sampler = PromptSampler(train_rows, self.cfg.batch_size, recipe.run.seed)

    def summary_keys(self) -> dict[str, str]:
        return {"loss": "loss/dpo", "pair accuracy": "rewards/accuracy", "reward margin": "rewards/margin"}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def start(self, version: int) -> None:
        """Cache reference logps for every train and eval pair, then free the reference model."""
        if self.objective.needs_reference:
            for rows in (self.train_rows, self.eval_rows):
                self._cache_reference(rows)
            self.trainers.drop_reference()

    def _cache_reference(self, rows: list[dict]) -> None:
        step = self.cfg.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            pad = (-len(chunk)) % self.trainers.world_size  # shards must split evenly: repeat the last row
            batch = self._collate(chunk + chunk[-1:] * pad)
            logps = self.trainers.preference_logps(batch, reference=True)[: len(chunk)]  # (b, 2)
            for row, lp in zip(chunk, logps.tolist()):
                row["_ref_logps"] = lp

    def _collate(self, rows: list[dict]):
        from rlhf.data.preference import collate_preference

        return collate_preference(self.tokenizer, rows, self.cfg.max_length)

    def _pairs(self, rows: list[dict]) -> PairBatch:
        ref = torch.tensor([r["_ref_logps"] for r in rows]) if self.objective.needs_reference else None
        return PairBatch(self._collate(rows), ref)

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = self.trainers.train_preference(self._pairs(self.sampler.next_batch()))
        metrics["time/step"] = time.perf_counter() - t0
        metrics["throughput/pairs_per_s"] = self.cfg.batch_size / max(metrics["time/step"], 1e-9)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out pairs: how often the policy's implicit reward ranks chosen above rejected, and the loss."""
        if not self.eval_rows:
            return {}
        rows = self.eval_rows
        pad = (-len(rows)) % self.trainers.world_size
        logps = self.trainers.preference_logps(self._collate(rows + rows[-1:] * pad), reference=False)[: len(rows)]
        pairs = self._pairs(rows)
        ref = pairs.ref_logps
        lengths = {}
        if self.objective.needs_lengths:
            lengths = dict(chosen_lengths=pairs.batch.chosen_loss_mask[:, 1:].sum(1),
                           rejected_lengths=pairs.batch.rejected_loss_mask[:, 1:].sum(1))
        out = self.objective.loss(logps[:, 0], logps[:, 1], None if ref is None else ref[:, 0],
                                  None if ref is None else ref[:, 1], **lengths)
        return {
            "loss": float(out.loss),
            "pref_accuracy": out.metrics["rewards/accuracy"],
            "reward_margin": out.metrics["rewards/margin"],
            "policy_prefers_chosen": float((logps[:, 0] > logps[:, 1]).float().mean()),
        }
