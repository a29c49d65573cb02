"""The controller: one training run, top to bottom.

    rlhf train recipes/grpo_tiny_cpu.yaml          ->  run(recipe)

    data and model (a tiny model and its tokenizer are built here when the recipe asks for one)
    build the training ranks (DeepSpeed in Ray actors)
    [warm-up]  the SFT stage on the data's completions, saved as OUT/sft
    build the stage that trains the objective (its capabilities name it: rlhf/runtime/stages.py)
    eval (before); the pipeline drives the stage: produce -> consume per step (in turn, or produce running ahead
    with pipeline.max_staleness >= 1), then log [-> eval] [-> checkpoint, with the batches in flight];
    checkpoint, eval (after), summary (OUT/placement.json: the Ray node of every training rank and engine)
"""

from __future__ import annotations

import json
import os
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
    from rlhf.rollout.group import EngineDied
    from rlhf.rollout.vllm import VLLMMissing
    from rlhf.runtime.resume import ResumeMismatch
    from rlhf.trackers import TrackerError
    from rlhf.train.checkpoint import CheckpointError
    from rlhf.train.group import TrainWorkerDied
    from rlhf.transport.placement import PlacementError
    from rlhf.transport.weights import WeightSyncError

    return (FileNotFoundError, FileExistsError, RecipeError, DataLoadError, ModelLoadError, RewardPluginError,
            WeightSyncError, CheckpointError, TrainWorkerDied, ResumeMismatch, VLLMMissing, LoraError,
            TrackerError, PlacementError, EngineDied)


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


