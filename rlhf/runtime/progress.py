"""MRT's progress reward (Qu et al. 2025, *Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning*).

For a completion cut into steps z_1..z_n (the recipe's ``process`` segmenter), the success probability after the
first j steps, mu_j = P(success | prompt, z_1..z_j), is estimated by sampling ``samples`` continuations of that
prefix with the rollout function (the current policy) and scoring each finished text with the outcome component
(``process.progress.component``, a 0/1 reward). mu_0 is the success rate of the prompt's own group of samples and
mu_n is the completion's own outcome. Step j earns the progress bonus

    b_j = weight * (mu_j - mu_{j-1})

as a dense reward at its last token (``RewardVector.bonus``; GRPO credits it to the tokens up to that step, PPO
adds it to GAE), next to the 0/1 outcome reward. Steps beyond ``max_steps`` get no bonus; the bonus of the last
bonused step still includes everything up to its own mu. Cost: one generation of ``samples`` continuations for
every (row, step) pair but the last: B x min(S, max_steps) x samples completions per training step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rlhf.types import RewardVector, RolloutBatch, SamplingSettings


def progress_bonus(mu: torch.Tensor, n_steps: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, S+1) success estimates mu_0..mu_S (NaN past a row's steps), (B,) steps per row -> (B, S) bonus,
    weight * (mu_j - mu_{j-1}) for j <= n_steps, 0 elsewhere."""
    diff = mu[:, 1:] - mu[:, :-1]  # (B, S)
    valid = torch.arange(diff.shape[1]).unsqueeze(0) < n_steps.unsqueeze(1)  # (B, S)
    return torch.where(valid & ~torch.isnan(diff), weight * diff, torch.zeros_like(diff))


def estimate_progress(recipe: Any, rollout_fn: Any, rewards: Any, rollout: RolloutBatch, rv: RewardVector,
                      columns: dict[str, list], seed: int) -> dict[str, float]:
    """Set ``rv.bonus`` (B, S) (and ``rv.step_ends`` / empty ``rv.steps`` when no process component made them)
    from sampled continuations; returns metrics."""
    from rlhf.advantages.process import Segmenter, StepLocator

    cfg = recipe.process.progress
    tok = rollout_fn.tokenizer
    if rv.step_ends is None:
        spans = [Segmenter.from_config(recipe.process)(c) for c in rollout.completions]
        rv.step_ends = StepLocator(tok, rollout.completion_ids, rollout.completion_mask)(
            [[end for _, end in sp] for sp in spans])  # (B, S)
    if rv.steps is None:
        rv.steps = torch.zeros((*rv.step_ends.shape, 0))  # (B, S, 0): no process component
    ends = rv.step_ends  # (B, S)
    B, S = ends.shape
    n_steps = (ends >= 0).sum(dim=1)  # (B,)
    outcome = rv.component(cfg.component)  # (B,) the completions' own success
    mu = torch.full((B, S + 1), math.nan)  # (B, S+1)
    group_mean = _group_means(outcome, rollout.group_ids)  # (B,) mu_0
    mu[:, 0] = group_mean
    mu[torch.arange(B), n_steps] = outcome  # mu_n: the completion itself

    jobs = [(b, j) for b in range(B) for j in range(min(int(n_steps[b]) - 1, cfg.max_steps))]  # steps but the last
    if jobs:
        rates = _success_rates(recipe, rollout_fn, rewards, rollout, ends, columns, jobs, seed)
        for (b, j), rate in zip(jobs, rates):
            mu[b, j + 1] = rate
    capped = torch.clamp(n_steps, max=cfg.max_steps)  # bonus on at most max_steps steps
    # a row with more steps than max_steps: its last bonused step j=max_steps jumps to mu_max (estimated above)
    rv.bonus = progress_bonus(mu, capped, cfg.weight)  # (B, S)
    valid = ~torch.isnan(mu[:, 1:]) & (torch.arange(S).unsqueeze(0) < capped.unsqueeze(1))
    return {
        "progress/mu0_mean": float(torch.nanmean(group_mean)) if B else math.nan,
        "progress/mu_mean": float(mu[:, 1:][valid].mean()) if bool(valid.any()) else math.nan,
        "progress/bonus_abs_mean": float(rv.bonus.abs().sum() / valid.sum().clamp(min=1)),
        "progress/prefixes": float(len(jobs)),
        "progress/continuations": float(len(jobs) * cfg.samples),
    }


def _group_means(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    from rlhf.advantages.group import group_stats

    stats = group_stats(x, group_ids)
    return torch.where(stats.count[stats.inverse] > 0, stats.mean[stats.inverse], torch.full_like(x, math.nan))


def _success_rates(recipe: Any, rollout_fn: Any, rewards: Any, rollout: RolloutBatch, ends: torch.Tensor,
                   columns: dict[str, list], jobs: list[tuple[int, int]], seed: int) -> list[float]:
    """Mean outcome of ``samples`` continuations from each (row, step) prefix. A continuation may use what is
    left of the rollout's token budget (so prompt + completion never outgrow the validated context)."""
    cfg, r = recipe.process.progress, recipe.rollout
    tok = rollout_fn.tokenizer
    heads = [rollout.completion_ids[b, : int(ends[b, j]) + 1].tolist() for b, j in jobs]
    by_budget: dict[int, list[int]] = {}
    for i, head in enumerate(heads):
        budget = min(cfg.max_new_tokens or r.max_new_tokens, r.max_new_tokens - len(head))
        by_budget.setdefault(max(1, budget), []).append(i)
    texts: list[str] = [""] * (len(jobs) * cfg.samples)
    finished: list[bool] = [False] * len(texts)
    lengths: list[int] = [0] * len(texts)
    for budget, members in sorted(by_budget.items()):
        prefixes = [rollout.prompt_ids[jobs[i][0]][rollout.prompt_mask[jobs[i][0]].bool()].tolist() + heads[i]
                    for i in members]
        settings = SamplingSettings(n=cfg.samples, max_new_tokens=budget, temperature=r.temperature, top_p=r.top_p,
                                    top_k=r.top_k, stop=tuple(r.stop), seed=seed + budget)
        cont = rollout_fn.continue_ids(prefixes, settings)  # rows grouped by prefix: cfg.samples each
        for row, (ids, m, done) in enumerate(zip(cont.completion_ids, cont.completion_mask, cont.finished)):
            i = members[row // cfg.samples]
            slot = i * cfg.samples + row % cfg.samples
            texts[slot] = tok.decode(heads[i] + ids[m.bool()].tolist(), skip_special_tokens=True)
            finished[slot], lengths[slot] = bool(done), len(heads[i]) + int(m.sum())
    rows = [b for b, _ in jobs for _ in range(cfg.samples)]
    cols = {k: [v[b] for b in rows] for k, v in columns.items() if k not in ("steps", "finished", "num_tokens")}
    cols["finished"], cols["num_tokens"] = finished, lengths
    success = torch.tensor(rewards.score_one(cfg.component, [rollout.prompts[b] for b in rows], texts, cols))
    success = torch.nan_to_num(success, nan=0.0).view(len(jobs), cfg.samples)  # (jobs, samples)
    return success.mean(dim=1).tolist()
