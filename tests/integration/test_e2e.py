"""End to end on CPU: SFT warm-up + GRPO on 2 DeepSpeed ranks in Ray, checkpoints, metrics, and --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config.load import validate_dict


def _recipe(out: Path, steps: int):
    return validate_dict({
        "run": {"output_dir": str(out), "steps": steps, "save_every": 1, "progress": False, "seed": 3},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"synthetic": {"n_train": 64, "n_eval": 16, "max_operand": 9}, "max_prompt_tokens": 8},
        "warmup": {"steps": 3, "batch_size": 8, "lr": 1e-3},
        "rewards": [
            {"name": "correct", "plugin": "math_answer"},
            {"name": "format", "plugin": "regex_format", "weight": 0.5,
             "args": {"pattern": "-?[0-9]+", "require_finished": True}},
            {"name": "length", "plugin": "length_penalty", "args": {"target": 3}},
        ],
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
        "objective": {"kind": "grpo", "kl_coef": 0.01},
        "train": {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2, "lr": 1e-3},
        "eval": {"max_samples": 8, "accuracy_component": "correct"},
    }, "test")


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_then_resume(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "run"
    summary = run(_recipe(out, steps=2))

    # metrics: warm-up lines, one line per RL step with per-component and per-phase numbers, evals
    records = _records(out)
    sft = [r for r in records if r["phase"] == "sft"]
    rl = [r for r in records if r["phase"] == "rl"]
    assert [r["step"] for r in sft] == [1, 2, 3] and all(r["loss/sft"] > 0 for r in sft)
    assert [r["step"] for r in rl] == [1, 2]
    for key in ("reward/correct/mean", "reward/format/mean", "reward/length/weighted", "weights/format",
                "adv/std", "kl", "loss/policy", "grad_norm", "throughput/gen_tokens_per_s",
                "throughput/samples_per_s", "time/generate", "time/score", "time/train", "time/sync"):
        assert key in rl[-1], key
    assert sum(r["phase"] == "eval" for r in records) == 2
    assert summary["steps"] == 2 and set(summary["components"]) == {"correct", "format", "length"}
    # train.precision auto resolved for this model: too narrow for bf16 on any CPU (hidden < 256)
    assert summary["precision"] == {"train": "fp32", "engines": "float32"}
    assert "accuracy" in summary["eval_before"] and "accuracy" in summary["eval_after"]

    # GRPO changed the parameters of the warmed-up model; the checkpoint is a loadable HF directory
    ckpt = Path(summary["checkpoint"])
    assert ckpt.name == "step_000002" and (out / "checkpoints" / "latest").read_text() == "step_000002"
    before = load_file(out / "sft" / "model.safetensors")
    after = load_file(ckpt / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (ckpt / "MANIFEST.json").is_file() and json.loads((ckpt / "state.json").read_text())["step"] == 2
    assert not (out / "checkpoints" / "step_000002.tmp").exists()

    # a second run into the same directory without --resume is refused (nothing is overwritten)
    with pytest.raises(FileExistsError, match="--resume"):
        run(_recipe(out, steps=3))

    # --resume continues at step 3: no second warm-up, no second "before" eval, same metrics file
    summary = run(_recipe(out, steps=3), resume=True)
    records = _records(out)
    assert [r["step"] for r in records if r["phase"] == "rl"] == [1, 2, 3]
    assert sum(r["phase"] == "sft" for r in records) == 3
    assert summary["steps"] == 3 and Path(summary["checkpoint"]).name == "step_000003"
    state = json.loads((Path(summary["checkpoint"]) / "state.json").read_text())
    assert state["stage"]["sampler"]["position"] > 0 or state["stage"]["sampler"]["epoch"] > 0


def test_zero_steps_is_a_warm_up_and_evaluation(ray_session, tmp_path):
    """`run.steps: 0`: the warm-up, the evaluations and a checkpoint; no RL step, so no curves to draw (this used
    to fail in the plot after the work was done)."""
    from rlhf.runtime.controller import run

    recipe = _recipe(tmp_path / "run", steps=0)
    recipe.train = recipe.train.model_copy(update={"backend": "torch", "num_ranks": 1})
    summary = run(recipe)
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records if r["phase"] == "sft"] == [1, 2, 3]
    assert not [r for r in records if r["phase"] == "rl"]
    assert summary["steps"] == 0 and summary["curves"] is None
    assert "accuracy" in summary["eval_before"] and "accuracy" in summary["eval_after"]
    assert Path(summary["checkpoint"]).is_dir()
