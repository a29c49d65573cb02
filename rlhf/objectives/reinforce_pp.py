"""REINFORCE++ (Hu et al. 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs", sec. 3).

Token-level advantages, computed in two stages because the KL reward needs the logprobs:

    1. sequence_scores (runtime, whole batch):      s_i = sum_k w_k r_ik   (the weighting's weighted_sum)
                                                    s_i = s_i - mean_group(s)          baseline="group"
                                                    ("REINFORCE++-baseline"; no std division)
    2. token_advantages (train worker, its shard):  r_it = -beta * KL_it + [t = last_i] s_i
                                                    G_it = sum_{t' >= t} gamma^(t' - t) r_it'
                                                    A_it = (G_it - mean) / (std + eps) over every unmasked
                                                    token of the GLOBAL batch (pass an all-reduce as ``reduce``)

KL_it is the k1 / k2 / k3 estimate between the trainer's policy before the update (old_logprobs: the policy that
generated the samples in synchronous training; under async, the proximal policy, k versions newer than the
engine's) and the reference (``rlhf.advantages.baselines.kl_penalty``). A sample whose reward vector is all-NaN
gets s_i = 0.

A weighting that scales its advantages (the hypervolume weighting's gain, ``weighting.advantage_scale``) scales
A_it after the whitening (which would undo any scale applied before it): ``token_advantages(scale=...)``.

Loss: the shared clipped surrogate per token (``rlhf.objectives.common.Surrogate``, with token-level
advantages); no KL term in the loss, the KL is in the reward. When ref_logprobs are passed to the loss the k3 KL
of the current policy is still reported as the ``kl`` metric.

Pure torch. Run the tests: pytest tests/unit/test_rloo_reinforce.py -q
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor

from rlhf.advantages.baselines import (
    KL_ESTIMATORS,
    global_normalize,
    reinforce_pp_baseline,
    reinforce_pp_returns,
    token_rewards_with_kl,
)
from rlhf.objectives.common import Surrogate
from rlhf.types import RewardVector

BASELINES = ("none", "group")


@dataclass
class ReinforcePP:
    surrogate: Surrogate = field(default_factory=Surrogate)  # kl_coef 0: the KL lives in the reward
    kl_coef: float = 0.0  # beta of the per-token KL reward
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    gamma: float = 1.0  # discount of the reward-to-go
    baseline: Literal["none", "group"] = "none"  # "group" = REINFORCE++-baseline
    eps: float = 1e-6  # added to the global std

    name: ClassVar[str] = "reinforce_pp"

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"ReinforcePP: kl_estimator={self.kl_estimator!r}; expected one of {KL_ESTIMATORS}")
        if self.baseline not in BASELINES:
            raise ValueError(f"ReinforcePP: baseline={self.baseline!r}; expected one of {BASELINES}")
        if self.surrogate.kl_coef:
            raise ValueError("ReinforcePP: the KL is in the token rewards (kl_coef), not in the surrogate")

    @classmethod
    def from_config(cls, cfg: Any) -> "ReinforcePP":
        """From a ``ReinforcePPConfig`` (kind="reinforce_pp")."""
        return cls(surrogate=Surrogate.from_config(cfg, kl_coef=0.0), kl_coef=cfg.kl_coef,
                   kl_estimator=cfg.kl_estimator, gamma=cfg.gamma, baseline=cfg.baseline, eps=cfg.eps)

    @property
    def needs_reference(self) -> bool:
        """Its token advantages read reference logprobs (the KL penalty in the token rewards)."""
        return self.kl_coef > 0

    # ------------------------------------------------------------------ advantages (two stages)

    def sequence_scores(
        self, rv: RewardVector, group_ids: Tensor, weighting: Any
    ) -> tuple[Tensor, dict[str, float]]:
        """(B,) scalar reward per sample (group-centred when baseline="group"; all-NaN rows -> 0) and metrics.

        Call on the whole batch (complete groups). ``weighting.scalarize`` is called once, as under GRPO, for
        its metrics (and so a stateful weighting advances once per step); its advantages are not used.
        """
        _, metrics = weighting.scalarize(rv, group_ids)
        reward = weighting.weighted_sum(rv)  # (B,) NaN where no component applies
        if self.baseline == "group":
            scores = reinforce_pp_baseline(reward, group_ids)  # (B,)
        else:
            scores = torch.nan_to_num(reward, nan=0.0)  # (B,)
        metrics = dict(metrics)
        metrics["reward/mean"] = float(torch.nanmean(reward))
        metrics["score/mean"] = float(scores.mean())
        metrics["score/std"] = float(scores.std(correction=0))
        return scores, metrics

    def token_advantages(
        self,
        seq_scores: Tensor,
        old_logprobs: Tensor,
        ref_logprobs: Tensor | None,
        mask: Tensor,
        reduce: Callable[[Tensor], Tensor] | None = None,
        scale: float = 1.0,
    ) -> Tensor:
        """(B, C) advantages: KL-shaped token rewards -> discounted returns -> global whitening.

        seq_scores (B,) from ``sequence_scores`` (this shard's rows); old_logprobs (B, C) of the generating
        policy; ref_logprobs (B, C), required when kl_coef > 0; mask (B, C). ``reduce`` sums the (3,)
        normalisation statistics over data-parallel ranks (an all-reduce SUM); None = this shard alone. ``scale``
        multiplies the whitened advantages (the weighting's ``advantage_scale``).
        """
        rewards = token_rewards_with_kl(  # (B, C)
            seq_scores, old_logprobs, ref_logprobs, mask, self.kl_coef, self.kl_estimator
        )
        returns = reinforce_pp_returns(rewards, mask, self.gamma)  # (B, C)
        advantages = global_normalize(returns, mask, self.eps, reduce)  # (B, C)
        return advantages * scale if scale != 1.0 else advantages
