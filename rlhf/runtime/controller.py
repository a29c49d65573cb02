"""The controller: one training run, top to bottom.

    rlhf train recipes/grpo_tiny_cpu.yaml          ->  run(recipe)

    build the training ranks (DeepSpeed in Ray actors)
    [warm-up]  SFT steps on the data's completions, saved as OUT/sft
    build the stage for the objective:
        on-policy (rlhf/runtime/onpolicy.py): rollout engines + reward workers;
            step = prompts -> generate -> score (reward vector) -> advantages -> update -> sync
        preference (rlhf/runtime/preference.py): fixed (prompt, chosen, rejected) pairs, cached reference logps;
            step = pairs -> DPO-family loss -> update
    eval (before); for each step: stage.step -> log [-> eval] [-> checkpoint]; eval (after), summary
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf.config.schema import Recipe


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message tells the user what to fix; anything else keeps its traceback."""
    from rewards.api import RewardPluginError
    from rlhf.config import RecipeError
    from rlhf.data import DataLoadError
    from rlhf.models.load import ModelLoadError
    from rlhf.models.lora import LoraError
    from rlhf.transport.weights import WeightSyncError
    from rlhf.train.checkpoint import CheckpointError
    from rlhf.train.group import TrainWorkerDied

    from rlhf.rollout.vllm import VLLMMissing

    return (FileNotFoundError, FileExistsError, RecipeError, DataLoadError, ModelLoadError, RewardPluginError,
            WeightSyncError, CheckpointError, TrainWorkerDied, ResumeMismatch, VLLMMissing, LoraError)


class ResumeMismatch(ValueError):
    """--resume with a recipe that trains something else than the checkpoint did."""


class Stopped(RuntimeError):
    """The run was asked to stop (SIGTERM / SIGINT) and checkpointed before exiting."""


