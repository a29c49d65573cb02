"""The reward worker group: score a batch with every reward component in parallel -> RewardVector (B, K).

With Ray (the default) the components live in reward workers: Ray actors (``num_cpus=0``) that build their
scorers once (``setup()`` of class plugins runs there). A component's ``worker`` (recipe key) names its worker;
components naming the same one share it. By default every plugin with a ``setup()`` (reward models, LLM judges,
remote services) gets a worker of its own, and the others (rule-based functions and classes) share the worker
``functions``: one process and one Ray call per step instead of one per component. A worker hosting several
components runs them one after another (cheap work: no thread hand-offs), each bounded by its own ``timeout_s``;
give slow components a worker of their own to run them in parallel. Without Ray (``use_ray=False``)
every component runs in-process, in its own thread: for unit tests and debugging.

Each component has its own ``timeout_s``. A timed-out Ray worker is killed (a running actor task cannot be
interrupted otherwise) and restarted on the next ``score()``, which runs its components' ``setup()`` again; the
other components of a shared worker keep the values that call returned. In-process, a timed-out call keeps its
thread; the component fails fast until that call returns.

``on_error`` per component: ``fail`` raises RewardPluginError naming the component, the plugin and the sample when
known; ``nan`` fills NaN (the failing samples when known, else the whole column); ``zero`` fills 0.0. Failures are
counted in the metrics ``reward/{name}/failures`` (samples affected), time in ``reward/{name}/time_s``.

Usage::

    group = RewardGroup(recipe.rewards)                 # after ray.init()
    vector, metrics = group.score(batch.prompts, batch.completions, rollout_columns(batch))
    group.shutdown()
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from rewards.api import PluginInfo, RewardPluginError, build_scorer, check_component, component_kind

if TYPE_CHECKING:  # torch is imported where tensors are built: the actor processes never need it (faster start)
    from rlhf.types import RewardVector, RolloutBatch

RUNTIME_COLUMNS = ("finished", "num_tokens")  # columns the runtime adds to every batch
MAX_RESTARTS_PER_CALL = 2  # a worker that dies mid-call is restarted and asked again this many times at most
SHARED_WORKER = "functions"  # the default worker of plain-function plugins
POOL_GRACE_S = 10.0  # a shared worker answers within the sum of its members' timeouts plus this, or is killed
_DIED = "its reward worker died"


@dataclass
class ScoreOutcome:
    """What one component's worker returns for one batch (plain data: it crosses the Ray boundary)."""

    values: list[float] | None = None  # (B,) when the call returned; NaN where a sample's output was bad
    sample_errors: list[tuple[int, str]] = field(default_factory=list)  # (sample index, message) per bad sample
    error: str | None = None  # the whole call failed (plugin raised, wrong length, timeout, worker died)
    error_sample: int | None = None  # sample index of a whole-call failure, when known
    elapsed_s: float = 0.0
    steps: list[list[float] | None] | None = None  # process components: (B,) per-sample step scores or None
    timed_out: bool = False  # the call outran the component's timeout_s (its worker is killed)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs of a component (plain data, so the actor need not import the config schema or torch)."""

    name: str
    plugin: str
    kind: str  # the effective kind (component_kind)
    args: dict[str, Any]

    @staticmethod
    def of(component: Any, plugin: PluginInfo) -> "WorkerSpec":
        kind = component_kind(component, plugin)
        return WorkerSpec(component.name, component.plugin, kind, dict(component.args or {}))


class RewardWorker:
    """Hosts one component's scorer. Wrapped by ``ray.remote`` for the Ray group; used as is in-process."""

    def __init__(self, component: WorkerSpec, plugin: PluginInfo) -> None:
        self.component_name = component.name
        self._setup_error: str | None = None
        try:
            self._scorer = build_scorer(component, plugin)
        except Exception as exc:  # reported to the driver by ready(), which raises it there
            self._setup_error = str(exc) if isinstance(exc, RewardPluginError) else f"{type(exc).__name__}: {exc}"

    def ready(self) -> str | None:
        """None when the scorer is built, else why building it failed."""
        return self._setup_error

    def score(self, payload: tuple[list[str], list[str], dict[str, list]]) -> ScoreOutcome:
        prompts, completions, columns = payload
        start = time.perf_counter()
        steps = None
        try:
            if self._scorer.kind == "process":
                values, steps, errors = self._scorer.run_process(prompts, completions, columns)
            else:
                values, errors = self._scorer.run(prompts, completions, columns)
        except RewardPluginError as exc:
            return ScoreOutcome(error=str(exc), error_sample=exc.sample_index, elapsed_s=time.perf_counter() - start)
        sample_errors = [(int(e.sample_index or 0), str(e)) for e in errors]  # convert_outputs sets the index
        return ScoreOutcome(values=values, sample_errors=sample_errors, elapsed_s=time.perf_counter() - start,
                            steps=steps)


