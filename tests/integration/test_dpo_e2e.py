"""Offline DPO end to end: preference pairs from jsonl, cached reference logps, DeepSpeed (2 ranks) or torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config.load import validate_dict

ROOT = Path(__file__).resolve().parents[2]


def _recipe(out: Path, objective: dict, train: dict):
    return validate_dict({
        "run": {"output_dir": str(out), "steps": 3, "progress": False},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"source": "jsonl", "train_path": str(ROOT / "data/arithmetic_prefs_train.jsonl"),
                 "eval_path": str(ROOT / "data/arithmetic_prefs_eval.jsonl")},
        "objective": {"kind": "dpo", "batch_size": 8, "max_length": 24, **objective},
        "train": {"lr": 5e-3, **train},
        "eval": {"max_samples": 10},
    }, "test")


@pytest.mark.parametrize(
    "objective, train",
    [({"loss_type": "sigmoid", "beta": 0.1}, {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2}),
     pytest.param({"loss_type": "ipo", "beta": 0.5}, {"backend": "torch", "num_ranks": 1},
                  marks=pytest.mark.extended)],  # the IPO loss itself: tests/unit/test_dpo_loss.py (vs TRL)
    ids=["dpo-zero2", "ipo-torch"],
)
def test_dpo_trains(ray_session, tmp_path, objective, train):
    from rlhf.runtime.controller import run

    out = tmp_path / "run"
    summary = run(_recipe(out, objective, train))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["phase"] == "dpo"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["grad_norm"] > 0 and "rewards/accuracy" in r for r in steps)
    # before training the policy is the reference: implicit rewards are ~0 and the loss is the loss at h = 0
    before = summary["eval_before"]
    assert abs(before["reward_margin"]) < 1e-4
    expected0 = 0.6931 if objective["loss_type"] == "sigmoid" else (1 / (2 * objective["beta"])) ** 2
    assert before["loss"] == pytest.approx(expected0, abs=1e-3)
    assert summary["eval_after"]["loss"] != pytest.approx(before["loss"], abs=1e-4)
    init = load_file(out / "tiny_model" / "model.safetensors")
    final = load_file(f"{summary['checkpoint']}/model/model.safetensors")
    assert any(not torch.equal(init[k], final[k]) for k in init)
    assert set(summary["components"]) == {"loss", "pair accuracy", "reward margin"}


def test_modpo_margin_from_reward_components(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "modpo"
    recipe = _recipe(out, {}, {"backend": "torch", "num_ranks": 1}).model_dump(mode="json")
    recipe["objective"] = {"kind": "modpo", "beta": 0.1, "preference_weight": 0.6, "batch_size": 8, "max_length": 24}
    recipe["rewards"] = [{"name": "brevity", "plugin": "length_penalty", "weight": 0.4,
                          "args": {"target": 2, "coef": 0.5, "max_penalty": 2.0}}]
    summary = run(validate_dict(recipe, "test"))
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["phase"] == "dpo"]
    # chosen answers are never longer than rejected ones (chatter or another number): margins are >= 0
    assert steps[-1]["margin/brevity/delta_mean"] > 0 and steps[-1]["margin/mean"] > 0
    assert summary["objective"] == "modpo" and len(steps) == 3