def run(recipe: Recipe, resume: bool = False) -> dict[str, Any]:
    """Train as the recipe says; returns the summary (also written to OUT/summary.json)."""
    from rlhf.config.pipeline import trained_objective
    from rlhf.config.registry import build_objective, capabilities
    from rlhf.data.conditioning import build_conditioner
    from rlhf.logging import MetricsLogger
    from rlhf.models.load import resolve_model_dir
    from rlhf.runtime.data import load_data
    from rlhf.runtime.pipeline import SyncPipeline, build_pipeline
    from rlhf.runtime.precision import resolve_precision
    from rlhf.runtime.resume import checkpoint_step, load_pending, resume_point, truncate_metrics
    from rlhf.runtime.stages import StageInputs, build_stage
    from rlhf.runtime.warmup import SFTStage
    from rlhf.train.group import TrainGroup

    out = recipe.run.output_dir
    caps = capabilities(recipe.objective)
    if recipe.rollout.engine == "vllm" and caps.rollouts:
        from rlhf.rollout.vllm import require_vllm

        require_vllm()  # before any warm-up is spent: the engine is only built after it
    from rlhf.trackers import require_trackers

    require_trackers(recipe.run.tracker_names)  # wandb / mlflow installed, before the data and the model are built
    state, resume_from = resume_point(recipe, resume)
    os.makedirs(out, exist_ok=True)
    _save_recipe(recipe, out)
    seed = recipe.run.seed
    torch.manual_seed(seed)

    # ---- data and model
    train_rows, eval_rows = load_data(recipe, seed)
    conditioner = build_conditioner(recipe.conditioning, [c.name for c in recipe.rewards], seed)  # identity when off
    corpus = lambda: [  # noqa: E731  (text for a tiny model's tokenizer)
        " ".join(str(r.get(k, "")) for k in ("prompt", "completion", "chosen", "rejected"))
        + "\n".join(r["steps"] if isinstance(r.get("steps"), list) else [])  # PRM rows: the steps and their breaks
        for r in train_rows + eval_rows + conditioner.examples(eval_rows)  # conditioning: the template's text too
    ]
    model_dir, _tok_dir = resolve_model_dir(recipe.model, corpus, out, seed)

    started_ray = _init_ray(recipe)
    recipe = resolve_precision(recipe, model_dir)  # train.precision: auto -> bf16 | fp32 for these cores and model
    if resume_from is not None:
        truncate_metrics(out, state.step)  # steps after the checkpoint are redone, not logged twice
    actors: list[Any] = []
    stop: GracefulStop | None = None
    log: MetricsLogger | None = None
    try:
        log = MetricsLogger(
            out,
            trackers=recipe.run.tracker_names,  # jsonl, [tensorboard, wandb, mlflow]: rlhf/trackers.py
            run=recipe.run,
            config=recipe.model_dump(mode="json"),  # the resolved recipe: wandb config, mlflow params
            progress=recipe.run.progress,
            headline=tuple(f"reward/{c.name}/mean" for c in recipe.rewards) + ("kl",),
            append=resume_from is not None,
        )
        trainers = TrainGroup(recipe)
        actors.append(trainers)
        # ---- stage 1: SFT warm-up (skipped when done or when resuming past it)
        policy_dir = model_dir
        if recipe.warmup.steps:
            policy_dir = os.path.join(out, "sft")
            if not state.warmup_done:
                warmup = SFTStage(recipe, trainers, model_dir, conditioner.condition_once(train_rows))
                trainers.build(model_dir, recipe.warmup.lr)
                log.start_phase("sft warm-up", recipe.warmup.steps)
                SyncPipeline().run(warmup, range(1, recipe.warmup.steps + 1), before_consume=lambda step: None,
                             after_step=lambda step, metrics: log.log(step, metrics, phase=warmup.phase))
                trainers.save_hf(policy_dir)
                state.warmup_done = True
        # ---- stage 2: the recipe's objective (on-policy RL, or offline pairs / step labels)
        start_dir = str(resume_from / "model") if resume_from else policy_dir
        trainers.build(start_dir, recipe.train.lr, score_heads=caps.score_heads,  # the policy, or a reward model
                       policy_heads=caps.policy_heads)  # or a multi-head policy
        if resume_from:
            trainers.load_optimizer(str(resume_from))
        objective = build_objective(trained_objective(recipe))  # objective.off_policy resolved
        if caps.needs_reference:
            trainers.load_reference(policy_dir)
        # model.lora resumes from an adapter checkpoint: engines (and a PPO critic) start from its base model and
        # get the adapter by the first sync
        stage = build_stage(StageInputs(recipe, trainers, objective, caps, _lora_base(start_dir), train_rows,
                                        eval_rows, actors, conditioner, resume_from))
        if state.stage:
            stage.load_state_dict(state.stage)
        stage.start(version=state.step)
        _write_json(os.path.join(out, "placement.json"), _placement(actors))  # which node each actor runs on

        if not state.eval_before:
            state.eval_before = stage.evaluate()
            log.log(state.step, {f"eval/{k}": v for k, v in state.eval_before.items()}, phase="eval")
        log.start_phase(objective.name, recipe.run.steps, state.step)

        stop = GracefulStop()  # SIGTERM (preemption, time limit) or a first Ctrl-C: finish the step, save, exit
        pipeline = build_pipeline(recipe.pipeline.max_staleness, keep=recipe.pipeline.updates_in_flight)

        def set_lr(step: int) -> None:
            trainers.set_lr(lr_at(recipe, step))

        def after_step(step: int, metrics: dict[str, float]) -> None:
            metrics["lr"] = lr_at(recipe, step)
            state.step = step
            if step % recipe.run.log_every == 0 or step == recipe.run.steps:
                log.log(step, metrics, phase=stage.phase)
            if recipe.eval.every and step % recipe.eval.every == 0 and step != recipe.run.steps:
                with pipeline.paused():  # the engines hold this step's weights; nothing else generates
                    log.log(step, {f"eval/{k}": v for k, v in stage.evaluate().items()}, phase="eval")
            if stop.requested and step != recipe.run.steps:
                with pipeline.paused():  # raising inside: the producer starts no other batch
                    path = _save(recipe, trainers, state, stage, pipeline.pending())
                    raise Stopped(f"stopped by {stop.requested} after step {step}; checkpoint {path} is complete: "
                                  "continue with `rlhf train RECIPE --resume`")
            if recipe.run.save_every and step % recipe.run.save_every == 0 and step != recipe.run.steps:
                with pipeline.paused():
                    _save(recipe, trainers, state, stage, pipeline.pending())

        pipeline.run(stage, range(state.step + 1, recipe.run.steps + 1), set_lr, after_step,
                     pending=load_pending(resume_from))

        final_ckpt = (
            str(resume_from) if resume_from is not None and state.step == checkpoint_step(resume_from)
            else _save(recipe, trainers, state, stage, pipeline.pending())
        )
        eval_after = stage.evaluate()
        log.log(state.step, {f"eval/{k}": v for k, v in eval_after.items()}, phase="eval")
        summary = _summary(recipe, state, eval_after, final_ckpt, log.path, stage, caps.rollouts)
        summary["curves"] = _plot(out)
        summary["placement"] = _placement(actors)  # as it ended: an engine restarted elsewhere shows its new node
        summary["precision"] = {"train": recipe.train.precision, "engines": recipe.engine_dtype}  # auto resolved
        _write_json(os.path.join(out, "summary.json"), summary)
        log.close(summary)  # the trackers log it, then their runs end as finished
        return summary
    finally:
        if stop is not None:
            stop.restore()
        if log is not None:  # a tracker that fails to close only warns (rlhf/logging.py): shutdown still runs
            log.close(status="killed" if stop is not None and stop.requested else None)  # None: failed (an error)
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



