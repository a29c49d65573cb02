"""MODPO: Multi-Objective Direct Preference Optimization (Zhou et al. 2024, "Beyond One-Preference-Fits-All").

For a weight vector w on the simplex over objectives, MODPO trains on the preference data of one objective k
(chosen y_w, rejected y_l) with the other objectives' reward models r_{-k} as a margin:

    loss = -log sigma( (beta / w_k) * h  -  (1 / w_k) * w_{-k}^T [ r_{-k}(x, y_w) - r_{-k}(x, y_l) ] )

with h the DPO log-ratio difference (``rlhf.objectives.dpo``). Here w_k is ``objective.preference_weight`` and
w_{-k} are the recipe's reward components' ``weight``s (they must sum to 1 with w_k); the components score the
chosen and the rejected completions once, before training, and the margin is cached per pair. The loss is the
DPO sigmoid loss with beta' = beta / w_k and margin m = w_{-k}^T delta_r / w_k. One run trains one weight vector.

Imports only torch and the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from rlhf.objectives.dpo import DPO
from rlhf.types import LossOutput, RewardVector


def modpo_margin(chosen: RewardVector, rejected: RewardVector, weights: dict[str, float],
                 preference_weight: float) -> tuple[Tensor, dict[str, float]]:
    """(B,) margin w_{-k}^T (r(y_w) - r(y_l)) / w_k; a NaN (not applicable) component contributes 0."""
    if chosen.names != rejected.names:
        raise ValueError("modpo_margin: chosen and rejected reward vectors have different components")
    w = torch.tensor([weights[n] for n in chosen.names], dtype=chosen.values.dtype)  # (K,)
    delta = chosen.values - rejected.values  # (B, K)
    applicable = ~torch.isnan(delta)  # (B, K)
    margin = (torch.where(applicable, delta, torch.zeros_like(delta)) * w).sum(dim=1) / preference_weight  # (B,)
    metrics = {f"margin/{n}/delta_mean": float(torch.nanmean(delta[:, j])) for j, n in enumerate(chosen.names)}
    metrics["margin/mean"] = float(margin.mean())
    metrics["margin/not_applicable"] = float((~applicable).float().mean())
    return margin, metrics


@dataclass
class MODPO:
    beta: float = 0.1
    preference_weight: float = 0.5  # w_k
    dpo: DPO = field(init=False)

    name: ClassVar[str] = "modpo"
    pairs_need_reference: ClassVar[bool] = True  # its pairs are scored against the reference (cached offline)

    def __post_init__(self) -> None:
        if not 0 < self.preference_weight <= 1:
            raise ValueError(f"MODPO: preference_weight must be in (0, 1], got {self.preference_weight}")
        self.dpo = DPO(beta=self.beta / self.preference_weight, loss_type="sigmoid")

    @classmethod
    def from_config(cls, cfg: Any) -> "MODPO":
        return cls(beta=cfg.beta, preference_weight=cfg.preference_weight)

    def loss(self, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, margin: Tensor | None = None, **kwargs: Any) -> LossOutput:
        if margin is None:
            raise ValueError("MODPO: needs the per-pair margin from the other objectives' reward components")
        return self.dpo.loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             margin, **kwargs)

    def pair_loss(self, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, *, margin: Tensor | None = None, **kwargs: Any) -> LossOutput:
        """The trainer's pair update (lengths and other keywords as ``DPO.loss``)."""
        return self.loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, margin,
                         **{k: v for k, v in kwargs.items() if v is not None})
