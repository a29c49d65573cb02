"""GRPO: Group Relative Policy Optimization (DeepSeekMath, Shao et al. 2024, eq. 3 and eq. 4).

Per completion token t of sample i, with ratio rho = pi_theta(o_t) / pi_old(o_t) and group-relative advantage A_i
(``rlhf.advantages.group`` through the weighting), the per-token loss is the negated eq. 3 integrand

    l_it = -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + beta * D_KL,it

with the k3 estimator of eq. 4 (Schulman, "Approximating KL divergence", 2020):

    D_KL,it = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 = exp(ref - logp) - (ref - logp) - 1   (>= 0)

eps_high defaults to eps_low; a larger eps_high is DAPO's "Clip-Higher" (Yu et al. 2025). With
``kl_ratio_correction`` the KL term is multiplied by rho (DeepSeek-V3.2's unbiased KL estimate; TRL's default
``use_bias_correction_kl=True``); off by default, i.e. plain eq. 3. Aggregation:

    seq_mean:    1/G sum_i 1/|o_i| sum_t l_it            exactly eq. 3 (TRL loss_type="grpo")
    token_mean:  1/sum_i |o_i| sum_i sum_t l_it          DAPO's token-level loss (TRL "bnpo"; "dapo" with a
                                                         global token count -> pass ``token_normalizer``)
    dr_grpo:     1/(G * L_max) sum_i sum_t l_it          Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like
                                                         Training"): a constant denominator, no length bias;
                                                         ``token_normalizer`` = rows * max_new_tokens (TRL
                                                         "dr_grpo"); defaults to the padded B * C

Pure torch; the model forward lives in ``rlhf.objectives.common.completion_logprobs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from rlhf.advantages.group import advantage_metrics
from rlhf.advantages.process import process_advantages, sequence_part, step_token_advantages
from rlhf.objectives.common import masked_mean, masked_sum
from rlhf.types import LossOutput, RewardVector

if TYPE_CHECKING:
    from rlhf.config.schema import GRPOConfig
    from rlhf.weighting import Weighting

LOSS_AGGREGATIONS = ("token_mean", "seq_mean", "dr_grpo")


@dataclass
class GRPO:
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # None -> clip_eps (symmetric)
    kl_coef: float = 0.0  # beta
    loss_agg: str = "token_mean"
    scale_std: bool = True
    eps: float = 1e-6
    kl_ratio_correction: bool = False  # multiply k3 by the ratio rho (not in the recipe schema yet)

    name: ClassVar[str] = "grpo"
    on_policy: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(f"GRPO: loss_agg={self.loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")

    @classmethod
    def from_config(cls, cfg: "GRPOConfig") -> "GRPO":
        return cls(
            clip_eps=cfg.clip_eps,
            clip_eps_high=cfg.clip_eps_high,
            kl_coef=cfg.kl_coef,
            loss_agg=cfg.loss_agg,
            scale_std=cfg.scale_std,
            eps=cfg.eps,
            kl_ratio_correction=bool(getattr(cfg, "kl_ratio_correction", False)),
        )

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    @property
    def eps_high(self) -> float:
        return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high

    # ------------------------------------------------------------------ advantages

    def advantages(
        self, rv: RewardVector, group_ids: Tensor, weighting: "Weighting", width: int | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """(B,) group-relative advantages from the reward vector, and metrics (weighting's + adv/*).

        With step rewards (``rv.has_steps``) they are (B, C) token advantages, C = ``width``: the outcome
        components' group-relative advantage on every token plus each process component's step-level advantage
        (``rlhf.advantages.process``: steps normalised within the group, summed over the steps still to come),
        weighted by the component's weight, plus the step bonus (MRT progress) summed the same way.
        """
        if not rv.has_steps:
            advantages, metrics = weighting.scalarize(rv, group_ids, self.scale_std, self.eps)  # (B,)
            reward = weighting.weighted_sum(rv)  # (B,) raw scalar reward, NaN where no component applies
            return advantages, {**metrics, **advantage_metrics(reward, advantages, group_ids)}
        if width is None:
            raise ValueError("GRPO.advantages: step rewards need the completion width (width=C)")
        outcome, metrics = weighting.scalarize(sequence_part(rv), group_ids, self.scale_std, self.eps)  # (B,)
        for name, mean in rv.means().items():  # the process components' outcome values, as logged without steps
            if name in rv.process_names:
                metrics[f"reward/{name}/mean"] = mean
                metrics[f"reward/{name}/weighted"] = weighting.weights[name] * mean
        weights = [weighting.weights[n] for n in rv.process_names]
        steps = process_advantages(rv.steps, rv.step_ends, group_ids, weights, width, self.scale_std, self.eps)
        if rv.bonus is not None:  # a dense bonus (MRT progress) is credited to the tokens before it, unnormalised
            steps = steps + step_token_advantages(rv.bonus, rv.step_ends, width)  # (B, C)
        advantages = outcome.unsqueeze(1) + steps  # (B, C)
        reward = weighting.weighted_sum(rv)  # (B,)
        metrics.update(advantage_metrics(reward, outcome, group_ids))
        metrics["adv/step_abs_mean"] = float(steps.abs().mean())
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
        """Clipped surrogate + beta * k3 KL, aggregated by ``loss_agg``.

        logprobs (B, C) with grad; old_logprobs (B, C) or None (= logprobs.detach(), one update per rollout);
        ref_logprobs (B, C) or None; advantages (B,) or token-level (B, C); mask (B, C) 1 on counted tokens.
        token_normalizer: for token_mean, divide the token sum by this instead of this batch's token count
        (e.g. the mini-batch's global token count / number of micro-batches, so summed shards equal one mean).
        """
        if self.kl_coef > 0 and ref_logprobs is None:
            raise ValueError("GRPO: kl_coef > 0 needs ref_logprobs")
        on = mask != 0  # (B, C) bool
        mask = mask.to(logprobs.dtype)  # (B, C)
        if old_logprobs is None:
            old_logprobs = logprobs.detach()
        adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, C)

        # zero the log-ratios on padding so exp() cannot overflow there (0 * inf would poison the gradient)
        log_ratio = torch.where(on, logprobs - old_logprobs, torch.zeros_like(logprobs))  # (B, C)
        ratio = torch.exp(log_ratio)  # (B, C)
        clipped = ratio.clamp(1 - self.clip_eps, 1 + self.eps_high)  # (B, C)
        policy_term = -torch.min(ratio * adv, clipped * adv)  # (B, C)

        per_token = policy_term  # (B, C)
        kl = None
        if ref_logprobs is not None:
            log_ref_ratio = torch.where(on, ref_logprobs - logprobs, torch.zeros_like(logprobs))  # (B, C)
            kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # (B, C) k3 estimator, eq. 4
            if self.kl_ratio_correction:
                kl = kl * ratio  # (B, C) importance-weighted to the current policy
            if self.kl_coef > 0:
                per_token = per_token + self.kl_coef * kl

        loss = self.aggregate(per_token, mask, token_normalizer)
        with torch.no_grad():
            clipped_out = ((ratio < 1 - self.clip_eps) & (adv < 0)) | ((ratio > 1 + self.eps_high) & (adv > 0))
            metrics = {
                "loss/total": float(loss.detach()),
                "loss/policy": float(self.aggregate(policy_term, mask, token_normalizer)),
                "clip_frac": float(masked_mean(clipped_out.to(mask.dtype), mask)),
                "ratio/mean": float(masked_mean(ratio, mask)),
                "tokens": float(mask.sum()),
            }
            if kl is not None:
                metrics["kl"] = float(masked_mean(kl, mask))
        return LossOutput(loss=loss, metrics=metrics)

    def aggregate(self, per_token: Tensor, mask: Tensor, token_normalizer: float | None) -> Tensor:
        """(B, C) per-token losses -> () scalar."""
        if self.loss_agg == "seq_mean":
            return masked_mean(per_token, mask, dim=1).mean()  # mean over each sequence, then over sequences
        if self.loss_agg == "dr_grpo":
            denom = per_token.numel() if token_normalizer is None else token_normalizer
            return masked_sum(per_token, mask) / denom
        denom = mask.sum().clamp(min=1) if token_normalizer is None else token_normalizer
        return masked_sum(per_token, mask) / denom  # sum over all tokens / tokens in the batch