class PooledRewardWorker:
    """Hosts the scorers of several components, each bounded by its own ``timeout_s`` from the moment it starts.

    ``parallel=False`` (a shared Ray worker: cheap rule-based plugins) runs the asked components one after another.
    In a Ray actor the call arrives on the process's main thread and the components run right there, so plugins
    that bound their own work with ``signal.alarm`` (``math_answer``) keep doing so; a watchdog thread interrupts a
    component that outlives its timeout (SIGUSR1 to the main thread, raised there as ``ComponentTimeout`` between
    two Python bytecodes) and the next one starts. Elsewhere (a thread) they run in one daemon thread, and after a
    timeout the rest go on in a new one. ``parallel=True`` (the in-process group) gives each component its own
    thread. A timed-out call in a thread keeps running and that component fails fast until it returns; the Ray
    group kills a worker after any timeout and starts it again on the next call."""

    def __init__(self, specs: Sequence[WorkerSpec], plugins: Sequence[PluginInfo], parallel: bool = False) -> None:
        self._workers = [RewardWorker(spec, plugin) for spec, plugin in zip(specs, plugins)]
        self.parallel = parallel
        self._stuck: dict[int, _Chain] = {}  # chains whose call timed out and may still be running

    def ready(self) -> list[str | None]:
        """Per member: None when its scorer is built, else why building it failed."""
        return [worker.ready() for worker in self._workers]

    def score_many(self, payload: tuple, timeouts: Sequence[float], only: Sequence[int] | None = None
                   ) -> list[ScoreOutcome | None]:
        """Outcomes of the members in ``only`` (default all; None for the others). timeouts: one per member."""
        outcomes: list[ScoreOutcome | None] = [None] * len(self._workers)
        runnable = []
        for j in range(len(self._workers)) if only is None else only:
            if j in self._stuck and not self._stuck[j].finished.is_set():
                outcomes[j] = ScoreOutcome(error="is still running a call that timed out earlier")
                continue
            self._stuck.pop(j, None)
            runnable.append(j)
        if not self.parallel and threading.current_thread() is threading.main_thread():
            for j in runnable:
                outcomes[j] = _score_on_main_thread(self._workers[j], payload, float(timeouts[j]))
            return outcomes
        groups = [[j] for j in runnable] if self.parallel else [runnable] if runnable else []
        active = [_Chain(self._workers, members, payload) for members in groups]
        while active:
            chain = active.pop(0)
            late = chain.wait(timeouts)
            for j, outcome in chain.results.items():
                outcomes[j] = outcome
            if late is not None:
                outcomes[late] = _timeout_outcome(timeouts[late])
                self._stuck[late] = chain
                rest = [j for j in chain.members if j not in chain.results and j != late]
                if rest:
                    active.append(_Chain(self._workers, rest, payload))
        return outcomes


class ComponentTimeout(BaseException):
    """Raised on the main thread inside a component that outlived its timeout (a BaseException, so that a plugin's
    ``except Exception`` does not swallow it)."""


