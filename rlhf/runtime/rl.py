"""The on-policy stage, written once: every objective that learns from fresh rollouts is this stage with other
components (GRPO, RLOO, REINFORCE++, PPO, online DPO, CGPO; rlhf/runtime/stages.py builds them).

    produce(step):  weighting.begin_step -> collector: prompts -> rollout function -> scorer -> reward vector
                    -> weighting.observe (constraints, hypervolume) [-> MRT progress bonus]
    consume(exp):   engines release memory -> update.prepare (signals: advantages, pairs, task terms)
                    -> update.train (trainer groups) -> sync coordinator (weights to the engines, checked)

Driven asynchronously (``run_async``, rlhf/runtime/pipeline.py ``AsyncPipeline``), ``produce`` runs in the
pipeline's producer thread and touches only the prompts, the engines and the reward workers: the weighting's
``begin_step`` and ``observe`` move to the start of ``consume`` (step order, when the batch is trained), and the
weight sync waits at the pipeline's gate until the batches admitted with the older weights are generated. There
``produce`` comes in two halves (``production_parts``: generate, then score in the pipeline's scorer thread) unless
scoring needs the engines (MRT) or more generation (dynamic sampling).

The update component decides what is trained: ``PolicyGradientUpdate`` (an advantage estimator + the surrogate),
``OnlinePairsUpdate`` (rlhf/runtime/online_dpo.py), ``CGPOUpdate`` (rlhf/runtime/cgpo.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlhf.runtime.collect import rollout_metrics
from rlhf.runtime.pipeline import Experience, timed
from rlhf.types import ExperienceBatch


@dataclass
class Prepared:
    """An update's signals for one step: what its ``train`` sends to the trainers, and their metrics."""

    metrics: dict[str, float]
    batch: ExperienceBatch | None = None  # the policy-gradient batch
    pairs: ExperienceBatch | None = None  # (chosen, rejected) row pairs, interleaved


class RLStage:
    phase = "rl"

    def __init__(self, *, collector: Any, weighting: Any, update: Any, sync: Any, engines: Any,
                 evaluator: Callable[[], dict[str, float]], summary: dict[str, str],
                 progress: Callable[[Any, Any, int], dict[str, float]] | None = None) -> None:
        self.collector, self.weighting, self.update, self.sync = collector, weighting, update, sync
        self.engines, self._evaluate, self._summary, self.progress = engines, evaluator, summary, progress
        self._sync_gate: Callable[[int], None] | None = None  # set when driven asynchronously

    def run_async(self, sync_gate: Callable[[int], None]) -> None:
        """Driven by the async pipeline: weighting in ``consume``, the sync to version v after ``sync_gate(v)``."""
        self._sync_gate = sync_gate

    # ------------------------------------------------------------------ the step

    def produce(self, step: int) -> Experience:
        started = time.perf_counter()
        if self._sync_gate is None:
            self.weighting.begin_step(step)  # schedules
        c = self.collector.collect(step)
        return self._experience(step, c, started, self.engines.memory())  # the engines are idle here

    def production_parts(self) -> tuple[Callable[[int], Any], Callable[[Any], Experience]] | None:
        """Async: (generate, score) halves of ``produce`` so that the pipeline scores batch t while batch t + 1
        generates; None when scoring needs the engines (MRT's progress estimates) or decides on more generation
        (dynamic sampling's rounds)."""
        if self.progress is not None or not self.collector.splits:
            return None
        return self._generate, self._score

    def _generate(self, step: int) -> tuple[Any, float, dict[str, float]]:
        started = time.perf_counter()
        g = self.collector.generate(step)
        return g, started, self.engines.memory()  # memory/peak_*_gb/engines, asked while they are idle

    def _score(self, part: tuple[Any, float, dict[str, float]]) -> Experience:
        g, started, memory = part
        return self._experience(g.step, self.collector.score(g), started, memory)

    def _experience(self, step: int, c: Any, started: float, memory: dict[str, float]) -> Experience:
        metrics = dict(c.metrics)
        if self._sync_gate is None:
            metrics.update(self.weighting.observe(c.rewards))  # constraints' multipliers, hypervolume-guided weights
        metrics.update(memory)
        timings = {"time/generate": c.t_generate, "time/score": c.t_score}
        if self.progress is not None:  # MRT: dense bonus from success estimates at every step end
            t0 = time.perf_counter()
            metrics.update(self.progress(c.rollout, c.rewards, step))
            metrics["time/progress"] = time.perf_counter() - t0
            timings["time/generate"] += metrics["time/progress"]
        return Experience(step, c.rollout, c.rewards, c.rows, context=c.context, metrics=metrics, timings=timings,
                          started=started)

    def consume(self, exp: Experience) -> dict[str, float]:
        timings = dict(exp.timings)
        observed = {}
        if self._sync_gate is not None:  # async: the weighting follows the batches as they are trained
            self.weighting.begin_step(exp.step)
            observed = self.weighting.observe(exp.rewards)
        self.engines.sleep()  # colocated vllm with sleep mode frees its memory while training runs (no-op otherwise)
        with timed(timings, "time/advantages"):
            prepared = self.update.prepare(exp)
        with timed(timings, "time/train"):
            train_metrics = self.update.train(prepared)
        if self._sync_gate is not None:
            with timed(timings, "time/idle/sync_wait"):  # engines finish the batches admitted with older weights
                self._sync_gate(exp.step)
        with timed(timings, "time/sync"):
            payload = self.sync.sync(version=exp.step)
        timings["time/step"] = time.perf_counter() - exp.started
        return {**exp.metrics, **observed, **prepared.metrics, **train_metrics,
                **rollout_metrics(exp.rollout, payload, timings, trained_version=exp.step - 1),
                "events/rollout_restarts": float(self.engines.restarts)}  # cumulative

    # ------------------------------------------------------------------ around the steps

    def start(self, version: int) -> None:
        """Engines start from the trainer's exact weights (checked by fingerprint)."""
        self.sync.sync(version)

    def evaluate(self) -> dict[str, float]:
        return self._evaluate()

    def summary_keys(self) -> dict[str, str]:
        return dict(self._summary)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.collector.prompts.state_dict(), "weighting": self.weighting.state_dict(),
                **self.update.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.collector.prompts.load_state_dict(state["sampler"])
        self.weighting.load_state_dict(state["weighting"])
        self.update.load_state_dict(state)

    def save_checkpoint(self, staged_dir: str) -> None:
        self.update.save_checkpoint(staged_dir)