class GracefulStop:
    """SIGTERM or a first SIGINT only sets a flag, read between steps (a step is never cut in half, so the
    training ranks are never left inside a collective); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        import signal
        import threading

        self.requested: str | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: finishing this step, then saving a checkpoint (Ctrl-C again to abort now)",
              flush=True)

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


@dataclass
class RunState:
    """Everything besides weights and optimizer that a resumed run needs (saved as state.json)."""

    step: int = 0
    warmup_done: bool = False
    stage: dict[str, Any] = field(default_factory=dict)  # the stage's state_dict: data position, aggregators
    eval_before: dict[str, float] = field(default_factory=dict)
    recipe_digest: str = ""


def run(recipe: Recipe, resume: bool = False) -> dict[str, Any]:
    """Train as the recipe says; returns the summary (also written to OUT/summary.json)."""
    from rlhf.logging import MetricsLogger
    from rlhf.models.load import resolve_model_dir
    from rlhf.objectives import build_objective
    from rlhf.train.group import TrainGroup

    out = recipe.run.output_dir
    if recipe.rollout.engine == "vllm" and recipe.objective.kind not in ("dpo", "modpo", "prm"):
        from rlhf.rollout.vllm import require_vllm

        require_vllm()  # before any warm-up is spent: the engine is only built after it
    state, resume_from = _resume_point(recipe, resume)
    os.makedirs(out, exist_ok=True)
    _save_recipe(recipe, out)
    seed = recipe.run.seed
    torch.manual_seed(seed)

    # ---- data and model
    train_rows, eval_rows = load_data(recipe, seed)
    corpus = lambda: [  # noqa: E731  (text for a tiny model's tokenizer)
        " ".join(str(r.get(k, "")) for k in ("prompt", "completion", "chosen", "rejected"))
        + "\n".join(r["steps"] if isinstance(r.get("steps"), list) else [])  # PRM rows: the steps and their breaks
        for r in train_rows + eval_rows
    ]
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
    stop: GracefulStop | None = None
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
        # ---- stage 2: the recipe's objective (on-policy RL, or offline preference pairs)
        start_dir = str(resume_from / "model") if resume_from else policy_dir
        trainers.build(start_dir, recipe.train.lr)
        if resume_from:
            trainers.load_optimizer(str(resume_from))
        objective = build_objective(recipe.objective)
        if needs_reference(recipe, objective):
            trainers.load_reference(policy_dir)
        # model.lora resumes from an adapter checkpoint: engines (and a PPO critic) start from its base model and
        # get the adapter by the first sync
        stage_dir = _lora_base(start_dir)
        stage = build_stage(recipe, trainers, objective, stage_dir, train_rows, eval_rows, actors, resume_from)
        if state.stage:
            stage.load_state_dict(state.stage)
        stage.start(version=state.step)

        if not state.eval_before:
            state.eval_before = stage.evaluate()
            log.log(state.step, {f"eval/{k}": v for k, v in state.eval_before.items()}, phase="eval")
        log.start_phase(objective.name, recipe.run.steps, state.step)

        stop = GracefulStop()  # SIGTERM (preemption, time limit) or a first Ctrl-C: finish the step, save, exit
        for step in range(state.step + 1, recipe.run.steps + 1):
            lr = lr_at(recipe, step)
            trainers.set_lr(lr)
            metrics = stage.step(step)
            metrics["lr"] = lr
            state.step = step
            if step % recipe.run.log_every == 0 or step == recipe.run.steps:
                log.log(step, metrics, phase=stage.phase)
            if recipe.eval.every and step % recipe.eval.every == 0 and step != recipe.run.steps:
                log.log(step, {f"eval/{k}": v for k, v in stage.evaluate().items()}, phase="eval")
            if stop.requested and step != recipe.run.steps:
                path = _save(recipe, trainers, state, stage)
                raise Stopped(f"stopped by {stop.requested} after step {step}; checkpoint {path} is complete: "
                              "continue with `rlhf train RECIPE --resume`")
            if recipe.run.save_every and step % recipe.run.save_every == 0 and step != recipe.run.steps:
                _save(recipe, trainers, state, stage)

        final_ckpt = (
            str(resume_from) if resume_from is not None and state.step == _ckpt_step(resume_from)
            else _save(recipe, trainers, state, stage)
        )
        eval_after = stage.evaluate()
        log.log(state.step, {f"eval/{k}": v for k, v in eval_after.items()}, phase="eval")
        log.close()
        summary = _summary(recipe, state, eval_after, final_ckpt, log.path, stage)
        summary["curves"] = _plot(out)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        return summary
    finally:
        if stop is not None:
            stop.restore()
        log.close()
        for group in reversed(actors):
            group.shutdown()
        if started_ray:
            _shutdown_ray()


# --------------------------------------------------------------------------- learning rate


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


def load_data(recipe: Recipe, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and eval rows: prompts (+ answers and other columns) for RL, or preference pairs for DPO."""
    from rlhf.data import holdout_split, load_rows

    if recipe.objective.kind == "prm":
        from rlhf.runtime.prm import load_prm_rows

        return load_prm_rows(recipe, *load_rows(recipe.data, seed), seed)
    if recipe.objective.kind not in ("dpo", "modpo"):
        return load_rows(recipe.data, seed)
    from rlhf.data.preference import load_preference_rows

    d = recipe.data
    columns = (d.prompt_column, d.chosen_column, d.rejected_column)
    train = load_preference_rows(d.train_path, *columns)
    if d.eval_path:
        evals = load_preference_rows(d.eval_path, *columns)
    else:
        train, evals = holdout_split(train, seed)
    for row in train:
        row.setdefault("completion", row["chosen"])  # the SFT warm-up target, if the recipe has a warm-up
    return train, evals


def _plot(out: str) -> str | None:
    """OUT/curves.png when matplotlib is installed (the `plot`/`dev` extra); None otherwise."""
    from rlhf.plots import plot_run, pyplot

    return None if pyplot() is None else plot_run(out)


def needs_reference(recipe: Recipe, objective) -> bool:
    """The frozen reference is needed for a KL term in the loss, or (PPO) a KL penalty in the reward."""
    return objective.needs_reference or (recipe.objective.kind == "ppo" and recipe.objective.kl_coef > 0)


def build_stage(recipe: Recipe, trainers, objective, start_dir: str, train_rows, eval_rows, actors: list[Any],
                resume_from: Any = None):
    """The stage object that runs the recipe's objective, one `step()` at a time."""
    if recipe.objective.kind == "prm":
        from rlhf.runtime.prm import PRMStage

        return PRMStage(recipe, trainers, objective, train_rows, eval_rows, actors)
    if recipe.objective.kind == "ppo":
        from rlhf.runtime.ppo import PPOStage

        return PPOStage(recipe, trainers, objective, start_dir, train_rows, eval_rows, actors, resume_from)
    if recipe.objective.kind == "cgpo":
        from rlhf.runtime.cgpo import CGPOStage

        return CGPOStage(recipe, trainers, objective, start_dir, train_rows, eval_rows, actors, resume_from)
    if recipe.objective.kind == "online_dpo":
        from rlhf.runtime.online_dpo import OnlineDPOStage

        return OnlineDPOStage(recipe, trainers, objective, start_dir, train_rows, eval_rows, actors, resume_from)
    if objective.on_policy:
        from rlhf.runtime.onpolicy import OnPolicyStage

        return OnPolicyStage(recipe, trainers, objective, start_dir, train_rows, eval_rows, actors, resume_from)
    from rlhf.runtime.preference import PreferenceStage

    return PreferenceStage(recipe, trainers, objective, train_rows, eval_rows, actors)