class _Watchdog:
    """One daemon thread per process: when the armed deadline passes it sends SIGUSR1 to the main thread, whose
    handler (installed by ``_score_on_main_thread``) raises ``ComponentTimeout`` if that deadline is still armed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._tokens = 0
        self.armed = 0  # token of the component being timed; 0: none
        self.fired = 0  # token whose deadline passed
        threading.Thread(target=self._loop, name="reward-watchdog", daemon=True).start()

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._tokens += 1
            self.armed, self._deadline = self._tokens, time.monotonic() + seconds
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self.armed, self._deadline = 0, None

    def expired(self) -> bool:
        return self.armed != 0 and self.fired == self.armed

    def _loop(self) -> None:
        main = threading.main_thread().ident
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self.fired, self._deadline = self.armed, None
                signal.pthread_kill(main, signal.SIGUSR1)


_WATCHDOG: _Watchdog | None = None


def _score_on_main_thread(worker: RewardWorker, payload: tuple, timeout_s: float) -> ScoreOutcome:
    """worker.score(payload) on this (the main) thread, interrupted after timeout_s by the process's watchdog."""
    global _WATCHDOG
    if _WATCHDOG is None:
        _WATCHDOG = _Watchdog()
    dog = _WATCHDOG

    def on_signal(signum: int, frame: Any) -> None:
        if dog.expired():
            raise ComponentTimeout

    previous = signal.signal(signal.SIGUSR1, on_signal)
    start = time.perf_counter()
    try:
        dog.arm(timeout_s)
        try:
            outcome = worker.score(payload)
        except ComponentTimeout:
            return _timeout_outcome(timeout_s)
        except Exception as exc:  # not a plugin error (those come back as outcomes): report it
            outcome = _unexpected_failure(exc, time.perf_counter() - start)
        dog.disarm()
        return outcome
    except ComponentTimeout:  # fired between the call's return and the line above: at the deadline, report it
        return _timeout_outcome(timeout_s)
    finally:
        dog.disarm()
        signal.signal(signal.SIGUSR1, previous)


class _Chain:
    """Scores ``members`` one after another in a daemon thread (a hung plugin must not block interpreter exit);
    ``wait`` returns when they are done or the running one outlives its timeout."""

    def __init__(self, workers: Sequence[RewardWorker], members: list[int], payload: tuple) -> None:
        self.members = members
        self.results: dict[int, ScoreOutcome] = {}
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._current: int | None = None
        self._started = 0.0
        self._abandoned = False
        name = "reward-" + "+".join(workers[j].component_name for j in members)
        threading.Thread(target=self._run, args=(workers, payload), name=name[:60], daemon=True).start()

    def _run(self, workers: Sequence[RewardWorker], payload: tuple) -> None:
        try:
            for j in self.members:
                with self._lock:
                    if self._abandoned:
                        return
                    self._current, self._started = j, time.monotonic()
                try:
                    outcome = workers[j].score(payload)
                except BaseException as exc:  # not a plugin error (those come back as outcomes): report it
                    outcome = _unexpected_failure(exc)
                with self._lock:
                    if self._abandoned:  # this call was reported as timed out; its late result is dropped
                        return
                    self.results[j] = outcome
        finally:
            self.finished.set()

    def wait(self, timeouts: Sequence[float]) -> int | None:
        """None when every member is done; else the member that outran its timeout (the chain stops after it)."""
        while True:
            with self._lock:
                j, started = self._current, self._started
            left = 0.05 if j is None else max(0.0, started + float(timeouts[j]) - time.monotonic())
            if self.finished.wait(left):
                return None
            with self._lock:
                if j is not None and self._current == j and time.monotonic() >= self._started + float(timeouts[j]):
                    self._abandoned = True
                    return j


_REMOTE_CLS: dict[str, Any] = {}


def _remote_cls(cls: type) -> Any:
    """``ray.remote(num_cpus=0)(cls)``, built on first use so that importing this module needs no Ray."""
    if cls.__name__ not in _REMOTE_CLS:
        import ray

        _REMOTE_CLS[cls.__name__] = ray.remote(num_cpus=0)(cls)
    return _REMOTE_CLS[cls.__name__]


def worker_names(components: Sequence[Any], plugins: Sequence[PluginInfo]) -> list[str]:
    """The reward worker of each component: its ``worker`` key, else a worker of its own (named after the
    component) for plugins with a ``setup()`` (they load a model or open a connection once), and the shared
    ``functions`` worker for the rest (functions, and classes without setup such as compiled patterns)."""
    names = []
    for component, plugin in zip(components, plugins):
        heavy = plugin.is_class and callable(getattr(plugin.obj, "setup", None))
        names.append(getattr(component, "worker", None) or (f"component:{component.name}" if heavy else SHARED_WORKER))
    return names


# --------------------------------------------------------------------------- backends


