"""Dead actors: a rollout engine or a reward worker killed during a run is restarted and the call retried; the
restarted engine gets the last synced weights (fingerprint-checked) and generates the same samples."""

from __future__ import annotations

import pytest
import torch

from rlhf.config.schema import Recipe, RewardComponentConfig
from rlhf.runtime.sync import SyncCoordinator
from rlhf.types import SamplingSettings


def _recipe(tmp_path) -> Recipe:
    return Recipe.model_validate({
        "run": {"output_dir": str(tmp_path / "out")},
        "model": {"path": "unused"},
        "rewards": [{"name": "r", "plugin": "exact_match"}],
        "rollout": {"num_engines": 2, "prompts_per_step": 4, "group_size": 2, "max_new_tokens": 5},
    })


def _kill(actor, probe: str = "info") -> None:
    """Kill an actor and wait until it is gone (ray.kill is asynchronous: a call right after it may still run)."""
    import time

    import ray

    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(getattr(actor, probe).remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.05)
    raise AssertionError("the killed actor still answers after 30 s")


def test_killed_engine_is_restarted_with_the_synced_weights(ray_session, arithmetic_model_dir, tmp_path):
    import ray

    from rlhf.models.load import load_causal_lm
    from rlhf.rollout.group import RolloutGroup
    from rlhf.transport.weights import WeightPayload, fingerprint_module, pack_bucket

    engines = RolloutGroup(_recipe(tmp_path), arithmetic_model_dir)
    try:
        model = load_causal_lm(arithmetic_model_dir, "float32", False)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        named = list(model.named_parameters())
        payload = WeightPayload(version=3, fingerprint=fingerprint_module(model),
                                buckets=[ray.put(pack_bucket(named[:4])), ray.put(pack_bucket(named[4:]))])
        SyncCoordinator(None, engines).deliver(payload)
        prompts = ["1+2=", "3+4=", "5+6=", "7+8="]
        settings = SamplingSettings(n=2, max_new_tokens=5, seed=7)
        before = engines.generate(prompts, settings)

        _kill(engines.actors[1])  # as if its process died (OOM, segfault, node loss)
        after = engines.generate(prompts, settings)
        assert engines.restarts == 1
        assert engines.fingerprints()[1] == payload.fingerprint, "the new engine holds the synced weights"
        assert torch.equal(before.completion_ids, after.completion_ids), "same weights, same seed, same samples"

        _kill(engines.actors[0])
        assert SyncCoordinator(None, engines).deliver(payload) == [(3, payload.fingerprint)] * 2  # survives a death
        assert engines.restarts == 2
    finally:
        engines.shutdown()


def test_killed_reward_worker_is_restarted_and_the_batch_scored(ray_session):
    import ray

    from rlhf.scoring.group import RewardGroup

    group = RewardGroup([RewardComponentConfig(name="exact", plugin="exact_match"),
                         RewardComponentConfig(name="len", plugin="length_penalty", args={"target": 1})])
    try:
        args = (["1+1=", "2+2="], ["2", "5"], {"answer": ["2", "4"], "num_tokens": [1, 3], "finished": [True, True]})
        rv, metrics = group.score(*args)
        _kill(group._backend._actors[0], probe="ready")
        rv2, metrics2 = group.score(*args)
        assert torch.equal(rv.values, rv2.values)
        assert metrics["events/reward_worker_restarts"] == 0 and metrics2["events/reward_worker_restarts"] == 1
    finally:
        group.shutdown()


def test_dead_training_worker_stops_the_run_with_a_resume_message(ray_session, arithmetic_model_dir, tmp_path):
    import ray

    from rlhf.train.group import TrainGroup, TrainWorkerDied
    from rlhf.types import ExperienceBatch

    recipe = _recipe(tmp_path).model_copy(update={"train": _recipe(tmp_path).train.model_copy(
        update={"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2})})
    trainers = TrainGroup(recipe)
    trainers.build(arithmetic_model_dir, 1e-3)
    trainers_nodes = trainers.nodes
    ray.kill(trainers.workers[1], no_restart=True)
    ids = torch.randint(4, 20, (8, 10))
    exp = ExperienceBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones(8, 4),
                          advantages=torch.randn(8), prompt_len=6)
    with pytest.raises(TrainWorkerDied, match="--resume") as e:
        trainers.train_rl(exp)
    assert "are intact" in str(e.value) and "a training worker died" in str(e.value)
    assert f"policy rank 1 (Ray node {trainers_nodes[1]['node_id']}" in str(e.value), "names the rank and its node"
