"""Per-turn credit assignment for multi-turn agent episodes: turn rewards, discounted returns, step groups.

An agent episode i is a sequence of turns t = 0..n_i-1, the steps of the reward vector (``rv.step_ends`` is the
completion-token index of each turn's last model token, -1 padded, valid turns first). With w_p the weight of
process component p and w_k that of an episode-level component k:

    r_{i,t} = sum_p w_p s_{i,t,p}  +  [t = n_i - 1] * o_i          turn reward (``turn_rewards``)
    o_i     = sum_k w_k v_{i,k}   over the components of ``sequence_part(rv)`` (NaN components ignored; all NaN: 0)
    R_{i,t} = sum_{k >= t} gamma^(k - t) r_{i,k}                    discounted return (``discounted_returns``)

A NaN turn score counts 0. The episode's outcome o_i sits on its LAST valid turn. A row with no valid turn has
no turn rewards at all: its outcome is put nowhere here (the episode-level advantage of GiGPO, computed from
``episode_vector``, still carries it).

Step groups (``anchor_normalize``): within the episodes of one group (one prompt), the turns taken from the same
environment state (same ``step_keys`` id >= 0) form an anchor group (GiGPO, Feng et al. 2025, sec. 3.2); each
value is normalised over its anchor group with the conventions of ``rlhf.advantages.group.group_normalize``
(unbiased std, eps added to it; scale_std False only centres):

    A^S_{i,t} = (R_{i,t} - mean_{(j,u) in G(i,t)} R_{j,u}) / (std_{(j,u) in G(i,t)} R_{j,u} + eps)

An anchor group of one turn, an invalid turn and a turn with key -1 get 0. ``group_step_normalize`` is the same
with ALL valid turns of an episode group in one step group (turn-level discounted returns with a group baseline).

Episodes of one group that end at different turns (the agent chooses when to stop): a shorter episode simply
has fewer steps; its missing turns are not zeros and join no group. Anchor groups form only among the turns that
exist (a state that only a long episode reached is a singleton, advantage 0). The baseline of
``group_step_normalize`` pools the turns of every depth of every episode of the group (a short episode adds fewer
turns to it, a long one more: the baseline leans towards long episodes' returns). Each outcome sits on its own
episode's last turn and reaches turn t discounted by gamma^(n_i - 1 - t): with gamma < 1 a short episode's
outcome reaches its first turn less discounted than a long episode's reaches its own (ending sooner with the same
outcome earns a larger return at turn 0, and a failure's penalty too).

Imports only torch, the standard library and floor-0/1 helpers (group normalisation, ``sequence_part``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlhf.advantages.group import group_normalize
from rlhf.advantages.process import sequence_part
from rlhf.types import RewardVector


def _outcome_values(rv: RewardVector) -> Tensor:
    """(B, K) the episode-level values: ``sequence_part`` (process outcomes blanked where turn scores exist)."""
    return rv.values if rv.steps is None else sequence_part(rv).values


def _has_scores(rv: RewardVector) -> Tensor:
    """(B, S, Kp) bool: a valid turn with a (non-NaN) score of each process component."""
    return ~torch.isnan(rv.steps) & (rv.step_ends >= 0).unsqueeze(-1)


def turn_rewards(rv: RewardVector, weights: dict[str, float]) -> tuple[Tensor, Tensor]:
    """(rewards (B, S), valid (B, S) bool): r_{i,t} of the module docstring; 0 on invalid turns."""
    if rv.step_ends is None:
        raise ValueError("turn_rewards: the reward vector has no step_ends (turns)")
    valid = rv.step_ends >= 0  # (B, S)
    rewards = rv.values.new_zeros(valid.shape)  # (B, S)
    if rv.steps is not None:
        for p, name in enumerate(rv.process_names):
            score = torch.where(_has_scores(rv)[..., p], rv.steps[..., p], torch.zeros_like(rewards))  # (B, S)
            rewards = rewards + weights[name] * score
    w = torch.tensor([weights[n] for n in rv.names], dtype=rv.values.dtype, device=rv.values.device)  # (K,)
    outcome = torch.nansum(_outcome_values(rv) * w, dim=1)  # (B,) NaN components ignored; all NaN -> 0
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)  # (B, S)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).max(dim=1).values  # (B,) -1: no turn
    on_last = valid & (positions == last.unsqueeze(1))  # (B, S) one True per row with a turn
    rewards = rewards + torch.where(on_last, outcome.unsqueeze(1), torch.zeros_like(rewards))
    return rewards, valid


def episode_vector(rv: RewardVector) -> RewardVector:
    """The reward vector of episode returns: each process component's value is the sum of its turn scores (NaN
    turns 0) on rows that have any, its outcome value elsewhere (as ``sequence_part`` keeps it). Its weighted sum
    is sum_t r_{i,t} on rows with turns (and o_i on rows without), so a weighting's ``scalarize`` of it is the
    group-normalised episode return."""
    values = _outcome_values(rv).clone()  # (B, K)
    if rv.steps is not None and rv.step_ends is not None:
        has = _has_scores(rv)  # (B, S, Kp)
        for p, name in enumerate(rv.process_names):
            total = torch.where(has[..., p], rv.steps[..., p], torch.zeros_like(rv.steps[..., p])).sum(1)  # (B,)
            rows = has[..., p].any(dim=1)  # (B,)
            values[rows, rv.index(name)] = total[rows]
    return RewardVector(rv.names, rv.kinds, values)


def discounted_returns(rewards: Tensor, valid: Tensor, gamma: float) -> Tensor:
    """(B, S) -> (B, S): R_{i,t} = sum_{k >= t, valid} gamma^(k-t) r_{i,k}; 0 on invalid turns."""
    returns = torch.zeros_like(rewards)  # (B, S)
    running = rewards.new_zeros(rewards.shape[0])  # (B,)
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = torch.where(valid[:, t], rewards[:, t], torch.zeros_like(running)) + gamma * running
        returns[:, t] = torch.where(valid[:, t], running, torch.zeros_like(running))
    return returns


def _pairs(keys: Tensor, group_ids: Tensor, where: Tensor) -> Tensor:
    """(n, 2) long (episode group, key) of the turns selected by ``where`` (B, S)."""
    groups = group_ids.long().unsqueeze(1).expand_as(keys)  # (B, S)
    return torch.stack([groups[where], keys.long()[where]], dim=1)


def _step_labels(valid: Tensor, keys: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(eligible (B, S) bool, labels (n,) long): one label per (episode group, key) pair of the eligible turns."""
    eligible = valid & (keys >= 0)  # (B, S)
    pairs = _pairs(keys, group_ids, eligible)  # (n, 2)
    if pairs.shape[0] == 0:
        return eligible, pairs.new_zeros(0)
    _, labels = torch.unique(pairs, dim=0, return_inverse=True)  # (n,)
    return eligible, labels


