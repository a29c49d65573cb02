"""The controller: one training run, top to bottom.

    rlhf train recipes/grpo_tiny_cpu.yaml          ->  run(recipe)

    build actors (train ranks, rollout engines, reward workers)
    [warm-up]  SFT steps on the data's completions, saved as OUT/sft
    eval (before)
    for each step:  prompts -> generate -> score (reward vector) -> advantages -> update -> sync -> log [-> save]
    eval (after), summary
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf.config.schema import Recipe
from rlhf.types import ExperienceBatch, RewardVector, RolloutBatch, SamplingSettings


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message tells the user what to fix; anything else keeps its traceback."""
    from rewards.api import RewardPluginError
    from rlhf.config import RecipeError
    from rlhf.data import DataLoadError
    from rlhf.models.load import ModelLoadError
    from rlhf.runtime.weight_sync import WeightSyncError
    from rlhf.train.checkpoint import CheckpointError
    from rlhf.train.group import TrainWorkerDied

    return (FileNotFoundError, FileExistsError, RecipeError, DataLoadError, ModelLoadError, RewardPluginError,
            WeightSyncError, CheckpointError, TrainWorkerDied, ResumeMismatch)


class ResumeMismatch(ValueError):
    """--resume with a recipe that trains something else than the checkpoint did."""


@dataclass
class RunState:
    """Everything besides weights and optimizer that a resumed run needs (saved as state.json)."""

    step: int = 0
    warmup_done: bool = False
    sampler: dict[str, Any] = field(default_factory=dict)
    weighting: dict[str, Any] = field(default_factory=dict)
    eval_before: dict[str, float] = field(default_factory=dict)
    recipe_digest: str = ""


def run(recipe: Recipe, resume: bool = False) -> dict[str, Any]:
    """Train as the recipe says; returns the summary (also written to OUT/summary.json)."""
    from rlhf.data import PromptSampler, load_rows
    from rlhf.logging import MetricsLogger
    from rlhf.models.load import resolve_model_dir
    from rlhf.objectives import build_objective
    from rlhf.rollout.group import RolloutGroup
    from rlhf.runtime.reward_workers import RewardGroup
    from rlhf.train import checkpoint as ckpt
    from rlhf.train.group import TrainGroup
    from rlhf.weighting import build_weighting

    out = recipe.run.output_dir
    state, resume_from = _resume_point(recipe, resume)
    os.makedirs(out, exist_ok=True)
    _save_recipe(recipe, out)
    seed = recipe.run.seed
    torch.manual_seed(seed)

    # ---- data and model
    train_rows, eval_rows = load_rows(recipe.data, seed)
    corpus = lambda: [r["prompt"] + r.get("completion", "") for r in train_rows + eval_rows]  # noqa: E731
    model_dir, _tok_dir = resolve_model_dir(recipe.model, corpus, out, seed)

    started_ray = _init_ray(recipe)
    if resume_from is not None:
        _truncate_metrics(out, state.step)  # steps after the checkpoint are redone, not logged twice
    log = MetricsLogger(
        out,
        tensorboard=recipe.run.tensorboard,
        progress=recipe.run.progress,
        headline=tuple(f"reward/{c.name}/mean" for c in recipe.rewards) + ("kl",),
        append=resume_from is not None,
    )
    actors: list[Any] = []
    try:
        trainers = TrainGroup(recipe)
        actors.append(trainers)
        # ---- stage 1: SFT warm-up (skipped when done or when resuming past it)
        policy_dir = model_dir
        if recipe.warmup.steps:
            policy_dir = os.path.join(out, "sft")
            if not state.warmup_done:
                _warmup(recipe, trainers, model_dir, policy_dir, train_rows, log)
                state.warmup_done = True
        # ---- stage 2: on-policy RL
        start_dir = str(resume_from / "model") if resume_from else policy_dir
        trainers.build(start_dir, recipe.train.lr)
        if resume_from:
            trainers.load_optimizer(str(resume_from))
        objective = build_objective(recipe.objective)
        if objective.needs_reference:
            trainers.load_reference(policy_dir)
        engines = RolloutGroup(recipe, start_dir)
        actors.append(engines)
        rewards = RewardGroup(recipe.rewards)
        actors.append(rewards)
        weighting = build_weighting(recipe.weighting, recipe.rewards)
        if state.weighting:
            weighting.load_state_dict(state.weighting)
        sampler = PromptSampler(train_rows, recipe.rollout.prompts_per_step, seed)
        if state.sampler:
            sampler.load_state_dict(state.sampler)
        _sync(trainers, engines, version=state.step)  # engines start from the trainer's exact weights

        if not state.eval_before:
            state.eval_before = evaluate(recipe, engines, rewards, eval_rows)
            log.log(state.step, {f"eval/{k}": v for k, v in state.eval_before.items()}, phase="eval")
        log.start_phase("grpo", recipe.run.steps, state.step)

        for step in range(state.step + 1, recipe.run.steps + 1):
            lr = lr_at(recipe, step)
            trainers.set_lr(lr)
            metrics = rl_step(recipe, step, sampler, engines, rewards, weighting, objective, trainers)
            metrics["lr"] = lr
            state.step = step
            if step % recipe.run.log_every == 0 or step == recipe.run.steps:
                log.log(step, metrics)
            if recipe.eval.every and step % recipe.eval.every == 0 and step != recipe.run.steps:
                log.log(step, {f"eval/{k}": v for k, v in evaluate(recipe, engines, rewards, eval_rows).items()}, "eval")
            if recipe.run.save_every and step % recipe.run.save_every == 0 and step != recipe.run.steps:
                _save(recipe, trainers, state, sampler, weighting)

        final_ckpt = (
            str(resume_from) if resume_from is not None and state.step == _ckpt_step(resume_from)
            else _save(recipe, trainers, state, sampler, weighting)
        )
        eval_after = evaluate(recipe, engines, rewards, eval_rows)
        log.log(state.step, {f"eval/{k}": v for k, v in eval_after.items()}, phase="eval")
        log.close()
        summary = _summary(recipe, state, eval_after, final_ckpt, log.path)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        return summary
    finally:
        log.close()
        for group in reversed(actors):
            group.shutdown()
        if started_ray:
            _shutdown_ray()


