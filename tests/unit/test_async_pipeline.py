"""The async pipeline's schedule on a scripted stage (no Ray): admission (no consumed batch staler than k), the
sync gate, pausing for checkpoints, the batches in flight on resume, and errors from either thread."""

from __future__ import annotations

import random
import threading
import time

import pytest

from rlhf.runtime.pipeline import AsyncPipeline, Experience, SyncPipeline, build_pipeline


class ScriptedStage:
    """Engines hold ``version``; produce records the version it generated with; consume trains (version + 1 after
    the gate). Random sleeps shuffle the threads' timing, which must not change the schedule."""

    def __init__(self, start: int = 0, jitter: float = 0.004, fail_produce_at: int | None = None) -> None:
        self.version = start  # what the engines hold
        self.generated_with: dict[int, int] = {}
        self.consumed: list[tuple[int, int]] = []  # (step, version the batch was generated with)
        self.gate = None
        self.jitter, self.fail_produce_at = jitter, fail_produce_at
        self.rng = random.Random(0)
        self.lock = threading.Lock()
        self.producing = threading.Event()

    def run_async(self, gate):
        self.gate = gate

    def production_parts(self):
        return None

    def _sleep(self):
        with self.lock:
            t = self.rng.random() * self.jitter
        time.sleep(t)

    def produce(self, step: int) -> Experience:
        self.producing.set()
        v = self.version
        self._sleep()
        assert self.version == v, "the engines' weights changed while a batch was generated"
        if step == self.fail_produce_at:
            raise RuntimeError(f"reward plugin failed on step {step}")
        self.generated_with[step] = v
        self.producing.clear()
        return Experience(step, context={"version": v})

    def consume(self, exp: Experience) -> dict[str, float]:
        self._sleep()
        if self.gate is not None:
            self.gate(exp.step)
        self.version = exp.step  # the sync
        self.consumed.append((exp.step, exp.context["version"]))
        return {"step": exp.step, "queue": exp.metrics.get("async/queue_depth", 0.0)}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_batch_is_generated_exactly_k_versions_back(k):
    stage, depths = ScriptedStage(), []
    AsyncPipeline(k).run(stage, range(1, 13), lambda s: None, lambda s, m: depths.append(m["queue"]))
    assert [s for s, _ in stage.consumed] == list(range(1, 13))
    for step, v in stage.consumed:
        assert v == max(0, step - 1 - k)  # the admission rule, exactly (deterministic schedule)
        assert (step - 1) - v <= k  # no consumed batch staler than k
    assert max(depths) <= k + 1


def test_schedule_does_not_depend_on_timing():
    runs = []
    for jitter in (0.0, 0.002, 0.01):
        stage = ScriptedStage(jitter=jitter)
        AsyncPipeline(2).run(stage, range(1, 9), lambda s: None, lambda s, m: None)
        runs.append(stage.consumed)
    assert runs[0] == runs[1] == runs[2]


def test_sync_pipeline_is_produce_then_consume():
    stage = ScriptedStage()
    build_pipeline(0).run(stage, range(1, 6), lambda s: None, lambda s, m: None)
    assert stage.consumed == [(s, s - 1) for s in range(1, 6)]
    assert isinstance(build_pipeline(0), SyncPipeline) and isinstance(build_pipeline(2), AsyncPipeline)
    with pytest.raises(ValueError, match="max_staleness >= 1"):
        AsyncPipeline(0)


def test_resume_with_batches_in_flight_continues_the_same_schedule():
    whole = ScriptedStage()
    AsyncPipeline(2).run(whole, range(1, 11), lambda s: None, lambda s, m: None)

    class Stop(Exception):
        pass

    first, pipe, saved = ScriptedStage(), AsyncPipeline(2), {}

    def after(step, metrics):
        if step == 4:
            with pipe.paused():
                saved["pending"] = pipe.pending()
            raise Stop

    with pytest.raises(Stop):
        pipe.run(first, range(1, 11), lambda s: None, after)
    pending = saved["pending"]
    assert pending and [e.step for e in pending] == list(range(5, 5 + len(pending)))
    second = ScriptedStage(start=4)
    second.generated_with = {e.step: e.context["version"] for e in pending}
    AsyncPipeline(2).run(second, range(5, 11), lambda s: None, lambda s, m: None, pending=pending)
    assert first.consumed + second.consumed == whole.consumed


