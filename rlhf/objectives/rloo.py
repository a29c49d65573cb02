"""RLOO: REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", sec. 3.2) on the reward vector.

Advantages (``rlhf.advantages.baselines.rloo``), for the k samples of a prompt:

    A_i = r_i - 1/(k-1) sum_{j != i} r_j                   r = the weighting's weighted_sum of the vector
    A_i = sum_c w_c (r_ic - 1/(k-1) sum_{j != i} r_jc)      per_component=True: leave-one-out per component
                                                            (NaN components skipped), then the weighted sum

The two agree for a linear weighting when no component is NaN. A weighting that scales its advantages (the
hypervolume weighting's gain, ``weighting.advantage_scale``) scales these too. The loss is the shared per-token
clipped surrogate (``rlhf.objectives.common.Surrogate``, DeepSeekMath eq. 3) with the sequence advantage broadcast
over the tokens, plus ``kl_coef`` * k3 KL to the reference as a loss term.

Differences from TRL's RLOOTrainer (trl 1.16, trl/trainer/rloo_trainer.py): TRL puts a k1 sequence KL into the
reward before the leave-one-out (lines 1664-1673) and clips a sequence-level ratio exp(sum_t log-ratio)
(lines 1822-1833); here the KL is a loss term and the ratio is per token. The advantages agree with TRL's when
TRL's beta = 0 and normalize_advantages = False (tests/unit/test_rloo_reinforce.py runs TRL's own code).

Pure torch. Run the tests: pytest tests/unit/test_rloo_reinforce.py -q
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from rlhf.advantages.baselines import rloo
from rlhf.advantages.group import advantage_metrics
from rlhf.objectives.common import Surrogate
from rlhf.types import RewardVector


@dataclass
class RLOO:
    surrogate: Surrogate = field(default_factory=Surrogate)
    per_component: bool = False  # leave-one-out per component, then the weighted sum

    name: ClassVar[str] = "rloo"

    @classmethod
    def from_config(cls, cfg: Any) -> "RLOO":
        """From an ``RLOOConfig`` (kind="rloo")."""
        return cls(surrogate=Surrogate.from_config(cfg), per_component=cfg.per_component)

    @property
    def needs_reference(self) -> bool:
        """Its update reads reference logprobs (the KL loss term)."""
        return self.surrogate.needs_reference

    # ------------------------------------------------------------------ advantages

    def advantages(self, rv: RewardVector, group_ids: Tensor, weighting: Any,
                   width: int | None = None) -> tuple[Tensor, dict[str, float]]:
        """(B,) leave-one-out advantages from the reward vector, and metrics (weighting's + adv/*). Step
        rewards are not used (their outcome values are, as any component's); ``width`` is ignored.

        ``weighting.scalarize`` is called once, as under GRPO, for its metrics (and so a stateful weighting
        advances once per step); its group-normalised advantages are not used, its ``advantage_scale`` is.
        """
        _, metrics = weighting.scalarize(rv, group_ids)
        reward = weighting.weighted_sum(rv)  # (B,) NaN where no component applies
        if self.per_component:
            per_comp = rloo(rv.values, group_ids)  # (B, K), 0 on NaN entries
            per_rv = RewardVector(rv.names, rv.kinds, per_comp, sample_weights=rv.sample_weights)  # (B, K)
            advantages = weighting.weighted_sum(per_rv)  # (B,) each sample by its own weights
        else:
            advantages = rloo(reward, group_ids)  # (B,)
        if weighting.advantage_scale != 1.0:
            advantages = advantages * weighting.advantage_scale
        metrics = {**metrics, **advantage_metrics(reward, advantages, group_ids)}
        return advantages, metrics
