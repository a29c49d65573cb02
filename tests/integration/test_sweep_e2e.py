"""rlhf sweep end to end: two weight vectors, two tiny trainings, the front, its hypervolume and the plot."""

from __future__ import annotations

import json
import os

import pytest

from rlhf.config.load import validate_dict


def _two_component_recipe(tmp_path):
    """A 1-step GRPO run of a 1-layer model on `correct` vs `brief`, output under tmp_path/out."""
    return validate_dict({
        "run": {"output_dir": str(tmp_path / "out"), "steps": 1, "progress": False},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"synthetic": {"n_train": 32, "n_eval": 8, "max_operand": 9}, "max_prompt_tokens": 8},
        "rewards": [{"name": "correct", "plugin": "exact_match"},
                    {"name": "brief", "plugin": "length_penalty", "args": {"target": 1}}],
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
        "train": {"backend": "torch", "num_ranks": 1, "lr": 1e-2},
        "eval": {"max_samples": 4},
    }, "test")


@pytest.mark.extended  # ~30 s; weights parsing, table and front: tests/unit/test_sweep.py; each run is a train run
def test_sweep_two_weight_vectors(ray_session, tmp_path):
    from rlhf.sweep import sweep

    recipe = _two_component_recipe(tmp_path)
    result = sweep(recipe, ["1,0", "0,1"])
    root = tmp_path / "out" / "sweep"
    saved = json.loads((root / "sweep.json").read_text())
    assert [r["weights"] for r in saved["runs"]] == [{"correct": 1.0, "brief": 0.0}, {"correct": 0.0, "brief": 1.0}]
    assert all(len(r["point"]) == 2 for r in saved["runs"])
    assert saved["front"] and saved["hypervolume"] > 0
    assert (root / "sweep.md").exists() and (root / "w0" / "summary.json").exists()
    assert result["plot"] is None or (root / "sweep.png").exists()


@pytest.mark.skipif(os.environ.get("RLHF_SLOW_TESTS") != "1", reason="two MODPO runs (~1.5 min); RLHF_SLOW_TESTS=1")
def test_modpo_sweep_evaluates_preference_and_generated_rewards(ray_session, tmp_path):
    """MODPO never generates while training; the sweep scores each model's greedy completions itself."""
    from rlhf.sweep import PREFERENCE, sweep

    recipe = validate_dict({
        "run": {"output_dir": str(tmp_path / "out"), "steps": 2, "progress": False},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"source": "jsonl", "train_path": "data/arithmetic_prefs_train.jsonl",
                 "eval_path": "data/arithmetic_prefs_eval.jsonl"},
        "rewards": [{"name": "brevity", "plugin": "length_penalty", "weight": 0.25, "args": {"target": 3, "coef": 0.5}},
                    {"name": "correct", "plugin": "exact_match", "weight": 0.25}],
        "rollout": {"max_new_tokens": 6},
        "objective": {"kind": "modpo", "beta": 0.1, "preference_weight": 0.5, "batch_size": 8, "max_length": 32},
        "train": {"backend": "torch", "num_ranks": 1, "lr": 1e-2},
        "eval": {"max_samples": 6},
    }, "test")
    sweep(recipe, ["1,0,0", "0.2,0.4,0.4"])
    saved = json.loads((tmp_path / "out" / "sweep" / "sweep.json").read_text())
    assert saved["components"] == [PREFERENCE, "brevity", "correct"]
    assert saved["runs"][1]["weights"] == {PREFERENCE: 0.2, "brevity": 0.4, "correct": 0.4}
    resolved = (tmp_path / "out" / "sweep" / "w1" / "recipe.resolved.yaml").read_text()
    assert "preference_weight: 0.2" in resolved
    for r in saved["runs"]:
        assert 0 <= r["point"][0] <= 1 and r["point"][1] <= 0 and 0 <= r["point"][2] <= 1


def test_generated_scores_of_a_checkpoint(arithmetic_model_dir, tmp_path):
    """The per-component evaluation a MODPO sweep gives each trained model: greedy completions, every component."""
    from rlhf.sweep import generated_scores

    (tmp_path / "ckpt").mkdir()
    os.symlink(arithmetic_model_dir, tmp_path / "ckpt" / "model")
    recipe = validate_dict({
        "model": {"path": str(arithmetic_model_dir)},
        "data": {"source": "jsonl", "train_path": "data/arithmetic_prefs_train.jsonl",
                 "eval_path": "data/arithmetic_prefs_eval.jsonl"},
        "rewards": [{"name": "brevity", "plugin": "length_penalty", "weight": 0.5, "args": {"target": 3}},
                    {"name": "correct", "plugin": "exact_match", "weight": 0.25}],
        "rollout": {"max_new_tokens": 6},
        "objective": {"kind": "modpo", "preference_weight": 0.25, "batch_size": 8, "max_length": 32},
        "eval": {"max_samples": 5},
    }, "test")
    scores = generated_scores(recipe, str(tmp_path / "ckpt"))
    assert set(scores) == {"brevity", "correct"}
    assert scores["brevity"] <= 0 and 0 <= scores["correct"] <= 1


@pytest.mark.extended  # ~30 s, two tiny trainings; the rule and the bookkeeping: tests/unit/test_front_fill.py
def test_fill_run_starts_from_a_checkpoint_with_a_constraint(ray_session, tmp_path):
    """A real fill run: model.path = a trained run's checkpoint model/ (tokenizer found there), no warm-up, the
    bound as a Lagrange constraint; the measured points are given by hand so the gap does not depend on 1 step."""
    from rlhf.runtime.controller import run
    from rlhf.sweep import fill_front

    recipe = _two_component_recipe(tmp_path)
    ckpt = run(recipe)["checkpoint"]
    runs = [{"label": "w0", "point": [1.0, -1.0], "checkpoint": ckpt},
            {"label": "w1", "point": [0.0, 0.0], "checkpoint": ckpt}]
    root = tmp_path / "out" / "sweep"
    root.mkdir()
    (filled,) = fill_front(recipe, str(root), ["correct", "brief"], runs, 1)
    assert filled["source"] == "fill" and filled["fill"]["start"] == "w1" and filled["fill"]["maximize"] == "correct"
    assert len(filled["point"]) == 2 and (root / "fill0" / "summary.json").exists()
    resolved = (root / "fill0" / "recipe.resolved.yaml").read_text()
    assert os.path.join(ckpt, "model") in resolved and "min: -0.5" in resolved
    metrics = [json.loads(line) for line in (root / "fill0" / "metrics.jsonl").read_text().splitlines()]
    assert any("constraint/brief/multiplier" in m for m in metrics)
    assert not any(m.get("phase") == "sft" for m in metrics)
