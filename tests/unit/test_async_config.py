"""The recipe's ``pipeline:`` section (asynchronous off-policy training): every cross-check names both keys it
compares, ``objective.off_policy.correction: auto`` resolves as documented, the engines' logprobs reach the
trainers when they are needed, the CPU split between engines and training ranks, and `rlhf validate` reports a bad
section in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from rlhf.cli import main
from rlhf.config import Recipe, RecipeError, load_recipe
from rlhf.config.pipeline import behaviour_logprobs, check_pipeline, trained_objective
from rlhf.runtime.pipeline import AsyncPipeline, Experience, SyncPipeline, build_pipeline
from rlhf.transport.placement import async_engine_cores, cpu_threads

BASE = {
    "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_heads": 4}},
    "rewards": [{"name": "correct", "plugin": "math_answer"}],
    "rollout": {"prompts_per_step": 4, "group_size": 4},
    "train": {"num_ranks": 2},
}


def _data(**sections) -> dict:
    """BASE with each given section merged over BASE's (a dict) or set (anything else)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return data


def _write(tmp_path: Path, **sections) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(_data(**sections)))
    return p


def _error(tmp_path: Path, **sections) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, **sections))
    return str(e.value)


def _recipe(**sections) -> Recipe:
    return Recipe.model_validate(_data(**sections))


# --------------------------------------------------------------------------- validation: both keys named


def test_negative_staleness_is_refused(tmp_path):
    msg = _error(tmp_path, pipeline={"max_staleness": -1})
    assert "pipeline.max_staleness must be >= 0" in msg and "got -1" in msg


def test_async_with_colocated_placement(tmp_path):
    msg = _error(tmp_path, pipeline={"max_staleness": 1}, rollout={"placement": "colocated", "num_engines": 2})
    assert "pipeline.max_staleness: 1" in msg and "rollout.placement: colocated" in msg
    # synchronous colocated training stays valid
    sync = load_recipe(_write(tmp_path, rollout={"placement": "colocated", "num_engines": 2}))
    assert sync.pipeline.max_staleness == 0


def test_async_with_sleeping_vllm_engine(tmp_path):
    msg = _error(tmp_path, pipeline={"max_staleness": 2}, rollout={"engine": "vllm", "vllm": {"sleep": True}})
    assert "pipeline.max_staleness: 2" in msg and "rollout.vllm.sleep: true" in msg
    load_recipe(_write(tmp_path, pipeline={"max_staleness": 2}, rollout={"engine": "vllm", "vllm": {"sleep": False}}))


def test_keep_updates_need_async_and_an_engine_that_steps(tmp_path):
    msg = _error(tmp_path, pipeline={"weight_update": "keep"}, rollout={"engine": "vllm"})
    assert "pipeline.weight_update: keep" in msg and "pipeline.max_staleness: 0" in msg
    msg = _error(tmp_path, pipeline={"weight_update": "keep", "max_staleness": 1},
                 rollout={"engine": "hf", "hf": {"decode": "generate"}})
    assert "pipeline.weight_update: keep" in msg and "rollout.hf.decode: generate" in msg
    for decode in ("loop", "auto"):  # auto: the loop (the engine refuses keep for a model the loop cannot run)
        load_recipe(_write(tmp_path, pipeline={"weight_update": "keep", "max_staleness": 1},
                           rollout={"engine": "hf", "hf": {"decode": decode}}))
    ok = load_recipe(_write(tmp_path, pipeline={"weight_update": "keep", "max_staleness": 1},
                            rollout={"engine": "vllm"}))
    assert ok.pipeline.updates_in_flight and not _recipe().pipeline.updates_in_flight
    assert "finish" in _error(tmp_path, pipeline={"weight_update": "halfway"})
    msg = _error(tmp_path, pipeline={"max_staleness": 1}, rollout={"engine": "vllm", "vllm": {"kv_on_update":
                                                                                            "recompute"}})
    assert "rollout.vllm.kv_on_update: recompute" in msg and "pipeline.weight_update: finish" in msg
    load_recipe(_write(tmp_path, pipeline={"weight_update": "keep", "max_staleness": 1},
                       rollout={"engine": "vllm", "vllm": {"kv_on_update": "recompute"}}))