class PolicyGradientUpdate:
    """The estimator's advantages (and old/ref logprobs, values), one policy-gradient update of the objective's
    surrogate, then whatever the estimator trains itself (PPO's critic)."""

    def __init__(self, trainers: Any, estimator: Any, mask_truncated: bool, rollout_logprobs: bool) -> None:
        self.trainers, self.estimator = trainers, estimator
        self.mask_truncated = mask_truncated  # DAPO overlong filtering: truncated completions get no loss
        self.rollout_logprobs = rollout_logprobs  # the engine's logprobs go to the trainer (mismatch, TIS)

    def prepare(self, exp: Experience) -> Prepared:
        rollout = exp.rollout
        loss_mask = rollout.loss_mask.float()  # (B, C)
        if self.mask_truncated:
            loss_mask = loss_mask * rollout.finished.float().unsqueeze(1)
        batch = ExperienceBatch.from_rollout(rollout, torch.zeros(rollout.batch_size), loss_mask,
                                             rollout_logprobs=rollout.logprobs if self.rollout_logprobs else None)
        metrics = self.estimator.prepare(batch, exp.rewards, rollout.group_ids, exp.step)
        return Prepared(metrics, batch)

    def train(self, prepared: Prepared) -> dict[str, float]:
        metrics = self.trainers.train_rl(prepared.batch)
        metrics.update(self.estimator.after_update(prepared.batch))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.estimator.load_state_dict(state)

    def save_checkpoint(self, staged_dir: str) -> None:
        self.estimator.save_checkpoint(staged_dir)


def interleaved_pairs(rollout: Any, pairs: list[tuple[int, int]]) -> ExperienceBatch:
    """(2P, ...) rows chosen_0, rejected_0, chosen_1, ...; advantages unused (zeros)."""
    idx = torch.tensor([i for pair in pairs for i in pair], dtype=torch.long)
    return ExperienceBatch.from_rollout(rollout.select(idx), torch.zeros(len(idx)))
