"""Reward functions written for TRL, verl and OpenRLHF, unchanged, in one real (tiny) GRPO run: one component per
style (TRL's own think_format_reward in its conversational format, verl's batch form and OpenRLHF's older form
too), each component's reward metric and the scalars each function logs land in metrics.jsonl.

One run for the three styles (~1-2 min on 2 cores: extended, RLHF_SLOW_TESTS=1 runs it); each style's detection
and adapter, and the reward group's reward_extra metrics, are unit-tested in tests/unit/test_reward_styles.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the plugins are referenced as 'tests.fixtures.foreign_rewards:...', as a recipe would
    sys.path.insert(0, str(ROOT))

from rlhf.config.load import validate_dict  # noqa: E402
from tests.fixtures import foreign_rewards  # noqa: E402

MOD = "tests.fixtures.foreign_rewards"


@pytest.fixture
def plugins_by_value(ray_session):
    """Ship the fixture module's functions by value, so that the Ray reward workers need not import 'tests'."""
    ray_session.cloudpickle.register_pickle_by_value(foreign_rewards)
    yield
    ray_session.cloudpickle.unregister_pickle_by_value(foreign_rewards)


@pytest.mark.slow
@pytest.mark.extended  # ~1-2 min on 2 busy cores; the adapters and the RewardGroup path are unit tested
def test_trl_verl_and_openrlhf_functions_train_unchanged(plugins_by_value, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "run"
    recipe = validate_dict({
        "run": {"output_dir": str(out), "steps": 2, "progress": False, "seed": 0},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"synthetic": {"n_train": 32, "n_eval": 8, "max_operand": 9}, "max_prompt_tokens": 8},
        "warmup": {"steps": 1, "batch_size": 8, "lr": 1e-3},
        "rewards": [
            {"name": "trl", "plugin": f"{MOD}:trl_logs"},                        # auto-detected: trl
            {"name": "verl", "plugin": f"{MOD}:verl_compute_score"},             # auto-detected: verl
            {"name": "verl_acc", "plugin": f"{MOD}:verl_compute_score", "style": "verl", "output_key": "acc"},
            {"name": "openrlhf", "plugin": f"{MOD}:reward_func", "columns": {"labels": "answer"}},
            {"name": "trl_chat", "plugin": "trl.rewards:think_format_reward"},   # trl_conversational
            {"name": "verl_batch", "plugin": f"{MOD}:verl_batch_compute_score"},  # verl, one call per batch
            {"name": "openrlhf_old", "plugin": f"{MOD}:reward_func_unlabelled"},  # (queries, prompts)
        ],
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 3},
        "objective": {"kind": "grpo"},
        "train": {"backend": "torch", "num_ranks": 1, "lr": 1e-3},
        "eval": {"max_samples": 4},
    }, "test")
    summary = run(recipe)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if r["phase"] == "rl"]
    assert summary["steps"] == 2 and [r["step"] for r in rl] == [1, 2]
    last = rl[-1]
    for name in ("trl", "verl", "verl_acc", "openrlhf", "trl_chat", "verl_batch", "openrlhf_old"):
        assert f"reward/{name}/mean" in last, name
        assert last[f"reward/{name}/failures"] == 0, name
    assert 0.0 <= last["reward/verl_acc/mean"] <= 1.0  # the dict's 'acc' key, as a component
    assert "reward_extra/trl/mean_chars" in last and "reward_extra/trl/has_digit" in last  # log_metric, log_extra
    assert "reward_extra/verl/acc" in last and "reward_extra/verl/pred" not in last  # numeric keys only
    assert last["reward_extra/verl/source_seen"] == 1.0  # data_source: the dataset's name (no such column)
    assert "reward_extra/verl_acc/score" in last
    assert "reward_extra/openrlhf/hit_rate" in last and "reward_extra/openrlhf/scores" in last
    assert 0.0 <= last["reward/trl_chat/mean"] <= 1.0  # TRL's think_format_reward, run as shipped
    assert "reward_extra/verl_batch/acc" in last
