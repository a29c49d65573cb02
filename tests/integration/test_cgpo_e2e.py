"""CGPO end to end on a tiny model: three tasks (CRPG, CODPO, CRRAFT) in one run, per-task metrics logged, the
policy trained; then a resume from the step-1 checkpoint continues the task sampler where it stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config.load import validate_dict

ROOT = Path(__file__).resolve().parents[2]


def _recipe(out, steps: int = 2) -> dict:
    return {
        "run": {"output_dir": str(out), "steps": steps, "progress": False, "save_every": 1},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"source": "jsonl", "train_path": str(ROOT / "data" / "cgpo_tasks_train.jsonl"),
                 "eval_path": str(ROOT / "data" / "cgpo_tasks_eval.jsonl"), "max_prompt_tokens": 8},
        "rewards": [{"name": "correct", "plugin": "exact_match"},
                    {"name": "length", "plugin": "length_penalty", "args": {"target": 1, "coef": 0.3}},
                    {"name": "no_space", "plugin": "forbidden_pattern", "args": {"pattern": " "}},
                    {"name": "short", "plugin": "max_length", "args": {"max": 2}}],
        "rollout": {"prompts_per_step": 6, "group_size": 4, "max_new_tokens": 4},
        "objective": {"kind": "cgpo", "kl_coef": 0.05, "default_task": "add", "tasks": {
            "add": {"optimizer": "crpg", "rewards": ["correct", "length"], "judges": ["no_space", "short"],
                    "baseline_column": "answer", "share": 2},
            "sub": {"optimizer": "codpo", "rewards": ["length"], "judges": ["short"], "share": 2,
                    "beta": 0.2, "weight": 0.5},
            "mix": {"optimizer": "crraft", "rewards": ["length"], "judges": ["no_space"], "share": 2},
        }},
        "train": {"backend": "torch", "num_ranks": 1, "lr": 1e-2},
        "eval": {"max_samples": 6},
    }


def _with_mix_task(tmp_path) -> Path:
    """The demo data plus a third task 'mix' (every 4th train row of 'sub' relabelled)."""
    path = tmp_path / "train.jsonl"
    rows = [json.loads(x) for x in (ROOT / "data" / "cgpo_tasks_train.jsonl").read_text().splitlines()]
    n = 0
    for r in rows:
        if r["task"] == "sub":
            n += 1
            if n % 4 == 0:
                r["task"] = "mix"
    rows[0].pop("task")  # default_task: add
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _check_metrics(out: Path, steps: list[int]) -> list[dict]:
    rl = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == steps
    for r in rl:
        for task in ("add", "sub", "mix"):
            assert r[f"cgpo/{task}/samples"] == 8.0
            assert 0.0 <= r[f"cgpo/{task}/violation_rate"] <= 1.0
            assert f"cgpo/{task}/reward/length" in r and f"cgpo/{task}/calibrated_reward" in r
        assert {"cgpo/add/violation_rate/no_space", "cgpo/add/violation_rate/short",
                "cgpo/sub/violation_rate/short", "cgpo/mix/violation_rate/no_space"} <= set(r)
        assert "cgpo/mix/selected" in r and "cgpo/sub/pairs" in r and "codpo/pairs" in r
        assert r["grad_norm"] > 0 and "kl" in r and "rollout/completion_tokens_mean" in r
        if r["codpo/pairs"] > 0:
            assert "codpo/loss/codpo_nll" in r and "codpo/grad_norm" in r
    return rl


def _sampler_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())["stage"]["sampler"]["tasks"]


def test_cgpo_three_optimizers(ray_session, tmp_path):
    """Two steps (2 epochs x 2 stratified mini-batches each), a checkpoint after each: per-task metrics, a trained
    policy, the task sampler's state."""
    from rlhf.runtime.controller import run
    from rlhf.train import checkpoint as ckpt

    out = tmp_path / "run"
    recipe = _recipe(out, steps=2)
    recipe["data"]["train_path"] = str(_with_mix_task(tmp_path))
    recipe["objective"].update(mini_batches=2, epochs=2)  # stratified mini-batches; CRRAFT rows as NLL
    summary = run(validate_dict(recipe, "test"))
    rl = _check_metrics(out, [1, 2])
    for r in rl:  # CRRAFT's selected rows are trained with the NLL term whenever there are any
        assert ("loss/nll_rows" in r) == (r["cgpo/mix/selected"] > 0), r
    step1, step2 = sorted(p for p in ckpt.checkpoints_dir(str(out)).iterdir() if p.name.startswith("step_"))
    assert set(_sampler_state(step1)) == {"add", "sub", "mix"}
    assert all(s == {"epoch": 0, "position": 2} for s in _sampler_state(step1).values())  # 2 prompts per task
    assert all(s == {"epoch": 0, "position": 4} for s in _sampler_state(step2).values())
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/add/no_space" in r for r in evals)
    before = load_file(out / "tiny_model" / "model.safetensors")
    after = load_file(f"{summary['checkpoint']}/model/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.skipif(os.environ.get("RLHF_SLOW_TESTS") != "1", reason="two more runs (~1.5-3 min); RLHF_SLOW_TESTS=1")
def test_cgpo_resume_continues_task_sampler(ray_session, tmp_path):
    from rlhf.runtime.controller import run
    from rlhf.train import checkpoint as ckpt

    out = tmp_path / "run"
    recipe = _recipe(out, steps=1)
    recipe["data"]["train_path"] = str(_with_mix_task(tmp_path))
    run(validate_dict(recipe, "test"))
    recipe["run"]["steps"] = 2  # resume: one more step from the step-1 checkpoint
    run(validate_dict(recipe, "test"), resume=True)
    _check_metrics(out, [1, 2])
    assert all(s == {"epoch": 0, "position": 4} for s in _sampler_state(ckpt.latest(str(out))).values())


def test_cgpo_recipe_checks():
    recipe = _recipe("/tmp/unused")
    bad = json.loads(json.dumps(recipe))
    bad["objective"]["tasks"]["add"]["judges"] = ["correct"]
    with pytest.raises(ValueError, match=r"objective.tasks.add.judges.0: component 'correct' has kind 'reward'"):
        validate_dict(bad, "test")
    bad = json.loads(json.dumps(recipe))
    bad["objective"]["tasks"]["sub"]["rewards"] = ["nope"]
    with pytest.raises(ValueError, match=r"objective.tasks.sub.rewards.0: 'nope' is not a reward component"):
        validate_dict(bad, "test")
    bad = json.loads(json.dumps(recipe))
    bad["objective"]["tasks"]["add"]["rewards"] = ["no_space"]
    with pytest.raises(ValueError, match="list constraint components under judges"):
        validate_dict(bad, "test")
    validate_dict(recipe, "test")
    from rlhf.config import load_recipe

    assert load_recipe(ROOT / "recipes" / "cgpo_tiny_cpu.yaml", []).objective.kind == "cgpo"


@pytest.mark.skipif(os.environ.get("RLHF_SLOW_TESTS") != "1", reason="bench --quick (~3-4 min); RLHF_SLOW_TESTS=1")
def test_cgpo_hacking_bench_quick(ray_session, tmp_path):
    import sys

    if str(ROOT) not in sys.path:  # bench/ is not an installed package: import it from the checkout
        sys.path.insert(0, str(ROOT))
    from bench import cgpo_hacking

    result = cgpo_hacking.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "cgpo_hacking.json").read_text())
    assert data["bench"] == "cgpo_hacking" and data["quick"] is True
    assert {r["method"] for r in data["runs"]} == {"grpo", "cgpo"}
    assert all(len(r["violation_curve"]) == data["steps"] for r in data["runs"])
    assert (tmp_path / "cgpo_hacking.md").exists() and result["ratios"].keys() == data["ratios"].keys()
