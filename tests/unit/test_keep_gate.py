"""StepGate (rlhf/rollout/keep.py): weight updates asked for from another thread land between two decode steps of a
generation in flight, between pause and resume, on the generating thread; without a generation they run at once on
the caller's thread; errors come back to the caller; ``exclusive`` never overlaps a generation."""

from __future__ import annotations

import threading
import time

import pytest

from rlhf.rollout.keep import StepGate


class Engine:
    """A scripted decode loop: each step appends (step, weights) to the log; updates change ``weights``."""

    def __init__(self, gate: StepGate) -> None:
        self.gate, self.weights, self.log = gate, 0, []
        self.paused = False
        self.events: list[str] = []
        self.at_step: dict[int, threading.Event] = {}

    def generate(self, steps: int) -> list[tuple[int, int]]:
        out = []
        with self.gate.generating():
            for i in range(steps):
                assert not self.paused, "a decode step ran while paused"
                out.append((i, self.weights))
                if i in self.at_step:
                    self.at_step[i].set()
                    time.sleep(0.05)  # the other thread queues its update now
                self.gate.boundary(self.pause, self.resume)
        return out

    def pause(self) -> None:
        self.paused = True
        self.events.append("pause")

    def resume(self) -> None:
        self.paused = False
        self.events.append("resume")

    def load(self, version: int) -> int:
        self.events.append(f"load {version} on {threading.current_thread().name}")
        self.weights = version
        return version


def test_without_a_generation_the_update_runs_at_once_on_the_callers_thread():
    gate = StepGate()
    engine = Engine(gate)
    assert gate.update(lambda: engine.load(3)) == 3
    assert engine.events == [f"load 3 on {threading.current_thread().name}"] and gate.applied_in_flight == 0


def test_an_update_lands_at_the_next_step_boundary_on_the_generating_thread():
    gate = StepGate()
    engine = Engine(gate)
    engine.at_step[4] = threading.Event()
    result = {}

    def trainer():
        engine.at_step[4].wait()
        result["version"] = gate.update(lambda: engine.load(1))

    t = threading.Thread(target=trainer, name="trainer")
    t.start()
    tokens = threading.Thread(target=lambda: result.setdefault("out", engine.generate(10)), name="producer")
    tokens.start()
    tokens.join()
    t.join()
    assert result["version"] == 1 and gate.applied_in_flight == 1
    assert result["out"] == [(i, 0 if i <= 4 else 1) for i in range(10)]  # steps 0-4 old weights, 5-9 new
    assert engine.events == ["pause", "load 1 on producer", "resume"]


def test_an_update_asked_after_the_last_boundary_runs_before_generate_returns():
    gate = StepGate()
    engine = Engine(gate)
    ran = threading.Event()
    done = {}

    def late_update():
        gate._cv.acquire()  # queue it while the generation is in flight but past its last boundary
        gate._queue.append(job := _job(lambda: engine.load(2)))
        gate._cv.release()
        done["job"] = job
        ran.set()

    with gate.generating():
        late_update()
    assert done["job"].done.is_set() and engine.weights == 2 and ran.is_set()


def _job(fn):
    from rlhf.rollout.keep import _Job

    return _Job(fn)


def test_an_error_in_the_update_reaches_its_caller_and_the_generation_goes_on():
    gate = StepGate()
    engine = Engine(gate)
    engine.at_step[2] = threading.Event()
    errors = []

    def bad():
        raise ValueError("fingerprints disagree")

    def trainer():
        engine.at_step[2].wait()
        try:
            gate.update(bad)
        except ValueError as e:
            errors.append(str(e))

    t = threading.Thread(target=trainer)
    t.start()
    out = engine.generate(6)
    t.join()
    assert errors == ["fingerprints disagree"] and len(out) == 6 and gate.applied_in_flight == 0
    assert engine.events == ["pause", "resume"]  # resumed although the update failed


def test_exclusive_waits_for_the_generation_to_end():
    gate = StepGate()
    engine = Engine(gate)
    engine.at_step[1] = threading.Event()
    seen = {}

    def logprob_pass():
        engine.at_step[1].wait()
        seen["generating"] = gate.exclusive(lambda: gate._generating)

    t = threading.Thread(target=logprob_pass)
    t.start()
    engine.generate(5)
    t.join()
    assert seen["generating"] is False


def test_generations_do_not_overlap():
    gate, inside, overlaps = StepGate(), [], []

    def gen():
        with gate.generating():
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.01)
            inside.pop()

    threads = [threading.Thread(target=gen) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1, 1, 1, 1]


@pytest.mark.parametrize("steps", [1, 3])
def test_no_update_no_pause(steps):
    gate = StepGate()
    engine = Engine(gate)
    assert engine.generate(steps) == [(i, 0) for i in range(steps)] and engine.events == []
