"""Evaluation of a multi-head policy (MAH-DPO) at several mixes of its heads: greedy generation on the hf engine.

    scores = evaluate_mixes(recipe, trainers, rows, rewards, work_dir)    # mixes: objective.eval_mixes
    # {mix/I/COMPONENT: mean, mix/I/weight/HEAD: w_HEAD, mix/I/completion_tokens_mean: ...}

The training ranks write the current policy (trunk + heads, rlhf/models/multihead.py) to ``work_dir``; one hf
engine in this process loads it and, for each mix, sets its lm_head to the merged head sum_k w_k W_k (exactly the
mix's logits) and generates one greedy completion per held-out prompt, scored by every reward component. The
columns the components see are the row's dataset columns (an ``answer``, ...) plus ``finished`` and
``num_tokens``, as in training.
"""

from __future__ import annotations

from typing import Any, Sequence

SKIPPED = ("prompt", "chosen", "rejected", "completion")  # pair texts: not columns of a generated completion


def evaluate_mixes(recipe: Any, trainers: Any, rows: list[dict], rewards: Any, work_dir: str,
                   mixes: Sequence[Sequence[float]] | None = None) -> dict[str, float]:
    """Every reward component's mean over greedy completions of ``rows`` at each mix (default
    objective.eval_mixes; module docstring)."""
    from rlhf.rollout.hf import HFEngine
    from rlhf.runtime.collect import eval_sampling
    from rlhf.scoring.group import rollout_columns

    heads = recipe.objective.heads
    mixes = recipe.objective.resolved_eval_mixes() if mixes is None else mixes
    settings = eval_sampling(recipe)
    trainers.save_hf(work_dir)
    engine = HFEngine(work_dir, dtype=recipe.engine_dtype, trust_remote_code=recipe.model.trust_remote_code,
                      chat_template=recipe.data.chat_template, max_prompt_tokens=recipe.data.max_prompt_tokens)
    prompts = [r["prompt"] for r in rows]
    extras = {k: [r.get(k) for r in rows] for k in rows[0] if k not in SKIPPED and not k.startswith("_")}
    out: dict[str, float] = {}
    for i, mix in enumerate(mixes):
        engine.set_head_mix(mix)
        rollout = engine.generate(prompts, settings)
        columns = {**extras, **rollout_columns(rollout)}
        rv, _ = rewards.score(rollout.prompts, rollout.completions, columns)
        out.update({f"mix/{i}/{name}": value for name, value in rv.means().items()})
        out.update({f"mix/{i}/weight/{head}": float(w) for head, w in zip(heads, mix)})
        out[f"mix/{i}/completion_tokens_mean"] = float(rollout.completion_lengths.float().mean())
    return out


__all__ = ["evaluate_mixes"]
