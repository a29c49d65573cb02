"""Reward workers: the objects that host reward components' scorers and run them, each call bounded by its
component's ``timeout_s``, every failure returned as a ``ScoreOutcome`` rather than raised.

``RewardWorker`` hosts one component; ``PooledRewardWorker`` hosts several (a shared Ray actor, or every component
of the in-process group). Both are plain classes: the Ray backend (``backends.py``) wraps them with ``ray.remote``,
the thread backend uses a ``PooledRewardWorker`` as is. Timeouts are enforced here in two ways: on a process's main
thread a watchdog thread interrupts a late component (``_Watchdog``, SIGUSR1); elsewhere each run of components
happens in a daemon thread (``_Chain``) that the caller stops waiting for. Nothing here imports torch or Ray.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

from rewards.api import PluginInfo, RewardPluginError, build_scorer, component_kind

# Why a whole call failed (ScoreOutcome.cause):
RAISED = "raised"  # the plugin raised: re-scoring parts of the batch can find the sample it failed on
UNUSABLE = "unusable"  # the call could not be made (a missing column) or its output as a whole was unusable
TIMEOUT = "timeout"  # the call outran the component's timeout_s
BUSY = "busy"  # the component is still running an earlier call that timed out
DIED = "died"  # its reward worker process died
INTERNAL = "internal"  # something failed outside the plugin (a bug in the worker)


@dataclass
class ScoreOutcome:
    """What one component's worker returns for one batch (plain data: it crosses the Ray boundary)."""

    values: list[float] | None = None  # (B,) when the call returned; NaN where a sample's output was bad
    sample_errors: list[tuple[int, str]] = field(default_factory=list)  # (sample index, message) per bad sample
    error: str | None = None  # the whole call failed (plugin raised, wrong length, timeout, worker died)
    error_sample: int | None = None  # sample index of a whole-call failure, when known
    elapsed_s: float = 0.0
    steps: list[list[float] | None] | None = None  # process components: (B,) per-sample step scores or None
    cause: str | None = None  # why the whole call failed: RAISED, UNUSABLE, TIMEOUT, BUSY, DIED or INTERNAL
    traceback: str | None = None  # RAISED and INTERNAL: the traceback, for logs (never for users)
    extras: dict[str, float] = field(default_factory=dict)  # scalars the plugin logs besides its values (means)

    @property
    def timed_out(self) -> bool:
        """The call outran the component's timeout_s (a Ray worker is then killed)."""
        return self.cause == TIMEOUT


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs of a component (plain data, so the actor need not import the config schema or torch)."""

    name: str
    plugin: str
    kind: str  # the effective kind (component_kind)
    args: dict[str, Any]
    style: str = "auto"  # how the plugin is called (rewards/styles.py), with its column mapping and output key
    columns: dict[str, str] = field(default_factory=dict)
    output_key: str | None = None
    dataset_name: str | None = None

    @staticmethod
    def of(component: Any, plugin: PluginInfo) -> "WorkerSpec":
        """The spec of a recipe's reward component (RewardComponentConfig) and its resolved plugin."""
        kind = component_kind(component, plugin)
        return WorkerSpec(component.name, component.plugin, kind, dict(component.args), component.style,
                          dict(component.columns), component.output_key, component.dataset_name)


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

    def column_problem(self, names: Sequence[str]) -> str | None:
        """None when a batch with the columns ``names`` gives the plugin every column it needs, else why not (the
        check a call makes before it reaches the plugin)."""
        return self._scorer.column_problem(names)

    def score(self, payload: tuple[list[str], list[str], dict[str, list]]) -> ScoreOutcome:
        prompts, completions, columns = payload
        start = time.perf_counter()
        steps = None
        extras: dict[str, float] = {}
        try:
            if self._scorer.kind == "process":
                values, steps, errors = self._scorer.run_process(prompts, completions, columns, extras)
            else:
                values, errors = self._scorer.run(prompts, completions, columns, extras)
        except RewardPluginError as exc:
            raised = exc.__cause__ is not None  # the plugin raised (vs. a missing column or a wrong-length result)
            return ScoreOutcome(error=str(exc), error_sample=_sample_of(exc), elapsed_s=time.perf_counter() - start,
                                cause=RAISED if raised else UNUSABLE, traceback=_traceback(exc) if raised else None)
        sample_errors = [(int(e.sample_index or 0), str(e)) for e in errors]  # convert_outputs sets the index
        return ScoreOutcome(values=values, sample_errors=sample_errors, elapsed_s=time.perf_counter() - start,
                            steps=steps, extras=extras)