# --------------------------------------------------------------------------- save, summary, Ray


def _plot(out: str) -> str | None:
    """OUT/curves.png when matplotlib is installed (the `plot`/`dev` extra) and the run trained a step; None
    otherwise (`run.steps: 0`: a warm-up or evaluation only)."""
    from rlhf.plots import has_training_steps, plot_run, pyplot

    return None if pyplot() is None or not has_training_steps(out) else plot_run(out)


def _lora_base(model_dir: str) -> str:
    """The base model of a LoRA adapter directory (a checkpoint's model/ under model.lora); other dirs as they are."""
    from rlhf.models.lora import adapter_base_dir, is_adapter_dir

    return adapter_base_dir(model_dir) if is_adapter_dir(model_dir) else model_dir


def _save(recipe: Recipe, trainers: Any, state: Any, stage: Any, pending: list[Any] | None = None) -> str:
    """A complete checkpoint: weights, optimizer, what the stage owns, the run state and (async) the batches
    produced but not yet trained."""
    from rlhf.config import recipe_to_yaml
    from rlhf.runtime.resume import save_pending
    from rlhf.train import checkpoint as ckpt

    staged = ckpt.staging_dir(recipe.run.output_dir, state.step)
    trainers.save_checkpoint(str(staged))
    stage.save_checkpoint(str(staged))
    save_pending(staged, pending or [])
    (staged / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    state.stage = stage.state_dict()
    final = ckpt.commit(recipe.run.output_dir, state.step, staged, state.__dict__, recipe.run.keep_checkpoints)
    return str(final)


def _summary(recipe: Recipe, state: Any, eval_after: dict[str, float], final_ckpt: str, metrics_path: str,
             stage: Any, rollouts: bool) -> dict[str, Any]:
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
        "headline": "reward components" if rollouts else "training metrics",  # what `components` holds
        "steps": state.step,
        "window": k,
        "components": components,
        "eval_before": state.eval_before,
        "eval_after": eval_after,
        "checkpoint": final_ckpt,
        "metrics": metrics_path,
        "output_dir": recipe.run.output_dir,
    }


def _placement(actors: list[Any]) -> dict[str, Any]:
    """Where the run's actors are: {"nodes": how many distinct Ray nodes they use, "trainers": [{node_id, ip}] per
    rank, "engines": the same per engine, "critic": a PPO critic's ranks}."""
    from rlhf.rollout.group import RolloutGroup
    from rlhf.train.group import TrainGroup

    groups: dict[str, list[dict[str, str]]] = {}
    for group in actors:
        if isinstance(group, TrainGroup):
            groups["trainers" if group.role == "policy" else group.role] = group.nodes
        elif isinstance(group, RolloutGroup):
            groups["engines"] = group.nodes
    nodes = sorted({n["node_id"] for members in groups.values() for n in members})
    return {"nodes": len(nodes), **groups}


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


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
    env.update(recipe.ray.env_vars)  # the recipe's own, e.g. an allocator setting for the training ranks
    if ray.is_initialized():
        _check_env_reached(recipe.ray.env_vars)
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


def _check_env_reached(wanted: dict[str, str]) -> None:
    """Ray was started by the caller: its job's runtime environment is fixed, so ray.env_vars can reach the actors
    only if it already holds them (or the caller's own environment does, which a local Ray's workers inherit)."""
    import ray

    if not wanted:
        return
    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    missing = {k: v for k, v in wanted.items() if job_env.get(k, os.environ.get(k)) != v}
    if missing:
        from rlhf.config import RecipeError

        raise RecipeError(
            f"ray.env_vars: {sorted(missing)} cannot reach the actors: Ray was already initialised by this process "
            "without them. Pass them to ray.init(runtime_env={'env_vars': {...}}), or let `rlhf train` start Ray")


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


USER_ERRORS = _user_errors()

__all__ = ["run", "lr_at", "USER_ERRORS", "Stopped"]