def test_pending_must_be_the_next_steps():
    with pytest.raises(ValueError, match="in flight"):
        AsyncPipeline(1).run(ScriptedStage(), range(3, 6), lambda s: None, lambda s, m: None,
                             pending=[Experience(5)])
    with pytest.raises(ValueError, match="no batches in flight"):
        SyncPipeline().run(ScriptedStage(), range(3, 6), lambda s: None, lambda s, m: None, pending=[Experience(3)])


def test_paused_waits_for_the_batch_being_produced_and_admits_no_other():
    stage, pipe, seen = ScriptedStage(jitter=0.02), AsyncPipeline(3), []

    def after(step, metrics):
        if step == 2:
            with pipe.paused():
                produced = dict(stage.generated_with)
                time.sleep(0.05)  # the producer, admitted up to step 2 + 1 + 3, must not start one now
                seen.append((produced, dict(stage.generated_with), stage.producing.is_set()))

    pipe.run(stage, range(1, 9), lambda s: None, after)
    before, after_wait, producing = seen[0]
    assert before == after_wait and not producing


def test_a_producer_error_reaches_the_consumer():
    stage = ScriptedStage(fail_produce_at=4)
    with pytest.raises(RuntimeError, match="reward plugin failed on step 4"):
        AsyncPipeline(1).run(stage, range(1, 9), lambda s: None, lambda s, m: None)
    assert [s for s, _ in stage.consumed] == [1, 2]  # step 3 waits at the sync gate for step 4's batch


def test_a_consumer_error_stops_the_producer():
    stage = ScriptedStage()

    def after(step, metrics):
        if step == 3:
            raise KeyError("logging failed")

    with pytest.raises(KeyError):
        AsyncPipeline(2).run(stage, range(1, 50), lambda s: None, after)
    assert max(stage.generated_with) <= 3 + 1 + 2  # it stopped: admission never passed version 3
    assert not any(t.name == "rlhf-producer" and t.is_alive() for t in threading.enumerate())


class SlowGenerationStage(ScriptedStage):
    """Keep mode: a batch's generation only ends once the weights of the step being trained have arrived (long
    sequences). Under ``finish`` that sync would wait for this very batch (a deadlock); under ``keep`` it lands
    while the batch is in flight, so the batch's tokens come from two versions."""

    def __init__(self) -> None:
        super().__init__(jitter=0.0)
        self.spans: dict[int, tuple[int, int]] = {}  # step -> (version at start, version at end)
        self.synced = threading.Condition()

    def produce(self, step: int) -> Experience:
        first = self.version
        with self.synced:  # the sequences in flight run on until the trainer's next version arrives
            assert self.synced.wait_for(lambda: self.version >= step - 1, timeout=10), "the sync waited"
        self.spans[step] = (first, self.version)
        return Experience(step, context={"version": first})

    def consume(self, exp: Experience) -> dict[str, float]:
        self.gate(exp.step)
        with self.synced:
            self.version = exp.step
            self.synced.notify_all()
        self.consumed.append((exp.step, exp.context["version"]))
        return {}


def test_keep_syncs_land_while_a_batch_is_generated():
    stage = SlowGenerationStage()
    AsyncPipeline(1, keep=True).run(stage, range(1, 9), lambda s: None, lambda s, m: None)
    assert [s for s, _ in stage.consumed] == list(range(1, 9))
    for step, (first, last) in stage.spans.items():
        assert first >= max(0, step - 2)  # admission unchanged: no batch staler than k = 1
        assert last == step - 1  # the newest weights reached the batch in flight
    assert sum(first < last for first, last in stage.spans.values()) >= 6  # most batches span two versions


