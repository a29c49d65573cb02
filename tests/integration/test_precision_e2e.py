"""train.gradient_checkpointing and train.precision on real DeepSpeed ZeRO-3 ranks (2, gloo) with the hf engine:
checkpointing changes neither the loss nor the update; bf16 trains, syncs bf16 weights the engine verifiably holds,
and the engine's bf16 logprobs stay within the documented tolerance of the trainer's."""

from __future__ import annotations

import pytest
import torch

from rlhf.config.schema import Recipe
from rlhf.runtime.sync import SyncCoordinator
from rlhf.types import ExperienceBatch, SamplingSettings


def _recipe(tmp_path, **train) -> Recipe:
    return Recipe.model_validate({
        "run": {"output_dir": str(tmp_path / "out")},
        "model": {"path": "unused"},
        "rewards": [{"name": "r", "plugin": "exact_match"}],
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 6},
        "objective": {"kind": "grpo", "kl_coef": 0.05},
        "train": {"backend": "deepspeed", "zero_stage": 3, "num_ranks": 2, "lr": 1e-3, "micro_batch_size": 4,
                  **train},
    })


def _experience(engines) -> ExperienceBatch:
    batch = engines.generate(["3+4=", "12-5=", "7+7=", "20-1="], SamplingSettings(n=4, max_new_tokens=6, seed=1))
    return ExperienceBatch(input_ids=batch.input_ids(), attention_mask=batch.attention_mask(),
                           loss_mask=batch.loss_mask.float(),
                           advantages=torch.randn(batch.batch_size, generator=torch.Generator().manual_seed(1)),
                           prompt_len=batch.prompt_ids.shape[1])


def _trainers(recipe: Recipe, model_dir: str):
    from rlhf.train.group import TrainGroup

    trainers = TrainGroup(recipe)
    info = trainers.build(model_dir, recipe.train.lr)
    trainers.load_reference(model_dir)
    return trainers, info


@pytest.mark.extended  # ~50 s (three DeepSpeed groups); the default run covers checkpointing, autocast and the sync
# dtype in tests/unit/test_precision.py, and ZeRO-3's partitioned build and sharded reference in test_train_sync.py
def test_zero3_checkpointing_same_update_and_bf16_sync(ray_session, arithmetic_model_dir, tmp_path):
    from rlhf.rollout.group import RolloutGroup

    plain_recipe = _recipe(tmp_path / "plain")
    engines = RolloutGroup(plain_recipe, arithmetic_model_dir)
    exp = _experience(engines)
    engines.shutdown()
    results = {}
    for name, train in {"plain": {}, "checkpointed": {"gradient_checkpointing": True}}.items():
        trainers, _ = _trainers(_recipe(tmp_path / name, **train), arithmetic_model_dir)
        try:
            metrics = trainers.train_rl(exp)
            after = trainers.policy_logprobs(exp.input_ids, exp.attention_mask, exp.prompt_len)
        finally:
            trainers.shutdown()
        results[name] = (metrics, after)
    (m_plain, lp_plain), (m_ckpt, lp_ckpt) = results["plain"], results["checkpointed"]
    for key in ("loss/policy", "kl", "grad_norm"):
        assert m_ckpt[key] == pytest.approx(m_plain[key], rel=1e-4, abs=1e-7), key
    mask = exp.loss_mask.bool()
    assert torch.allclose(lp_ckpt[mask], lp_plain[mask], atol=1e-5), "the same update, with or without"

    recipe = _recipe(tmp_path / "bf16", gradient_checkpointing=True, precision="bf16")
    assert recipe.engine_dtype == "bfloat16"
    trainers, info = _trainers(recipe, arithmetic_model_dir)
    engines = RolloutGroup(recipe, arithmetic_model_dir)
    try:
        metrics = trainers.train_rl(exp)
        assert metrics["grad_norm"] > 0 and abs(metrics["loss/policy"] - m_plain["loss/policy"]) < 0.05
        payload = trainers.export_weights(version=1)
        assert payload.num_bytes < 0.6 * 4 * info[0]["params"]  # bf16 on the wire: 2 bytes per parameter
        assert SyncCoordinator(None, engines).deliver(payload) == [(1, payload.fingerprint)]
        trainer_lp = trainers.policy_logprobs(exp.input_ids, exp.attention_mask, exp.prompt_len)
        engine_lp = engines.completion_logprobs(exp.input_ids, exp.attention_mask, exp.prompt_len)
        gap = (trainer_lp - engine_lp)[mask].abs()
        assert gap.max() < 0.1, gap.max()  # bf16 weights in the engine vs bf16 autocast over fp32 in the trainer
        assert not torch.allclose(trainer_lp[mask], lp_plain[mask], atol=1e-6)  # bf16 did change the numbers
    finally:
        trainers.shutdown()
        engines.shutdown()
