"""Reward worker group: parallel scoring into a (B, K) RewardVector, timeouts, plugin errors, on_error modes.

Runs on the session's local Ray (tests/conftest.py) and in-process (use_ray=False).
Run: pytest tests/integration/test_reward_workers.py -q
"""

import math
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # 'tests.plugins_for_tests' is imported by reference, as a recipe would
    sys.path.insert(0, str(ROOT))

from rewards.api import RewardPluginError  # noqa: E402
from rlhf.config.schema import RewardComponentConfig  # noqa: E402
from rlhf.scoring.group import RewardGroup, rollout_columns  # noqa: E402
from rlhf.types import RolloutBatch  # noqa: E402
from tests import plugins_for_tests  # noqa: E402  (registers the testplug_* names)

MOD = "tests.plugins_for_tests"
SERVER_MOD = "tests.integration._reward_server_plugins"  # explode: raises on the completion 'boom'
PROMPTS = ["What is 9+10?", "What is 1/2 as a decimal?", "Say hi", "What is 2+2?"]
COMPLETIONS = ["19", "0.5", "hello there", "5"]
COLUMNS = {"answer": ["19", "1/2", None, "4"], "finished": [True, True, False, True], "num_tokens": [1, 2, 6, 1]}


def comp(name, plugin, **kw):
    return RewardComponentConfig(name=name, plugin=plugin, **kw)


def standard_components():
    return [
        comp("correct", "math_answer"),
        comp("format", "regex_format", args={"pattern": r"[\d.]+", "require_finished": True}),
        comp("brevity", "length_penalty", args={"target": 2, "coef": 0.5}),
        comp("short", "testplug_is_short"),  # a judge: kind comes from the plugin
    ]


EXPECTED = torch.tensor(
    [
        [1.0, 1.0, 0.0, 1.0],
        [1.0, 1.0, 0.0, 1.0],
        [math.nan, 0.0, -1.0, 0.0],
        [0.0, 1.0, 0.0, 1.0],
    ]
)


@pytest.fixture(scope="module")
def ray_workers(ray_session):
    """The session's local Ray (tests/conftest.py). The test plugins travel to the workers by value, so the
    workers need not import 'tests.plugins_for_tests' (whatever directory pytest runs from)."""
    ray_session.cloudpickle.register_pickle_by_value(plugins_for_tests)
    yield ray_session
    ray_session.cloudpickle.unregister_pickle_by_value(plugins_for_tests)


@pytest.fixture(params=["ray", "local"])
def use_ray(request):
    """Both backends, for behaviour that crosses the Ray boundary (kept few: each actor start costs ~1 s)."""
    if request.param == "ray":
        request.getfixturevalue("ray_workers")
    return request.param == "ray"


def test_scores_all_components_into_a_matrix(use_ray):
    components = standard_components() + [comp("rm", f"{MOD}:CountingScorer", args={"offset": 0.5})]
    group = RewardGroup(components, use_ray=use_ray)
    try:
        vector, metrics = group.score(PROMPTS, COMPLETIONS, COLUMNS)
        again, _ = group.score(PROMPTS, COMPLETIONS, COLUMNS)
    finally:
        group.shutdown()
    assert vector.names == ("correct", "format", "brevity", "short", "rm")
    assert vector.kinds == ("reward", "reward", "reward", "constraint", "reward")
    assert vector.values.dtype == torch.float32 and vector.values.shape == (4, 5)
    torch.testing.assert_close(vector.values[:, :4], EXPECTED, equal_nan=True)
    assert vector.component("rm").tolist() == [1.5] * 4  # offset + number of setup() calls
    torch.testing.assert_close(again.values, vector.values, equal_nan=True)  # setup() did not run again
    assert metrics["reward/correct/failures"] == 0.0 and metrics["reward/correct/time_s"] > 0.0
    assert set(metrics) == {f"reward/{n}/{m}" for n in vector.names for m in ("failures", "time_s")} | {
        "events/reward_worker_restarts"}
    assert metrics["events/reward_worker_restarts"] == 0


