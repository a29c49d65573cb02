"""The on-policy stage (GRPO, RLOO, REINFORCE++): generate -> score -> advantages -> update -> sync, per step.

    stage = OnPolicyStage(recipe, trainers, objective, start_dir, train_rows, eval_rows, actors)
    stage.load_state_dict(saved)          # sampler position + aggregator state, on resume
    metrics = stage.step(step)
    scores = stage.evaluate()             # greedy completions on held-out prompts, every reward component
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlhf.advantages.group import group_normalize
from rlhf.config.schema import Recipe
from rlhf.types import ExperienceBatch, RewardVector, RolloutBatch, SamplingSettings


class OnPolicyStage:
    phase = "rl"

    def __init__(self, recipe: Recipe, trainers, objective, start_dir: str, train_rows: list[dict],
                 eval_rows: list[dict], actors: list[Any], resume_from: Any = None) -> None:
        from rlhf.advantages.process import Segmenter
        from rlhf.data import PromptSampler
        from rlhf.rollout.group import RolloutGroup
        from rlhf.scoring.group import RewardGroup
        from rlhf.weighting import build_weighting

        self.recipe, self.trainers, self.objective = recipe, trainers, objective
        self.eval_rows = eval_rows
        self.engines = RolloutGroup(recipe, start_dir)
        actors.append(self.engines)
        self.rewards = RewardGroup(recipe.rewards, segmenter=Segmenter.from_config(recipe.process))
        actors.append(self.rewards)
        self.weighting = build_weighting(recipe.weighting, recipe.rewards, total_steps=recipe.run.steps)
        self.sampler = PromptSampler(train_rows, recipe.rollout.prompts_per_step, recipe.run.seed)

    def summary_keys(self) -> dict[str, str]:
        return {c.name: f"reward/{c.name}/mean" for c in self.recipe.rewards}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.weighting.load_state_dict(state["weighting"])

    def start(self, version: int) -> None:
        """Engines start from the trainer's exact weights (checked by fingerprint)."""
        sync_weights(self.trainers, self.engines, version)

    def step(self, step: int) -> dict[str, float]:
        return rl_step(self.recipe, step, self.sampler, self.engines, self.rewards, self.weighting, self.objective,
                       self.trainers, self.estimator)

    estimator = None  # PPO's stage sets one (critic + GAE)

    def save_checkpoint(self, staged_dir: str) -> None:
        """Anything the stage owns besides the policy (PPO: the critic)."""

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.recipe, self.engines, self.rewards, self.eval_rows)


def rl_step(recipe, step, sampler, engines, rewards, weighting, objective, trainers, estimator=None) -> dict:
    """generate -> score -> advantages -> update -> sync; returns this step's metrics.

    `estimator` (PPO) computes token-level advantages from trainer-side passes (logprobs, critic values) in
    `prepare`, and trains what it owns (the critic) in `after_update`; without it the objective's own
    group-relative advantages are used.
    """
    t_step = time.perf_counter()
    weighting.begin_step(step)  # schedules
    rollout, rv, sample_metrics, t_generate, t_score = generate_and_score(
        recipe, step, sampler, engines, rewards, weighting
    )
    sample_metrics.update(weighting.observe(rv))  # constraints' multipliers, hypervolume-guided weights
    if recipe.process.progress.enabled:  # MRT: dense bonus from success estimates at every step end
        from rlhf.runtime.progress import estimate_progress
        from rlhf.scoring.group import rollout_columns

        t0 = time.perf_counter()
        sample_metrics.update(estimate_progress(recipe, engines, rewards, rollout, rv, rollout_columns(rollout),
                                                seed=(recipe.run.seed * 1_000_003 + step) * 16 + 15))
        t_generate += time.perf_counter() - t0
        sample_metrics["time/progress"] = time.perf_counter() - t0
    completion_mask = rollout.completion_mask.float()  # (B, C)
    if getattr(recipe.objective, "mask_truncated", False):  # DAPO overlong filtering
        completion_mask = completion_mask * rollout.finished.float().unsqueeze(1)
    exp = ExperienceBatch(
        input_ids=rollout.input_ids(),
        attention_mask=rollout.attention_mask(),
        completion_mask=completion_mask,
        advantages=torch.zeros(rollout.batch_size),
        prompt_len=rollout.prompt_ids.shape[1],
        # the engine's logprobs: the trainer logs the mismatch and, with rollout.tis_cap, corrects for it
        rollout_logprobs=rollout.logprobs if _track_mismatch(recipe) else None,
    )
    engines.sleep()  # colocated vllm with sleep mode frees its memory while training runs (no-op otherwise)
    t0 = time.perf_counter()
    if estimator is None:
        if weighting.needs_gradients(step):  # gradient-based weighting: per-component gradients' Gram matrix
            per_component = group_normalize(rv.values, rollout.group_ids)  # (B, K), NaN -> 0
            gram = trainers.component_gram(exp, per_component, recipe.weighting.gradient.max_samples)  # (K, K)
            sample_metrics.update(weighting.gradient_update(gram))
        exp.advantages, adv_metrics = sequence_signal(objective, rv, rollout.group_ids, weighting,
                                                      width=rollout.completion_ids.shape[1])  # (B,) or (B, C)
    else:
        adv_metrics = estimator.prepare(exp, rv, rollout.group_ids)  # sets (B, C) advantages, old/ref, values
    t_prepare = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_metrics = trainers.train_rl(exp)
    if estimator is not None:
        train_metrics.update(estimator.after_update(exp))
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    payload = sync_weights(trainers, engines, version=step)
    t_sync = time.perf_counter() - t0

    timings = {"time/generate": t_generate, "time/score": t_score, "time/advantages": t_prepare,
               "time/train": t_train, "time/sync": t_sync, "time/step": time.perf_counter() - t_step}
    return {**sample_metrics, **adv_metrics, **train_metrics, **rollout_metrics(rollout, payload, timings),
            "events/rollout_restarts": float(getattr(engines, "restarts", 0))}  # cumulative


