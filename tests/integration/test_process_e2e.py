"""Process rewards end to end: train a PRM (objective prm, DeepSpeed ZeRO-2, 2 ranks), then GRPO with that PRM and
the rule-based step checker as process components (step-level advantages reach the trainer), and PPO with dense
step rewards and MRT's progress bonus in GAE (torch backend)."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.config.load import validate_dict

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4, "max_position_embeddings": 48,
        "tokenizer_vocab_size": 40}
CHAINS = {"n_train": 64, "n_eval": 8, "max_operand": 9, "ops": ["+", "-"], "terms": 3, "show_steps": True}


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def prm_run(ray_session, tmp_path_factory):
    from rlhf.runtime.controller import run

    out = tmp_path_factory.mktemp("prm") / "run"
    recipe = validate_dict({
        "run": {"output_dir": str(out), "steps": 3, "progress": False},
        "model": {"tiny": TINY},
        "data": {"synthetic": CHAINS},
        "objective": {"kind": "prm", "batch_size": 8, "max_length": 40},
        "train": {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2, "lr": 1e-2},
        "eval": {"max_samples": 8},
    }, "test")
    return out, run(recipe)


def test_prm_training_runs_and_saves_a_scorable_model(prm_run):
    out, summary = prm_run
    rows = [r for r in _rows(out) if r["phase"] == "prm"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0 <= r["prm/step_acc"] <= 1 and r["loss/prm"] > 0 and r["grad_norm"] > 0 for r in rows)
    assert 0 <= summary["eval_after"]["step_acc"] <= 1


def _policy_recipe(out, objective: dict, rewards: list[dict], train: dict) -> dict:
    return {
        "run": {"output_dir": str(out), "steps": 2, "progress": False},
        "model": {"tiny": TINY},
        "data": {"synthetic": CHAINS, "max_prompt_tokens": 12},
        "warmup": {"steps": 3, "batch_size": 8, "lr": 1e-2},
        "process": {"segment": "newline"},
        "rewards": rewards,
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 12},
        "objective": objective,
        "train": {"lr": 1e-2, **train},
        "eval": {"max_samples": 4},
    }


def test_grpo_with_a_trained_prm_and_a_step_checker(prm_run, tmp_path):
    from safetensors.torch import load_file

    from rlhf.runtime.controller import run

    prm_dir = f"{prm_run[1]['checkpoint']}/model"
    out = tmp_path / "run"
    rewards = [
        {"name": "prm", "plugin": "prm", "kind": "process", "outcome": "min", "transform": "delta",
         "args": {"model": prm_dir}},
        {"name": "steps", "plugin": "arithmetic_steps", "kind": "process", "transform": "clip",
         "clip_threshold": 0.5, "weight": 0.5},
        {"name": "correct", "plugin": "math_answer"},
    ]
    summary = run(validate_dict(_policy_recipe(out, {"kind": "grpo"}, rewards,
                                               {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2}), "test"))
    rl = [r for r in _rows(out) if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    for r in rl:
        assert 0 <= r["process/prm/step_mean"] <= 1 and r["process/prm/steps_per_sample"] >= 0
        assert 0 <= r["process/steps/good_step_rate"] <= 1
        assert "adv/step_abs_mean" in r and r["grad_norm"] > 0
    assert any(r["adv/step_abs_mean"] > 0 for r in rl)  # step-level advantages reached the loss
    before = load_file(out / "sft" / "model.safetensors")
    after = load_file(f"{summary['checkpoint']}/model/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert "prm" in summary["eval_after"]


@pytest.mark.extended  # the bonus and the dense rewards are unit tested (test_process_rewards.py)
def test_ppo_with_dense_step_rewards_and_mrt_progress(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "run"
    rewards = [{"name": "steps", "plugin": "arithmetic_steps", "kind": "process", "outcome": "mean"},
               {"name": "correct", "plugin": "math_answer"}]
    objective = {"kind": "ppo", "kl_coef": 0.0, "critic": {"vector": True, "lr": 1e-2}}
    recipe = _policy_recipe(out, objective, rewards, {"backend": "torch", "num_ranks": 1})
    recipe["process"]["progress"] = {"enabled": True, "component": "correct", "samples": 2, "max_steps": 2}
    run(validate_dict(recipe, "test"))
    rl = [r for r in _rows(out) if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    assert all("adv/steps/mean" in r and "process/steps/good_step_rate" in r and r["grad_norm"] > 0 for r in rl)
    for r in rl:  # every step but the last of each completion was continued `samples` times
        assert r["progress/continuations"] == 2 * r["progress/prefixes"]
        assert 0 <= r["progress/mu0_mean"] <= 1 and r["time/progress"] > 0
    assert any(r["progress/prefixes"] > 0 for r in rl)


def test_ppo_step_rewards_land_on_step_ends():
    from rlhf.runtime.estimators import step_rewards
    from rlhf.types import RewardVector

    rv = RewardVector(("correct", "steps"), ("reward", "process"), torch.tensor([[1.0, 0.5]]),
                      torch.tensor([[[1.0], [0.0]]]), torch.tensor([[1, 3]]))
    weights = {"correct": 1.0, "steps": 2.0}
    out = step_rewards(rv, torch.Size([1, 5, 2]), True, weights, None)
    assert out[0, :, 1].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0] and out[0, :, 0].abs().sum() == 0
    out = step_rewards(rv, torch.Size([1, 5, 1]), False, weights, None)
    assert out[0, :, 0].tolist() == [0.0, 2.0, 0.0, 0.0, 0.0]  # weighted by the component's weight
