"""Held-out evaluation of a policy by generation: greedy completions of held-out prompts (through the rollout
function), scored by every reward component.

    scores = evaluate_generated(rollout_fn, rewards, rows, eval_sampling(recipe), "correct")
    # {component: mean, "accuracy": ..., "completion_tokens_mean": ..., [TASK/component: ...]}
"""

from __future__ import annotations

from typing import Any, Callable

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