def test_function_plugins_share_one_worker_and_class_plugins_get_their_own(ray_workers):
    import ray

    components = standard_components() + [comp("rm", f"{MOD}:CountingScorer", args={"offset": 0.5})]
    group = RewardGroup(components, use_ray=True)
    try:
        assert group.workers == ["functions", "component:rm"]
        vector, _ = group.score(PROMPTS, COMPLETIONS, COLUMNS)
        torch.testing.assert_close(vector.values[:, :4], EXPECTED, equal_nan=True)
        pooled, alone = group._backend._actors
        assert ray.get(pooled.ready.remote()) == [None] * 4  # one process hosts the 4 rule-based components
        assert ray.get(alone.ready.remote()) is None
    finally:
        group.shutdown()


def test_named_workers_group_components_a_class_plugin_included(ray_workers):
    components = [
        comp("rm", f"{MOD}:CountingScorer", args={"offset": 0.5}, worker="models"),
        comp("rm2", f"{MOD}:CountingScorer", args={"offset": 2.0}, worker="models"),
        comp("len", "testplug_length", worker="alone"),
        comp("short", "testplug_is_short"),
    ]
    group = RewardGroup(components, use_ray=True)
    try:
        assert group.workers == ["models", "alone", "functions"]
        vector, _ = group.score(PROMPTS, COMPLETIONS)
        # setup() ran once per component, both in the one 'models' process
        assert vector.component("rm").tolist() == [1.5] * 4 and vector.component("rm2").tolist() == [3.0] * 4
        assert vector.component("len").tolist() == [2.0, 3.0, 11.0, 1.0]
        assert group.score_one("rm2", PROMPTS[:1], COMPLETIONS[:1]) == [3.0]  # only that member is asked
    finally:
        group.shutdown()


def test_shared_worker_runs_members_in_turn_and_a_hung_one_times_out_alone(ray_workers):
    components = [
        comp("len", "testplug_length"),
        comp("hang", f"{MOD}:sleepy", args={"seconds": 30}, timeout_s=0.5, on_error="nan"),
        comp("nap", f"{MOD}:sleepy", args={"seconds": 0.3}),
        comp("short", "testplug_is_short"),
    ]
    group = RewardGroup(components, use_ray=True)
    try:
        assert group.workers == ["functions"]
        start = time.monotonic()
        vector, metrics = group.score(PROMPTS, COMPLETIONS)
        elapsed = time.monotonic() - start
        # in turn: len, hang (0.5 s timeout), then nap and short go on in a new thread
        assert 0.8 <= elapsed < 5.0, elapsed
        assert torch.isnan(vector.component("hang")).all() and metrics["reward/hang/failures"] == 4.0
        assert vector.component("nap").tolist() == [1.0] * 4
        assert vector.component("len").tolist() == [2.0, 3.0, 11.0, 1.0]
        assert vector.component("short").tolist() == [1.0, 1.0, 0.0, 1.0]
        assert group._backend._actors[0] is None  # killed with its hung thread; restarted on the next call
        vector, _ = group.score(PROMPTS[:2], COMPLETIONS[:2])
        assert vector.component("len").tolist() == [2.0, 3.0] and torch.isnan(vector.component("hang")).all()
    finally:
        group.shutdown()


def test_shared_worker_runs_plugins_on_the_main_thread_and_interrupts_them(ray_workers):
    """Plugins that bound their work with signal.alarm (math_answer) need the main thread; a hung one is
    interrupted there, even through a broad `except Exception`."""
    components = [comp("main", f"{MOD}:on_main_thread"),
                  comp("stuck", f"{MOD}:swallows_everything", timeout_s=0.5, on_error="nan"),
                  comp("len", "testplug_length")]
    group = RewardGroup(components, use_ray=True)
    try:
        assert group.workers == ["functions"]
        start = time.monotonic()
        vector, _ = group.score(PROMPTS, COMPLETIONS)
        assert time.monotonic() - start < 5.0
        assert vector.component("main").tolist() == [1.0] * 4
        assert torch.isnan(vector.component("stuck")).all()
        assert vector.component("len").tolist() == [2.0, 3.0, 11.0, 1.0]
    finally:
        group.shutdown()