# --------------------------------------------------------------------------- one RL step


def rl_step(recipe, step, sampler, engines, rewards, weighting, objective, trainers) -> dict[str, float]:
    """generate -> score -> advantages -> update -> sync; returns this step's metrics."""
    t_step = time.perf_counter()
    rollout, rv, sample_metrics, t_generate, t_score = generate_and_score(
        recipe, step, sampler, engines, rewards, weighting
    )
    advantages, adv_metrics = sequence_signal(objective, rv, rollout.group_ids, weighting)  # (B,)
    completion_mask = rollout.completion_mask.float()  # (B, C)
    if getattr(recipe.objective, "mask_truncated", False):  # DAPO overlong filtering
        completion_mask = completion_mask * rollout.finished.float().unsqueeze(1)
    exp = ExperienceBatch(
        input_ids=rollout.input_ids(),
        attention_mask=rollout.attention_mask(),
        completion_mask=completion_mask,
        advantages=advantages,
        prompt_len=rollout.prompt_ids.shape[1],
    )
    t0 = time.perf_counter()
    train_metrics = trainers.train_rl(exp)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    payload = _sync(trainers, engines, version=step)
    t_sync = time.perf_counter() - t0

    t_total = time.perf_counter() - t_step
    n_tokens = int(rollout.completion_mask.sum())
    return {
        **sample_metrics,
        **adv_metrics,
        **train_metrics,
        "rollout/completion_tokens_mean": n_tokens / rollout.batch_size,
        "rollout/finished_rate": float(rollout.finished.float().mean()),
        "throughput/gen_tokens_per_s": n_tokens / max(t_generate, 1e-9),
        "throughput/samples_per_s": rollout.batch_size / max(t_total, 1e-9),
        "sync/bytes": payload.num_bytes,
        "time/generate": t_generate,
        "time/score": t_score,
        "time/train": t_train,
        "time/sync": t_sync,
        "time/step": t_total,
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
        settings = SamplingSettings(
            n=r.group_size, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
            top_k=r.top_k, stop=tuple(r.stop), seed=(recipe.run.seed * 1_000_003 + step) * 16 + round_,
        )
        rollout = engines.generate([row["prompt"] for row in rows], settings)
        t_generate += time.perf_counter() - t0
        t0 = time.perf_counter()
        rv, reward_metrics = rewards.score(rollout.prompts, rollout.completions, _columns(rows, rollout))
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


def sequence_signal(objective, rv: RewardVector, group_ids, weighting) -> tuple[torch.Tensor, dict[str, float]]:
    """(B,) per-sample signal the trainer needs: advantages, or for token-level objectives (REINFORCE++) the
    sequence scores that the trainer turns into token advantages once logprobs are known."""
    if getattr(objective, "token_level_advantages", False):
        return objective.sequence_scores(rv, group_ids, weighting)
    return objective.advantages(rv, group_ids, weighting)


def lr_at(recipe: Recipe, step: int) -> float:
    """Learning rate for RL step `step` (1-based): linear warm-up, then constant / linear / cosine decay."""
    import math

    t = recipe.train
    if t.lr_warmup_steps and step <= t.lr_warmup_steps:
        return t.lr * step / t.lr_warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    span = max(1, recipe.run.steps - t.lr_warmup_steps)
    progress = min(1.0, (step - t.lr_warmup_steps) / span)
    decay = 1 - progress if t.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * decay)


