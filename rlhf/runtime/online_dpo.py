"""The online DPO stage: preference pairs built from fresh rollouts, ranked by the reward vector.

Per step: generate `group_size` samples per prompt -> score every reward component -> scalarise with the
weighting -> per prompt, the best sample is `chosen` and the worst `rejected` (prompts whose samples all tie are
skipped) -> the DPO/IPO/cDPO loss against the frozen reference on those pairs -> weight sync.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlhf.runtime.onpolicy import OnPolicyStage, generate_and_score, rollout_metrics, sync_weights
from rlhf.types import ExperienceBatch, RolloutBatch


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


class OnlineDPOStage(OnPolicyStage):
    def step(self, step: int) -> dict[str, float]:
        t_step = time.perf_counter()
        self.weighting.begin_step(step)
        rollout, rv, metrics, t_generate, t_score = generate_and_score(
            self.recipe, step, self.sampler, self.engines, self.rewards, self.weighting
        )
        metrics.update(self.weighting.observe(rv))
        reward = self.weighting.weighted_sum(rv)  # (B,)
        _, weighting_metrics = self.weighting.scalarize(rv, rollout.group_ids)
        pairs = best_worst_pairs(reward, rollout.group_ids)
        usable = len(pairs) - len(pairs) % self.trainers.world_size  # whole pairs on every rank
        metrics.update(weighting_metrics)
        metrics["pairs/count"] = usable
        metrics["pairs/skipped_groups"] = int(rollout.group_ids.unique().numel()) - len(pairs)
        self.engines.sleep()  # colocated vllm with sleep mode frees its memory while training runs
        t0 = time.perf_counter()
        if usable:
            chosen, rejected = zip(*pairs[:usable])
            metrics["pairs/reward_gap"] = float((reward[list(chosen)] - reward[list(rejected)]).mean())
            metrics.update(self.trainers.train_online_pairs(_interleaved(rollout, pairs[:usable])))
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        payload = sync_weights(self.trainers, self.engines, version=step)
        timings = {"time/generate": t_generate, "time/score": t_score, "time/train": t_train,
                   "time/sync": time.perf_counter() - t0, "time/step": time.perf_counter() - t_step}
        return {**metrics, **rollout_metrics(rollout, payload, timings)}


def _interleaved(rollout: RolloutBatch, pairs: list[tuple[int, int]]) -> ExperienceBatch:
    """(2P, ...) rows chosen_0, rejected_0, chosen_1, ...; advantages unused (zeros)."""
    idx = torch.tensor([i for pair in pairs for i in pair], dtype=torch.long)
    return ExperienceBatch(
        input_ids=rollout.input_ids()[idx],
        attention_mask=rollout.attention_mask()[idx],
        completion_mask=rollout.completion_mask[idx].float(),
        advantages=torch.zeros(len(idx)),
        prompt_len=rollout.prompt_ids.shape[1],
    )


__all__ = ["OnlineDPOStage", "best_worst_pairs"]
