"""DPO and its close variants (IPO, cDPO, reference-free) as one pure-torch pairwise loss over sequence log-probs.

    dpo = DPO(beta=0.1)                                     # loss_type "sigmoid" | "ipo" | "cdpo"
    logps = sequence_logps(per_token_logps, loss_mask)      # (B,) summed completion log-probs, one per sequence
    out = dpo.loss(pol_chosen, pol_rejected, ref_chosen, ref_rejected)   # LossOutput, mean over the B pairs

For a pair (x, y_w, y_l) write the implicit-reward difference

    h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]

with summed completion log-probs. The per-pair losses are

    sigmoid  -log sigma(beta h - m)                                  DPO, Rafailov et al. 2023, eq. 7
    cdpo     -(1 - eps) log sigma(beta h - m) - eps log sigma(-(beta h - m))
                                                                     conservative DPO (Mitchell 2023, "A note on
                                                                     DPO with noisy preferences"): eq. 7 with the
                                                                     label flipped with probability eps
    ipo      (h_bar - 1 / (2 beta))^2                                IPO, Azar et al. 2023, eq. 17 (beta is tau)

``m`` is the optional per-pair ``margin`` (the MODPO seam): it is subtracted from the logit, so a positive margin
asks the policy to prefer y_w by that much more before the loss flattens. MODPO (Zhou et al. 2024, eq. 8; its
reference code ``modpo_trainer.modpo_loss``) trains on the logit

    (1 / w_k) * (beta h - w_{-k}^T [r_{-k}(x, y_w) - r_{-k}(x, y_l)])

so a MODPO objective calls this loss with ``beta = beta / w_k`` and ``margin = w_{-k}^T delta_r / w_k``.

IPO length normalisation: ``h_bar`` is h with each log-ratio divided by its completion's token count, i.e.
h_bar = (pi_w - ref_w) / |y_w| - (pi_l - ref_l) / |y_l|. The paper writes h on sequence log-probs; TRL 1.16
(``DPOTrainer``, loss_type="ipo") averages per token, noting the IPO authors confirmed the paper's results used
the averaged form. We follow TRL by default (``ipo_average=True``, which needs ``chosen_lengths`` and
``rejected_lengths``); ``ipo_average=False`` is eq. 17 on summed log-probs.

``reference_free``: the reference log-probs are taken as 0 (a uniform reference), h = log pi(y_w) - log pi(y_l).

Logged implicit rewards are beta * (log pi - log ref) of each completion on summed log-probs, as in TRL, whatever
the loss type; the margin is not folded into them. Imports only torch and the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.objectives.common import masked_mean, masked_sum
from rlhf.types import LossOutput

DPO_LOSS_TYPES = ("sigmoid", "ipo", "cdpo")


def sequence_logps(per_token_logps: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """(B,) sum (or mean, with ``average``) of per-token log-probs over tokens where mask != 0.

    per_token_logps (B, C), mask (B, C). Masked entries are ignored even if NaN/inf; a row with an empty mask
    gives 0.
    """
    if average:
        return masked_mean(per_token_logps, mask, dim=1)
    return masked_sum(per_token_logps, mask, dim=1)


def _check_pair_shapes(**tensors: Tensor | None) -> int:
    shapes = {k: tuple(v.shape) for k, v in tensors.items() if v is not None}
    first = next(iter(shapes.values()))
    if len(first) != 1 or first[0] == 0 or any(s != first for s in shapes.values()):
        raise ValueError(f"DPO.loss: every per-pair tensor must have the same shape (B,) with B >= 1; got {shapes}")
    return first[0]


@dataclass
class DPO:
    beta: float = 0.1  # DPO's beta; IPO's tau
    loss_type: Literal["sigmoid", "ipo", "cdpo"] = "sigmoid"
    label_smoothing: float = 0.0  # cDPO's eps: probability that a preference label is flipped; only for "cdpo"
    reference_free: bool = False  # reference log-probs are 0; no reference model needed
    ipo_average: bool = True  # IPO on per-token averaged log-ratios (TRL's choice); needs the completion lengths

    name: ClassVar[str] = "dpo"

    def __post_init__(self) -> None:
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"DPO: loss_type={self.loss_type!r}; expected one of {DPO_LOSS_TYPES}")
        if not self.beta > 0:
            raise ValueError(f"DPO: beta must be > 0, got {self.beta}")
        if self.loss_type == "cdpo":
            if not 0.0 <= self.label_smoothing < 0.5:
                raise ValueError(f"DPO: label_smoothing must lie in [0, 0.5) for cdpo, got {self.label_smoothing}")
        elif self.label_smoothing != 0.0:
            raise ValueError(
                f"DPO: label_smoothing={self.label_smoothing} is only used by loss_type='cdpo' "
                f"(got loss_type={self.loss_type!r}); set loss_type: cdpo or label_smoothing: 0"
            )

    @classmethod
    def from_config(cls, cfg: Any) -> "DPO":
        """Build from a recipe's DPO objective section (fields named as on this class)."""
        return cls(
            beta=cfg.beta,
            loss_type=cfg.loss_type,
            label_smoothing=cfg.label_smoothing,
            reference_free=cfg.reference_free,
            ipo_average=cfg.ipo_average,
        )

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free

    @property
    def pairs_need_reference(self) -> bool:
        """The pair update reads reference logprobs (the trainer computes them for online pairs)."""
        return self.needs_reference

    @property
    def needs_lengths(self) -> bool:
        """True when ``loss`` needs ``chosen_lengths`` / ``rejected_lengths`` (IPO on averaged log-probs)."""
        return self.loss_type == "ipo" and self.ipo_average

    def loss(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        ref_chosen_logps: Tensor | None,
        ref_rejected_logps: Tensor | None,
        margin: Tensor | None = None,
        *,
        chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None,
        normalizer: float | None = None,
        beta: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> LossOutput:
        """Mean pairwise loss over the B pairs.

        policy_*_logps (B,) summed completion log-probs with grad; ref_*_logps (B,) the same under the frozen
        reference (None when ``reference_free``); margin (B,) or None, subtracted from the sigmoid's logit
        (sigmoid/cdpo only); chosen_lengths / rejected_lengths (B,) completion token counts (IPO with
        ``ipo_average``). normalizer: divide the summed per-pair losses by this instead of B (e.g. the global
        number of pairs / micro-batches, so summed shards equal one mean). beta (B,): a per-pair beta in place of
        ``self.beta`` (CGPO's per-task CODPO beta); weights (B,): per-pair loss weights (the logged
        ``loss/dpo`` stays the unweighted mean).
        """
        if self.reference_free:
            if ref_chosen_logps is not None or ref_rejected_logps is not None:
                raise ValueError("DPO: reference_free=True but reference log-probs were passed; pass None")
            ref_chosen_logps = torch.zeros_like(policy_chosen_logps)
            ref_rejected_logps = torch.zeros_like(policy_rejected_logps)
        elif ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("DPO: needs ref_chosen_logps and ref_rejected_logps (or set reference_free=True)")
        if margin is not None and self.loss_type == "ipo":
            raise ValueError("DPO: margin (MODPO) is defined for the sigmoid/cdpo losses, not ipo")
        if self.needs_lengths and (chosen_lengths is None or rejected_lengths is None):
            raise ValueError("DPO: loss_type='ipo' with ipo_average=True needs chosen_lengths and rejected_lengths")
        B = _check_pair_shapes(
            policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
            ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps, margin=margin,
            chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, beta=beta, weights=weights,
        )
        beta = self.beta if beta is None else beta.to(policy_chosen_logps.dtype)  # () or (B,)

        chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
        rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
        h = chosen_logratios - rejected_logratios  # (B,)

        if self.loss_type == "ipo":
            if self.ipo_average:
                chosen_avg = chosen_logratios / chosen_lengths.to(h.dtype).clamp(min=1)  # (B,)
                rejected_avg = rejected_logratios / rejected_lengths.to(h.dtype).clamp(min=1)  # (B,)
                h = chosen_avg - rejected_avg  # (B,)
            per_pair = (h - 1 / (2 * beta)) ** 2  # (B,) eq. 17
        else:
            logits = beta * h  # (B,)
            if margin is not None:
                logits = logits - margin.to(logits.dtype)
            per_pair = -F.logsigmoid(logits)  # (B,) eq. 7
            if self.loss_type == "cdpo":
                eps = self.label_smoothing
                per_pair = (1 - eps) * per_pair - eps * F.logsigmoid(-logits)  # (B,)

        denom = B if normalizer is None else normalizer
        weighted = per_pair if weights is None else per_pair * weights.to(per_pair.dtype)  # (B,)
        loss = weighted.sum() / denom
        with torch.no_grad():
            chosen_rewards = beta * chosen_logratios.detach()  # (B,)
            rejected_rewards = beta * rejected_logratios.detach()  # (B,)
            metrics = {
                f"loss/{self.name}": float(per_pair.detach().mean()),
                "rewards/chosen": float(chosen_rewards.mean()),
                "rewards/rejected": float(rejected_rewards.mean()),
                "rewards/margin": float((chosen_rewards - rejected_rewards).mean()),
                "rewards/accuracy": float((chosen_rewards > rejected_rewards).to(h.dtype).mean()),
                "logps/chosen": float(policy_chosen_logps.detach().mean()),
                "logps/rejected": float(policy_rejected_logps.detach().mean()),
                "pairs": float(B),
            }
        return LossOutput(loss=loss, metrics=metrics)

    def pair_loss(self, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  ref_chosen_logps: Tensor | None, ref_rejected_logps: Tensor | None, *,
                  chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None,
                  margin: Tensor | None = None, normalizer: float | None = None,
                  pair_info: Tensor | None = None) -> LossOutput:
        """The trainer's pair update: ``loss`` with per-pair [weight, beta] from pair_info (B, 2), if given."""
        weights = None if pair_info is None else pair_info[:, 0].to(policy_chosen_logps.dtype)  # (B,)
        beta = None if pair_info is None else pair_info[:, 1]  # (B,)
        return self.loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, margin,
                         chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, normalizer=normalizer,
                         beta=beta, weights=weights)
