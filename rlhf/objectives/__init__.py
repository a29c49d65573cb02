"""Objectives: the losses and the advantage estimators of every training objective, pure torch (floor 1).

An objective is built from its recipe section by the objective registry (``rlhf.config.registry``, which also
states what each one needs from the runtime: its capabilities). What the trainer and the runtime read of it
depends on its role, never on its name:

    policy gradient (GRPO, GiGPO, RLOO, RSF, REINFORCE++, PPO, CGPO):
        objective.surrogate.loss(logprobs, old, ref, advantages, mask)      # the one clipped surrogate
        objective.advantages(rv, group_ids, weighting, width)               # GRPO, GiGPO, RLOO
        objective.advantages(rv, group_ids, weighting, width, lengths=...)  # RSF: 1 on the rows it keeps, 0 else
        objective.sequence_scores(...) / .token_advantages(...)             # REINFORCE++ (token level)
    pairs (DPO, IPO, cDPO, MODPO, MAH-DPO (per-head (B, K) logps), online DPO, CGPO's CODPO):
        objective.pair_loss(chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_lengths=...)
    supervised (SFT, PRM, RM):
        objective.loss_sft(model, batch)

Objectives read the reward vector and never call reward plugins. Imports only torch and the standard library.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from rlhf.objectives.cgpo import CGPO
from rlhf.objectives.common import Surrogate, completion_logprobs, masked_mean, masked_sum
from rlhf.objectives.dpo import DPO
from rlhf.objectives.gigpo import GiGPO
from rlhf.objectives.grpo import GRPO
from rlhf.objectives.mah_dpo import MAHDPO
from rlhf.objectives.modpo import MODPO
from rlhf.objectives.ppo import PPO
from rlhf.objectives.prm import PRM
from rlhf.objectives.reinforce_pp import ReinforcePP
from rlhf.objectives.rloo import RLOO
from rlhf.objectives.rm import RewardModelObjective
from rlhf.objectives.rsf import RSF
from rlhf.objectives.sft import SFT, sft_loss
from rlhf.types import LossOutput, RewardVector, SFTBatch


@runtime_checkable
class PolicyGradientObjective(Protocol):
    """Reward vector -> advantages, trained with the shared clipped surrogate."""

    surrogate: Surrogate

    def advantages(self, rv: RewardVector, group_ids: Tensor, weighting: Any,
                   width: int | None = None) -> tuple[Tensor, dict[str, float]]: ...


@runtime_checkable
class PairObjective(Protocol):
    """A loss over (chosen, rejected) pairs of summed completion log-probs."""

    pairs_need_reference: bool  # online pairs: the trainer computes the reference's logprobs first

    def pair_loss(self, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  ref_chosen_logps: Tensor | None, ref_rejected_logps: Tensor | None, **kwargs: Any) -> LossOutput: ...


@runtime_checkable
class SupervisedObjective(Protocol):
    """Objectives trained on a fixed token dataset (SFT, PRM, RM)."""

    def loss_sft(self, model: Any, batch: SFTBatch) -> LossOutput: ...


__all__ = [
    "CGPO",
    "DPO",
    "GRPO",
    "MAHDPO",
    "MODPO",
    "PPO",
    "PRM",
    "RewardModelObjective",
    "RLOO",
    "RSF",
    "SFT",
    "GiGPO",
    "PairObjective",
    "PolicyGradientObjective",
    "ReinforcePP",
    "SupervisedObjective",
    "Surrogate",
    "completion_logprobs",
    "masked_mean",
    "masked_sum",
    "sft_loss",
]