def training_sampling(recipe: Recipe, step: int, round_: int = 0) -> SamplingSettings:
    """The recipe's sampling settings for a training rollout: seeded per step (and sampling round), rollout
    logprobs asked for only when the trainer uses them (`_track_mismatch`)."""
    r = recipe.rollout
    return SamplingSettings(
        n=r.group_size, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
        top_k=r.top_k, stop=tuple(r.stop), seed=(recipe.run.seed * 1_000_003 + step) * 16 + round_,
        ignore_eos=r.ignore_eos, logprobs=_track_mismatch(recipe),  # hf without TIS: not needed
    )


def eval_sampling(recipe: Recipe) -> SamplingSettings:
    """Held-out evaluation: one greedy completion per prompt, the recipe's length and stop strings."""
    return SamplingSettings(n=1, max_new_tokens=recipe.rollout.max_new_tokens, greedy=True,
                            stop=tuple(recipe.rollout.stop))


def _track_mismatch(recipe: Recipe) -> bool:
    """Rollout logprobs go to the trainer when they can differ from its own (vllm) or TIS is on. The `hf` engine
    recomputes them with the trainer's own code on the same weights, so there the mismatch is exactly zero."""
    return recipe.rollout.engine != "hf" or recipe.rollout.tis_cap is not None


def rollout_metrics(rollout: RolloutBatch, payload, timings: dict[str, float]) -> dict[str, float]:
    """Generation and throughput numbers every on-policy step logs, plus the phase timings."""
    n_tokens = int(rollout.completion_mask.sum())
    return {
        "rollout/completion_tokens_mean": n_tokens / rollout.batch_size,
        "rollout/finished_rate": float(rollout.finished.float().mean()),
        "throughput/gen_tokens_per_s": n_tokens / max(timings["time/generate"], 1e-9),
        "throughput/samples_per_s": rollout.batch_size / max(timings["time/step"], 1e-9),
        "sync/bytes": payload.num_bytes,
        "sync/fast_route": float(payload.transport != "object_store"),  # 0 on a broadcast/IPC run: it fell back
        **timings,
    }