@pytest.mark.parametrize("kind", ["dpo", "modpo", "prm"])
def test_async_with_an_offline_objective(tmp_path, kind):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3", "steps": ["2"], "labels": [1]}\n')
    objective = {"kind": kind, "max_length": 64, **({"preference_weight": 1.0} if kind == "modpo" else {})}
    rewards = [{"name": "correct", "plugin": "math_answer", "weight": 0.0}] if kind == "modpo" else BASE["rewards"]
    data = {"source": "jsonl", "train_path": str(rows)}
    sync = _write(tmp_path, objective=objective, data=data, rewards=rewards)
    try:
        load_recipe(sync)
    except RecipeError as e:  # the objective's own checks must pass: only pipeline.* may make the recipe invalid
        pytest.fail(f"the synchronous {kind} recipe should be valid: {e}")
    msg = _error(tmp_path, objective=objective, data=data, rewards=rewards, pipeline={"max_staleness": 1})
    assert "pipeline.max_staleness: 1" in msg and f"objective {kind}" in msg


@pytest.mark.parametrize("weighting", ["hypervolume", "gradient"])
def test_async_with_dynamic_sampling_and_dynamic_weighting(tmp_path, weighting):
    msg = _error(tmp_path, pipeline={"max_staleness": 1}, objective={"kind": "grpo", "dynamic_sampling": True},
                 weighting={"kind": weighting})
    assert "pipeline.max_staleness: 1" in msg and "objective.dynamic_sampling" in msg
    assert f"weighting.kind: {weighting}" in msg
    # either one alone is fine
    load_recipe(_write(tmp_path, pipeline={"max_staleness": 1}, objective={"kind": "grpo", "dynamic_sampling": True}))
    load_recipe(_write(tmp_path, pipeline={"max_staleness": 1}, weighting={"kind": weighting}))


def test_engine_cores_must_leave_a_core_for_the_ranks(tmp_path):
    from rlhf.transport.placement import async_engine_cores

    # checked where the run starts, not at validation (a login node may have other cores than the compute node)
    assert load_recipe(_write(tmp_path, pipeline={"max_staleness": 1, "engine_cores": 64})).pipeline.engine_cores == 64
    for cores in (8, 9):
        with pytest.raises(ValueError) as e:
            async_engine_cores(1, cores, 8)
        assert f"pipeline.engine_cores: {cores}" in str(e.value) and "8" in str(e.value)
    assert async_engine_cores(1, 7, 8) == 7 and async_engine_cores(1, None, 8) == 4
    assert async_engine_cores(0, 9, 8) is None  # synchronous: the phases take turns on every core


