"""The offline preference stage (DPO, IPO, cDPO, MODPO, MAH-DPO): fixed (prompt, chosen, rejected) pairs, no
rollouts.

    stage = PreferenceStage(recipe, trainers, objective, caps, train_rows, eval_rows, actors)
    exp = stage.produce(step)       # the next `objective.batch_size` pairs, collated, with their cached reference
    metrics = stage.consume(exp)    # one optimizer step of the objective's pair loss
    scores = stage.evaluate()       # held-out pairs: preference accuracy, implicit-reward margin, loss

The reference model's log-probs of every pair are computed once, when the stage starts, and cached with the
rows (as TRL's precompute_ref_log_probs); the reference model is then dropped from the training ranks. For
MODPO the recipe's reward components score chosen and rejected once, and each pair's margin is cached the same way.

A multi-head policy (capabilities ``policy_heads``: MAH-DPO) trains on each pair's per-head labels (the rows'
``_labels``, sent as the pairs' ``pair_info``); its evaluation adds every head's held-out pair accuracy on every
objective's labels (``head/H/pair_acc/OBJ``) and, with reward components, greedy generation at each of
``objective.eval_mixes`` scored by them (``mix/I/COMPONENT``, rlhf/runtime/multihead.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlhf.config.schema import Recipe
from rlhf.runtime.pipeline import Experience


@dataclass
class PairBatch:
    """Preference pairs plus their cached reference logps, sharded together over the training ranks."""

    batch: Any  # rlhf.data.preference.PreferenceBatch, (B, T) tensors
    ref_logps: Tensor | None  # (B, 2) [chosen, rejected] summed reference logps; None when reference-free
    margin: Tensor | None = None  # (B,) MODPO margin from the other objectives' rewards
    pair_info: Tensor | None = None  # (B, K) a multi-head policy's per-head labels in {1, -1, 0}

    @property
    def batch_size(self) -> int:
        return self.batch.batch_size

    def slice(self, start: int, stop: int) -> "PairBatch":
        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[start:stop]

        return PairBatch(self.batch.slice(start, stop), cut(self.ref_logps), cut(self.margin), cut(self.pair_info))

    def to(self, device: Any) -> "PairBatch":
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return PairBatch(self.batch.to(device), move(self.ref_logps), move(self.margin), move(self.pair_info))


class PreferenceStage:
    phase = "dpo"

    def __init__(self, recipe: Recipe, trainers: Any, objective: Any, caps: Any, train_rows: list[dict],
                 eval_rows: list[dict], actors: list[Any]) -> None:
        from rlhf.data import PromptSampler
        from rlhf.models.load import load_tokenizer

        self.recipe, self.trainers, self.objective, self.caps = recipe, trainers, objective, caps
        self.cfg = recipe.objective
        self.train_rows, self.eval_rows = train_rows, eval_rows[: recipe.eval.max_samples]
        self.tokenizer = load_tokenizer(trainers.model_dir, trust_remote_code=recipe.model.trust_remote_code)
        self.sampler = PromptSampler(train_rows, self.cfg.batch_size, recipe.run.seed)
        self.actors = actors
        self.margin_metrics: dict[str, float] = {}
        self.mix_rewards: Any = None  # a multi-head policy's evaluation at several mixes: the reward components

    def summary_keys(self) -> dict[str, str]:
        loss = f"loss/{self.objective.name}" if self.caps.policy_heads else "loss/dpo"
        return {"loss": loss, "pair accuracy": "rewards/accuracy", "reward margin": "rewards/margin"}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def save_checkpoint(self, staged_dir: str) -> None:
        """Nothing besides the policy."""

    def start(self, version: int) -> None:
        """Cache reference logps (and MODPO margins) for every train and eval pair; free the reference model."""
        if self.caps.needs_reference:
            for rows in (self.train_rows, self.eval_rows):
                self._cache_reference(rows)
            self.trainers.drop_reference()
        if self.caps.reward_margins:
            self._cache_margins()
        if self.caps.policy_heads and self.recipe.rewards:
            from rlhf.scoring.group import RewardGroup

            self.mix_rewards = RewardGroup(self.recipe.rewards)
            self.actors.append(self.mix_rewards)

    def _cache_margins(self) -> None:
        """Score chosen and rejected with the recipe's reward components (Ray reward workers), once."""
        from rlhf.objectives.modpo import modpo_margin
        from rlhf.scoring.group import RewardGroup

        rewards = RewardGroup(self.recipe.rewards)
        self.actors.append(rewards)
        weights = {c.name: c.weight for c in self.recipe.rewards}
        for rows in (self.train_rows, self.eval_rows):
            prompts = [r["prompt"] for r in rows]
            scored = [rewards.score(prompts, [r[side] for r in rows], self._columns(rows, side))[0]
                      for side in ("chosen", "rejected")]
            margin, self.margin_metrics = modpo_margin(*scored, weights, self.cfg.preference_weight)
            for row, m in zip(rows, margin.tolist()):
                row["_margin"] = m

    def _columns(self, rows: list[dict], side: str) -> dict[str, list[Any]]:
        """Dataset extras plus what the runtime would know of a generated completion."""
        skip = {"prompt", "chosen", "rejected", "completion"}
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k not in skip and not k.startswith("_")}
        columns["finished"] = [True] * len(rows)
        columns["num_tokens"] = [len(self.tokenizer(r[side], add_special_tokens=False)["input_ids"]) + 1 for r in rows]
        return columns

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
        ref = torch.tensor([r["_ref_logps"] for r in rows]) if self.caps.needs_reference else None
        margin = torch.tensor([r["_margin"] for r in rows]) if "_margin" in rows[0] else None
        labels = torch.tensor([r["_labels"] for r in rows]) if "_labels" in rows[0] else None  # (B, K)
        return PairBatch(self._collate(rows), ref, margin, labels)

    def produce(self, step: int) -> Experience:
        return Experience(step, batch=self._pairs(self.sampler.next_batch()))

    def consume(self, exp: Experience) -> dict[str, float]:
        metrics = self.trainers.train_preference(exp.batch)
        metrics["time/step"] = time.perf_counter() - exp.started
        metrics["throughput/pairs_per_s"] = self.cfg.batch_size / max(metrics["time/step"], 1e-9)
        return {**metrics, **self.margin_metrics}

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
        out = self.objective.pair_loss(logps[:, 0], logps[:, 1], None if ref is None else ref[:, 0],
                                       None if ref is None else ref[:, 1], margin=pairs.margin,
                                       chosen_lengths=pairs.batch.chosen_loss_mask[:, 1:].sum(1),
                                       rejected_lengths=pairs.batch.rejected_loss_mask[:, 1:].sum(1),
                                       pair_info=pairs.pair_info)  # logps (B, 2) or per head (B, 2, K)
        scores = {
            "loss": float(out.loss),
            "pref_accuracy": out.metrics["rewards/accuracy"],
            "reward_margin": out.metrics["rewards/margin"],
            "policy_prefers_chosen": float((logps[:, 0] > logps[:, 1]).float().mean()),
        }
        if self.caps.policy_heads:
            scores.update({k: v for k, v in out.metrics.items() if k.startswith("head/")})
        if self.mix_rewards is not None:
            import os

            from rlhf.runtime.multihead import evaluate_mixes

            work_dir = os.path.join(self.recipe.run.output_dir, "mix_eval_model")
            scores.update(evaluate_mixes(self.recipe, self.trainers, rows, self.mix_rewards, work_dir))
        return scores
