"""The reward worker group: score a batch with every reward component in parallel -> RewardVector (B, K).

With Ray (the default) the components live in reward workers: Ray actors (``num_cpus=0``) that build their
scorers once (``setup()`` of class plugins runs there). A component's ``worker`` (recipe key) names its worker;
components naming the same one share it. By default every plugin with a ``setup()`` (reward models, LLM judges,
remote services) gets a worker of its own, and the others (rule-based functions and classes) share the worker
``functions``: one process and one Ray call per step instead of one per component. A worker hosting several
components runs them one after another (cheap work: no thread hand-offs), each bounded by its own ``timeout_s``;
give slow components a worker of their own to run them in parallel. Without Ray (``use_ray=False``)
every component runs in-process, in its own thread: for the reward server, unit tests and debugging.

Each component has its own ``timeout_s``. A timed-out Ray worker is killed (a running actor task cannot be
interrupted otherwise) and restarted on the next ``score()``, which runs its components' ``setup()`` again; the
other components of a shared worker keep the values that call returned. In-process, a timed-out call keeps its
thread; the component fails fast until that call returns. In-process the group may be called from several threads
at once (the reward server does); a component then still runs one call at a time unless ``serialize=False``.

``on_error`` per component: ``fail`` raises RewardPluginError naming the component, the plugin and the sample when
known; ``nan`` fills NaN (the failing samples when known, else the whole column); ``zero`` fills 0.0. Failures are
counted in the metrics ``reward/{name}/failures`` (samples affected), time in ``reward/{name}/time_s``; scalars a
plugin logs besides its values (a verl dict's other keys, OpenRLHF's ``extra_logs``, TRL's ``log_metric``) land
in ``reward_extra/{name}/{key}``.
``outcomes()`` skips all that: it returns each component's ``ScoreOutcome`` as it came back (what failed, why,
where), optionally after looking for the sample a raising plugin failed on.

Usage::

    group = RewardGroup(recipe.rewards)                 # after ray.init()
    vector, metrics = group.score(batch.prompts, batch.completions, rollout_columns(batch))
    group.shutdown()

The machinery lives beside this module: ``workers.py`` (the objects hosting scorers, timeouts), ``backends.py``
(Ray actors or threads).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from rewards.api import PluginInfo, RewardPluginError, check_component, component_kind
from rlhf.scoring.backends import RayBackend, ThreadBackend, worker_names
from rlhf.scoring.workers import INTERNAL, RAISED, PooledRewardWorker, RewardWorker, ScoreOutcome, WorkerSpec

if TYPE_CHECKING:  # torch is imported where tensors are built: the actor processes never need it (faster start)
    from rlhf.types import RewardVector, RolloutBatch

__all__ = ["RewardGroup", "check_components", "rollout_columns", "PooledRewardWorker", "RewardWorker", "ScoreOutcome",
           "WorkerSpec", "worker_names", "RUNTIME_COLUMNS"]

RUNTIME_COLUMNS = ("finished", "num_tokens")  # columns the runtime adds to every batch


class RewardGroup:
    """Scores batches with K reward components in parallel; see the module docstring."""

    def __init__(self, components: Sequence[Any], use_ray: bool = True, segmenter: Callable | None = None,
                 serialize: bool = True) -> None:
        self.components = list(components)
        self.plugins = check_components(self.components)  # unknown plugins / bad args fail here
        self.names: tuple[str, ...] = tuple(c.name for c in self.components)
        self.kinds: tuple[str, ...] = tuple(component_kind(c, p) for c, p in zip(self.components, self.plugins))
        self.process = [j for j, k in enumerate(self.kinds) if k == "process"]  # columns with step rewards
        if self.process and segmenter is None:
            from rlhf.advantages.process import Segmenter

            segmenter = Segmenter()  # one step per line
        self.segmenter = segmenter
        self._backend: RayBackend | ThreadBackend | None = (
            RayBackend(self.components, self.plugins) if use_ray
            else ThreadBackend(self.components, self.plugins, serialize=serialize))

    @property
    def workers(self) -> list[str]:
        """Names of the reward workers (one Ray actor each) hosting the components; [] in-process."""
        return list(self._backend.workers) if self._backend is not None else []

    @property
    def timeouts(self) -> list[float]:
        """Each component's timeout_s."""
        return [float(c.timeout_s) for c in self.components]

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: Mapping[str, Sequence] | None = None,
        locate: Callable[[list[list[int]]], Any] | None = None,
        step_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> tuple["RewardVector", dict[str, float]]:
        """Score B samples with every component -> (RewardVector with values (B, K) float32, metrics).

        With process components, completions are segmented into steps first (the ``steps`` column) and the
        vector carries ``steps`` (B, S, Kp), transformed as each component says; ``locate`` (a StepLocator for
        the batch's token ids) turns the steps' character ends into ``step_ends`` (B, S) token indices. ``step_spans``
        (per completion, the steps' character spans: an agent episode's turns) replaces the segmenter.
        """
        import torch

        from rlhf.types import RewardVector

        backend = self._live("score")
        columns = _check_batch(prompts, completions, columns or {})
        n = len(prompts)
        spans: list[list[tuple[int, int]]] = []
        if self.process:
            if "steps" in columns:
                raise ValueError("dataset column 'steps' clashes with the step texts the runtime gives process "
                                 "reward plugins; rename it")
            spans = ([list(sp) for sp in step_spans] if step_spans is not None
                     else [self.segmenter(c) for c in completions])
            columns["steps"] = [[c[a:b] for a, b in sp] for c, sp in zip(completions, spans)]
        payload = (list(prompts), list(completions), columns)
        outcomes = backend.run(payload, self.timeouts)
        values = torch.full((n, len(self.components)), math.nan, dtype=torch.float32)  # (B, K)
        metrics: dict[str, float] = {}
        errors: list[RewardPluginError] = []
        for j, (component, outcome) in enumerate(zip(self.components, outcomes)):
            column, failures, error = self._resolve(component, self.plugins[j], outcome, n)
            values[:, j] = torch.tensor(column, dtype=torch.float32)
            metrics[f"reward/{component.name}/failures"] = float(failures)
            metrics[f"reward/{component.name}/time_s"] = float(outcome.elapsed_s)
            for key, value in outcome.extras.items():  # what the plugin logs besides its values
                metrics[f"reward_extra/{component.name}/{key}"] = float(value)
            if error is not None:
                errors.append(error)
        if errors:
            raise _combined(errors)
        metrics["events/reward_worker_restarts"] = float(backend.restarts)  # cumulative
        rv = RewardVector(names=self.names, kinds=self.kinds, values=values)
        if self.process:
            self._attach_steps(rv, outcomes, spans, locate, metrics)
        return rv, metrics

    def score_one(self, name: str, prompts: Sequence[str], completions: Sequence[str],
                  columns: Mapping[str, Sequence] | None = None) -> list[float]:
        """(B,) values of one component only (its on_error applies; failures raise as in ``score``)."""
        self._live("score_one")
        j = self._indices([name])[0]
        if j in self.process:
            raise ValueError(f"score_one({name!r}): process components are scored with their steps, by score()")
        outcome = self.outcomes(prompts, completions, columns, only=[name])[name]
        column, _, error = self._resolve(self.components[j], self.plugins[j], outcome, len(prompts))
        if error is not None:
            raise error
        return column

    def outcomes(self, prompts: Sequence[str], completions: Sequence[str],
                 columns: Mapping[str, Sequence] | None = None, only: Sequence[str] | None = None,
                 locate_s: float = 0.0) -> dict[str, ScoreOutcome]:
        """{name: ScoreOutcome} of the components in ``only`` (default all), in that order, as they came back:
        no ``on_error``, nothing raised for a plugin's failure (``outcome.error`` and ``outcome.cause`` say what
        failed). Process components get no ``steps`` column here; their step scores come back in ``steps``.

        ``locate_s`` > 0: when a plugin raised without naming a sample, the sample it fails on is looked for by
        scoring halves of the batch again (each call bounded by the component's timeout_s), for up to ``locate_s``
        seconds (at most the component's timeout_s); found, it is ``outcome.error_sample``.
        """
        backend = self._live("outcomes")
        wanted = self._indices(self.names if only is None else only)
        payload = (list(prompts), list(completions), _check_batch(prompts, completions, columns or {}))
        outcomes = backend.run(payload, self.timeouts, only=set(wanted))
        for j in wanted:
            outcome = outcomes[j]
            if locate_s > 0 and outcome.cause == RAISED and outcome.error_sample is None:
                budget = min(float(locate_s), self.timeouts[j])
                outcome.error_sample = self._locate(j, payload, time.monotonic() + budget)
        return {self.names[j]: outcomes[j] for j in wanted}

    def check_columns(self, names: Iterable[str], only: Sequence[str] | None = None) -> None:
        """Raise RewardPluginError (naming the first component in ``only``, default all, that would fail) when a
        batch with the columns ``names`` lacks a column a plugin needs; nothing is scored."""
        backend = self._live("check_columns")
        wanted = self._indices(self.names if only is None else only)
        problems = backend.column_problems(list(names), only=set(wanted))
        for j in wanted:
            if problems[j] is not None:
                raise RewardPluginError(problems[j], component=self.names[j], plugin=self.plugins[j].name)

    def _locate(self, j: int, payload: tuple, deadline: float) -> int | None:
        """The first sample whose own call raises, by bisection (None when the failure needs the whole batch, when
        a re-scoring call fails in another way (a timeout), or when the time runs out)."""
        prompts, completions, columns = payload

        def raises(a: int, b: int) -> bool:
            part = (prompts[a:b], completions[a:b], {k: v[a:b] for k, v in columns.items()})
            return self._live("outcomes").run(part, self.timeouts, only={j})[j].cause in (RAISED, INTERNAL)

        lo, hi = 0, len(prompts)  # [lo, hi) is known to fail
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if time.monotonic() > deadline:
                return None
            if raises(lo, mid):
                hi = mid
                continue
            if time.monotonic() > deadline or not raises(mid, hi):
                return None
            lo = mid
        return lo

    def _live(self, what: str) -> RayBackend | ThreadBackend:
        if self._backend is None:
            raise RuntimeError(f"RewardGroup.{what}() after shutdown()")
        return self._backend

    def _indices(self, names: Sequence[str]) -> list[int]:
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise KeyError(f"no reward component named {unknown[0]!r}; components are {list(self.names)}")
        return [self.names.index(n) for n in dict.fromkeys(names)]

    def _attach_steps(self, rv: "RewardVector", outcomes: list[ScoreOutcome], spans: list[list[tuple[int, int]]],
                      locate: Callable | None, metrics: dict[str, float]) -> None:
        """Fill rv.steps (B, S, Kp) (transformed), rv.step_ends (B, S) with ``locate``, outcome values, metrics."""
        import torch

        from rlhf.advantages.process import step_metrics, summarize_steps, transform_steps

        n, width = rv.batch_size, max((len(sp) for sp in spans), default=0)
        steps = torch.full((n, width, len(self.process)), math.nan, dtype=torch.float32)  # (B, S, Kp)
        raw_all = []
        for k, j in enumerate(self.process):
            component = self.components[j]
            raw = outcomes[j].steps if outcomes[j].error is None and outcomes[j].steps else [None] * n
            raw_all.append(raw)
            for i, scores in enumerate(raw):
                if scores:
                    steps[i, : len(scores), k] = torch.tensor(scores, dtype=torch.float32)
                    rv.values[i, j] = summarize_steps(scores, component.outcome)
            steps[..., k] = transform_steps(steps[..., k], component.transform, component.clip_threshold)
        metrics.update(step_metrics([self.names[j] for j in self.process], raw_all))
        rv.steps = steps
        if locate is not None:
            rv.step_ends = locate([[end for _, end in sp] for sp in spans])  # (B, S)

    def _resolve(
        self, component: Any, plugin: PluginInfo, outcome: ScoreOutcome, n: int
    ) -> tuple[list[float], int, RewardPluginError | None]:
        """(column (B,), samples failed, error to raise under on_error: fail)."""
        fill = 0.0 if component.on_error == "zero" else math.nan
        if outcome.error is not None:
            message = outcome.error
            if not message.startswith("reward component"):
                message = f"reward component {component.name!r} (plugin {plugin.name!r}) {message}"
            error = RewardPluginError(
                message, component=component.name, plugin=plugin.name, sample_index=outcome.error_sample
            )
            return [fill] * n, n, (error if component.on_error == "fail" else None)
        column = list(outcome.values or [])
        for index, _ in outcome.sample_errors:
            column[index] = fill
        if outcome.sample_errors and component.on_error == "fail":
            index, message = outcome.sample_errors[0]
            error = RewardPluginError(message, component=component.name, plugin=plugin.name, sample_index=index)
            return column, len(outcome.sample_errors), error
        return column, len(outcome.sample_errors), None

    def shutdown(self) -> None:
        """Kill the reward actors (idempotent)."""
        if self._backend is not None:
            self._backend.shutdown()
            self._backend = None