def test_engine_cores_must_cover_the_engines(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    msg = _error(tmp_path, pipeline={"max_staleness": 1, "engine_cores": 2}, rollout={"num_engines": 3})
    assert "pipeline.engine_cores: 2" in msg and "rollout.num_engines (3)" in msg
    load_recipe(_write(tmp_path, pipeline={"max_staleness": 1, "engine_cores": 3}, rollout={"num_engines": 3}))


def test_engine_cores_zero_is_a_range_error(tmp_path):
    msg = _error(tmp_path, pipeline={"max_staleness": 1, "engine_cores": 0})
    assert "pipeline.engine_cores" in msg and "greater than or equal to 1" in msg


@pytest.mark.parametrize("correction", ["none", "behaviour", "mis", "decoupled"])
@pytest.mark.parametrize("staleness", [0, 1])
def test_tis_cap_conflicts_with_another_correction(tmp_path, correction, staleness):
    msg = _error(tmp_path, rollout={"tis_cap": 3.0}, pipeline={"max_staleness": staleness},
                 objective={"kind": "grpo", "off_policy": {"correction": correction}})
    assert "rollout.tis_cap (3.0)" in msg and f"objective.off_policy is {{correction: {correction}" in msg


@pytest.mark.parametrize("correction", ["auto", "tis"])
def test_tis_cap_agrees_with_auto_and_tis(tmp_path, correction):
    r = load_recipe(_write(tmp_path, rollout={"tis_cap": 3.0}, objective={"kind": "grpo",
                                                                          "off_policy": {"correction": correction}}))
    assert r.rollout.tis_cap == 3.0


def test_errors_come_through_model_validate_too():
    with pytest.raises(ValueError, match=r"pipeline\.max_staleness: 1 with rollout\.placement: colocated"):
        _recipe(pipeline={"max_staleness": 1}, rollout={"placement": "colocated", "num_engines": 2})
    r = _recipe()
    r.pipeline.max_staleness = -3  # a section changed after validation: check_pipeline itself refuses it
    with pytest.raises(ValueError, match=r"pipeline\.max_staleness must be >= 0.*got -3"):
        check_pipeline(r)


def test_unknown_pipeline_key_names_the_closest(tmp_path):
    msg = _error(tmp_path, pipeline={"max_stalenes": 1})
    assert "unknown key 'pipeline.max_stalenes'" in msg and "did you mean 'max_staleness'?" in msg


# --------------------------------------------------------------------------- objective.off_policy resolution


def _correction(recipe: Recipe) -> tuple[str, float]:
    off = trained_objective(recipe).off_policy
    return off.correction, off.cap


@pytest.mark.parametrize("kind", ["grpo", "rloo", "reinforce_pp", "ppo"])
def test_auto_resolves_to_none_sync_and_decoupled_async(kind):
    assert _correction(_recipe(objective={"kind": kind}))[0] == "none"
    assert _correction(_recipe(objective={"kind": kind}, pipeline={"max_staleness": 1}))[0] == "decoupled"
    assert _correction(_recipe(objective={"kind": kind}, pipeline={"max_staleness": 3}))[0] == "decoupled"


@pytest.mark.parametrize("staleness", [0, 2])
def test_tis_cap_resolves_to_tis_at_that_cap(staleness):
    for correction in ("auto", "tis"):
        r = _recipe(rollout={"tis_cap": 1.5}, pipeline={"max_staleness": staleness},
                    objective={"kind": "grpo", "off_policy": {"correction": correction}})
        assert _correction(r) == ("tis", 1.5)
        with pytest.raises(ValueError, match=r"rollout.tis_cap \(1.5\).*cap: 4.0"):  # two caps: keep one
            _recipe(rollout={"tis_cap": 1.5}, pipeline={"max_staleness": staleness},
                    objective={"kind": "grpo", "off_policy": {"correction": correction, "cap": 4.0}})


@pytest.mark.parametrize("correction", ["none", "behaviour", "tis", "mis", "decoupled"])
def test_an_explicit_correction_is_kept(correction):
    for staleness in (0, 1):
        r = _recipe(pipeline={"max_staleness": staleness},
                    objective={"kind": "grpo", "off_policy": {"correction": correction, "cap": 5.0}})
        assert _correction(r) == (correction, 5.0)


def test_trained_objective_leaves_the_recipe_alone():
    r = _recipe(pipeline={"max_staleness": 1})
    trained = trained_objective(r)
    assert trained.off_policy.correction == "decoupled"
    assert r.objective.off_policy.correction == "auto"  # a copy: the recipe (and its digest) is unchanged
    assert trained.kind == r.objective.kind and trained.kl_coef == r.objective.kl_coef


def test_trained_objective_of_a_non_policy_gradient_objective_is_the_section():
    r = _recipe(objective={"kind": "online_dpo"})
    assert trained_objective(r) is r.objective


# --------------------------------------------------------------------------- behaviour logprobs


@pytest.mark.parametrize("sections, expected", [
    ({}, False),  # hf engine, synchronous, no correction: the trainer's own logprobs suffice
    ({"pipeline": {"max_staleness": 1}}, True),  # async: decoupled corrects towards the engine's
    ({"rollout": {"tis_cap": 2.0}}, True),
    ({"objective": {"kind": "grpo", "off_policy": {"correction": "mis"}}}, True),
    ({"objective": {"kind": "grpo", "off_policy": {"correction": "none"}}, "pipeline": {"max_staleness": 1}}, False),
    ({"rollout": {"engine": "vllm"}}, True),  # the engine/trainer mismatch is measured
    ({"rollout": {"engine": "vllm"}, "objective": {"kind": "grpo", "off_policy": {"correction": "none"}}}, True),
    ({"objective": {"kind": "online_dpo"}}, False),
    ({"objective": {"kind": "online_dpo"}, "rollout": {"engine": "vllm"}}, True),
])
def test_behaviour_logprobs(sections, expected):
    assert behaviour_logprobs(_recipe(**sections)) is expected


# --------------------------------------------------------------------------- CPU split, pipeline choice


def test_async_engine_cores():
    assert async_engine_cores(0, None, 16) is None  # synchronous: phases take turns, no split
    assert async_engine_cores(0, 4, 16) is None
    assert async_engine_cores(1, None, 16) == 8  # default: half
    assert async_engine_cores(2, None, 3) == 1
    assert async_engine_cores(1, None, 1) == 1
    assert async_engine_cores(1, 5, 16) == 5


def test_cpu_threads():
    # (threads per engine, threads per rank, first core after the engines')
    assert cpu_threads(16, 2, 4, None) == (8, 4, 16)  # synchronous: everyone over all cores
    assert cpu_threads(16, 2, 4, 8) == (4, 2, 8)
    assert cpu_threads(16, 1, 1, 12) == (12, 4, 12)
    assert cpu_threads(16, 3, 2, 7) == (2, 4, 7)
    assert cpu_threads(16, 1, 1, 16) == (15, 1, 15)  # clamped: the ranks keep a core
    assert cpu_threads(16, 1, 1, 0) == (1, 15, 1)  # clamped: the engines keep a core
    assert cpu_threads(1, 1, 1, 1) == (1, 1, 1)  # one core: never zero threads
    assert cpu_threads(2, 4, 4, None) == (1, 1, 2)
    assert cpu_threads(2, 2, 1, 1) == (1, 1, 1)


def test_build_pipeline():
    assert isinstance(build_pipeline(0), SyncPipeline)
    p = build_pipeline(2)
    assert isinstance(p, AsyncPipeline) and p.max_staleness == 2 and not p.keep
    assert build_pipeline(1, keep=True).keep
    with pytest.raises(ValueError, match="max_staleness >= 1"):
        AsyncPipeline(0)


# --------------------------------------------------------------------------- the CLI


def test_validate_cli_reports_negative_staleness_in_one_line(tmp_path, capsys):
    p = _write(tmp_path)
    assert main(["validate", str(p), "pipeline.max_staleness=-1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    problems = [line for line in captured.err.splitlines() if line.strip() and line.strip() != "error: invalid recipe:"]
    assert len(problems) == 1, captured.err
    assert str(p) in problems[0] and "pipeline.max_staleness must be >= 0" in problems[0] and "-1" in problems[0]


def test_validate_cli_prints_the_pipeline_section(tmp_path, capsys):
    assert main(["validate", str(_write(tmp_path)), "pipeline.max_staleness=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["pipeline"] == {"max_staleness": 2, "engine_cores": None, "weight_update": "finish"}


# --------------------------------------------------------------------------- resuming with a shorter run.steps


class _Stage:
    """The least an AsyncPipeline drives: produce records nothing, consume calls the sync gate."""

    def __init__(self) -> None:
        self.produced: list[int] = []
        self.consumed: list[int] = []
        self.gate = None

    def run_async(self, gate) -> None:
        self.gate = gate

    def production_parts(self):
        return None

    def produce(self, step: int) -> Experience:
        self.produced.append(step)
        return Experience(step)

    def consume(self, exp: Experience) -> dict[str, float]:
        self.gate(exp.step)
        self.consumed.append(exp.step)
        return {}


def test_pending_batches_resume_first():
    stage = _Stage()
    AsyncPipeline(2).run(stage, range(5, 9), lambda s: None, lambda s, m: None,
                         pending=[Experience(5), Experience(6)])
    assert stage.consumed == [5, 6, 7, 8] and stage.produced == [7, 8]


def test_resume_with_fewer_steps_than_batches_in_flight():
    # a k = 2 run checkpointed after step 2 holds the batches of steps 3 and 4; resumed with run.steps: 3
    stage, pipe = _Stage(), AsyncPipeline(2)
    pipe.run(stage, range(3, 4), lambda s: None, lambda s, m: None, pending=[Experience(3), Experience(4)])
    assert stage.consumed == [3] and stage.produced == []
    assert [e.step for e in pipe.pending()] == [4]  # kept for the final checkpoint (a longer resume trains it)


@pytest.mark.parametrize("weighting, named", [
    ({"schedules": {"brief": {"kind": "linear", "start": 0.0, "end": 1.0}}}, "weighting.schedules"),
    ({"constraints": [{"component": "brief", "min": -0.1}]}, "weighting.constraints"),
])
def test_async_dynamic_sampling_refuses_changing_static_weights(tmp_path, weighting, named):
    rewards = [{"name": "correct", "plugin": "exact_match"},
               {"name": "brief", "plugin": "length_penalty", "args": {"target": 1}}]
    msg = _error(tmp_path, pipeline={"max_staleness": 1}, objective={"kind": "grpo", "dynamic_sampling": True},
                 weighting=weighting, rewards=rewards)
    assert "pipeline.max_staleness: 1" in msg and "objective.dynamic_sampling" in msg and named in msg