def _pool(*comps):
    from rewards.api import check_component
    from rlhf.scoring.group import PooledRewardWorker, WorkerSpec

    plugins = [check_component(c) for c in comps]
    return PooledRewardWorker([WorkerSpec.of(c, p) for c, p in zip(comps, plugins)], plugins)


def _off_main_thread(fn):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


SLEEPERS = (comp("a", f"{MOD}:sleepy", args={"seconds": 0.2}), comp("b", f"{MOD}:sleepy", args={"seconds": 0.6}),
            comp("c", f"{MOD}:sleepy", args={"seconds": 0.2}))


def test_pooled_worker_in_turn_on_the_main_thread():
    """Each member's timeout counts from its own start; the late one is interrupted and the next one starts."""
    pool = _pool(*SLEEPERS)
    start = time.monotonic()
    out = pool.score_many((PROMPTS, COMPLETIONS, {}), [0.3, 0.3, 0.3])  # every member fits 0.3 s except b
    elapsed = time.monotonic() - start
    assert out[0].values == [1.0] * 4 and out[2].values == [1.0] * 4
    assert out[1].timed_out and out[1].values is None
    assert 0.65 <= elapsed < 2.0, elapsed  # 0.2 + 0.3 (b's timeout) + 0.2: in turn, not in parallel
    assert pool.score_many((PROMPTS, COMPLETIONS, {}), [5.0] * 3, only=[1])[1].values == [1.0] * 4  # b again


def test_pooled_worker_in_turn_off_the_main_thread():
    """In a thread: the same timing; the late call keeps its thread, is reported once more as still running,
    and its late result is dropped."""
    pool = _pool(*SLEEPERS)
    payload = (PROMPTS, COMPLETIONS, {})
    start = time.monotonic()
    out = _off_main_thread(lambda: pool.score_many(payload, [0.3, 0.3, 0.3]))
    elapsed = time.monotonic() - start
    assert out[0].values == [1.0] * 4 and out[2].values == [1.0] * 4
    assert out[1].timed_out and out[1].values is None
    assert 0.65 <= elapsed < 2.0, elapsed
    again = _off_main_thread(lambda: pool.score_many(payload, [0.3, 0.3, 0.3], only=[1]))
    assert again[1].error == "is still running a call that timed out earlier" and again[0] is None
    time.sleep(0.5)  # b's late call returns and is dropped; b runs again
    assert _off_main_thread(lambda: pool.score_many(payload, [5.0] * 3, only=[1]))[1].values == [1.0] * 4


def test_worker_name_is_checked_in_the_recipe():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="worker"):
        comp("len", "testplug_length", worker="has space")


def test_parallel_timeout_with_on_error_nan_counts_failures_and_recovers(use_ray):
    components = [  # slow components in workers of their own run in parallel (in-process: always)
        comp("len", "testplug_length"),
        comp("slow", f"{MOD}:sleepy", args={"seconds": 3}, timeout_s=0.8, on_error="nan", worker="slow"),
        comp("wait", f"{MOD}:sleepy", args={"seconds": 0.8}, worker="wait"),
    ]
    group = RewardGroup(components, use_ray=use_ray)
    try:
        start = time.monotonic()
        vector, metrics = group.score(PROMPTS, COMPLETIONS)
        elapsed = time.monotonic() - start
        assert elapsed < 1.3, f"a 0.8 s timeout and a 0.8 s component took {elapsed:.2f}s together: not parallel"
        assert vector.component("len").tolist() == [2.0, 3.0, 11.0, 1.0]
        assert vector.component("wait").tolist() == [1.0] * 4
        assert torch.isnan(vector.component("slow")).all()
        assert metrics["reward/slow/failures"] == 4.0 and metrics["reward/len/failures"] == 0.0
        assert metrics["reward/slow/time_s"] == 0.8 and metrics["reward/wait/time_s"] >= 0.8
        vector, metrics = group.score(PROMPTS[:2], COMPLETIONS[:2])  # still usable on the next step
        assert vector.values.shape == (2, 3) and metrics["reward/slow/failures"] == 2.0
        assert vector.component("len").tolist() == [2.0, 3.0]
    finally:
        group.shutdown()