def test_staleness_metrics_by_hand():
    import torch

    from rlhf.runtime.collect import staleness_metrics

    versions = torch.tensor([[3, 3, -1],  # one version, 1 behind the trained 4
                             [2, 2, 4],  # a keep-mode update landed mid-sample: oldest 2 -> staleness 2, mixed
                             [4, -1, -1],  # fresh
                             [-1, -1, -1]])  # nothing generated (an agent's tool tokens only): staleness 0
    m = staleness_metrics(versions, trained_version=4)
    assert m["async/staleness_mean"] == pytest.approx((1 + 2 + 0 + 0) / 4) and m["async/staleness_max"] == 2
    assert m["async/mixed_version_share"] == pytest.approx(1 / 4)
    assert m["async/token_staleness_mean"] == pytest.approx((1 + 1 + 2 + 2 + 0 + 0) / 6)
    assert m["async/staleness_share/0"] == pytest.approx(0.5) and m["async/staleness_share/2"] == pytest.approx(0.25)


class SplitStage(ScriptedStage):
    """Production in two halves: generating records the engines' version, scoring takes a while. Records when each
    half runs, to see scoring of one batch overlap the generation of the next."""

    def __init__(self, score_s: float = 0.03, **kw) -> None:
        super().__init__(**kw)
        self.score_s, self.timeline = score_s, []

    def production_parts(self):
        return self.generate, self.score

    def generate(self, step: int):
        self.timeline.append(("gen", step, time.perf_counter()))
        exp = ScriptedStage.produce(self, step)
        self.timeline.append(("gen_end", step, time.perf_counter()))
        return exp

    def score(self, exp: Experience) -> Experience:
        t0 = time.perf_counter()
        time.sleep(self.score_s)
        self.timeline.append(("score", exp.step, t0, time.perf_counter()))
        return exp

    def produce(self, step: int) -> Experience:
        raise AssertionError("split production calls generate and score, not produce")


@pytest.mark.parametrize("k", [1, 2])
def test_split_production_keeps_the_schedule_and_overlaps_scoring(k):
    whole, split = ScriptedStage(), SplitStage(jitter=0.002)
    AsyncPipeline(k).run(whole, range(1, 10), lambda s: None, lambda s, m: None)
    AsyncPipeline(k).run(split, range(1, 10), lambda s: None, lambda s, m: None)
    assert split.consumed == whole.consumed  # same versions for every batch, in step order
    scores = {e[1]: (e[2], e[3]) for e in split.timeline if e[0] == "score"}
    gens = {e[1]: e[2] for e in split.timeline if e[0] == "gen"}
    ends = {e[1]: e[2] for e in split.timeline if e[0] == "gen_end"}
    overlapped = [t for t in scores if t + 1 in gens and gens[t + 1] < scores[t][1] and scores[t][0] < ends[t + 1]]
    assert overlapped, "batch t + 1 generated while batch t was scored"


def test_paused_with_split_production_scores_what_was_generated():
    stage, pipe, seen = SplitStage(score_s=0.05), AsyncPipeline(2), []

    def after(step, metrics):
        if step == 2:
            with pipe.paused():
                pending = pipe.pending()
                seen.append(([e.step for e in pending], sorted(stage.generated_with)))

    pipe.run(stage, range(1, 8), lambda s: None, after)
    pending, generated = seen[0]
    assert pending == [t for t in generated if t > 2]  # every generated batch is scored and saved with the checkpoint


def test_a_scoring_error_reaches_the_consumer():
    class Failing(SplitStage):
        def score(self, exp):
            if exp.step == 3:
                raise RuntimeError("reward worker failed on step 3")
            return exp

    with pytest.raises(RuntimeError, match="step 3"):
        AsyncPipeline(1).run(Failing(), range(1, 9), lambda s: None, lambda s, m: None)
    assert not any(t.name in ("rlhf-producer", "rlhf-scorer") and t.is_alive() for t in threading.enumerate())
