"""`rlhf train` with pipeline {max_staleness: 1, weight_update: keep}: the rollout actor serves the producer's
generate and the consumer's weight sync at once, every step trains, no sample is staler than 1, and the per-token
versions reach the metrics. On the hf engine's decode loop (default suite) and on vllm (extended: ~30 s more)."""

from __future__ import annotations

import json

import pytest

from rlhf.rollout.vllm import vllm_available
from tests.integration.test_vllm_engine import vllm_model_dir  # noqa: F401  (vLLM's CPU attention: head_dim 32)

ENGINES = [
    pytest.param({"engine": "hf", "hf": {"decode": "loop"}}, "arithmetic_model_dir", id="hf"),
    pytest.param({"engine": "vllm"}, "vllm_model_dir", id="vllm", marks=[
        pytest.mark.extended, pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")]),
]


@pytest.mark.parametrize("engine, model_fixture", ENGINES)
def test_grpo_async_keep_run(ray_session, request, tmp_path, engine, model_fixture):
    from rlhf.config.load import validate_dict
    from rlhf.runtime.controller import run

    recipe = validate_dict({
        "run": {"output_dir": str(tmp_path / "out"), "steps": 5, "progress": False},
        "model": {"path": request.getfixturevalue(model_fixture)},
        "data": {"synthetic": {"n_train": 64, "n_eval": 8, "max_operand": 20, "ops": ["+"]}, "max_prompt_tokens": 16},
        "rewards": [{"name": "correct", "plugin": "math_answer"}],
        "rollout": {**engine, "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 24},
        "objective": {"kind": "grpo"},
        "pipeline": {"max_staleness": 1, "weight_update": "keep"},
        "train": {"backend": "torch", "num_ranks": 1, "lr": 1e-3, "micro_batch_size": 16},
        "eval": {"max_samples": 8},
    }, "test")
    run(recipe)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "async/staleness_max" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert all(r["async/staleness_max"] <= 1 and 0 <= r["async/mixed_version_share"] <= 1 for r in steps)
    assert all(r["async/token_staleness_mean"] <= r["async/staleness_mean"] + 1e-9 for r in steps)