class _ThreadBackend:
    """In-process: every component runs in its own daemon thread per call."""

    def __init__(self, components: Sequence[Any], plugins: Sequence[PluginInfo]) -> None:
        specs = [WorkerSpec.of(c, p) for c, p in zip(components, plugins)]
        self._pool: PooledRewardWorker | None = PooledRewardWorker(specs, plugins, parallel=True)
        for component, problem in zip(components, self._pool.ready()):
            _raise_setup_error(component, problem)

    def run(self, payload: tuple, timeouts: Sequence[float], only: set[int] | None = None) -> list[ScoreOutcome]:
        assert self._pool is not None
        return self._pool.score_many(payload, timeouts, None if only is None else sorted(only))  # type: ignore

    def shutdown(self) -> None:
        self._pool = None


class _RayBackend:
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

    def run(self, payload: tuple, timeouts: Sequence[float], only: set[int] | None = None) -> list[ScoreOutcome]:
        import ray

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
                if self._actors[w] is None and any((o.error or "").startswith(_DIED) for o in got.values()):
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
        except ray.exceptions.RayActorError as exc:  # the actor process died (out of memory, segfault, ...)
            self._kill(w)
            return {j: ScoreOutcome(error=f"{_DIED}: {_last_line(exc)}") for j in wanted}
        members = self._members[w]
        got = {wanted[0]: result} if len(members) == 1 else {j: result[members.index(j)] for j in wanted}
        if any(outcome.timed_out for outcome in got.values()):
            self._kill(w)  # a hung plugin thread goes with its worker; restarted on the next call
        return got

    def _abandon(self, w: int, wanted: list[int], timeouts: Sequence[float]) -> dict[int, ScoreOutcome]:
        # ray.cancel cannot interrupt a task running in a regular actor: killing the actor is what stops it.
        self._kill(w)
        if len(self._members[w]) == 1:
            return {j: _timeout_outcome(float(timeouts[j])) for j in wanted}
        limit = self._limit(w, wanted, timeouts)
        others = [self._components[j].name for j in self._members[w]]
        message = (f"timed out: its shared reward worker {self.workers[w]!r} (components {others}) did not answer "
                   f"within {limit:g}s, the sum of their timeouts plus {POOL_GRACE_S:g}s: one of them hung where it "
                   "cannot be interrupted (C code); give each slow component a worker of its own (worker: NAME) "
                   "to find which")
        return {j: ScoreOutcome(error=message, elapsed_s=limit, timed_out=True) for j in wanted}

    def _kill(self, w: int) -> None:
        import ray

        if self._actors[w] is not None:
            ray.kill(self._actors[w], no_restart=True)
            self._actors[w] = None

    def shutdown(self) -> None:
        for w in range(len(self._actors)):
            self._kill(w)


def _unexpected_failure(exc: BaseException, elapsed_s: float = 0.0) -> ScoreOutcome:
    """The outcome of a scoring call that raised something other than a plugin error."""
    return ScoreOutcome(error=f"failed in the reward worker: {type(exc).__name__}: {exc}", elapsed_s=elapsed_s)


def _timeout_outcome(timeout_s: float) -> ScoreOutcome:
    return ScoreOutcome(
        error=f"timed out after {timeout_s:g}s; raise its timeout_s or set on_error: nan to skip it",
        elapsed_s=timeout_s,
        timed_out=True,
    )


def _raise_setup_error(component: Any, problem: str | None) -> None:
    if problem is None:
        return
    if not problem.startswith("reward component"):
        problem = f"reward component {component.name!r} (plugin {component.plugin!r}): {problem}"
    raise RewardPluginError(problem, component=component.name, plugin=component.plugin)


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


# --------------------------------------------------------------------------- the group


