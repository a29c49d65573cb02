"""Critic-free baselines: RLOO's leave-one-out baseline and REINFORCE++'s token-level returns (pure torch).

RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs", sec. 3.2 / eq. for the RLOO estimator). For the k samples of one prompt with rewards r_1..r_k

    A_i = r_i - 1/(k-1) sum_{j != i} r_j  =  k/(k-1) * (r_i - mean(r))

REINFORCE++ (Hu et al. 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
sec. 3). The KL to the reference is a per-token reward and the sequence reward r(x, y) sits on the last token:

    r_t = -beta * KL_t + [t = last] * r(x, y)          KL_t one of k1 / k2 / k3 below
    G_t = sum_{s >= t} gamma^(s - t) r_s                (reward-to-go, ``reinforce_pp_returns``)
    A_t = (G_t - mean) / (std + eps)                    over ALL unmasked tokens of the global batch

"REINFORCE++-baseline" (same paper, the RLVR variant) first subtracts the group mean of the sequence reward
(no division by the group std), then applies the same global token-level normalisation.

KL estimators (Schulman, "Approximating KL divergence", 2020) with log_ratio = logp_old - logp_ref:

    k1 = log_ratio                        (unbiased, can be negative)
    k2 = log_ratio^2 / 2                  (>= 0)
    k3 = exp(-log_ratio) - 1 + log_ratio  (>= 0, unbiased; the estimator of GRPO's eq. 4)

Conventions: ``mask`` is (B, C), 1 on tokens that count; values on masked tokens are ignored (even NaN/inf) and
the outputs there are 0. NaN in a reward means "not applicable" (see ``rlhf.types.RewardVector``).
Run the tests: pytest tests/unit/test_baselines.py -q. Imports only torch and the standard library.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from rlhf.advantages.group import group_stats

KL_ESTIMATORS = ("k1", "k2", "k3")
KLEstimator = Literal["k1", "k2", "k3"]


# --------------------------------------------------------------------------- RLOO


def rloo(x: Tensor, group_ids: Tensor) -> Tensor:
    """Leave-one-out advantages, same shape as ``x`` (B,) or (B, K) (each column on its own).

    A_i = r_i - mean_{j != i, j in group(i)} r_j over the group's applicable (non-NaN) entries.
    NaN entries get 0; so does every entry of a group with fewer than two applicable samples.
    """
    stats = group_stats(x, group_ids)  # mean/count: (G,) or (G, K)
    x = x if x.is_floating_point() else x.float()
    valid = ~torch.isnan(x)  # (B,) or (B, K)
    count = stats.count[stats.inverse]  # (B,) or (B, K) applicable samples in the row's group
    total = (stats.mean * stats.count)[stats.inverse]  # (B,) or (B, K) sum over the group's applicable samples
    baseline = (total - x) / (count - 1).clamp(min=1)  # (B,) or (B, K) mean of the OTHER applicable samples
    adv = x - baseline  # (B,) or (B, K)
    return torch.where(valid & (count > 1), adv, torch.zeros_like(adv))


# --------------------------------------------------------------------------- REINFORCE++


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kl_estimator: KLEstimator = "k1") -> Tensor:
    """(B, C) per-token KL estimate of pi (``logprobs``) from pi_ref; see the module docstring."""
    log_ratio = logprobs - ref_logprobs  # (B, C)
    if kl_estimator == "k1":
        return log_ratio
    if kl_estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if kl_estimator == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"kl_penalty: kl_estimator={kl_estimator!r}; expected one of {KL_ESTIMATORS}")


def last_token_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) index of each row's last unmasked token (0 for an empty row) and (B,) bool "row has a token"."""
    on = mask != 0  # (B, C)
    C = on.shape[1]
    positions = torch.arange(C, device=mask.device).expand_as(on)  # (B, C)
    last = torch.where(on, positions, torch.full_like(positions, -1)).max(dim=1).values  # (B,) -1 when empty
    return last.clamp(min=0), last >= 0


