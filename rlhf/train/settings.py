"""What a training rank is told: its own settings, built from the recipe on the driver (``worker_settings``).

A training worker never reads the recipe. It gets the model and train sections, its objective section (the
objective is built once per worker from it), and two small sections of its own: what the per-batch step functions
need (``StepSettings``) and what weight export needs (``ExportSettings``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepSettings:
    """What the per-batch step functions (rlhf/train/steps.py) read."""

    temperature: float  # logprobs are of the sampling distribution (rollout.temperature)
    micro_batch_size: int  # sequences per forward/backward on one rank
    epochs: int = 1  # passes over a rollout batch (policy gradient, critic)
    mini_batches: int = 1  # optimizer steps per epoch
    max_new_tokens: int = 1  # dr_grpo's constant denominator per micro-batch (rows x max_new_tokens)
    group_by_length: bool = True  # micro-batches of similar lengths, trimmed of all-padding columns
    packing: bool = False  # padding-free policy forwards (train.packing.enabled)
    balance_tokens: bool = False  # micro-batches balanced by real tokens, not grouped by length (packing.balance)
    logprob_micro_batch_size: int = 0  # sequences per no-grad logprob forward; 0: micro_batch_size

    @property
    def logprob_micro(self) -> int:
        """Sequences per no-grad logprob forward (train.logprob_micro_batch_size, else micro_batch_size)."""
        return self.logprob_micro_batch_size or self.micro_batch_size


@dataclass(frozen=True)
class ExportSettings:
    """What weight export (rlhf/train/export.py) reads."""

    bucket_bytes: int  # weight-sync bucket size
    dtype: str  # saved models are written in the model's dtype
    adapter_only: bool = False  # model.lora with engines that load adapters: sync only the adapter
    sync_dtype: str = "float32"  # full weights are sent to the engines in their dtype (recipe.engine_dtype)


@dataclass(frozen=True)
class WorkerSettings:
    role: str  # "policy" | "critic"
    model: Any  # rlhf.config.schema.ModelConfig
    train: Any  # rlhf.config.schema.TrainConfig
    seed: int
    objective: Any  # the recipe's objective section; the worker builds its objective from it once
    steps: StepSettings
    export: ExportSettings

    @property
    def lora(self) -> Any:
        """The LoRA config when this rank trains an adapter (model.lora enabled; never the critic), else None."""
        cfg = self.model.lora
        return cfg if self.role == "policy" and cfg is not None and cfg.enabled else None


def worker_settings(recipe: Any, role: str = "policy") -> WorkerSettings:
    """A training rank's settings from the recipe (driver side)."""
    from rlhf.config.pipeline import trained_objective
    from rlhf.config.registry import capabilities
    from rlhf.models import lora

    objective = trained_objective(recipe)  # objective.off_policy resolved (async, rollout.tis_cap)
    caps = capabilities(objective)
    packing = recipe.train.packing.on(recipe.model.trust_remote_code)  # auto: off for remote-code models
    steps = StepSettings(
        temperature=recipe.rollout.temperature, micro_batch_size=recipe.train.micro_batch_size,
        epochs=caps.epochs, mini_batches=caps.mini_batches,
        max_new_tokens=recipe.rollout.completion_tokens, group_by_length=recipe.train.group_by_length,
        packing=packing,
        balance_tokens=packing and recipe.train.packing.balance,
        logprob_micro_batch_size=recipe.train.logprob_micro_batch_size or 0,
    )
    export = ExportSettings(
        bucket_bytes=int(recipe.train.sync_bucket_mb * 2**20), dtype=recipe.model.dtype,
        adapter_only=recipe.rollout.engine in lora.ENGINES_WITH_ADAPTERS, sync_dtype=recipe.engine_dtype,
    )
    return WorkerSettings(role=role, model=recipe.model, train=recipe.train, seed=recipe.run.seed,
                          objective=objective, steps=steps, export=export)
