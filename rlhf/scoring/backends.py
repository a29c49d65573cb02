"""Where a reward group's components run: ``RayBackend`` (one Ray actor per reward worker) or ``ThreadBackend``
(in-process, a thread per component and call). Both build every component's scorer at construction (raising its
setup error there) and answer ``run(payload, timeouts, only)`` with one ``ScoreOutcome`` per component, never
raising for a plugin's failure; ``RewardGroup`` (``group.py``) turns those into values, metrics and errors.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from rewards.api import PluginInfo, RewardPluginError
from rlhf.scoring.workers import (DIED, TIMEOUT, PooledRewardWorker, RewardWorker, ScoreOutcome, WorkerSpec,
                                  timeout_outcome)
from rlhf.transport.placement import actor_gone

MAX_RESTARTS_PER_CALL = 2  # a worker that dies mid-call is restarted and asked again this many times at most
SHARED_WORKER = "functions"  # the default worker of plain-function plugins
POOL_GRACE_S = 10.0  # a shared worker answers within the sum of its members' timeouts plus this, or is killed
_DIED = "its reward worker died"

_REMOTE_CLS: dict[str, Any] = {}


def _remote_cls(cls: type) -> Any:
    """``ray.remote(num_cpus=0)(cls)``, built on first use so that importing this module needs no Ray."""
    if cls.__name__ not in _REMOTE_CLS:
        import ray

        _REMOTE_CLS[cls.__name__] = ray.remote(num_cpus=0)(cls)
    return _REMOTE_CLS[cls.__name__]


def worker_names(components: Sequence[Any], plugins: Sequence[PluginInfo]) -> list[str]:
    """The reward worker of each component: its ``worker`` key, else for plugins with a ``setup()`` (they load a
    model or open a connection once) the worker their class's ``shared_worker(args)`` names (components that
    should share a process, e.g. the heads of one reward model) or a worker of their own (named after the
    component), and the shared ``functions`` worker for the rest (functions, and classes without setup such as
    compiled patterns)."""
    names = []
    for component, plugin in zip(components, plugins):
        heavy = plugin.is_class and callable(getattr(plugin.obj, "setup", None))
        shared = getattr(plugin.obj, "shared_worker", None) if heavy else None
        own = shared(dict(component.args or {})) if callable(shared) else f"component:{component.name}"
        names.append(component.worker or (own if heavy else SHARED_WORKER))
    return names


class ThreadBackend:
    """In-process: every component runs in its own daemon thread per call; safe to call from several threads
    (``serialize``: see ``PooledRewardWorker``)."""

    workers: list[str] = []  # no Ray actors
    restarts = 0  # nothing to restart in-process

    def __init__(self, components: Sequence[Any], plugins: Sequence[PluginInfo], serialize: bool = True) -> None:
        specs = [WorkerSpec.of(c, p) for c, p in zip(components, plugins)]
        self._pool: PooledRewardWorker | None = PooledRewardWorker(specs, plugins, parallel=True,
                                                                   serialize=serialize)
        for component, problem in zip(components, self._pool.ready()):
            _raise_setup_error(component, problem)

    def run(self, payload: tuple, timeouts: Sequence[float], only: set[int] | None = None) -> list[ScoreOutcome]:
        assert self._pool is not None
        return self._pool.score_many(payload, timeouts, None if only is None else sorted(only))  # type: ignore

    def column_problems(self, names: Sequence[str], only: set[int] | None = None) -> list[str | None]:
        assert self._pool is not None
        return self._pool.column_problems(names, None if only is None else sorted(only))

    def shutdown(self) -> None:
        self._pool = None


class RayBackend:
    """One Ray actor per reward worker (``worker_names``): a ``RewardWorker`` for a component alone in its worker, a
    ``PooledRewardWorker`` for several."""

    def __init__(self, components: Sequence[Any], plugins: Sequence[PluginInfo]) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError(
                "RewardGroup(use_ray=True) needs a running Ray: call ray.init() first, or pass use_ray=False"
            )
        self._components = list(components)
        self._plugins = list(plugins)
        names = worker_names(self._components, self._plugins)
        self.workers = list(dict.fromkeys(names))  # worker names, in order of first use
        self._members = [[j for j, n in enumerate(names) if n == w] for w in self.workers]  # component indices
        self._actors: list[Any] = [None] * len(self.workers)
        self.restarts = 0  # workers restarted after dying mid-call (events/reward_worker_restarts)
        try:
            for w in range(len(self.workers)):
                self._actors[w] = self._start(w)
            for w in range(len(self.workers)):
                self._wait_ready(w)
        except BaseException:
            self.shutdown()  # no orphan actors; the error propagates
            raise

    def _start(self, w: int) -> Any:
        members = self._members[w]
        specs = [WorkerSpec.of(self._components[j], self._plugins[j]) for j in members]
        plugins = [self._plugins[j] for j in members]
        if len(members) == 1:
            return _remote_cls(RewardWorker).remote(specs[0], plugins[0])
        return _remote_cls(PooledRewardWorker).remote(specs, plugins)

    def _wait_ready(self, w: int) -> None:
        import ray

        members = self._members[w]
        try:
            problems = ray.get(self._actors[w].ready.remote())
        except ray.exceptions.RayError as exc:
            component = self._components[members[0]]
            shared = (f" (worker {self.workers[w]!r}, shared with "
                      f"{[self._components[j].name for j in members[1:]]})" if len(members) > 1 else "")
            raise RewardPluginError(
                f"reward component {component.name!r} (plugin {component.plugin!r}): its reward worker{shared} "
                f"failed to start: {_last_line(exc)}. A plugin's module must be importable on every Ray worker "
                f"(install its package, or run from the directory that holds it)",
                component=component.name,
                plugin=component.plugin,
            ) from exc
        for j, problem in zip(members, problems if len(members) > 1 else [problems]):
            _raise_setup_error(self._components[j], problem)

    def _wanted(self, only: set[int] | None) -> dict[int, list[int]]:
        """{worker: its components in ``only``}, every such worker running (restarted if it was killed)."""
        wanted = {w: [j for j in members if only is None or j in only] for w, members in enumerate(self._members)}
        wanted = {w: js for w, js in wanted.items() if js}
        for w in wanted:
            if self._actors[w] is None:  # killed after a timeout or a crash: start it again (runs setup() again)
                self._actors[w] = self._start(w)
                try:
                    self._wait_ready(w)
                except BaseException:
                    self._kill(w)
                    raise
        return wanted

    def column_problems(self, names: Sequence[str], only: set[int] | None = None) -> list[str | None]:
        import ray

        problems: list[str | None] = [None] * len(self._components)
        for w, js in self._wanted(only).items():
            members = self._members[w]
            if len(members) == 1:
                problems[js[0]] = ray.get(self._actors[w].column_problem.remote(list(names)))
                continue
            got = ray.get(self._actors[w].column_problems.remote(list(names), [members.index(j) for j in js]))
            for j in js:
                problems[j] = got[members.index(j)]
        return problems

    def run(self, payload: tuple, timeouts: Sequence[float], only: set[int] | None = None) -> list[ScoreOutcome]:
        import ray

        wanted = self._wanted(only)
        payload_ref = ray.put(payload)
        outcomes: list[ScoreOutcome | None] = [None] * len(self._components)
        pending = list(wanted)
        for attempt in range(MAX_RESTARTS_PER_CALL + 1):
            refs = {w: self._call(w, payload_ref, wanted[w], timeouts) for w in pending}
            start = time.monotonic()
            died = []
            for w, ref in refs.items():
                limit = self._limit(w, wanted[w], timeouts)
                done, _ = ray.wait([ref], timeout=max(0.0, start + limit - time.monotonic()))
                got = self._collect(w, ref, wanted[w]) if done else self._abandon(w, wanted[w], timeouts)
                for j, outcome in got.items():
                    outcomes[j] = outcome
                if self._actors[w] is None and any(o.cause == DIED for o in got.values()):
                    died.append(w)
            if not died or attempt == MAX_RESTARTS_PER_CALL:
                break
            for w in died:  # a worker that died mid-call (killed, out of memory) is restarted and asked again
                self._actors[w] = self._start(w)
                self._wait_ready(w)
                self.restarts += 1
            pending = died
        return outcomes  # type: ignore[return-value]

    def _call(self, w: int, payload_ref: Any, wanted: list[int], timeouts: Sequence[float]) -> Any:
        members = self._members[w]
        if len(members) == 1:
            return self._actors[w].score.remote(payload_ref)
        return self._actors[w].score_many.remote(payload_ref, [float(timeouts[j]) for j in members],
                                                 [members.index(j) for j in wanted])

    def _limit(self, w: int, wanted: list[int], timeouts: Sequence[float]) -> float:
        """Seconds to wait for worker w: its component's timeout; a shared worker enforces its members' timeouts
        itself and runs them in turn, so it gets their sum plus a grace period (past that it is hung as a whole,
        e.g. in C code that holds the GIL)."""
        if len(self._members[w]) == 1:
            return float(timeouts[wanted[0]])
        return sum(float(timeouts[j]) for j in wanted) + POOL_GRACE_S

    def _collect(self, w: int, ref: Any, wanted: list[int]) -> dict[int, ScoreOutcome]:
        import ray

        try:
            result = ray.get(ref)
        except actor_gone() as exc:  # the actor process died (out of memory, segfault, ...)
            self._kill(w)
            return {j: ScoreOutcome(error=f"{_DIED}: {_last_line(exc)}", cause=DIED) for j in wanted}
        members = self._members[w]
        got = {wanted[0]: result} if len(members) == 1 else {j: result[members.index(j)] for j in wanted}
        if any(outcome.timed_out for outcome in got.values()):
            self._kill(w)  # a hung plugin thread goes with its worker; restarted on the next call
        return got

    def _abandon(self, w: int, wanted: list[int], timeouts: Sequence[float]) -> dict[int, ScoreOutcome]:
        # ray.cancel cannot interrupt a task running in a regular actor: killing the actor is what stops it.
        self._kill(w)
        if len(self._members[w]) == 1:
            return {j: timeout_outcome(float(timeouts[j])) for j in wanted}
        limit = self._limit(w, wanted, timeouts)
        others = [self._components[j].name for j in self._members[w]]
        message = (f"timed out: its shared reward worker {self.workers[w]!r} (components {others}) did not answer "
                   f"within {limit:g}s, the sum of their timeouts plus {POOL_GRACE_S:g}s: one of them hung where it "
                   "cannot be interrupted (C code); give each slow component a worker of its own (worker: NAME) "
                   "to find which")
        return {j: ScoreOutcome(error=message, elapsed_s=limit, cause=TIMEOUT) for j in wanted}

    def _kill(self, w: int) -> None:
        import ray

        if self._actors[w] is not None:
            ray.kill(self._actors[w], no_restart=True)
            self._actors[w] = None

    def shutdown(self) -> None:
        for w in range(len(self._actors)):
            self._kill(w)


def _raise_setup_error(component: Any, problem: str | None) -> None:
    if problem is None:
        return
    if not problem.startswith("reward component"):
        problem = f"reward component {component.name!r} (plugin {component.plugin!r}): {problem}"
    raise RewardPluginError(problem, component=component.name, plugin=component.plugin)


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