def test_raising_plugin_surfaces_type_and_message(use_ray):
    group = RewardGroup([comp("boom", f"{MOD}:raises")], use_ray=use_ray)
    try:
        with pytest.raises(RewardPluginError) as err:
            group.score(PROMPTS, COMPLETIONS)
    finally:
        group.shutdown()
    msg = str(err.value)
    assert f"reward component 'boom' (plugin '{MOD}:raises') raised ZeroDivisionError: boom from plugin" in msg
    assert "RayTaskError" not in msg and "Traceback" not in msg
    assert err.value.component == "boom"


def test_setup_failure_raises_at_construction(use_ray):
    with pytest.raises(RewardPluginError) as err:
        RewardGroup([comp("rm", f"{MOD}:FailingSetup")], use_ray=use_ray)
    assert "reward component 'rm'" in str(err.value)
    assert "setup() failed: RuntimeError: weights not found at /nowhere" in str(err.value)


# --------------------------------------------------------------------------- in-process only (same result logic)


def test_timeout_fails_with_component_name():
    components = [comp("ok", "testplug_length"), comp("slow", f"{MOD}:sleepy", args={"seconds": 1}, timeout_s=0.2)]
    group = RewardGroup(components, use_ray=False)
    with pytest.raises(RewardPluginError) as err:
        group.score(PROMPTS, COMPLETIONS)
    msg = str(err.value)
    assert f"reward component 'slow' (plugin '{MOD}:sleepy') timed out after 0.2s" in msg
    assert err.value.component == "slow"
    with pytest.raises(RewardPluginError, match="'slow' .* is still running a call that timed out earlier"):
        group.score(PROMPTS, COMPLETIONS)  # the hung call still holds the scorer
    time.sleep(1.0)
    with pytest.raises(RewardPluginError, match="timed out after 0.2s"):
        group.score(PROMPTS, COMPLETIONS)  # runs again (and times out again)
    group.shutdown()


def test_on_error_zero_and_per_sample_nan():
    components = [
        comp("boom", f"{MOD}:raises", on_error="zero"),
        comp("typed", f"{MOD}:wrong_type", on_error="nan"),
        comp("judge", "testplug_bad_judge", on_error="zero"),
    ]
    group = RewardGroup(components, use_ray=False)
    vector, metrics = group.score(PROMPTS, COMPLETIONS)
    assert vector.component("boom").tolist() == [0.0] * 4
    typed = vector.component("typed")
    assert torch.isnan(typed[1]) and typed[[0, 2, 3]].tolist() == [1.0, 0.0, 0.0]  # only sample 1 failed
    assert vector.component("judge").tolist() == [1.0, 0.0, 1.0, 1.0]  # the 0.5 verdict became 0.0
    assert metrics["reward/boom/failures"] == 4.0 and metrics["reward/typed/failures"] == 1.0
    assert metrics["reward/judge/failures"] == 1.0


def test_bad_sample_fails_with_index():
    group = RewardGroup([comp("typed", f"{MOD}:wrong_type")], use_ray=False)
    with pytest.raises(RewardPluginError) as err:
        group.score(PROMPTS, COMPLETIONS)
    assert "sample 1: returned 'high' (str)" in str(err.value)
    assert "Prompt: 'What is 1/2 as a decimal?'" in str(err.value)
    assert err.value.sample_index == 1


def test_several_failures_name_the_first_and_list_the_others():
    components = [comp("ok", "testplug_length"), comp("boom", f"{MOD}:raises"), comp("typed", f"{MOD}:wrong_type")]
    group = RewardGroup(components, use_ray=False)
    with pytest.raises(RewardPluginError) as err:
        group.score(PROMPTS, COMPLETIONS)
    assert "reward component 'boom'" in str(err.value) and "(components 'typed' failed too)" in str(err.value)
    assert err.value.component == "boom"


