"""MAH-DPO end to end: a two-head policy on DeepSpeed ZeRO-2 (2 ranks) with the per-head NLL term (nll_coef),
per-head held-out pair accuracy, greedy generation at several mixes on the hf engine, a checkpoint that keeps its
heads and `rlhf export --mix`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf.config.load import validate_dict

ROOT = Path(__file__).resolve().parents[2]


def test_mah_dpo_trains_two_heads(ray_session, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf.export import export
    from rlhf.models.multihead import load_multihead, read_heads
    from rlhf.runtime.controller import run

    out = tmp_path / "run"
    recipe = validate_dict({
        "run": {"output_dir": str(out), "steps": 3, "progress": False},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"source": "jsonl", "train_path": str(ROOT / "data/arithmetic_prefs_train.jsonl"),
                 "eval_path": str(ROOT / "data/arithmetic_prefs_eval.jsonl")},
        "objective": {"kind": "mah_dpo", "heads": ["correct", "concise"], "beta": 0.1, "batch_size": 8,
                      "max_length": 24, "eval_mixes": [[1, 0], [0, 1]], "nll_coef": 0.5},
        "rewards": [{"name": "correct", "plugin": "math_answer"},
                    {"name": "concise", "plugin": "regex_format",
                     "args": {"pattern": "-?[0-9]+", "require_finished": True}}],
        "rollout": {"max_new_tokens": 4},
        "train": {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2, "lr": 5e-3},
        "eval": {"max_samples": 10},
    }, "test")
    summary = run(recipe)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["phase"] == "dpo"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["grad_norm"] > 0 and "loss/mah_dpo" in r for r in steps)
    assert all(r["loss/nll"] > 0 for r in steps)  # nll_coef: the completion lengths reach the loss on every rank
    before, after = summary["eval_before"], summary["eval_after"]
    for scores in (before, after):
        for head in ("correct", "concise"):
            for obj in ("correct", "concise"):
                assert 0 <= scores[f"head/{head}/pair_acc/{obj}"] <= 1
        for i in range(2):
            assert {f"mix/{i}/correct", f"mix/{i}/concise", f"mix/{i}/weight/correct"} <= set(scores)
    assert abs(before["reward_margin"]) < 1e-4  # every head starts as the reference
    assert after["head/concise/loss"] != before["head/concise/loss"]
    # the checkpoint keeps both heads, and they have moved apart (each trained on its own column)
    model_dir = Path(summary["checkpoint"]) / "model"
    names, mix, heads = read_heads(str(model_dir))  # (K, V, H)
    assert names == ("correct", "concise") and mix == (0.5, 0.5)
    assert not torch.equal(heads[0], heads[1])
    export(summary["checkpoint"], str(tmp_path / "mixed"), mix="0.7,0.3")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "mixed")
    model = load_multihead(str(model_dir), names, mix=(0.7, 0.3))
    ids = torch.tensor([[1, 5, 6, 7, 8]])  # (1, T)
    assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
