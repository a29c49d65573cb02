"""Resuming a run: what a checkpoint holds besides weights (``RunState``), which checkpoint to continue from, and
whether the recipe still trains the same thing.

    state, checkpoint = resume_point(recipe, resume=True)   # RunState from OUT/checkpoints/latest, its directory
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from rlhf.config.schema import Recipe


class ResumeMismatch(ValueError):
    """--resume with a recipe that trains something else than the checkpoint did."""


@dataclass
class RunState:
    """Everything besides weights and optimizer that a resumed run needs (saved as state.json)."""

    step: int = 0
    warmup_done: bool = False
    stage: dict[str, Any] = field(default_factory=dict)  # the stage's state_dict: data position, aggregators
    eval_before: dict[str, float] = field(default_factory=dict)
    recipe_digest: str = ""


# keys a resumed run may change: how long it runs and how it reports, not what it trains
RESUMABLE_CHANGES = ("run.steps", "run.save_every", "run.keep_checkpoints", "run.log_every", "run.progress",
                     "run.tensorboard", "run.trackers", "run.wandb", "run.mlflow",  # trackers: rlhf/trackers.py
                     "eval.every", "eval.max_samples",
                     # where it runs: a job preempted on one Slurm allocation resumes on another (a new head address)
                     "ray.address", "ray.num_cpus", "ray.placement_strategy", "ray.env_vars", "pipeline.engine_cores",
                     # a run directory copied or moved (to shared storage, another disk) resumes where it now is
                     "run.output_dir", "run.name")


def resume_point(recipe: Recipe, resume: bool) -> tuple[RunState, Any]:
    """The state to start from, and the checkpoint directory (None for a fresh run)."""
    from rlhf.train import checkpoint as ckpt

    out = recipe.run.output_dir
    state = RunState(recipe_digest=digest(recipe))
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
    return digest(saved) == digest(recipe)


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


PENDING = "pending.pt"  # an async run's batches produced but not yet trained


def save_pending(staged_dir: Any, pending: list[Any]) -> None:
    """The Experiences in flight (async), written into the staged checkpoint; nothing for a synchronous run."""
    if pending:
        import torch

        torch.save(pending, os.path.join(str(staged_dir), PENDING))


def load_pending(checkpoint: Any) -> list[Any]:
    """The batches a checkpoint's run had produced but not trained ([] for none or a fresh run): the resumed run
    trains exactly these before producing new ones (rlhf/runtime/pipeline.py)."""
    if checkpoint is None or not os.path.exists(os.path.join(str(checkpoint), PENDING)):
        return []
    import time

    import torch

    try:
        pending = torch.load(os.path.join(str(checkpoint), PENDING), weights_only=False)
    except Exception as e:  # noqa: BLE001  (a torn or foreign file: name it)
        raise ResumeMismatch(f"--resume: {checkpoint}/{PENDING} (the batches in flight) cannot be read: {e}") from e
    for exp in pending:
        exp.started = time.perf_counter()  # the clock of the process that produced them is gone
    return pending


def checkpoint_step(path: Any) -> int:
    return int(path.name.split("_")[-1])


def truncate_metrics(out: str, step: int) -> None:
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


def digest(recipe: Recipe) -> str:
    """Hash of everything that decides what is trained (RESUMABLE_CHANGES left out)."""
    import hashlib

    data = recipe.model_dump(mode="json")
    for key in RESUMABLE_CHANGES:
        section, name = key.split(".")
        data[section].pop(name, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
