"""rlhf sweep end to end: two weight vectors, two tiny trainings, the front, its hypervolume and the plot."""

from __future__ import annotations

import json

from rlhf.config.load import validate_dict


def test_sweep_two_weight_vectors(ray_session, tmp_path):
    from rlhf.sweep import sweep

    recipe = validate_dict({
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
    result = sweep(recipe, ["1,0", "0,1"])
    root = tmp_path / "out" / "sweep"
    saved = json.loads((root / "sweep.json").read_text())
    assert [r["weights"] for r in saved["runs"]] == [{"correct": 1.0, "brief": 0.0}, {"correct": 0.0, "brief": 1.0}]
    assert all(len(r["point"]) == 2 for r in saved["runs"])
    assert saved["front"] and saved["hypervolume"] > 0
    assert (root / "sweep.md").exists() and (root / "w0" / "summary.json").exists()
    assert result["plot"] is None or (root / "sweep.png").exists()
