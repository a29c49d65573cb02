"""Generalized Advantage Estimation for PPO with a (vector) critic, token rewards and masked whitening (pure torch).

GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
eq. 16, with the TD residual of eq. 9). For completion token t of one sample, value V_t = V(s_t) the critic's
estimate of the state in which token t is generated, and per-token reward r_t:

    delta_t = r_t + gamma * V_{t+1} - V_t                        (eq. 9; V_{T} = 0 after the last token)
    A_t     = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}         (eq. 16)
            = delta_t + gamma * lam * A_{t+1}                    (the backward recursion computed here)
    R_t     = A_t + V_t                                          (the critic's regression target, "returns")

lam = 1 gives the Monte-Carlo return minus the value (R_t = sum_l gamma^l r_{t+l}); lam = 0 the one-step TD error.

Vector critic. ``rewards`` and ``values`` carry S streams on their last axis (the reward components of a vector
critic, or S = 1 for a scalar one) and every stream gets its own GAE; since GAE is linear in (r, V), a weighted
sum of stream advantages equals the GAE of the weighted reward under the weighted value.

Token rewards (``token_rewards``). Each stream's sequence reward sits on the sample's last unmasked token
(Ziegler et al. 2019, sec. 2.2; NaN = "not applicable" counts 0). An optional per-token KL penalty, already
multiplied by -beta by the caller (i.e. the reward to add, usually <= 0), becomes one extra stream, so S' = S + 1.
The CALLER combines the stream advantages into the (B, C) advantage of the policy loss:

    A_t = sum_k w_k * A_t[k]  (reward streams, weights from the weighting)  +  1 * A_t[KL]  (the KL stream)

and trains a critic head per stream (``rlhf.models.value.ValueModel`` with num_heads = S').

Conventions: completions are RIGHT-padded (``rlhf.types``); ``mask`` is (B, C), 1 on tokens that count. Values and
rewards on masked tokens are ignored (even NaN/inf); advantages and returns there are 0. A masked hole inside a
row (e.g. a tool output in a multi-turn rollout) is skipped: the recursion links the unmasked tokens on either side
of it as if they were adjacent. A row with no unmasked token gets all zeros.

Run the tests: pytest tests/unit/test_gae.py -q. Imports only torch and the standard library.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlhf.advantages.baselines import last_token_index


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """(advantages, returns), each (B, C, S), by eq. 16 independently per stream s.

    rewards (B, C, S) per-token rewards; values (B, C, S) V(s_t) for completion token t (no grad needed; it is
    detached here); mask (B, C). The value after a row's last unmasked token is 0 (the episode ends there).
    """
    if rewards.shape != values.shape or rewards.dim() != 3:
        raise ValueError(
            f"gae: rewards and values must both be (B, C, S); got {tuple(rewards.shape)} and {tuple(values.shape)}"
        )
    if mask.shape != rewards.shape[:2]:
        raise ValueError(f"gae: mask must be (B, C) = {tuple(rewards.shape[:2])}, got {tuple(mask.shape)}")
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    on = (mask != 0).unsqueeze(-1)  # (B, C, 1)
    zeros = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(on, rewards.detach().to(dtype), zeros)  # (B, C, S)
    v = torch.where(on, values.detach().to(dtype), zeros)  # (B, C, S)

    B, C, S = r.shape
    advantages = torch.zeros_like(r)  # (B, C, S)
    next_value = r.new_zeros((B, S))  # (B, S) V of the next unmasked token; 0 past the last one
    next_adv = r.new_zeros((B, S))  # (B, S) A of the next unmasked token
    for t in range(C - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]  # (B, S) eq. 9
        adv = delta + gamma * lam * next_adv  # (B, S) eq. 16, recursively
        on_t = on[:, t]  # (B, 1)
        advantages[:, t] = torch.where(on_t, adv, zeros)
        next_value = torch.where(on_t, v[:, t], next_value)  # a masked position carries the later state over
        next_adv = torch.where(on_t, adv, next_adv)
    returns = torch.where(on, advantages + v, zeros)  # (B, C, S)
    return advantages, returns


def token_rewards(seq_rewards: Tensor, mask: Tensor, kl_penalty: Tensor | None = None) -> Tensor:
    """(B, C, S') per-token rewards: stream s holds seq_rewards[:, s] on each row's last unmasked token, else 0.

    seq_rewards (B, S) one sequence reward per stream (NaN -> 0); mask (B, C).
    kl_penalty (B, C) or None: the per-token reward to add, i.e. already -beta * KL_t; when given it is appended
    as stream S (S' = S + 1), holding kl_penalty on unmasked tokens and 0 on padding; otherwise S' = S.
    The caller weights the stream advantages: reward streams by the weighting's weights, the KL stream by 1.
    """
    if seq_rewards.dim() != 2 or seq_rewards.shape[0] != mask.shape[0]:
        raise ValueError(
            f"token_rewards: seq_rewards must be (B, S) with B = {mask.shape[0]}, got {tuple(seq_rewards.shape)}"
        )
    B, C = mask.shape
    dtype = seq_rewards.dtype if seq_rewards.is_floating_point() else torch.float32
    seq = torch.nan_to_num(seq_rewards.to(dtype), nan=0.0)  # (B, S)
    last, has_token = last_token_index(mask)  # (B,), (B,)
    seq = torch.where(has_token.unsqueeze(1), seq, torch.zeros_like(seq))  # (B, S) an empty row gets nothing
    rewards = seq.new_zeros((B, C, seq.shape[1]))  # (B, C, S)
    index = last.view(B, 1, 1).expand(B, 1, seq.shape[1])  # (B, 1, S)
    rewards = rewards.scatter(1, index, seq.unsqueeze(1))  # (B, C, S)
    if kl_penalty is None:
        return rewards
    if kl_penalty.shape != mask.shape:
        raise ValueError(
            f"token_rewards: kl_penalty must be (B, C) = {tuple(mask.shape)}, got {tuple(kl_penalty.shape)}"
        )
    kl = torch.where(mask != 0, kl_penalty.to(dtype), torch.zeros((), dtype=dtype, device=mask.device))  # (B, C)
    return torch.cat([rewards, kl.unsqueeze(-1)], dim=-1)  # (B, C, S + 1)


def whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """(B, C) masked whitening: (x - mean) / sqrt(var + eps) over unmasked entries, population variance; 0 on padding.

    shift_mean=False adds the mean back (scale only, as for PPO's reward whitening). x may also be (B, C, S):
    then each stream is whitened on its own. ``reduce`` (optional) maps this rank's float64 (3, ...) moments
    [count, sum, sum of squares] to their sum over data-parallel ranks (an all-reduce SUM, called once), so the
    statistics are those of the global batch. A mask with no unmasked entry gives all zeros.
    """
    on = mask != 0  # (B, C)
    if x.dim() == 3:
        on = on.unsqueeze(-1).expand_as(x)  # (B, C, S)
    elif x.shape != mask.shape:
        raise ValueError(f"whiten: x must be (B, C) = {tuple(mask.shape)} or (B, C, S); got {tuple(x.shape)}")
    x0 = torch.where(on, x.double(), torch.zeros((), dtype=torch.float64, device=x.device))  # (B, C[, S])
    moments = torch.stack([on.double().sum((0, 1)), x0.sum((0, 1)), x0.pow(2).sum((0, 1))])  # (3[, S])
    if reduce is not None:
        moments = reduce(moments)
    count, total, total_sq = moments.unbind(0)  # () or (S,) each
    n = count.clamp(min=1)
    mean = total / n
    var = (total_sq / n - mean.pow(2)).clamp(min=0)  # population variance
    out = (x.double() - mean) * torch.rsqrt(var + eps)  # (B, C[, S])
    if not shift_mean:
        out = out + mean
    return torch.where(on, out, torch.zeros_like(out)).to(x.dtype)


__all__ = ["gae", "token_rewards", "whiten"]
