"""Rollout/trainer mismatch: metrics and truncated importance sampling (TIS).

The rollout engine (vLLM: other kernels, other precision) samples from pi_rollout, while the loss is computed
with the trainer's pi_old, the same weights in another implementation. Their per-token logprobs differ a little;
left alone, the policy gradient is slightly off-policy. Two tools, both per token on the completion mask:

- metrics, logged every step: with d = log pi_rollout - log pi_old on the sampled tokens (which come from
  pi_rollout), `mismatch/kl_k1` = mean(d) and `mismatch/kl_k3` = mean(exp(-d) - 1 + d) (>= 0) both estimate
  KL(pi_rollout || pi_old); plus the mean and max |d|.
- TIS (`rollout.tis_cap`): weight each token's policy-gradient term by w = min(pi_old / pi_rollout, cap),
  detached. Folding w into the (token-level) advantages does exactly that for clipped-surrogate losses, since
  -min(r*A*w, clip(r)*A*w) = w * -min(r*A, clip(r)*A) for w > 0; KL terms are not reweighted.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mismatch_metrics(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """old_logprobs, rollout_logprobs, mask: (B, C). Means over the tokens where mask != 0."""
    on = mask != 0  # (B, C)
    if not bool(on.any()):
        return {}
    d = (rollout_logprobs.float() - old_logprobs.float())[on]  # (T,)
    return {
        "mismatch/kl_k1": float(d.mean()),
        "mismatch/kl_k3": float((torch.exp(-d) - 1 + d).mean()),
        "mismatch/logprob_abs_mean": float(d.abs().mean()),
        "mismatch/logprob_abs_max": float(d.abs().max()),
    }


def tis_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, cap: float) -> Tensor:
    """(B, C) detached weights min(exp(old - rollout), cap); 1 off the mask."""
    if cap <= 0:
        raise ValueError(f"rollout.tis_cap must be > 0, got {cap}")
    on = mask != 0
    log_w = torch.where(on, old_logprobs.detach().float() - rollout_logprobs.float(), torch.zeros_like(mask.float()))
    return torch.exp(log_w).clamp(max=cap)  # (B, C)


def apply_tis(advantages: Tensor, old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor,
              cap: float) -> tuple[Tensor, dict[str, float]]:
    """Token-level advantages (B, C) = advantages (B,) or (B, C) times the TIS weights, and TIS metrics."""
    w = tis_weights(old_logprobs, rollout_logprobs, mask, cap)  # (B, C)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, C)
    on = mask != 0
    metrics = {}
    if bool(on.any()):
        metrics = {"mismatch/tis_weight_mean": float(w[on].mean()),
                   "mismatch/tis_clip_frac": float((w[on] >= cap).float().mean())}
    return adv * w.to(adv.dtype), metrics