def _normalize_in_groups(values: Tensor, eligible: Tensor, labels: Tensor, scale_std: bool, eps: float) -> Tensor:
    out = torch.zeros_like(values)  # (B, S)
    if labels.numel():
        out[eligible] = group_normalize(values[eligible], labels, scale_std, eps)  # singleton groups: x - x = 0
    return out


def anchor_normalize(values: Tensor, valid: Tensor, keys: Tensor, group_ids: Tensor, scale_std: bool = True,
                     eps: float = 1e-6) -> Tensor:
    """(B, S) -> (B, S) normalised within anchor groups (same episode group, same key >= 0); 0 for singleton
    groups, invalid turns and key < 0. ``group_ids`` (B,), ``keys`` (B, S) long."""
    eligible, labels = _step_labels(valid, keys, group_ids)
    return _normalize_in_groups(values, eligible, labels, scale_std, eps)


def group_step_normalize(values: Tensor, valid: Tensor, group_ids: Tensor, scale_std: bool = True,
                         eps: float = 1e-6) -> Tensor:
    """(B, S) -> (B, S) normalised over all valid turns of each episode group; 0 on invalid turns."""
    keys = torch.zeros(valid.shape, dtype=torch.long, device=valid.device)  # (B, S) one step group per group
    return anchor_normalize(values, valid, keys, group_ids, scale_std, eps)


def anchor_group_sizes(valid: Tensor, keys: Tensor, group_ids: Tensor) -> Tensor:
    """(B, S) long: the number of turns in each turn's anchor group; 0 for invalid turns and key < 0."""
    eligible, labels = _step_labels(valid, keys, group_ids)
    sizes = torch.zeros(valid.shape, dtype=torch.long, device=valid.device)  # (B, S)
    if labels.numel():
        sizes[eligible] = torch.bincount(labels)[labels]
    return sizes


def anchor_metrics(valid: Tensor, keys: Tensor, group_ids: Tensor) -> dict[str, float]:
    """coverage: fraction of valid turns whose anchor group has >= 2 turns; groups: anchor groups of >= 2 turns
    per episode group (mean over episode groups)."""
    sizes = anchor_group_sizes(valid, keys, group_ids)  # (B, S)
    n_valid = int(valid.sum())
    coverage = float((sizes >= 2).sum()) / n_valid if n_valid else math.nan
    shared = sizes >= 2  # (B, S)
    pairs = _pairs(keys, group_ids, shared)  # (n, 2)
    n_anchor = int(torch.unique(pairs, dim=0).shape[0]) if pairs.shape[0] else 0
    n_groups = int(group_ids.unique().numel())
    return {"gigpo/anchor_coverage": coverage, "gigpo/anchor_groups": n_anchor / n_groups if n_groups else math.nan}


def turn_token_values(values: Tensor, step_ends: Tensor, width: int) -> Tensor:
    """(B, S) per-turn values -> (B, C): token j gets the value of the first valid turn s with step_ends[s] >= j
    (the turn it belongs to; the observation tokens before turn s get it too, the caller's loss mask drops them);
    tokens after the last turn end get 0."""
    valid = step_ends >= 0  # (B, S)
    n_steps = values.shape[1]
    if bool(valid.any()) and int(step_ends[valid].max()) >= width:
        raise ValueError(f"a turn ends at token {int(step_ends[valid].max())} beyond the completion width {width}")
    first = torch.full((values.shape[0], width + 1), n_steps, dtype=torch.long, device=values.device)  # (B, C+1)
    positions = torch.arange(n_steps, device=values.device).expand_as(step_ends)  # (B, S)
    at = torch.where(valid, step_ends, torch.full_like(step_ends, width))  # (B, S) invalid -> spare column C
    first = first.scatter_reduce(1, at, torch.where(valid, positions, torch.full_like(positions, n_steps)), "amin")
    first = torch.cummin(first[:, :width].flip(1), dim=1).values.flip(1)  # (B, C) smallest s with end_s >= j
    padded = torch.cat([values, values.new_zeros((values.shape[0], 1))], dim=1)  # (B, S+1) column S: no turn
    return padded.gather(1, first)  # (B, C)
