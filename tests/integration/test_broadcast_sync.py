"""rollout.weight_sync=broadcast with real actors: 2 DeepSpeed ZeRO-3 ranks (rank 0 gathers the partitions and
broadcasts each bucket over gloo) into 2 hf engines. Exact parity after a train step, nothing in the object store,
and a dead engine: the sync falls back to the object store, the engine restarts with the right weights, and the
next sync reopens the group."""

from __future__ import annotations

import pytest
import torch

from rlhf.config.schema import Recipe
from rlhf.types import ExperienceBatch, SamplingSettings


def _recipe(tmp_path) -> Recipe:
    return Recipe.model_validate({
        "run": {"output_dir": str(tmp_path / "out")},
        "model": {"path": "unused"},
        "rewards": [{"name": "r", "plugin": "exact_match"}],
        "rollout": {"num_engines": 2, "prompts_per_step": 4, "group_size": 2, "max_new_tokens": 5,
                    "weight_sync": "broadcast", "sync_timeout_s": 60},
        "objective": {"kind": "grpo"},
        "train": {"backend": "deepspeed", "zero_stage": 3, "num_ranks": 2, "lr": 1e-3, "sync_bucket_mb": 0.05,
                  "num_threads": 3},  # not the default (cores / ranks)
    })


@pytest.mark.extended  # ~33 s: broadcast parity and a GRPO run over broadcast stay in test_vllm_engine.py
def test_broadcast_sync_parity_and_fallback_when_an_engine_dies(ray_session, arithmetic_model_dir, tmp_path):
    from rlhf.rollout.group import RolloutGroup
    from rlhf.runtime.sync import SyncCoordinator, resolve_weight_sync
    from rlhf.train.group import TrainGroup
    from tests.integration.test_dead_actors import _kill

    recipe = _recipe(tmp_path)
    trainers = TrainGroup(recipe)
    engines = None
    try:
        infos = trainers.build(arithmetic_model_dir, recipe.train.lr)
        assert [i["threads"] for i in infos] == [3, 3], "train.num_threads sets every rank's torch threads"
        engines = RolloutGroup(recipe, arithmetic_model_dir)
        sync = SyncCoordinator(trainers, engines, resolve_weight_sync(recipe, gpus=False), recipe.rollout.sync_timeout_s)
        assert sync.route == "broadcast"
        prompts = ["3+4=", "12-5=", "7+7=", "20-1="]
        batch = engines.generate(prompts, SamplingSettings(n=2, max_new_tokens=5, seed=1))
        exp = ExperienceBatch(input_ids=batch.input_ids(), attention_mask=batch.attention_mask(),
                              loss_mask=batch.loss_mask.float(),
                              advantages=torch.linspace(-1, 1, batch.batch_size), prompt_len=batch.prompt_ids.shape[1])
        trainers.train_rl(exp)

        payload = sync.sync(version=1)
        assert payload.transport == "broadcast" and payload.buckets == [] and payload.error is None
        assert payload.num_bytes > 0 and payload.num_params > 0
        assert engines.fingerprints() == [payload.fingerprint] * 2
        assert sync.fallbacks == 0
        trainer_lp = trainers.policy_logprobs(exp.input_ids, exp.attention_mask, exp.prompt_len)
        engine_lp = engines.completion_logprobs(exp.input_ids, exp.attention_mask, exp.prompt_len)
        mask = exp.loss_mask.bool()
        assert torch.allclose(trainer_lp[mask], engine_lp[mask], atol=1e-5, rtol=0)

        # an engine dies between syncs: this sync falls back to the object store and still lands everywhere
        trainers.train_rl(exp)
        _kill(engines.actors[1])
        payload2 = sync.sync(version=2)
        assert sync.fallbacks == 1 and "engine 1 died" in sync.last_failure
        assert payload2.transport == "object_store" and payload2.fingerprint != payload.fingerprint
        assert engines.fingerprints() == [payload2.fingerprint] * 2 and engines.restarts == 1

        # the group is reopened with the new engine and broadcast works again
        trainers.train_rl(exp)
        payload3 = sync.sync(version=3)
        assert payload3.transport == "broadcast" and sync.fallbacks == 1
        assert engines.fingerprints() == [payload3.fingerprint] * 2

        # an engine that dies while generating is restarted with the current weights, fetched from the trainer
        _kill(engines.actors[0])
        engines.generate(prompts, SamplingSettings(n=2, max_new_tokens=5, seed=2))
        assert engines.restarts == 2 and engines.fingerprints() == [payload3.fingerprint] * 2
        trainers.train_rl(exp)
        payload4 = sync.sync(version=4)
        assert payload4.transport == "broadcast" and engines.fingerprints() == [payload4.fingerprint] * 2
    finally:
        trainers.shutdown()
        if engines is not None:
            engines.shutdown()


def test_broadcast_with_a_lora_adapter_engine_is_refused(tmp_path):
    from rlhf.runtime.sync import resolve_weight_sync

    d = _recipe(tmp_path).model_dump()
    d["model"]["lora"] = {"r": 4}
    d["train"]["zero_stage"] = 2
    recipe = Recipe.model_validate(d)
    with pytest.raises(ValueError, match="rollout.weight_sync: broadcast sends full weights"):
        resolve_weight_sync(recipe, gpus=False)
    d["rollout"]["weight_sync"] = "auto"
    assert resolve_weight_sync(Recipe.model_validate(d), gpus=True) == "object_store"
    d["model"]["lora"] = None
    assert resolve_weight_sync(Recipe.model_validate(d), gpus=True) == "broadcast"
    assert resolve_weight_sync(Recipe.model_validate(d), gpus=False) == "object_store"


def test_placement_and_route_checks(ray_session, tmp_path):
    """Colocated placement and CUDA IPC: sizes checked at validation, GPUs checked when the groups start."""
    from rlhf.rollout.group import RolloutGroup

    d = _recipe(tmp_path).model_dump()
    d["rollout"].update(placement="colocated", num_engines=1)
    with pytest.raises(ValueError, match=r"rollout.num_engines \(1\) must equal train.num_ranks \(2\)"):
        Recipe.model_validate(d)
    d["rollout"].update(placement="split", weight_sync="cuda_ipc")
    with pytest.raises(ValueError, match="cuda_ipc .* needs rollout.placement: colocated"):
        Recipe.model_validate(d)
    d["rollout"].update(placement="colocated", num_engines=2, weight_sync="auto")
    with pytest.raises(ValueError, match="rollout.placement: colocated .* this Ray cluster has none"):
        RolloutGroup(Recipe.model_validate(d), "unused")
