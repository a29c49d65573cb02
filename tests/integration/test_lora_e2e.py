"""LoRA end to end on CPU: real Ray actors, the torch backend (DeepSpeed ZeRO-2 on 2 ranks with RLHF_SLOW_TESTS=1),
the hf engine, peft.

- the training ranks + engine (actor level): only adapter bytes are synced, the engine then scores exactly as the
  trainer, a corrupted adapter bucket fails the fingerprint check, the reference (adapter disabled) is the base;
- the merged sync for engines without adapters (vllm) and the merged save_hf (warm-up output);
- `rlhf train` GRPO for 2 steps: sync/bytes << the full model, the checkpoint holds the adapter, `rlhf export`
  merges it into a full model that gives base+adapter's logits, the adapter + optimizer load back;
- DPO (torch backend) with LoRA: the other objective family.
RLHF_SLOW_TESTS=1 adds the actor-level test and the GRPO run (with --resume) on ZeRO-2, 2 ranks, bitwise-exact
resume (torch and ZeRO-2) and RLOO with LoRA on ZeRO-2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from rlhf.config.load import validate_dict  # noqa: E402
from rlhf.config.schema import Recipe  # noqa: E402
from rlhf.runtime.sync import SyncCoordinator
from rlhf.types import ExperienceBatch, SamplingSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"r": 2, "alpha": 8, "target_modules": TARGETS}
SLOW = pytest.mark.skipif(os.environ.get("RLHF_SLOW_TESTS") != "1", reason="slow: RLHF_SLOW_TESTS=1 runs it")
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "max_position_embeddings": 32}


def _completion_logprobs(model, exp: ExperienceBatch) -> torch.Tensor:
    from rlhf.objectives.common import completion_logprobs

    with torch.no_grad():
        return completion_logprobs(model, exp.input_ids, exp.attention_mask, exp.prompt_len)  # (B, C)


# --------------------------------------------------------------------------- actor level


@pytest.mark.parametrize("train", [
    {"backend": "torch", "num_ranks": 1},
    # the same on 2 DeepSpeed ZeRO-2 ranks: passes, but starting the gloo group costs ~1.5 min here
    pytest.param({"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2}, marks=SLOW),
], ids=["torch", "zero2"])
def test_adapter_sync_parity_reference_and_corruption(ray_session, arithmetic_model_dir, tmp_path, train):
    import ray

    from rlhf.models.load import load_causal_lm
    from rlhf.rollout.group import RolloutGroup
    from rlhf.transport.weights import WeightSyncError, pack_bucket, unpack_bucket
    from rlhf.train.group import TrainGroup

    recipe = Recipe.model_validate({
        "run": {"output_dir": str(tmp_path / "out")},
        "model": {"path": arithmetic_model_dir, "lora": LORA},
        "rewards": [{"name": "r", "plugin": "exact_match"}],
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 6},
        "objective": {"kind": "grpo", "kl_coef": 0.05},
        "train": {**train, "lr": 5e-2, "sync_bucket_mb": 0.004},
    })
    trainers = TrainGroup(recipe)
    engines = None
    try:
        info = trainers.build(arithmetic_model_dir, recipe.train.lr)
        assert 0 < info[0]["trainable_params"] < info[0]["params"] / 5
        trainers.load_reference(arithmetic_model_dir)
        engines = RolloutGroup(recipe, arithmetic_model_dir)
        SyncCoordinator(None, engines).deliver(trainers.export_weights(version=0))
        batch = engines.generate(["3+4=", "12-5=", "7+7=", "20-1="], SamplingSettings(n=4, max_new_tokens=6, seed=1))
        exp = ExperienceBatch(input_ids=batch.input_ids(), attention_mask=batch.attention_mask(),
                              loss_mask=batch.loss_mask.float(),
                              advantages=torch.randn(batch.batch_size, generator=torch.Generator().manual_seed(0)),
                              prompt_len=batch.prompt_ids.shape[1])
        metrics = trainers.train_rl(exp)
        assert metrics["grad_norm"] > 0 and metrics["kl"] >= 0

        payload = trainers.export_weights(version=1)
        assert payload.adapter is not None and len(payload.buckets) > 1
        full_bytes = sum(p.numel() * 4 for p in load_causal_lm(arithmetic_model_dir, "float32").parameters())
        assert payload.num_bytes < full_bytes / 5, (payload.num_bytes, full_bytes)
        assert SyncCoordinator(None, engines).deliver(payload) == [(1, payload.fingerprint)]

        mask = exp.loss_mask.bool()
        trainer_lp = trainers.policy_logprobs(exp.input_ids, exp.attention_mask, exp.prompt_len)
        engine_lp = engines.completion_logprobs(exp.input_ids, exp.attention_mask, exp.prompt_len)
        assert torch.allclose(trainer_lp[mask], engine_lp[mask], atol=1e-5, rtol=0)
        assert not torch.allclose(torch.as_tensor(batch.logprobs)[mask], engine_lp[mask], atol=1e-4)

        # the reference is the frozen base: the adapter disabled inside the policy equals a separately loaded base
        reference_lp = trainers.logprobs(exp, reference=True)
        base_lp = _completion_logprobs(load_causal_lm(arithmetic_model_dir, "float32").eval(), exp)
        assert torch.allclose(reference_lp[mask], base_lp[mask], atol=1e-6, rtol=0)
        assert not torch.allclose(reference_lp[mask], trainer_lp[mask], atol=1e-4)

        # a corrupted adapter bucket in transit: the engine's adapter fingerprint differs, the sync fails
        bad = trainers.export_weights(version=2)
        tensors = unpack_bucket(ray.get(bad.buckets[-1]))
        name = next(iter(tensors))
        tensors[name] = tensors[name] + 1e-3
        bad.buckets[-1] = ray.put(pack_bucket(list(tensors.items())))
        with pytest.raises(WeightSyncError, match="LoRA adapter"):
            SyncCoordinator(None, engines).deliver(bad)
    finally:
        trainers.shutdown()
        if engines is not None:
            engines.shutdown()


def test_merged_sync_and_save_hf_for_engines_without_adapters(ray_session, arithmetic_model_dir, tmp_path):
    """rollout.engine: vllm gets W + scale * B @ A under the base names (checked as a full model): loaded into a
    plain model, it scores as the trainer's base+adapter; save_hf (the warm-up's OUT/sft) writes the same merge."""
    import ray

    from rlhf.models.load import load_causal_lm
    from rlhf.train.settings import worker_settings
    from rlhf.train.worker import TrainWorker
    from rlhf.transport.weights import check_sync, load_buckets_into

    recipe = Recipe.model_validate({
        "model": {"path": arithmetic_model_dir, "lora": LORA},
        "rewards": [{"name": "r", "plugin": "exact_match"}],
        "rollout": {"engine": "vllm", "prompts_per_step": 2, "group_size": 2},
        "train": {"backend": "torch", "num_ranks": 1, "sync_bucket_mb": 0.01},
    })
    worker = TrainWorker(0, 1, worker_settings(recipe), 1)
    worker.build(arithmetic_model_dir, 1e-2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter (lora_B starts at zero)
        for name, p in worker.hf_model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    payload = worker.export_weights(version=1)
    assert payload.adapter is None and len(payload.buckets) > 1
    plain = load_causal_lm(arithmetic_model_dir, "float32").eval()
    fingerprint, count = load_buckets_into(plain, (ray.get(b) for b in payload.buckets))
    check_sync(payload, [(1, fingerprint)])
    assert count == len(list(plain.named_parameters()))
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    exp = ExperienceBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones(1, 5),
                          advantages=torch.zeros(1), prompt_len=3)
    want = worker.logprobs(exp, reference=False)
    assert torch.allclose(_completion_logprobs(plain, exp), want, atol=1e-5, rtol=0)

    worker.save_hf(str(tmp_path / "merged"))
    saved = load_causal_lm(str(tmp_path / "merged"), "float32").eval()
    assert torch.allclose(_completion_logprobs(saved, exp), want, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- rlhf train / export / resume


def _grpo(out: Path, steps: int, train: dict, kind: str = "grpo") -> Recipe:
    return validate_dict({
        "run": {"output_dir": str(out), "steps": steps, "save_every": 1, "progress": False, "seed": 3},
        "model": {"tiny": TINY, "lora": LORA},
        "data": {"synthetic": {"n_train": 32, "n_eval": 4, "max_operand": 9}, "max_prompt_tokens": 8},
        "rewards": [{"name": "correct", "plugin": "exact_match"},
                    {"name": "brief", "plugin": "length_penalty", "args": {"target": 1}}],
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 3},
        "objective": {"kind": kind, "kl_coef": 0.05},
        "train": {"lr": 2e-2, **train},
        "eval": {"max_samples": 4},
    }, "test")


@pytest.mark.parametrize("train", [
    {"backend": "torch", "num_ranks": 1},
    pytest.param({"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2}, marks=SLOW),  # ~1.5 min more
], ids=["torch", "zero2"])
def test_grpo_lora_train_export_resume(ray_session, tmp_path, train):
    from peft import PeftModel

    from rlhf.cli import main as cli
    from rlhf.models.load import load_causal_lm
    from rlhf.runtime.controller import run

    out = tmp_path / "run"
    summary = run(_grpo(out, 2, train))
    rl = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    full_bytes = os.path.getsize(out / "tiny_model" / "model.safetensors")
    for r in rl:  # only the adapter travels
        assert 0 < r["sync/bytes"] < full_bytes / 10, (r["sync/bytes"], full_bytes)
        assert r["grad_norm"] > 0 and "kl" in r

    ckpt = Path(summary["checkpoint"])
    model_dir = ckpt / "model"
    assert (model_dir / "adapter_model.safetensors").is_file() and not (model_dir / "model.safetensors").exists()
    adapter_cfg = json.loads((model_dir / "adapter_config.json").read_text())
    assert Path(adapter_cfg["base_model_name_or_path"]) == (out / "tiny_model").resolve()
    assert adapter_cfg["r"] == 2 and sorted(adapter_cfg["target_modules"]) == sorted(TARGETS)

    # rlhf export merges the adapter into a full HF model with base+adapter's logits (peft reads our adapter too)
    merged = tmp_path / "merged"
    assert cli(["export", str(ckpt), "--out", str(merged)]) == 0
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(merged).eval()
    peft_model = PeftModel.from_pretrained(load_causal_lm(str(out / "tiny_model"), "float32"), str(model_dir)).eval()
    base = load_causal_lm(str(out / "tiny_model"), "float32").eval()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11, 12, 13]])
    with torch.no_grad():
        want, got, plain = (m(input_ids=ids).logits for m in (peft_model, exported, base))  # (1, T, V)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(plain, want, atol=1e-4)  # the adapter was trained
    assert (merged / "tokenizer.json").is_file()
    assert cli(["export", str(ckpt), "--out", str(merged)]) == 2  # never overwrites

    if train["backend"] == "torch":  # resume's load path, in-process: the adapter and the optimizer come back
        from safetensors.torch import load_file

        from rlhf.models import lora
        from rlhf.train.settings import worker_settings
        from rlhf.train.worker import TrainWorker

        worker = TrainWorker(0, 1, worker_settings(_grpo(out, 2, train)), 1)
        worker.build(str(model_dir), 1e-2)
        worker.load_optimizer(str(ckpt))
        saved = load_file(model_dir / "adapter_model.safetensors")
        assert all(torch.equal(saved[k], v) for k, v in lora.adapter_state(worker.hf_model).items())
        assert len(worker.backend.optimizer.state) == len(saved)  # Adam moments for every adapter tensor
        return
    # --resume from the adapter checkpoint continues at step 3
    summary = run(_grpo(out, 3, train), resume=True)
    assert summary["steps"] == 3 and Path(summary["checkpoint"]).name == "step_000003"
    assert (Path(summary["checkpoint"]) / "model" / "adapter_model.safetensors").is_file()


def test_dpo_with_lora_torch(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "dpo"
    recipe = validate_dict({
        "run": {"output_dir": str(out), "steps": 2, "progress": False},
        "model": {"tiny": {**TINY, "hidden_size": 32, "num_layers": 1}, "lora": {"r": 4, "alpha": 16}},
        "data": {"source": "jsonl", "train_path": str(ROOT / "data/arithmetic_prefs_train.jsonl"),
                 "eval_path": str(ROOT / "data/arithmetic_prefs_eval.jsonl")},
        "objective": {"kind": "dpo", "batch_size": 8, "max_length": 24, "beta": 0.1},
        "train": {"backend": "torch", "num_ranks": 1, "lr": 5e-2},
        "eval": {"max_samples": 10},
    }, "test")
    summary = run(recipe)
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["phase"] == "dpo"]
    assert [r["step"] for r in steps] == [1, 2] and all(r["grad_norm"] > 0 for r in steps)
    # the reference (adapter disabled) equals the policy before training: the DPO loss starts at log 2
    assert abs(summary["eval_before"]["reward_margin"]) < 1e-5
    assert summary["eval_before"]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert summary["eval_after"]["loss"] != pytest.approx(summary["eval_before"]["loss"], abs=1e-4)
    assert (Path(summary["checkpoint"]) / "model" / "adapter_config.json").is_file()


@SLOW
def test_rloo_with_lora_zero2(ray_session, tmp_path):
    from rlhf.runtime.controller import run

    out = tmp_path / "rloo"
    summary = run(_grpo(out, 2, {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2}, kind="rloo"))
    rl = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2] and all(r["grad_norm"] > 0 for r in rl)
    assert (Path(summary["checkpoint"]) / "model" / "adapter_model.safetensors").is_file()


@SLOW
@pytest.mark.parametrize("train", [{"backend": "torch", "num_ranks": 1},
                                   {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2}], ids=["torch", "zero2"])
def test_lora_resume_is_bitwise_identical(ray_session, tmp_path, train):
    """3 steps straight == 2 steps, then --resume to 3: the adapter and the optimizer state come back exactly."""
    from safetensors.torch import load_file

    from rlhf.runtime.controller import run

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run(_grpo(straight, 3, train))
    run(_grpo(broken, 2, train))
    run(_grpo(broken, 3, train), resume=True)

    def rl(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if r["phase"] == "rl"]

    for a, b in zip(rl(straight), rl(broken), strict=True):
        for key in ("reward/correct/mean", "loss/policy", "kl", "grad_norm"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
    final = Path("checkpoints") / "step_000003" / "model" / "adapter_model.safetensors"
    wa, wb = load_file(straight / final), load_file(broken / final)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
