"""Group-relative advantages: the outcome-supervision baseline of GRPO (DeepSeekMath, Shao et al. 2024, sec. 4.1.2).

For the G samples o_1..o_G of one prompt with rewards r = (r_1..r_G) the advantage of sample i is

    A_i = (r_i - mean(r)) / (std(r) + eps)       (scale_std=True; the paper's r~_i)
    A_i =  r_i - mean(r)                          (scale_std=False; Dr. GRPO, Liu et al. 2025)

Conventions (chosen to agree with TRL's GRPOTrainer on identical tensors):

- std is the UNBIASED sample std (Bessel's correction, ``torch.std`` default), eps is added to the std.
- NaN marks "not applicable": NaN entries are left out of their group's mean and std and get advantage 0.
- A group with fewer than two applicable entries has std 0 (its centred values are 0 anyway).
- Groups are given by ``group_ids`` (any integer labels; rows of a group need not be adjacent).
- ``x`` may be (B,) or (B, K); with (B, K) every column is normalised on its own.

Imports only torch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class GroupStats(NamedTuple):
    mean: Tensor  # (G,) or (G, K) mean over applicable entries (0 where none)
    std: Tensor  # (G,) or (G, K) unbiased std over applicable entries (0 where fewer than two)
    count: Tensor  # (G,) or (G, K) number of applicable (non-NaN) entries
    inverse: Tensor  # (B,) long, row -> group index in 0..G-1 (groups sorted by label)


def group_stats(x: Tensor, group_ids: Tensor) -> GroupStats:
    """NaN-ignoring per-group mean / unbiased std of ``x`` (B,) or (B, K)."""
    if x.shape[0] != group_ids.shape[0]:
        raise ValueError(f"group_stats: x has {x.shape[0]} rows but group_ids has {group_ids.shape[0]}")
    squeeze = x.dim() == 1
    xs = x.unsqueeze(1) if squeeze else x  # (B, K)
    xs = xs if xs.is_floating_point() else xs.float()
    _, inverse = torch.unique(group_ids, return_inverse=True)  # (B,)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    valid = ~torch.isnan(xs)  # (B, K)
    x0 = torch.where(valid, xs, torch.zeros_like(xs))  # (B, K)
    zeros = xs.new_zeros((n_groups, xs.shape[1]))  # (G, K)
    count = zeros.index_add(0, inverse, valid.to(xs.dtype))  # (G, K)
    mean = zeros.index_add(0, inverse, x0) / count.clamp(min=1)  # (G, K)
    dev = torch.where(valid, xs - mean[inverse], torch.zeros_like(xs))  # (B, K)
    sq = zeros.index_add(0, inverse, dev.pow(2))  # (G, K)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))  # (G, K)
    if squeeze:
        mean, std, count = mean.squeeze(1), std.squeeze(1), count.squeeze(1)
    return GroupStats(mean, std, count, inverse)


def group_normalize(x: Tensor, group_ids: Tensor, scale_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages, same shape as ``x`` (B,) or (B, K); NaN entries -> 0. See module docstring."""
    stats = group_stats(x, group_ids)
    x = x if x.is_floating_point() else x.float()
    valid = ~torch.isnan(x)  # (B,) or (B, K)
    adv = x - stats.mean[stats.inverse]  # (B,) or (B, K)
    if scale_std:
        denom = stats.std[stats.inverse] + eps  # (B,) or (B, K); 0 only for a constant group with eps=0
        adv = torch.where(denom > 0, adv / denom.clamp(min=torch.finfo(adv.dtype).tiny), adv)
    return torch.where(valid, adv, torch.zeros_like(adv))


def advantage_metrics(reward: Tensor, advantages: Tensor, group_ids: Tensor) -> dict[str, float]:
    """Logged with every group-based estimator: raw scalar reward mean, advantage stats, and the fraction of
    groups whose reward has zero variance (no learning signal: DAPO's dynamic sampling drops them)."""
    std = group_stats(reward, group_ids).std  # (G,)
    return {
        "reward/mean": float(torch.nanmean(reward)),
        "adv/mean": float(advantages.mean()),
        "adv/std": float(advantages.std(correction=0)),
        "adv/zero_std_groups": float(torch.isclose(std, torch.zeros_like(std)).float().mean()),
    }
