"""Weight updates that land between the decode steps of a generation in flight (``pipeline.weight_update: keep``).

    gate = StepGate()
    # the generating thread                          # any other thread of the same rollout actor
    with gate.generating():                          gate.update(lambda: engine.load(...))   # waits until applied
        while unfinished:
            step()
            gate.boundary(pause, resume)             # runs queued updates here, between two decode steps

An engine in keep mode is hosted by a Ray actor that serves two calls at a time (``max_concurrency=2``): the
producer thread's ``generate`` and the consumer thread's weight sync. ``update`` runs its work on the caller's
thread when no generation is in flight; otherwise it queues the work and waits while the generating thread runs
it at its next step boundary, between ``pause()`` and ``resume()`` (vLLM: the scheduler paused with the in-flight
sequences kept, so no decode step runs under half-loaded weights). Sequences in flight then go on under the new
weights; the tokens they sample from then on carry the new version. Their KV cache (and any cached prompt prefix)
was computed by the older weights: the sampled tokens' logprobs are what the engine sampled with, which the
off-policy correction takes as the behaviour policy. ``exclusive`` runs work that must not overlap a generation at
all (a logprob pass through the engine's own generate loop). Work that raises re-raises in its caller's thread;
the generation goes on. Imports only the standard library.
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class _Job:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn, self.done = fn, threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001  (re-raised in the thread that asked for the work)
            self.error = e
        finally:
            self.done.set()

    def outcome(self) -> Any:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class StepGate:
    """Serialises one engine's generation with the weight updates asked for from other threads (module doc)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._generating = False  # a generation is in flight on some thread
        self._busy = False  # work runs on its caller's thread (no generation in flight)
        self._queue: deque[_Job] = deque()
        self.applied_in_flight = 0  # updates applied between the decode steps of a generation (a metric)

    @contextmanager
    def generating(self) -> Iterator[None]:
        """Around one generation (one at a time). Work still queued when it ends runs before this returns."""
        with self._cv:
            self._cv.wait_for(lambda: not self._busy and not self._generating)
            self._generating = True
        try:
            yield
        finally:
            with self._cv:
                jobs = list(self._queue)
                self._queue.clear()
            for job in jobs:  # asked for after the last step boundary
                job.run()
            with self._cv:
                self._generating = False
                self._cv.notify_all()

    def boundary(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Called by the generating thread between two decode steps: run the work queued since the last one."""
        with self._cv:
            if not self._queue:
                return
            jobs = list(self._queue)
            self._queue.clear()
        pause()
        try:
            for job in jobs:
                job.run()
                self.applied_in_flight += job.error is None
        finally:
            resume()

    def update(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` now if no generation is in flight, else at the generation's next step boundary; its result."""
        job = _Job(fn)
        with self._cv:
            self._cv.wait_for(lambda: not self._busy)
            queued = self._generating
            if queued:
                self._queue.append(job)
            else:
                self._busy = True
        if not queued:
            try:
                job.run()
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
        return job.outcome()

    def exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the caller's thread once no generation is in flight (and none starts meanwhile)."""
        with self._cv:
            self._cv.wait_for(lambda: not self._busy and not self._generating)
            self._busy = True
        try:
            return fn()
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()


def at_boundary(gate: StepGate | None, fn: Callable[[], Any]) -> Any:
    """An engine's weight update: now without a gate, else ``gate.update`` (at the next step boundary of a
    generation in flight)."""
    return fn() if gate is None else gate.update(fn)


def alone(gate: StepGate | None, fn: Callable[[], Any]) -> Any:
    """Work that must not overlap a generation: now without a gate, else ``gate.exclusive``."""
    return fn() if gate is None else gate.exclusive(fn)
