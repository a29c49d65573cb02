"""Reward-model training end to end, then GRPO scoring with it: a two-head RM (Bradley-Terry per head on its own
preference column) on DeepSpeed ZeRO-2 x 2 ranks, saved as a HF sequence-classification model; a GRPO run with
the RM's heads as two reward components (one shared reward worker) next to a verifiable reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config.load import validate_dict

ROOT = Path(__file__).resolve().parents[2]
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4, "max_position_embeddings": 32}


def _rm_recipe(out: Path, train: dict, objective: dict | None = None, **extra):
    return validate_dict({
        "run": {"output_dir": str(out), "steps": 4, "progress": False},
        "model": {"tiny": TINY},
        "data": {"source": "jsonl", "train_path": str(ROOT / "data/arithmetic_prefs_train.jsonl"),
                 "eval_path": str(ROOT / "data/arithmetic_prefs_eval.jsonl")},
        "objective": {"kind": "rm", "heads": ["correct", "concise"], "batch_size": 8, "max_length": 24,
                      "preference_columns": {"correct": "correct", "concise": "concise"}, "center_coef": 0.01,
                      **(objective or {})},
        "train": {"lr": 5e-3, **train},
        "eval": {"max_samples": 16},
        **extra,
    }, "test")


def _steps(out: Path, phase: str) -> list[dict]:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["phase"] == phase]


@pytest.fixture(scope="module")
def trained_rm(ray_session, tmp_path_factory):
    from rlhf.runtime.controller import run

    out = tmp_path_factory.mktemp("rm") / "run"
    summary = run(_rm_recipe(out, {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2}))
    return out, summary


def test_two_head_rm_trains_and_saves_a_sequence_classification_model(trained_rm):
    from transformers import AutoConfig

    out, summary = trained_rm
    steps = _steps(out, "rm")
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 0 and "rm/correct/acc" in r and "rm/concise/acc" in r for r in steps)
    before, after = summary["eval_before"], summary["eval_after"]
    assert {"pair_acc", "loss", "correct/acc", "concise/acc"} <= set(before)
    assert before["loss"] == pytest.approx(0.693, abs=0.05)  # fresh heads score ~0: log 2 (+ a small centring)
    assert after["loss"] != pytest.approx(before["loss"], abs=1e-4)
    assert set(summary["components"]) == {"loss", "pair accuracy (train batch)"}
    config = AutoConfig.from_pretrained(f"{summary['checkpoint']}/model")
    assert config.architectures == ["LlamaForSequenceClassification"]
    assert [config.id2label[i] for i in range(2)] == ["correct", "concise"]


def test_grpo_with_the_rm_heads_as_components(trained_rm, tmp_path):
    from rlhf.runtime.controller import run

    rm_dir = f"{trained_rm[1]['checkpoint']}/model"
    out = tmp_path / "grpo"
    recipe = validate_dict({
        "run": {"output_dir": str(out), "steps": 2, "progress": False},
        "model": {"tiny": TINY},
        "data": {"source": "synthetic_arithmetic", "synthetic": {"n_train": 64, "n_eval": 8}},
        "rewards": [
            {"name": "answer", "plugin": "math_answer"},
            {"name": "rm_correct", "plugin": "reward_model", "args": {"model": rm_dir, "head": "correct"}},
            {"name": "rm_concise", "plugin": "reward_model", "args": {"model": rm_dir, "head": "concise"},
             "weight": 0.5},
        ],
        "rollout": {"prompts_per_step": 4, "group_size": 2, "max_new_tokens": 4},
        "objective": {"kind": "grpo", "kl_coef": 0.0},
        "train": {"backend": "torch", "num_ranks": 1},
        "eval": {"max_samples": 4},
    }, "test")
    run(recipe)
    steps = _steps(out, "rl")
    assert len(steps) == 2
    for name in ("rm_correct", "rm_concise"):
        assert all(isinstance(r[f"reward/{name}/mean"], float) for r in steps)
    from rlhf.scoring.backends import worker_names
    from rewards.api import resolve_plugin

    names = worker_names(recipe.rewards, [resolve_plugin(c.plugin) for c in recipe.rewards])
    assert names[1] == names[2] == f"reward_model:{rm_dir}" and names[0] != names[1]


@pytest.mark.extended
def test_rm_on_zero3_and_resume(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "z3"
    run(_rm_recipe(out, {"backend": "deepspeed", "zero_stage": 3, "num_ranks": 2},
                   run={"output_dir": str(out), "steps": 2, "progress": False, "save_every": 1}))
    recipe = _rm_recipe(out, {"backend": "deepspeed", "zero_stage": 3, "num_ranks": 2},
                        run={"output_dir": str(out), "steps": 4, "progress": False, "save_every": 1})
    summary = run(recipe, resume=True)
    assert [r["step"] for r in _steps(out, "rm")] == [1, 2, 3, 4]
    assert summary["steps"] == 4


def test_lora_rm_exports_a_merged_sequence_classification_model(ray_session, tmp_path):
    """model.lora on an RM: the adapter trains with the score head in full (peft SEQ_CLS) and `rlhf export`
    merges it into a sequence-classification model scoring exactly as base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from rlhf.data.preference import collate_rm
    from rlhf.export import export
    from rlhf.models.load import load_tokenizer
    from rlhf.models.reward import load_reward_model
    from rlhf.objectives.rm import sequence_scores
    from rlhf.runtime.controller import run

    out = tmp_path / "lora"
    summary = run(_rm_recipe(out, {"backend": "torch", "num_ranks": 1}, model={"tiny": TINY, "lora": {"r": 4}}))
    adapter = f"{summary['checkpoint']}/model"
    export(summary["checkpoint"], str(tmp_path / "merged"))
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    tok = load_tokenizer(adapter)
    base = load_reward_model(str(out / "tiny_model"), ("correct", "concise"), pad_token_id=tok.pad_token_id)
    peft = PeftModel.from_pretrained(base, adapter).eval()
    rows = [json.loads(x) for x in (ROOT / "data/arithmetic_prefs_eval.jsonl").read_text().splitlines()[:6]]
    ids, mask, _ = collate_rm(tok, rows, 24, ("correct", "concise"), {}, None).pairs.stacked()
    with torch.no_grad():
        want = sequence_scores(peft, ids, mask)
        assert want.abs().sum() > 0
        assert torch.allclose(sequence_scores(merged, ids, mask), want, atol=1e-5)
