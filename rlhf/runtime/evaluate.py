"""Held-out evaluation of a policy by generation: greedy completions of held-out prompts (through the rollout
function), scored by every reward component.

    scores = evaluate_generated(rollout_fn, rewards, rows, eval_sampling(recipe), "correct")
    # {component: mean, "accuracy": ..., "completion_tokens_mean": ..., [TASK/component: ...]}

A preference-conditioned policy (recipe ``conditioning``) is evaluated at each of the conditioner's eval vectors:

    scores = evaluate_at_vectors(rollout_fn, rewards, rows, settings, conditioner, "correct")
    # {cond/I/NAME: component mean at vector I, cond/I/weight/NAME: its weight, cond/I/score: mean of v.r,
    #  cond/spearman/NAME: rank correlation of NAME's weight and value over the vectors,
    #  NAME / accuracy / completion_tokens_mean: averaged over the vectors}
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from rlhf.types import RewardVector, SamplingSettings


def evaluate_generated(rollout_fn: Any, rewards: Any, rows: list[dict], settings: SamplingSettings,
                       accuracy_component: str | None = None,
                       breakdown: Callable[[list[dict], RewardVector], dict[str, float]] | None = None
                       ) -> dict[str, float]:
    """Every component's mean over the completions of ``rows``; ``accuracy`` is the accuracy component's mean;
    ``breakdown(rows, rv)`` adds more (CGPO: per task)."""
    from rlhf.runtime.collect import score_rollout

    rollout = rollout_fn(rows, settings)
    rv, _ = score_rollout(rewards, rollout_fn, rollout)
    out = dict(rv.means())
    out.update(rollout_fn.metrics(rollout))  # agent: turns, tool calls, end reasons
    if accuracy_component:
        out["accuracy"] = out[accuracy_component]
    out["completion_tokens_mean"] = float(rollout.completion_lengths.float().mean())
    if breakdown is not None:
        out.update(breakdown(rows, rv))
    return out


def evaluate_at_vectors(rollout_fn: Any, rewards: Any, rows: list[dict], settings: SamplingSettings,
                        conditioner: Any, accuracy_component: str | None = None) -> dict[str, float]:
    """The held-out rows rendered at each of ``conditioner.eval_vectors`` (module docstring): per vector, every
    component's mean and the mean preference-weighted score; per conditioned component, the rank correlation of its
    weight with its measured mean over the vectors (steerability)."""
    from rlhf.data.conditioning import rank_correlation
    from rlhf.runtime.collect import score_rollout

    out: dict[str, float] = {}
    per_vector: list[dict[str, float]] = []
    for i, vector in enumerate(conditioner.eval_vectors):
        rollout = rollout_fn(conditioner.render(rows, vector), settings)
        rv, _ = score_rollout(rewards, rollout_fn, rollout)
        rv = conditioner.attach(rv, rollout.extras)  # sample_weights (B, K): the vector on the conditioned components
        cols = [rv.index(n) for n in conditioner.components]
        score = torch.nansum(rv.values[:, cols] * rv.sample_weights[:, cols], dim=1)  # (B,) v.r, NaN counts 0
        scores = {**rv.means(), "completion_tokens_mean": float(rollout.completion_lengths.float().mean())}
        per_vector.append(scores)
        out.update({f"cond/{i}/{name}": value for name, value in scores.items()})
        out.update({f"cond/{i}/weight/{name}": float(w) for name, w in zip(conditioner.components, vector)})
        out[f"cond/{i}/score"] = float(score.mean())
    for j, name in enumerate(conditioner.components):
        out[f"cond/spearman/{name}"] = rank_correlation([v[j] for v in conditioner.eval_vectors],
                                                        [p[name] for p in per_vector])
    for key in per_vector[0]:  # the headline keys (eval/NAME, as unconditioned runs log them): over the vectors
        out[key] = sum(p[key] for p in per_vector) / len(per_vector)
    if accuracy_component:
        out["accuracy"] = out[accuracy_component]
    return out