def _lora_base(model_dir: str) -> str:
    """The base model of a LoRA adapter directory (a checkpoint's model/ under model.lora); other dirs as they are."""
    from rlhf.models.lora import adapter_base_dir, is_adapter_dir

    return adapter_base_dir(model_dir) if is_adapter_dir(model_dir) else model_dir


def _save(recipe, trainers, state: RunState, stage) -> str:
    from rlhf.train import checkpoint as ckpt

    from rlhf.config import recipe_to_yaml

    staged = ckpt.staging_dir(recipe.run.output_dir, state.step)
    trainers.save_checkpoint(str(staged))
    stage.save_checkpoint(str(staged))
    (staged / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    state.stage = stage.state_dict()
    final = ckpt.commit(recipe.run.output_dir, state.step, staged, state.__dict__, recipe.run.keep_checkpoints)
    return str(final)


def _summary(recipe: Recipe, state: RunState, eval_after: dict[str, float], final_ckpt: str, metrics_path: str,
             stage) -> dict[str, Any]:
    """First-vs-last means of the stage's headline metrics, evals before/after, and where things are."""
    records = [json.loads(line) for line in open(metrics_path) if line.strip()]
    steps = [r for r in records if r.get("phase") == stage.phase]
    k = max(1, min(10, len(steps) // 5))
    components = {}
    for name, key in stage.summary_keys().items():
        vals = [r[key] for r in steps if r.get(key) is not None]
        if vals:
            components[name] = {"first": sum(vals[:k]) / len(vals[:k]), "last": sum(vals[-k:]) / len(vals[-k:])}
    return {
        "objective": recipe.objective.kind,
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
                     "run.tensorboard", "eval.every", "eval.max_samples",
                     # where it runs: a job preempted on one Slurm allocation resumes on another (a new head address)
                     "ray.address", "ray.num_cpus")


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
    if saved.recipe_digest != state.recipe_digest and not _same_under_current_schema(recipe, resume_from):
        changed = _changed_keys(recipe, resume_from / "recipe.yaml")
        raise ResumeMismatch(
            f"--resume: the recipe differs from the one {resume_from} was trained with, in: {', '.join(changed)}. "
            f"A resumed run may only change {', '.join(RESUMABLE_CHANGES)}; start a new run.output_dir to train "
            "with different settings."
        )
    return saved, resume_from


def _same_under_current_schema(recipe: Recipe, checkpoint: Any) -> bool:
    """The checkpoint's recipe, read with today's schema (keys added since then take their defaults), hashes the
    same as this one: a checkpoint written before a new option existed resumes when the option is left at its
    default."""
    import yaml

    try:
        saved = Recipe.model_validate(yaml.safe_load((checkpoint / "recipe.yaml").read_text()))
    except (OSError, ValueError):  # unreadable or no longer valid: the caller reports the difference
        return False
    return _digest(saved) == _digest(recipe)


def _changed_keys(recipe: Recipe, saved_path: Any) -> list[str]:
    import yaml

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            return {k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{prefix}{k}.").items()}
        return {prefix[:-1]: d}

    saved = yaml.safe_load(saved_path.read_text())
    try:  # with today's defaults filled in, only real differences are listed
        saved = Recipe.model_validate(saved).model_dump(mode="json")
    except ValueError:
        pass
    now, before = flat(recipe.model_dump(mode="json")), flat(saved)
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
    # ray.address unset: a Ray job's driver (RAY_ADDRESS set by `ray job submit`) joins its cluster; anywhere else
    # a fresh local Ray starts, even when some other Ray head runs on this machine (ray.init() would join that)
    address = recipe.ray.address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(
        address=address,
        num_cpus=recipe.ray.num_cpus if address == "local" else None,
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

__all__ = ["run", "RunState", "lr_at", "build_stage"]
