"""Objectives: one file per training objective, built by name from the recipe's ``objective.kind``.

    from rlhf.objectives import build_objective
    objective = build_objective(recipe.objective)      # GRPO | SFT | ...
    if objective.on_policy:
        adv, metrics = objective.advantages(rv, group_ids, weighting)
        out = objective.loss(logprobs, old_logprobs, ref_logprobs, adv, mask)
    else:
        out = objective.loss_sft(model, sft_batch)

Objectives read the reward vector and never call reward plugins. Imports only torch and the standard library.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from torch import Tensor

from rlhf.objectives.cgpo import CGPO
from rlhf.objectives.common import completion_logprobs, masked_mean, masked_sum
from rlhf.objectives.dpo import DPO
from rlhf.objectives.grpo import GRPO
from rlhf.objectives.modpo import MODPO
from rlhf.objectives.ppo import PPO
from rlhf.objectives.prm import PRM
from rlhf.objectives.reinforce_pp import ReinforcePP
from rlhf.objectives.rloo import RLOO
from rlhf.objectives.sft import SFT, sft_loss
from rlhf.types import LossOutput, RewardVector, SFTBatch


@runtime_checkable
class Objective(Protocol):
    """What every objective exposes to the controller and the trainer."""

    name: str
    needs_reference: bool  # the trainer must provide ref_logprobs
    on_policy: bool  # needs fresh rollouts each step (advantages + loss) vs. a fixed dataset


@runtime_checkable
class PolicyGradientObjective(Objective, Protocol):
    """On-policy objectives (GRPO, ...): reward vector -> advantages, then a per-token loss."""

    def advantages(self, rv: RewardVector, group_ids: Tensor, weighting: Any) -> tuple[Tensor, dict[str, float]]: ...

    def loss(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor | None,
        ref_logprobs: Tensor | None,
        advantages: Tensor,
        mask: Tensor,
    ) -> LossOutput: ...


@runtime_checkable
class SupervisedObjective(Objective, Protocol):
    """Objectives trained on a fixed token dataset (SFT)."""

    def loss_sft(self, model: Any, batch: SFTBatch) -> LossOutput: ...


OBJECTIVES: dict[str, Callable[[Any], Objective]] = {
    "grpo": GRPO.from_config,
    "rloo": RLOO.from_config,
    "dpo": DPO.from_config,
    "online_dpo": DPO.from_config,
    "modpo": MODPO.from_config,
    "ppo": PPO.from_config,
    "reinforce_pp": ReinforcePP.from_config,
    "sft": SFT.from_config,
    "prm": PRM.from_config,
    "cgpo": CGPO.from_config,
}


def build_objective(cfg: Any) -> Objective:
    """Build the objective named by ``cfg.kind`` (a GRPOConfig, SFTObjectiveConfig, ...)."""
    try:
        factory = OBJECTIVES[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown objective kind {cfg.kind!r}; known: {sorted(OBJECTIVES)}") from None
    return factory(cfg)


__all__ = [
    "CGPO",
    "GRPO",
    "OBJECTIVES",
    "PRM",
    "SFT",
    "Objective",
    "PolicyGradientObjective",
    "SupervisedObjective",
    "build_objective",
    "completion_logprobs",
    "masked_mean",
    "masked_sum",
    "sft_loss",
]
