"""``pipeline.weight_update: keep`` on the hf engine's decode loop: a weight update asked for from another thread
lands before the next decode forward of the generation in flight; every token carries the version of the weights
that computed its logits; with no update the keep engine samples exactly what the plain loop samples."""

from __future__ import annotations

import threading

import pytest
import torch

from rlhf.rollout.hf import HFEngine
from rlhf.transport.weights import fingerprint_module, pack_bucket
from rlhf.types import SamplingSettings

PROMPTS = ["1+2=", "10-13=", "4+4="]
SETTINGS = SamplingSettings(n=2, max_new_tokens=12, ignore_eos=True, seed=3, logprobs=True)


def _update_at(engine: HFEngine, boundary: int, blobs: list[bytes], version: int) -> tuple[dict, threading.Thread]:
    """Send a weight update from a second thread when the decode loop reaches its ``boundary``-th step boundary
    (1: before the prefill); the update is queued before that boundary runs it."""
    gate, reached, seen, result = engine.gate, threading.Event(), [0], {}
    original = gate.boundary

    def counting(pause, resume):
        seen[0] += 1
        if seen[0] == boundary:
            reached.set()
            while not gate._queue:
                pass
        original(pause, resume)

    def sync():
        reached.wait()
        result["loaded"] = engine.load_weights(iter(blobs), version)

    gate.boundary = counting
    t = threading.Thread(target=sync)
    t.start()
    return result, t


@pytest.fixture()
def keep_engine(arithmetic_model_dir):
    return HFEngine(arithmetic_model_dir, decode="loop", keep_updates=True)


def _moved(model_dir: str):
    """New weights (the model plus noise) as buckets, their fingerprint."""
    other = HFEngine(model_dir, decode="loop").model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    named = list(other.named_parameters())
    return [pack_bucket(named[i : i + 3]) for i in range(0, len(named), 3)], fingerprint_module(other)


def test_without_an_update_keep_samples_what_the_loop_samples(keep_engine, arithmetic_model_dir):
    plain = HFEngine(arithmetic_model_dir, decode="loop").generate(PROMPTS, SETTINGS)
    kept = keep_engine.generate(PROMPTS, SETTINGS)
    assert torch.equal(kept.completion_ids, plain.completion_ids) and torch.equal(kept.logprobs, plain.logprobs)
    assert torch.equal(kept.versions, plain.versions) and set(kept.versions.unique().tolist()) == {0}


def test_an_update_lands_before_the_next_decode_forward(keep_engine, arithmetic_model_dir):
    before = keep_engine.generate(PROMPTS, SETTINGS)
    blobs, fingerprint = _moved(arithmetic_model_dir)
    result, t = _update_at(keep_engine, boundary=5, blobs=blobs, version=1)  # boundary 5: before token 4's forward
    batch = keep_engine.generate(PROMPTS, SETTINGS)
    t.join()
    assert result["loaded"] == (1, fingerprint) and keep_engine.gate.applied_in_flight == 1
    expected = torch.tensor([0] * 4 + [1] * 8).expand(batch.batch_size, -1)  # (B, C)
    assert torch.equal(batch.versions, expected)
    assert torch.equal(batch.completion_ids[:, :4], before.completion_ids[:, :4])  # the old weights' tokens
    assert not torch.equal(batch.completion_ids[:, 4:], before.completion_ids[:, 4:])  # the new weights' ones
    assert set(keep_engine.generate(PROMPTS, SETTINGS).versions.unique().tolist()) == {1}
    assert keep_engine.fingerprint() == fingerprint


def test_keep_needs_the_decode_loop(arithmetic_model_dir):
    with pytest.raises(ValueError, match="rollout.hf.decode is generate"):
        HFEngine(arithmetic_model_dir, decode="generate", keep_updates=True)


def test_logprob_pass_waits_for_the_generation(keep_engine):
    batch = keep_engine.generate(PROMPTS, SETTINGS)
    lp = keep_engine.completion_logprobs(batch.input_ids(), batch.attention_mask(), batch.prompt_ids.shape[1])
    m = batch.completion_mask.bool()
    assert (lp[m] - batch.logprobs[m]).abs().max() < 1e-5
