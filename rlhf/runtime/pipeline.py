"""Stages and the pipeline that drives them.

A **stage** trains one objective, one step at a time, in two halves:

    exp = stage.produce(step)      # the step's data: rollout -> reward vector (or a batch of fixed rows)
    metrics = stage.consume(exp)   # signals -> update -> weight sync; the step's metrics

plus ``start`` (engines take the trainer's weights), ``evaluate``, ``state_dict`` / ``load_state_dict`` (what a
resumed run needs: data position, weighting, controllers) and ``save_checkpoint`` (what it owns besides the
policy: a critic). Stages are compositions of components (prompts, a rollout function, a scorer, an update with
its estimator, the sync coordinator), never subclasses that override the step (rlhf/runtime/stages.py).

The **pipeline** drives a stage through steps. ``SyncPipeline`` produces then consumes each step in order. An
asynchronous driver, production running ahead of consumption by a bounded number of policy versions, takes the
same stage halves: ``produce`` touches only the engines, the reward workers and driver-side state (the prompt
position, the weighting's per-step schedule and observation); ``consume`` touches the trainers and syncs the
engines to version ``exp.step``. Every sample records the policy version(s) that generated it
(``Experience.versions``, from ``RolloutBatch.versions``). What an async driver must still decide: whether the
weighting observes a batch when it is produced (today) or when it is trained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from rlhf.types import RewardVector, RolloutBatch


@dataclass
class Experience:
    """What ``produce`` hands ``consume``: one step's data and what was measured producing it."""

    step: int
    rollout: RolloutBatch | None = None  # on-policy stages: the trajectories
    rewards: RewardVector | None = None  # (B, K) their reward vector
    rows: list[dict] = field(default_factory=list)  # the prompt rows (G,), in group order
    batch: Any = None  # offline stages: the step's collated rows
    context: dict[str, Any] = field(default_factory=dict)  # what a component adds (CGPO: the baselines' vector)
    metrics: dict[str, float] = field(default_factory=dict)  # measured while producing (rewards, progress, ...)
    timings: dict[str, float] = field(default_factory=dict)  # time/generate, time/score, ...
    started: float = field(default_factory=time.perf_counter)  # when production began (time/step)

    @property
    def versions(self) -> tuple[int, int] | None:
        """(oldest, newest) policy version among the generated tokens; None without a rollout."""
        if self.rollout is None:
            return None
        generated = self.rollout.versions[self.rollout.versions >= 0]
        return (int(generated.min()), int(generated.max())) if generated.numel() else (0, 0)


class Stage(Protocol):
    phase: str  # the metrics' phase: rl | dpo | prm | sft

    def start(self, version: int) -> None:
        """Before the first step (engines start from the trainer's weights, caches are filled)."""

    def produce(self, step: int) -> Experience: ...

    def consume(self, exp: Experience) -> dict[str, float]: ...

    def evaluate(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save_checkpoint(self, staged_dir: str) -> None:
        """Anything the stage owns besides the policy (PPO: the critic), into the staged checkpoint."""

    def summary_keys(self) -> dict[str, str]:
        """Headline metrics of the run's summary: display name -> metric key."""


class SyncPipeline:
    """Produce, then consume, one step after the other: the trainer and the engines take turns."""

    def run(self, stage: Stage, steps: Iterable[int], before_consume: Callable[[int], None],
            after_step: Callable[[int, dict[str, float]], None]) -> None:
        """For each step: produce, ``before_consume(step)`` (e.g. the learning rate), consume, then
        ``after_step(step, metrics)`` (logging, evaluation, checkpoints; it may raise to stop the run)."""
        for step in steps:
            exp = stage.produce(step)
            before_consume(step)
            after_step(step, stage.consume(exp))


class NoState:
    """Mixin of the components (and stages) that keep no state of their own to checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing of its own to restore."""

    def save_checkpoint(self, staged_dir: str) -> None:
        """Nothing besides the policy."""


def timed(timings: dict[str, float], key: str) -> "_Timer":
    """``with timed(timings, "time/train"): ...`` adds the block's seconds to timings[key]."""
    return _Timer(timings, key)


class _Timer:
    def __init__(self, timings: dict[str, float], key: str) -> None:
        self.timings, self.key = timings, key

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.key] = self.timings.get(self.key, 0.0) + time.perf_counter() - self.t0
