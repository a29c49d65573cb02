"""Online DPO's update: preference pairs built from fresh rollouts, ranked by the reward vector.

Per step (inside the on-policy stage, rlhf/runtime/rl.py): the samples are scalarised with the weighting; per
prompt, the best sample is `chosen` and the worst `rejected` (prompts whose samples all tie are skipped); the
DPO/IPO/cDPO loss against the frozen reference trains on those pairs (whole pairs on every rank).
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf.runtime.pipeline import Experience, NoState
from rlhf.runtime.rl import Prepared, interleaved_pairs


def best_worst_pairs(reward: torch.Tensor, group_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(chosen row, rejected row) per group: highest and lowest scalar reward; groups that tie are skipped.

    reward (B,) with NaN = not scorable (ignored); the first row wins ties for best/worst, so results are
    deterministic.
    """
    pairs = []
    for g in group_ids.unique().tolist():
        rows = [i for i in (group_ids == g).nonzero().flatten().tolist() if not torch.isnan(reward[i])]
        if len(rows) < 2:
            continue
        best = max(rows, key=lambda i: (float(reward[i]), -i))
        worst = min(rows, key=lambda i: (float(reward[i]), i))
        if float(reward[best]) > float(reward[worst]):
            pairs.append((best, worst))
    return pairs


class OnlinePairsUpdate(NoState):
    def __init__(self, trainers: Any, weighting: Any) -> None:
        self.trainers, self.weighting = trainers, weighting

    def prepare(self, exp: Experience) -> Prepared:
        rollout, rv = exp.rollout, exp.rewards
        reward = self.weighting.weighted_sum(rv)  # (B,)
        _, metrics = self.weighting.scalarize(rv, rollout.group_ids)  # per-component reward metrics
        pairs = best_worst_pairs(reward, rollout.group_ids)
        usable = len(pairs) - len(pairs) % self.trainers.world_size  # whole pairs on every rank
        metrics["pairs/count"] = usable
        metrics["pairs/skipped_groups"] = int(rollout.group_ids.unique().numel()) - len(pairs)
        if not usable:
            return Prepared(metrics)
        chosen, rejected = zip(*pairs[:usable])
        metrics["pairs/reward_gap"] = float((reward[list(chosen)] - reward[list(rejected)]).mean())
        return Prepared(metrics, pairs=interleaved_pairs(rollout, pairs[:usable]))

    def train(self, prepared: Prepared) -> dict[str, float]:
        return {} if prepared.pairs is None else self.trainers.train_online_pairs(prepared.pairs)


__all__ = ["OnlinePairsUpdate", "best_worst_pairs"]