def test_outcomes_report_each_component_without_raising_and_locate_the_failing_sample():
    """The reward server's path: per-component outcomes (no on_error, nothing raised), the failing sample found by
    scoring halves of the batch again."""
    components = [comp("len", "testplug_length"), comp("explode", f"{SERVER_MOD}:explode"),
                  comp("typed", f"{MOD}:wrong_type"), comp("short", "testplug_is_short")]
    group = RewardGroup(components, use_ray=False)
    completions = ["a", "b", "boom", "c"]
    got = group.outcomes(PROMPTS, completions, only=["explode", "len", "typed"])
    assert list(got) == ["explode", "len", "typed"]  # the asked ones, in that order
    assert got["len"].values == [1.0, 1.0, 4.0, 1.0] and got["len"].error is None
    assert got["explode"].cause == "raised" and "ValueError: cannot score 'boom'" in got["explode"].error
    assert got["explode"].error_sample is None and "Traceback" in got["explode"].traceback
    assert [i for i, _ in got["typed"].sample_errors] == [1] and got["typed"].error is None
    assert group.outcomes(PROMPTS, completions, only=["explode"], locate_s=5.0)["explode"].error_sample == 2
    with pytest.raises(KeyError, match="no reward component named 'nope'"):
        group.outcomes(PROMPTS, completions, only=["nope"])


def test_check_columns_names_the_component_before_anything_is_scored():
    group = RewardGroup([comp("len", "testplug_length"), comp("ans", "testplug_needs_answer")], use_ray=False)
    group.check_columns(["answer"])
    group.check_columns([], only=["len"])
    with pytest.raises(RewardPluginError, match="'ans'.*needs the column 'answer'") as err:
        group.check_columns(["finished"])
    assert err.value.component == "ans"


@pytest.mark.parametrize("serialize", [True, False])
def test_in_process_group_serves_concurrent_callers(serialize):
    """Several threads may call the in-process group (the reward server does); by default a component still runs
    one call at a time."""
    from concurrent.futures import ThreadPoolExecutor

    group = RewardGroup([comp("nap", f"{MOD}:sleepy", args={"seconds": 0.3})], use_ray=False, serialize=serialize)
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: group.outcomes(PROMPTS, COMPLETIONS)["nap"], range(2)))
    elapsed = time.monotonic() - start
    assert [o.values for o in outcomes] == [[1.0] * 4] * 2
    assert (elapsed >= 0.55) if serialize else (elapsed < 0.55), elapsed


def test_config_errors_raise_before_workers_start():
    with pytest.raises(RewardPluginError, match="Did you mean 'math_answer'"):
        RewardGroup([comp("acc", "math_anwser")], use_ray=False)
    with pytest.raises(RewardPluginError, match="does not accept arg 'patern'"):
        RewardGroup([comp("fmt", "regex_format", args={"patern": "x"})], use_ray=False)
    with pytest.raises(ValueError, match="duplicate reward component names \\['a'\\]"):
        RewardGroup([comp("a", "testplug_length"), comp("a", "testplug_length")], use_ray=False)


def test_batch_shape_errors():
    group = RewardGroup([comp("len", "testplug_length")], use_ray=False)
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 4 samples"):
        group.score(PROMPTS, COMPLETIONS, {"answer": ["x"]})
    with pytest.raises(ValueError, match="4 prompts but 3 completions"):
        group.score(PROMPTS, COMPLETIONS[:3])


def test_rollout_columns_add_finished_and_num_tokens():
    batch = RolloutBatch(
        prompts=["a", "b"],
        completions=["x", "yy"],
        prompt_ids=torch.zeros(2, 1, dtype=torch.long),
        prompt_mask=torch.ones(2, 1, dtype=torch.long),
        completion_ids=torch.zeros(2, 3, dtype=torch.long),
        completion_mask=torch.tensor([[1, 0, 0], [1, 1, 1]]),
        logprobs=torch.zeros(2, 3),
        group_ids=torch.tensor([0, 1]),
        finished=torch.tensor([True, False]),
        extras={"answer": ["1", "2"]},
    )
    assert rollout_columns(batch) == {"answer": ["1", "2"], "finished": [True, False], "num_tokens": [1, 3]}
    batch.extras["finished"] = [1, 1]
    with pytest.raises(ValueError, match="dataset column 'finished' clashes"):
        rollout_columns(batch)
