"""PPO end to end: a vector critic on its own DeepSpeed rank, per-component GAE, adaptive KL in the reward,
the critic checkpointed next to the policy and restored by --resume (RLHF_SLOW_TESTS=1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlhf.config.load import validate_dict


def _recipe(out: Path, steps: int):
    return validate_dict({
        "run": {"output_dir": str(out), "steps": steps, "save_every": 1, "progress": False},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"synthetic": {"n_train": 32, "n_eval": 8, "max_operand": 9}, "max_prompt_tokens": 8},
        "rewards": [{"name": "correct", "plugin": "exact_match"},
                    {"name": "length", "plugin": "length_penalty", "weight": 0.5, "args": {"target": 2}}],
        "rollout": {"prompts_per_step": 4, "group_size": 2, "max_new_tokens": 4},
        "objective": {"kind": "ppo", "kl_coef": 0.05, "kl_mode": "reward", "adaptive_kl": True, "kl_target": 0.01,
                      "kl_horizon": 100, "critic": {"vector": True, "lr": 1e-2, "num_ranks": 1}},
        "train": {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2, "lr": 1e-2},
        "eval": {"max_samples": 4},
    }, "test")


def _first_run(out: Path) -> dict:
    """2 PPO steps; checks the per-step metrics and the checkpointed vector critic; returns its value head."""
    from rlhf.runtime.controller import run

    summary = run(_recipe(out, steps=2))
    rl = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    for r in rl:
        assert r["critic/loss/value"] >= 0 and r["critic/grad_norm"] > 0 and r["grad_norm"] > 0
        assert {"adv/correct/mean", "adv/length/mean", "adv/kl/mean", "kl", "kl_coef"} <= set(r)
    # the adaptive controller moved beta away from its initial value (KL differs from the tiny target)
    assert rl[1]["kl_coef"] != 0.05
    critic = Path(summary["checkpoint"]) / "critic"
    head = load_file(critic / "model" / "value_head.safetensors")
    assert next(iter(head.values())).shape[0] == 3  # correct, length, kl streams
    state = json.loads((Path(summary["checkpoint"]) / "state.json").read_text())
    assert state["stage"]["kl_ctl"]
    return head


def test_ppo_vector_critic(ray_session, tmp_path):
    _first_run(tmp_path / "run")


@pytest.mark.extended  # resume on DeepSpeed is tested by test_e2e.py; this adds the critic and the KL controller
def test_ppo_resume_restores_critic_and_kl_controller(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "run"
    head = _first_run(out)
    summary = run(_recipe(out, steps=3), resume=True)
    rl = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rl if r["phase"] == "rl"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert steps[2]["kl_coef"] != 0.05
    new_head = load_file(Path(summary["checkpoint"]) / "critic" / "model" / "value_head.safetensors")
    assert any(not (new_head[k] == head[k]).all() for k in head), "the resumed critic kept training"