def check_components(components: Sequence[Any]) -> list[PluginInfo]:
    """Each component's plugin, resolved and its args checked (RewardPluginError), once it is clear that there is
    a component and no two share a name (ValueError). Builds nothing: no ``setup()`` runs."""
    if not components:
        raise ValueError("no reward components: a reward group needs at least one")
    names = [c.name for c in components]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate reward component names {duplicates}")
    return [check_component(c) for c in components]


def _combined(errors: list[RewardPluginError]) -> RewardPluginError:
    """The first failure, mentioning the other failing components."""
    first = errors[0]
    if len(errors) == 1:
        return first
    others = ", ".join(repr(e.component) for e in errors[1:])
    return RewardPluginError(
        f"{first} (components {others} failed too)",
        component=first.component,
        plugin=first.plugin,
        sample_index=first.sample_index,
    )


def _check_batch(
    prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence]
) -> dict[str, list]:
    n = len(prompts)
    if len(completions) != n:
        raise ValueError(f"RewardGroup.score: {n} prompts but {len(completions)} completions")
    checked: dict[str, list] = {}
    for name, column in columns.items():
        if len(column) != n:
            raise ValueError(f"RewardGroup.score: column {name!r} has {len(column)} values for {n} samples")
        checked[name] = list(column)
    return checked


def rollout_columns(batch: "RolloutBatch") -> dict[str, list]:
    """The columns a rollout batch gives reward plugins: its dataset extras plus `finished` (bool: ended with EOS)
    and `num_tokens` (int: tokens the policy generated; an agent episode's observations are not counted)."""
    clash = [c for c in RUNTIME_COLUMNS if c in batch.extras]
    if clash:
        raise ValueError(f"dataset column {clash[0]!r} clashes with a column the runtime adds; rename it")
    columns = {name: list(values) for name, values in batch.extras.items()}
    columns["finished"] = [bool(x) for x in batch.finished.tolist()]
    columns["num_tokens"] = [int(x) for x in batch.loss_mask.sum(dim=1).tolist()]
    return columns
