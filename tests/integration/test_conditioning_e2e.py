"""End to end on CPU: a tiny preference-conditioned GRPO run (recipe ``conditioning``) logs the per-sample weights'
distribution every step and one set of component means per eval vector at every evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.config.load import validate_dict

EVAL_VECTORS = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]


def _recipe(out: Path):
    return validate_dict({
        "run": {"output_dir": str(out), "steps": 2, "save_every": 0, "progress": False, "seed": 1},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
                           "max_position_embeddings": 48}},
        "data": {"synthetic": {"n_train": 64, "n_eval": 8, "max_operand": 9}, "max_prompt_tokens": 24},
        "warmup": {"steps": 2, "batch_size": 8, "lr": 1e-3},
        "rewards": [
            {"name": "correct", "plugin": "math_answer"},
            {"name": "brief", "plugin": "length_penalty", "args": {"target": 1, "coef": 0.25}},
        ],
        "conditioning": {"enabled": True, "components": ["correct", "brief"],
                         "template": "<pref correct={correct:.2f} brief={brief:.2f}> {prompt}",
                         "eval_vectors": EVAL_VECTORS},
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
        "objective": {"kind": "grpo", "kl_coef": 0.0},
        "train": {"backend": "torch", "num_ranks": 1, "lr": 1e-3},
        "eval": {"max_samples": 4, "accuracy_component": "correct"},
    }, "test")


def test_conditioned_grpo_logs_per_vector_evals(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "run"
    summary = run(_recipe(out))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    for r in rl:  # the drawn weights' distribution; per-component means as without conditioning
        for key in ("weights/sample/correct/mean", "weights/sample/correct/min", "weights/sample/brief/max",
                    "reward/correct/mean", "reward/brief/mean", "reward/brief/weighted"):
            assert key in r, key
        assert 0.0 <= r["weights/sample/correct/min"] <= r["weights/sample/correct/max"] <= 1.0
    evals = [r for r in records if r["phase"] == "eval"]
    assert len(evals) == 2  # before and after
    for r in evals:
        cond = sorted({k.split("/")[2] for k in r if k.startswith("eval/cond/") and k.split("/")[2].isdigit()})
        assert cond == [str(i) for i in range(len(EVAL_VECTORS))]  # one entry per vector
        for i, v in enumerate(EVAL_VECTORS):
            assert {f"eval/cond/{i}/correct", f"eval/cond/{i}/brief", f"eval/cond/{i}/score"} <= set(r)
            assert r[f"eval/cond/{i}/weight/correct"] == v[0] and r[f"eval/cond/{i}/weight/brief"] == v[1]
        assert "eval/cond/spearman/brief" in r
        mean = sum(r[f"eval/cond/{i}/brief"] for i in range(3)) / 3
        assert abs(r["eval/brief"] - mean) < 1e-9  # the headline component means: over the vectors
    assert "accuracy" in summary["eval_after"] and "cond/0/correct" in summary["eval_after"]