class PooledRewardWorker:
    """Hosts the scorers of several components, each bounded by its own ``timeout_s`` from the moment it starts.

    ``parallel=False`` (a shared Ray worker: cheap rule-based plugins) runs the asked components one after another.
    In a Ray actor the call arrives on the process's main thread and the components run right there, so plugins
    that bound their own work with ``signal.alarm`` (``math_answer``) keep doing so; a watchdog thread interrupts a
    component that outlives its timeout (SIGUSR1 to the main thread, raised there as ``ComponentTimeout`` between
    two Python bytecodes) and the next one starts. Elsewhere (a thread) they run in one daemon thread, and after a
    timeout the rest go on in a new one. ``parallel=True`` (the in-process group) gives each component its own
    thread. A timed-out call in a thread keeps running and that component fails fast (``BUSY``) until it returns;
    the Ray group kills a worker after any timeout and starts it again on the next call.

    ``score_many`` may be called from several threads at once. With ``serialize`` (the default) a component's
    scorer still runs one call at a time: a call waits for the one before it, the wait counting against its
    timeout. ``serialize=False`` lets calls of different callers overlap (for thread-safe plugins)."""

    def __init__(self, specs: Sequence[WorkerSpec], plugins: Sequence[PluginInfo], parallel: bool = False,
                 serialize: bool = True) -> None:
        self._workers = [RewardWorker(spec, plugin) for spec, plugin in zip(specs, plugins)]
        self.parallel = parallel
        self._locks = [threading.Lock() if serialize else nullcontext() for _ in self._workers]
        self._guard = threading.Lock()  # guards _stuck
        self._stuck: dict[int, _Chain] = {}  # chains whose call timed out and may still be running

    def ready(self) -> list[str | None]:
        """Per member: None when its scorer is built, else why building it failed."""
        return [worker.ready() for worker in self._workers]

    def column_problems(self, names: Sequence[str], only: Sequence[int] | None = None) -> list[str | None]:
        """Per member in ``only`` (default all; None for the others): ``RewardWorker.column_problem``."""
        asked = set(range(len(self._workers)) if only is None else only)
        return [w.column_problem(names) if j in asked else None for j, w in enumerate(self._workers)]

    def score_many(self, payload: tuple, timeouts: Sequence[float], only: Sequence[int] | None = None
                   ) -> list[ScoreOutcome | None]:
        """Outcomes of the members in ``only`` (default all; None for the others). timeouts: one per member."""
        outcomes: list[ScoreOutcome | None] = [None] * len(self._workers)
        runnable = []
        with self._guard:
            for j in range(len(self._workers)) if only is None else only:
                if j in self._stuck and not self._stuck[j].finished.is_set():
                    outcomes[j] = ScoreOutcome(error="is still running a call that timed out earlier", cause=BUSY)
                    continue
                self._stuck.pop(j, None)
                runnable.append(j)
        if not self.parallel and threading.current_thread() is threading.main_thread():
            for j in runnable:
                outcomes[j] = _score_on_main_thread(self._workers[j], payload, float(timeouts[j]))
            return outcomes
        groups = [[j] for j in runnable] if self.parallel else [runnable] if runnable else []
        active = [_Chain(self._workers, self._locks, members, payload) for members in groups]
        while active:
            chain = active.pop(0)
            late = chain.wait(timeouts)
            for j, outcome in chain.results.items():
                outcomes[j] = outcome
            if late is not None:
                outcomes[late] = timeout_outcome(timeouts[late])
                with self._guard:
                    self._stuck[late] = chain
                rest = [j for j in chain.members if j not in chain.results and j != late]
                if rest:
                    active.append(_Chain(self._workers, self._locks, rest, payload))
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
            return timeout_outcome(timeout_s)
        except Exception as exc:  # not a plugin error (those come back as outcomes): report it
            outcome = unexpected_failure(exc, time.perf_counter() - start)
        dog.disarm()
        return outcome
    except ComponentTimeout:  # fired between the call's return and the line above: at the deadline, report it
        return timeout_outcome(timeout_s)
    finally:
        dog.disarm()
        signal.signal(signal.SIGUSR1, previous)


class _Chain:
    """Scores ``members`` one after another in a daemon thread (a hung plugin must not block interpreter exit);
    ``wait`` returns when they are done or the running one outlives its timeout. A member's time starts before
    it waits for its lock (``locks``: one per worker, a Lock or a no-op)."""

    def __init__(self, workers: Sequence[RewardWorker], locks: Sequence[Any], members: list[int],
                 payload: tuple) -> None:
        self.members = members
        self.results: dict[int, ScoreOutcome] = {}
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._current: int | None = None
        self._started = 0.0
        self._abandoned = False
        name = "reward-" + "+".join(workers[j].component_name for j in members)
        threading.Thread(target=self._run, args=(workers, locks, payload), name=name[:60], daemon=True).start()

    def _run(self, workers: Sequence[RewardWorker], locks: Sequence[Any], payload: tuple) -> None:
        try:
            for j in self.members:
                with self._lock:
                    if self._abandoned:
                        return
                    self._current, self._started = j, time.monotonic()
                with locks[j]:
                    with self._lock:
                        if self._abandoned:  # timed out while waiting for the call before it: never started
                            return
                    try:
                        outcome = workers[j].score(payload)
                    except BaseException as exc:  # not a plugin error (those come back as outcomes): report it
                        outcome = unexpected_failure(exc)
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


def unexpected_failure(exc: BaseException, elapsed_s: float = 0.0) -> ScoreOutcome:
    """The outcome of a scoring call that raised something other than a plugin error."""
    return ScoreOutcome(error=f"failed in the reward worker: {type(exc).__name__}: {exc}", elapsed_s=elapsed_s,
                        cause=INTERNAL, traceback=_traceback(exc))


def timeout_outcome(timeout_s: float) -> ScoreOutcome:
    return ScoreOutcome(
        error=f"timed out after {timeout_s:g}s; raise its timeout_s or set on_error: nan to skip it",
        elapsed_s=timeout_s,
        cause=TIMEOUT,
    )


def _sample_of(exc: RewardPluginError) -> int | None:
    """The failing sample an error names, or the plugin error it was raised from names."""
    if exc.sample_index is not None:
        return exc.sample_index
    cause = exc.__cause__
    return cause.sample_index if isinstance(cause, RewardPluginError) else None


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