def generate_and_score(recipe, step, sampler, engines, rewards, weighting):
    """One training batch of rollouts and their reward vector.

    With `objective.dynamic_sampling` (DAPO), groups whose scalar reward has zero variance carry no signal: they
    are dropped and more prompts are generated, up to `max_sampling_rounds` rounds; if still short, dropped
    groups fill the batch (their advantages are 0) so the batch keeps its size.
    """
    from rlhf.rollout.base import cat_rollouts, select_groups

    r, cfg = recipe.rollout, recipe.objective
    dynamic = getattr(cfg, "dynamic_sampling", False)
    rounds = cfg.max_sampling_rounds if dynamic else 1
    kept: list[tuple[RolloutBatch, RewardVector]] = []
    dropped: list[tuple[RolloutBatch, RewardVector]] = []
    n_kept, metrics, t_generate, t_score = 0, {}, 0.0, 0.0
    for round_ in range(rounds):
        rows = sampler.next_batch()
        t0 = time.perf_counter()
        settings = training_sampling(recipe, step, round_)
        rollout = engines.generate([row["prompt"] for row in rows], settings)
        t_generate += time.perf_counter() - t0
        t0 = time.perf_counter()
        rv, reward_metrics = rewards.score(rollout.prompts, rollout.completions, _columns(rows, rollout),
                                           locate=step_locator(engines, rollout))
        t_score += time.perf_counter() - t0
        if round_ == 0:
            metrics.update(reward_metrics)
        if not dynamic:
            return rollout, rv, metrics, t_generate, t_score
        informative = _informative_groups(weighting.weighted_sum(rv), rollout.group_ids)
        rest = [g for g in range(len(rows)) if g not in informative]
        kept.append((select_groups(rollout, informative), rv.select(_rows_of(rollout, informative))))
        dropped.append((select_groups(rollout, rest), rv.select(_rows_of(rollout, rest))))
        n_kept += len(informative)
        if n_kept >= r.prompts_per_step:
            break
    metrics["dynamic_sampling/rounds"] = round_ + 1
    metrics["dynamic_sampling/filled_groups"] = max(0, r.prompts_per_step - n_kept)
    parts = [p for p in kept + dropped if p[0].batch_size]
    rollout = cat_rollouts([p[0] for p in parts], engines.pad_token_id)
    rv = RewardVector.cat([p[1] for p in parts])
    groups = list(range(r.prompts_per_step))  # kept groups first, then the fill
    return select_groups(rollout, groups), rv.select(_rows_of(rollout, groups)), metrics, t_generate, t_score


def _informative_groups(reward: torch.Tensor, group_ids: torch.Tensor) -> list[int]:
    """Groups whose applicable scalar rewards are not all equal."""
    out = []
    for g in group_ids.unique().tolist():
        vals = reward[group_ids == g]
        vals = vals[~torch.isnan(vals)]
        if vals.numel() > 1 and bool((vals != vals[0]).any()):
            out.append(int(g))
    return out


def _rows_of(batch: RolloutBatch, groups: list[int]) -> list[int]:
    return [i for g in groups for i in (batch.group_ids == g).nonzero().flatten().tolist()]


def sequence_signal(objective, rv: RewardVector, group_ids, weighting,
                    width: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """(B,) per-sample signal the trainer needs: advantages, or for token-level objectives (REINFORCE++) the
    sequence scores that the trainer turns into token advantages once logprobs are known. With step rewards,
    objectives that use them (GRPO) return (B, C) token advantages, C = ``width``; the others use the process
    components' outcome values."""
    if getattr(objective, "token_level_advantages", False):
        return objective.sequence_scores(rv, group_ids, weighting)
    if rv.has_steps and objective.name == "grpo":
        return objective.advantages(rv, group_ids, weighting, width=width)
    return objective.advantages(rv, group_ids, weighting)


def step_locator(engines, rollout: RolloutBatch):
    """Maps step ends (characters of the decoded completions) to completion token indices, with the engines'
    tokenizer (used only when the reward group has process components)."""
    from rlhf.advantages.process import StepLocator

    return StepLocator(engines.tokenizer, rollout.completion_ids, rollout.completion_mask)


def _columns(rows: list[dict[str, Any]], rollout: RolloutBatch) -> dict[str, list[Any]]:
    """Dataset columns repeated per sample (rows of a group are adjacent), plus `finished` and `num_tokens`."""
    from rlhf.scoring.group import rollout_columns

    n = rollout.batch_size // len(rows)
    keys = [k for k in rows[0] if k not in ("prompt", "completion")]
    rollout.extras = {k: [row.get(k) for row in rows for _ in range(n)] for k in keys}
    return rollout_columns(rollout)


# --------------------------------------------------------------------------- warm-up, eval, save


def sync_weights(trainers, engines, version: int):
    """Trainer rank 0's weights into every engine, fingerprint-checked (raises WeightSyncError on a mismatch)."""
    if engines.weight_sync == "broadcast":
        return engines.sync_broadcast(trainers, version)
    if engines.weight_sync == "cuda_ipc":
        return engines.sync_ipc(trainers, version)
    payload = trainers.export_weights(version)
    engines.sync(payload)
    return payload


def evaluate(recipe: Recipe, engines, rewards, rows: list[dict]) -> dict[str, float]:
    """Greedy completions on held-out rows, scored by every reward component."""
    rows = rows[: recipe.eval.max_samples]
    settings = eval_sampling(recipe)
    rollout = engines.generate([r["prompt"] for r in rows], settings)
    rv, _ = rewards.score(rollout.prompts, rollout.completions, _columns(rows, rollout))
    out = {name: v for name, v in rv.means().items()}
    if recipe.eval.accuracy_component:
        out["accuracy"] = out[recipe.eval.accuracy_component]
    out["completion_tokens_mean"] = float(rollout.completion_lengths.float().mean())
    return out