class RewardGroup:
    """Scores batches with K reward components in parallel; see the module docstring."""

    def __init__(self, components: Sequence[Any], use_ray: bool = True, segmenter: Callable | None = None) -> None:
        if not components:
            raise ValueError("RewardGroup needs at least one reward component")
        names = [c.name for c in components]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"RewardGroup: duplicate reward component names {duplicates}")
        self.components = list(components)
        self.plugins = [check_component(c) for c in self.components]  # unknown plugins / bad args fail here
        self.names: tuple[str, ...] = tuple(names)
        self.kinds: tuple[str, ...] = tuple(component_kind(c, p) for c, p in zip(self.components, self.plugins))
        self.process = [j for j, k in enumerate(self.kinds) if k == "process"]  # columns with step rewards
        if self.process and segmenter is None:
            from rlhf.advantages.process import Segmenter

            segmenter = Segmenter()  # one step per line
        self.segmenter = segmenter
        backend = _RayBackend if use_ray else _ThreadBackend
        self._backend: _RayBackend | _ThreadBackend | None = backend(self.components, self.plugins)

    @property
    def workers(self) -> list[str]:
        """Names of the reward workers (one Ray actor each) hosting the components; [] in-process."""
        return list(getattr(self._backend, "workers", []))

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: Mapping[str, Sequence] | None = None,
        locate: Callable[[list[list[int]]], Any] | None = None,
    ) -> tuple["RewardVector", dict[str, float]]:
        """Score B samples with every component -> (RewardVector with values (B, K) float32, metrics).

        With process components, completions are segmented into steps first (the ``steps`` column) and the
        vector carries ``steps`` (B, S, Kp), transformed as each component says; ``locate`` (a StepLocator for
        the batch's token ids) turns the steps' character ends into ``step_ends`` (B, S) token indices.
        """
        import torch

        from rlhf.types import RewardVector

        if self._backend is None:
            raise RuntimeError("RewardGroup.score() after shutdown()")
        columns = _check_batch(prompts, completions, columns or {})
        n = len(prompts)
        spans: list[list[tuple[int, int]]] = []
        if self.process:
            if "steps" in columns:
                raise ValueError("dataset column 'steps' clashes with the step texts the runtime gives process "
                                 "reward plugins; rename it")
            spans = [self.segmenter(c) for c in completions]
            columns["steps"] = [[c[a:b] for a, b in sp] for c, sp in zip(completions, spans)]
        payload = (list(prompts), list(completions), columns)
        outcomes = self._backend.run(payload, [float(c.timeout_s) for c in self.components])
        values = torch.full((n, len(self.components)), math.nan, dtype=torch.float32)  # (B, K)
        metrics: dict[str, float] = {}
        errors: list[RewardPluginError] = []
        for j, (component, outcome) in enumerate(zip(self.components, outcomes)):
            column, failures, error = self._resolve(component, self.plugins[j], outcome, n)
            values[:, j] = torch.tensor(column, dtype=torch.float32)
            metrics[f"reward/{component.name}/failures"] = float(failures)
            metrics[f"reward/{component.name}/time_s"] = float(outcome.elapsed_s)
            if error is not None:
                errors.append(error)
        if errors:
            raise _combined(errors)
        metrics["events/reward_worker_restarts"] = float(getattr(self._backend, "restarts", 0))  # cumulative
        rv = RewardVector(names=self.names, kinds=self.kinds, values=values)
        if self.process:
            self._attach_steps(rv, outcomes, spans, locate, metrics)
        return rv, metrics

    def score_one(self, name: str, prompts: Sequence[str], completions: Sequence[str],
                  columns: Mapping[str, Sequence] | None = None) -> list[float]:
        """(B,) values of one component only (its on_error applies; failures raise as in ``score``)."""
        if self._backend is None:
            raise RuntimeError("RewardGroup.score_one() after shutdown()")
        if name not in self.names:
            raise KeyError(f"no reward component named {name!r}; components are {list(self.names)}")
        j = self.names.index(name)
        if j in self.process:
            raise ValueError(f"score_one({name!r}): process components are scored with their steps, by score()")
        columns = _check_batch(prompts, completions, columns or {})
        payload = (list(prompts), list(completions), columns)
        outcome = self._backend.run(payload, [float(c.timeout_s) for c in self.components], only={j})[j]
        column, _, error = self._resolve(self.components[j], self.plugins[j], outcome, len(prompts))
        if error is not None:
            raise error
        return column

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
                    rv.values[i, j] = summarize_steps(scores, getattr(component, "outcome", "min"))
            steps[..., k] = transform_steps(steps[..., k], getattr(component, "transform", "none"),
                                            getattr(component, "clip_threshold", 0.0))
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
    and `num_tokens` (int: generated tokens)."""
    clash = [c for c in RUNTIME_COLUMNS if c in batch.extras]
    if clash:
        raise ValueError(f"dataset column {clash[0]!r} clashes with a column the runtime adds; rename it")
    columns = {name: list(values) for name, values in batch.extras.items()}
    columns["finished"] = [bool(x) for x in batch.finished.tolist()]
    columns["num_tokens"] = [int(x) for x in batch.completion_lengths.tolist()]
    return columns