def _columns(rows: list[dict[str, Any]], rollout: RolloutBatch) -> dict[str, list[Any]]:
    """Dataset columns repeated per sample (rows of a group are adjacent), plus `finished` and `num_tokens`."""
    from rlhf.runtime.reward_workers import rollout_columns

    n = rollout.batch_size // len(rows)
    keys = [k for k in rows[0] if k not in ("prompt", "completion")]
    rollout.extras = {k: [row.get(k) for row in rows for _ in range(n)] for k in keys}
    return rollout_columns(rollout)


def _sync(trainers, engines, version: int):
    payload = trainers.export_weights(version)
    engines.sync(payload)  # raises WeightSyncError on any fingerprint/version mismatch
    return payload


# --------------------------------------------------------------------------- warm-up, eval, save


def _warmup(recipe: Recipe, trainers, model_dir: str, sft_dir: str, rows: list[dict], log) -> None:
    from rlhf.data import PromptSampler, collate_sft, format_prompts
    from rlhf.models.load import load_tokenizer

    w = recipe.warmup
    tok = load_tokenizer(model_dir, trust_remote_code=recipe.model.trust_remote_code)
    missing = [i for i, r in enumerate(rows) if not isinstance(r.get("completion"), str)]
    if missing:
        raise ValueError(
            f"warmup: SFT needs a '{recipe.data.completion_column}' column; rows {missing[:5]} have none"
        )
    trainers.build(model_dir, w.lr)
    sampler = PromptSampler(rows, w.batch_size, recipe.run.seed + 1)
    log.start_phase("sft warm-up", w.steps)
    for step in range(1, w.steps + 1):
        batch_rows = sampler.next_batch()
        prompts = format_prompts(tok, [r["prompt"] for r in batch_rows], recipe.data.chat_template)
        batch = collate_sft(tok, [{**r, "prompt": p} for r, p in zip(batch_rows, prompts)],
                            recipe.data.max_prompt_tokens + recipe.rollout.max_new_tokens)
        t0 = time.perf_counter()
        metrics = trainers.train_sft(batch)
        metrics["time/step"] = time.perf_counter() - t0
        log.log(step, metrics, phase="sft")
    trainers.save_hf(sft_dir)


def evaluate(recipe: Recipe, engines, rewards, rows: list[dict]) -> dict[str, float]:
    """Greedy completions on held-out rows, scored by every reward component."""
    rows = rows[: recipe.eval.max_samples]
    settings = SamplingSettings(n=1, max_new_tokens=recipe.rollout.max_new_tokens, greedy=True,
                                stop=tuple(recipe.rollout.stop))
    rollout = engines.generate([r["prompt"] for r in rows], settings)
    rv, _ = rewards.score(rollout.prompts, rollout.completions, _columns(rows, rollout))
    out = {name: v for name, v in rv.means().items()}
    if recipe.eval.accuracy_component:
        out["accuracy"] = out[recipe.eval.accuracy_component]
    out["completion_tokens_mean"] = float(rollout.completion_lengths.float().mean())
    return out


