"""Agent recipes end to end (Ray rollout actor, DeepSpeed ZeRO-2 on 2 ranks): a short GiGPO run on the game and a
GRPO run with tools on the calculator, through the same controller as every recipe: SFT warm-up on multi-turn
demonstrations, episodes, per-turn reward vectors, the update, a checkpoint, and a resume that continues it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SMALL = ["model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_layers=1",
         "warmup.steps=4", "rollout.prompts_per_step=4", "rollout.group_size=4", "eval.max_samples=8",
         "eval.every=0", "run.progress=false", "run.save_every=1"]


def _records(out: Path, phase: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["phase"] == phase]


def _game(overrides: list[str]):
    """The game recipe, small, plus a length component: a barely warmed-up policy never solves a game, and the
    update should still have a signal to follow."""
    from rlhf.config.schema import Recipe

    data = load_recipe(RECIPES / "agent_game_tiny_cpu.yaml", overrides).model_dump(mode="json")
    data["rewards"].append({"name": "short", "plugin": "length_penalty", "args": {"target": 8}, "weight": 0.5})
    return Recipe.model_validate(data)


def test_gigpo_game_runs_checkpoints_and_resumes(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "game"
    overrides = [*SMALL, f"run.output_dir={out}", "run.steps=2"]
    summary = run(_game(overrides))
    rl = _records(out, "rl")
    assert [r["step"] for r in rl] == [1, 2]
    for r in rl:
        assert r["grad_norm"] > 0 and 1 <= r["agent/turns_mean"] <= 5 and 0 <= r["gigpo/anchor_coverage"] <= 1
        assert abs(sum(r[f"agent/end/{k}"] for k in ("done", "max_turns", "max_tokens", "error")) - 1) < 1e-6
        assert 0 < r["agent/model_token_fraction"] < 1  # observations were masked out
    assert "eval/agent/turns_mean" in _records(out, "eval")[-1] and "solved" in summary["eval_after"]
    before = load_file(out / "sft" / "model.safetensors")
    after = load_file(f"{summary['checkpoint']}/model/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    resumed = run(_game([*overrides[:-1], "run.steps=3"]), resume=True)
    assert [r["step"] for r in _records(out, "rl")] == [1, 2, 3] and resumed["checkpoint"].endswith("step_000003")


@pytest.mark.extended  # tool calls are tested on the rollout function (test_agent_rollout.py)
def test_calculator_tools_run_inside_training(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "calc"
    run(load_recipe(RECIPES / "agent_calculator_tiny_cpu.yaml", [*SMALL, f"run.output_dir={out}", "run.steps=1",
                                                                   "warmup.steps=30"]))
    (r,) = _records(out, "rl")
    assert {"reward/correct/mean", "reward/used_tool/mean", "agent/tool_calls_per_turn",
            "agent/parse_errors", "agent/tool_errors", "agent/env_seconds"} <= set(r)
    assert r["reward/used_tool/mean"] <= r["agent/episodes_with_tool_call"] + 1e-9  # a call may fail


@pytest.mark.extended  # the trainer sees the same batch layout as single-turn runs; these check it end to end
@pytest.mark.parametrize("train", [
    ["train.zero_stage=3"],
    ["train.zero_stage=0", "model.lora.enabled=true", "model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj]"],
], ids=["zero3", "lora-zero0"])
def test_agent_episodes_train_under_zero3_and_lora(ray_session, tmp_path, train):
    from rlhf.runtime.controller import run

    out = tmp_path / "game"
    run(_game([*SMALL, f"run.output_dir={out}", "run.steps=2", *train]))
    rl = _records(out, "rl")
    assert [r["step"] for r in rl] == [1, 2] and all("loss/policy" in r and r["agent/turns_mean"] >= 1 for r in rl)
    assert all(r["grad_norm"] > 0 for r in rl if "grad_norm" in r)  # DeepSpeed reports no norm at ZeRO-0