def token_rewards_with_kl(
    seq_reward: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor | None,
    mask: Tensor,
    kl_coef: float,
    kl_estimator: KLEstimator = "k1",
) -> Tensor:
    """(B, C) REINFORCE++ token rewards: -kl_coef * KL_t on every unmasked token, + seq_reward on the last one.

    seq_reward (B,) scalar reward per sample (must be finite; map NaN to a value first);
    logprobs (B, C) of the policy that generated (old_logprobs); ref_logprobs (B, C) or None when kl_coef == 0.
    """
    on = mask != 0  # (B, C)
    rewards = torch.zeros_like(logprobs, dtype=torch.promote_types(logprobs.dtype, seq_reward.dtype))  # (B, C)
    if kl_coef != 0:
        if ref_logprobs is None:
            raise ValueError("token_rewards_with_kl: kl_coef != 0 needs ref_logprobs")
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator).to(rewards.dtype)  # (B, C)
        rewards = torch.where(on, -kl_coef * kl, rewards)
    elif kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"token_rewards_with_kl: kl_estimator={kl_estimator!r}; expected one of {KL_ESTIMATORS}")
    last, has_token = last_token_index(mask)  # (B,), (B,)
    reward_at_last = torch.where(has_token, seq_reward.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))  # (B,)
    return rewards.scatter_add(1, last.unsqueeze(1), reward_at_last.unsqueeze(1))  # (B, C)


def reinforce_pp_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """(B, C) discounted reward-to-go G_t = r_t + gamma * G_{t+1}; rewards on masked tokens count 0, G = 0 there.

    Completions are right-padded, so the scan simply runs from the end. A masked hole inside a row (e.g. a tool
    output in a multi-turn rollout) contributes no reward but the discount still steps over it.
    """
    on = mask != 0  # (B, C)
    rewards = torch.where(on, token_rewards, torch.zeros_like(token_rewards))  # (B, C)
    returns = torch.zeros_like(rewards)  # (B, C)
    running = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return torch.where(on, returns, torch.zeros_like(returns))


def masked_moments(x: Tensor, mask: Tensor) -> Tensor:
    """(3,) float64 [count, sum, sum of squares] of ``x`` over unmasked entries: summable across ranks."""
    on = mask != 0
    x0 = torch.where(on, x, torch.zeros_like(x)).double()
    return torch.stack([on.double().sum(), x0.sum(), x0.pow(2).sum()])


def global_normalize(
    adv: Tensor,
    mask: Tensor,
    eps: float = 1e-6,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """(B, C) whitened over every unmasked token of the (global) batch: (x - mean) / (std + eps), 0 on padding.

    The mean and the (population) variance come from the (count, sum, sumsq) triple of ``masked_moments``;
    ``reduce`` maps this rank's (3,) float64 triple to the sum over all data-parallel ranks (e.g. an all-reduce
    SUM; called exactly once). Default: this batch alone.
    """
    moments = masked_moments(adv, mask)  # (3,)
    if reduce is not None:
        moments = reduce(moments)
    count, total, total_sq = moments.unbind(0)  # () each
    n = count.clamp(min=1)
    mean = total / n
    var = (total_sq / n - mean.pow(2)).clamp(min=0)
    std = var.sqrt()
    out = (adv.double() - mean) / (std + eps)  # (B, C)
    return torch.where(mask != 0, out, torch.zeros_like(out)).to(adv.dtype)


def reinforce_pp_baseline(x: Tensor, group_ids: Tensor) -> Tensor:
    """(B,) REINFORCE++-baseline sequence scores: r_i - mean(group) (no std division); NaN rows -> 0.

    The group mean is over applicable (non-NaN) samples; the token-level ``global_normalize`` follows later.
    """
    stats = group_stats(x, group_ids)
    x = x if x.is_floating_point() else x.float()
    centred = x - stats.mean[stats.inverse]  # (B,)
    return torch.where(torch.isnan(x), torch.zeros_like(centred), centred)


__all__ = [
    "KL_ESTIMATORS",
    "global_normalize",
    "kl_penalty",
    "last_token_index",
    "masked_moments",
    "reinforce_pp_baseline",
    "reinforce_pp_returns",
    "rloo",
    "token_rewards_with_kl",
]