def _save(recipe, trainers, state: RunState, sampler, weighting) -> str:
    from rlhf.train import checkpoint as ckpt

    from rlhf.config import recipe_to_yaml

    staged = ckpt.staging_dir(recipe.run.output_dir, state.step)
    trainers.save_checkpoint(str(staged))
    (staged / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    state.sampler = sampler.state_dict()
    state.weighting = weighting.state_dict()
    final = ckpt.commit(recipe.run.output_dir, state.step, staged, state.__dict__, recipe.run.keep_checkpoints)
    return str(final)


def _summary(recipe: Recipe, state: RunState, eval_after: dict[str, float], final_ckpt: str, metrics_path: str):
    records = [json.loads(line) for line in open(metrics_path) if line.strip()]
    rl = [r for r in records if r.get("phase") == "rl"]
    k = max(1, min(10, len(rl) // 5))
    components = {}
    for c in recipe.rewards:
        key = f"reward/{c.name}/mean"
        vals = [r[key] for r in rl if r.get(key) is not None]
        if vals:
            components[c.name] = {"first": sum(vals[:k]) / len(vals[:k]), "last": sum(vals[-k:]) / len(vals[-k:])}
    return {
        "steps": state.step,
        "window": k,
        "components": components,
        "eval_before": state.eval_before,
        "eval_after": eval_after,
        "checkpoint": final_ckpt,
        "metrics": metrics_path,
        "output_dir": recipe.run.output_dir,
    }


# --------------------------------------------------------------------------- resume


# keys a resumed run may change: how long it runs and how it reports, not what it trains
RESUMABLE_CHANGES = ("run.steps", "run.save_every", "run.keep_checkpoints", "run.log_every", "run.progress",
                     "run.tensorboard", "eval.every", "eval.max_samples")


def _resume_point(recipe: Recipe, resume: bool) -> tuple[RunState, Any]:
    """The state to start from, and the checkpoint directory (None for a fresh run)."""
    from rlhf.train import checkpoint as ckpt

    out = recipe.run.output_dir
    state = RunState(recipe_digest=_digest(recipe))
    if not resume:
        if ckpt.checkpoints_dir(out).exists() and any(ckpt.checkpoints_dir(out).iterdir()):
            raise FileExistsError(
                f"{out} already holds checkpoints; pass --resume to continue, --overwrite to start over, or set "
                "run.output_dir to a new directory"
            )
        return state, None
    resume_from = ckpt.latest(out)
    if resume_from is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {ckpt.checkpoints_dir(out)}")
    saved = RunState(**ckpt.verify(resume_from))
    if saved.recipe_digest != state.recipe_digest:
        changed = _changed_keys(recipe, resume_from / "recipe.yaml")
        raise ResumeMismatch(
            f"--resume: the recipe differs from the one {resume_from} was trained with, in: {', '.join(changed)}. "
            f"A resumed run may only change {', '.join(RESUMABLE_CHANGES)}; start a new run.output_dir to train "
            "with different settings."
        )
    return saved, resume_from


def _changed_keys(recipe: Recipe, saved_path: Any) -> list[str]:
    import yaml

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            return {k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{prefix}{k}.").items()}
        return {prefix[:-1]: d}

    now, before = flat(recipe.model_dump(mode="json")), flat(yaml.safe_load(saved_path.read_text()))
    return sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k)) or ["(unknown)"]


def _ckpt_step(path: Any) -> int:
    return int(path.name.split("_")[-1])


def _truncate_metrics(out: str, step: int) -> None:
    """Drop RL/eval records logged after the checkpoint we resume from (they are about to be redone)."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return
    keep = [line for line in open(path) if line.strip() and
            (json.loads(line).get("phase") == "sft" or json.loads(line)["step"] <= step)]
    tmp = path + ".part"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- helpers


def _digest(recipe: Recipe) -> str:
    """Hash of everything that decides what is trained (RESUMABLE_CHANGES left out)."""
    import hashlib

    data = recipe.model_dump(mode="json")
    for key in RESUMABLE_CHANGES:
        section, name = key.split(".")
        data[section].pop(name, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _save_recipe(recipe: Recipe, out: str) -> None:
    from rlhf.config import recipe_to_yaml

    with open(os.path.join(out, "recipe.resolved.yaml"), "w") as f:
        f.write(recipe_to_yaml(recipe))


def _init_ray(recipe: Recipe) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so should shut it down)."""
    import logging

    import ray

    env = {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME"):
        if key in os.environ:
            env[key] = os.environ[key]
    if ray.is_initialized():
        return False
    ray.init(
        address=recipe.ray.address,
        num_cpus=recipe.ray.num_cpus if recipe.ray.address is None else None,
        include_dashboard=False,
        log_to_driver=os.environ.get("RLHF_WORKER_LOGS", "0") == "1",
        logging_level=logging.WARNING,
        runtime_env={"env_vars": env},
    )
    return True


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


USER_ERRORS = _user_errors()

__all__ = ["run", "rl_step", "evaluate", "RunState", "RewardVector"]
