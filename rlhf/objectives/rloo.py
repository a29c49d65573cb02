"""RLOO: REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", sec. 3.2) on the reward vector.

Advantages (``rlhf.advantages.baselines.rloo``), for the k samples of a prompt:

    A_i = r_i - 1/(k-1) sum_{j != i} r_j                   r = the weighting's weighted_sum of the vector
    A_i = sum_c w_c (r_ic - 1/(k-1) sum_{j != i} r_jc)      per_component=True: leave-one-out per component
                                                            (NaN components skipped), then the weighted sum

The two agree for a linear weighting when no component is NaN. The loss is GRPO's per-token clipped surrogate
(``rlhf.objectives.grpo``, DeepSeekMath eq. 3) with the sequence advantage broadcast over the tokens, plus
``kl_coef`` * k3 KL to the reference as a loss term, built by composition (a private GRPO instance).

Differences from TRL's RLOOTrainer (trl 1.16, trl/trainer/rloo_trainer.py): TRL puts a k1 sequence KL into the
reward before the leave-one-out (lines 1664-1673) and clips a sequence-level ratio exp(sum_t log-ratio)
(lines 1822-1833); here the KL is a loss term and the ratio is per token. The advantages agree with TRL's when
TRL's beta = 0 and normalize_advantages = False (tests/unit/test_rloo_reinforce.py runs TRL's own code).

Pure torch. Run the tests: pytest tests/unit/test_rloo_reinforce.py -q
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from rlhf.advantages.baselines import rloo
from rlhf.advantages.group import advantage_metrics
from rlhf.objectives.grpo import GRPO
from rlhf.types import LossOutput, RewardVector

if TYPE_CHECKING:
    from rlhf.weighting import Weighting


@dataclass
class RLOO:
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # None -> clip_eps (symmetric)
    kl_coef: float = 0.0  # beta of the k3 KL loss term
    loss_agg: str = "token_mean"  # "token_mean" | "seq_mean", as GRPO
    per_component: bool = False  # leave-one-out per component, then the weighted sum

    name: ClassVar[str] = "rloo"
    on_policy: ClassVar[bool] = True

    _surrogate: GRPO = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._surrogate = GRPO(  # validates loss_agg
            clip_eps=self.clip_eps, clip_eps_high=self.clip_eps_high, kl_coef=self.kl_coef, loss_agg=self.loss_agg
        )

    @classmethod
    def from_config(cls, cfg: Any) -> "RLOO":
        """From an ``RLOOConfig`` (kind="rloo") with the fields of this dataclass."""
        return cls(
            clip_eps=cfg.clip_eps,
            clip_eps_high=cfg.clip_eps_high,
            kl_coef=cfg.kl_coef,
            loss_agg=cfg.loss_agg,
            per_component=cfg.per_component,
        )

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    # ------------------------------------------------------------------ advantages

    def advantages(
        self, rv: RewardVector, group_ids: Tensor, weighting: "Weighting"
    ) -> tuple[Tensor, dict[str, float]]:
        """(B,) leave-one-out advantages from the reward vector, and metrics (weighting's + adv/*).

        ``weighting.scalarize`` is called once, as under GRPO, for its metrics (and so a stateful weighting
        advances once per step); its group-normalised advantages are not used.
        """
        _, metrics = weighting.scalarize(rv, group_ids)
        reward = weighting.weighted_sum(rv)  # (B,) NaN where no component applies
        if self.per_component:
            per_comp = rloo(rv.values, group_ids)  # (B, K), 0 on NaN entries
            advantages = weighting.weighted_sum(RewardVector(rv.names, rv.kinds, per_comp))  # (B,)
        else:
            advantages = rloo(reward, group_ids)  # (B,)
        metrics = {**metrics, **advantage_metrics(reward, advantages, group_ids)}
        return advantages, metrics

    # ------------------------------------------------------------------ loss

    def loss(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor | None,
        ref_logprobs: Tensor | None,
        advantages: Tensor,
        mask: Tensor,
        token_normalizer: float | None = None,
    ) -> LossOutput:
        """GRPO's clipped surrogate + kl_coef * k3 KL; arguments and shapes as ``GRPO.loss``."""
        return self._surrogate.loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, token_normalizer)
