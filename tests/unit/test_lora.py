"""LoRA (model.lora): recipe validation, target-module checks, the merge against peft's merge_and_unload, adapter
names and fingerprints, and the hf engine's adapter sync (a corrupted adapter bucket fails the check)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from rlhf.config.schema import LoraConfig, ModelConfig, Recipe  # noqa: E402
from rlhf.models import lora  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _recipe(**over):
    base = {"model": {"path": "unused", "lora": {"r": 4, "target_modules": ["q_proj"]}},
            "rewards": [{"name": "r", "plugin": "exact_match"}]}
    for key, value in over.items():
        base[key] = value
    return Recipe.model_validate(base)


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=32, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _randomize_adapter(model, seed: int = 1) -> None:
    """lora_B starts at zero (the adapter is a no-op): give every adapter tensor random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in lora.adapter_named_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# --------------------------------------------------------------------------- config


def test_config_defaults_and_unknown_key():
    from rlhf.config.load import validate_dict

    r = _recipe()
    assert r.model.lora.r == 4 and r.model.lora.alpha == 16 and r.model.lora.bias == "none"
    assert ModelConfig.model_validate({"path": "x", "lora": {}}).lora.target_modules == "all-linear"
    with pytest.raises(Exception, match=r"model\.lora\.rank.*valid keys here: enabled, r, "):
        validate_dict({"model": {"path": "x", "lora": {"rank": 4}}}, "r.yaml")


@pytest.mark.parametrize("lora_block, match", [
    ({"r": 0}, "r"),
    ({"dropout": 1.0}, "dropout"),
    ({"target_modules": []}, "target_modules"),
    ({"target_modules": "all"}, "target_modules"),
    ({"bias": "all"}, "bias"),
])
def test_config_rejects(lora_block, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.model_validate({"path": "x", "lora": lora_block})


def test_config_refuses_zero3_and_gradient_weighting():
    with pytest.raises(ValueError, match="model.lora: ZeRO-3"):
        _recipe(train={"zero_stage": 3})
    with pytest.raises(ValueError, match="weighting.kind=gradient"):
        _recipe(weighting={"kind": "gradient"})
    # disabled LoRA is no constraint
    Recipe.model_validate({"model": {"path": "x", "lora": {"enabled": False}}, "train": {"zero_stage": 3},
                           "rewards": [{"name": "r", "plugin": "exact_match"}]})


def test_unknown_target_module_names_the_key_and_lists_linear_modules():
    model = _tiny_llama()
    with pytest.raises(lora.LoraError, match=r"model.lora.target_modules: \['qkv_proj'\].*q_proj.*down_proj"):
        lora.wrap(model, LoraConfig(target_modules=["q_proj", "qkv_proj"]))
    with pytest.raises(lora.LoraError, match="not linear"):
        lora.wrap(_tiny_llama(), LoraConfig(target_modules=["input_layernorm"]))
    with pytest.raises(lora.LoraError, match="modules_to_save"):
        lora.wrap(_tiny_llama(), LoraConfig(target_modules=["q_proj"], modules_to_save=["head"]))


def test_only_adapter_params_are_trainable():
    model = lora.wrap(_tiny_llama(), LoraConfig(r=4, target_modules=TARGETS))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(lora.is_adapter_param(n) for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # A and B, 7 targets, 2 layers
    keys = [k for k, _ in lora.adapter_named_parameters(model)]
    assert keys[0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


# --------------------------------------------------------------------------- merge


@pytest.mark.parametrize("modules_to_save", [None, ["lm_head"]])
def test_merge_matches_peft_merge_and_unload(modules_to_save):
    from peft import get_peft_model_state_dict

    cfg = LoraConfig(r=4, alpha=12, target_modules=TARGETS, modules_to_save=modules_to_save)
    model = lora.wrap(_tiny_llama(), cfg)
    _randomize_adapter(model)
    adapter = lora.adapter_state(model)
    # our adapter keys are peft's own adapter-file keys
    assert set(adapter) == set(get_peft_model_state_dict(model))
    base = [(lora.base_name(n), p.detach().clone()) for n, p in model.named_parameters()
            if not lora.is_adapter_param(n)]
    ours = dict(lora.merge_adapter(base, adapter, lora.scale(cfg)))

    reference = model.merge_and_unload().state_dict()  # peft's merge, in place
    assert set(ours) <= set(reference)
    assert all(torch.allclose(ours[k], reference[k], atol=1e-6, rtol=0) for k in ours), [
        k for k in ours if not torch.allclose(ours[k], reference[k], atol=1e-6, rtol=0)]
    q = "model.layers.0.self_attn.q_proj.weight"
    base_q = dict(base)[q]
    assert not torch.allclose(ours[q], base_q)  # the adapter did change the weight


def test_merge_weight_formula():
    w, a, b = torch.randn(5, 3), torch.randn(2, 3), torch.randn(5, 2)  # (out, in), (r, in), (out, r)
    assert torch.allclose(lora.merge_weight(w, a, b, 0.5), w + 0.5 * b @ a)
    assert lora.merge_weight(w.half(), a, b, 0.5).dtype == torch.float16


# --------------------------------------------------------------------------- fingerprints and the engine


def test_adapter_fingerprint_names_are_normalized_and_catch_changes():
    from rlhf.rollout.hf import adapter_fingerprint

    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    a = lora.wrap(_tiny_llama(), cfg)
    _randomize_adapter(a, seed=3)
    b = lora.wrap(_tiny_llama(), cfg)
    assert adapter_fingerprint(a) != adapter_fingerprint(b)
    lora.load_adapter_tensors(b, lora.adapter_state(a).items(), "test")
    assert adapter_fingerprint(a) == adapter_fingerprint(b)
    with torch.no_grad():
        next(p for _, p in lora.adapter_named_parameters(b)).view(-1)[0] += 1e-4
    assert adapter_fingerprint(a) != adapter_fingerprint(b)
    with pytest.raises(lora.LoraError, match="not given"):
        lora.load_adapter_tensors(b, list(lora.adapter_state(a).items())[:1], "test")
    with pytest.raises(lora.LoraError, match="not in the model's adapter"):
        lora.load_adapter_tensors(b, [("base_model.model.lm_head.lora_A.weight", torch.zeros(4, 32))], "test")


def _adapter_payload(model, cfg, bucket_tensors: int = 4):
    """The trainer's adapter payload, bucketed (raw bytes, as the in-process engine takes them)."""
    from rlhf.transport.weights import WeightPayload, fingerprint_named, pack_bucket

    items = list(lora.adapter_state(model).items())
    payload = WeightPayload(version=1, fingerprint=fingerprint_named(items), adapter=cfg.model_dump(mode="json"))
    payload.buckets = [pack_bucket(items[i: i + bucket_tensors]) for i in range(0, len(items), bucket_tensors)]
    payload.num_bytes = sum(len(b) for b in payload.buckets)
    return payload


def test_hf_engine_adapter_sync_parity_and_corruption(arithmetic_model_dir):
    from rlhf.models.load import load_causal_lm
    from rlhf.objectives.common import completion_logprobs
    from rlhf.rollout.hf import HFEngine
    from rlhf.transport.weights import WeightSyncError, check_sync, pack_bucket, unpack_bucket

    cfg = LoraConfig(r=4, target_modules=TARGETS)
    trainer = lora.wrap(load_causal_lm(arithmetic_model_dir, "float32"), cfg).eval()
    _randomize_adapter(trainer, seed=5)
    engine = HFEngine(arithmetic_model_dir, num_threads=1)
    full_bytes = sum(p.numel() * 4 for p in engine.model.parameters())

    payload = _adapter_payload(trainer, cfg)
    assert len(payload.buckets) > 1
    report = engine.load_weights(payload.buckets, payload.version, adapter=payload.adapter)
    check_sync(payload, [report])
    assert payload.num_bytes < full_bytes / 2
    assert engine.fingerprint() == payload.fingerprint

    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = completion_logprobs(trainer, ids, mask, 3)
    assert torch.allclose(engine.completion_logprobs(ids, mask, 3), want, atol=1e-6, rtol=0)

    # a corrupted adapter bucket: the engine's fingerprint of what it now holds differs from the trainer's
    tensors = unpack_bucket(payload.buckets[1])
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    bad = _adapter_payload(trainer, cfg)
    bad.version = 2
    bad.buckets[1] = pack_bucket(list(tensors.items()))
    with pytest.raises(WeightSyncError, match="LoRA adapter with fingerprint"):
        check_sync(bad, [engine.load_weights(bad.buckets, bad.version, adapter=bad.adapter)])
    # a dropped bucket is an error at load time
    with pytest.raises(WeightSyncError, match="not given"):
        engine.load_weights(bad.buckets[:1], 3, adapter=bad.adapter)
    # another LoRA config than the one the engine wrapped with
    other = LoraConfig(r=8, target_modules=TARGETS).model_dump(mode="json")
    with pytest.raises(WeightSyncError, match="adapter was built with"):
        engine.load_weights(payload.buckets, 4, adapter=other)


# --------------------------------------------------------------------------- rlhf export


def test_export_full_model_and_errors(arithmetic_model_dir, tmp_path, capsys):
    from rlhf.cli import main as cli
    from rlhf.models.load import load_causal_lm

    out = tmp_path / "full"
    assert cli(["export", arithmetic_model_dir, "--out", str(out)]) == 0  # a full model: checked and copied
    assert "copied the full model" in capsys.readouterr().out
    a, b = load_causal_lm(arithmetic_model_dir, "float32"), load_causal_lm(str(out), "float32")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert cli(["export", arithmetic_model_dir, "--out", str(tmp_path / "x"), "--base", "y"]) == 2
    assert "not a LoRA adapter" in capsys.readouterr().err
    assert cli(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_export_merges_an_adapter_with_base_override(arithmetic_model_dir, tmp_path, capsys):
    from rlhf.cli import main as cli
    from rlhf.models.load import load_causal_lm

    cfg = LoraConfig(r=4, target_modules=TARGETS)
    model = lora.wrap(load_causal_lm(arithmetic_model_dir, "float32"), cfg).eval()
    _randomize_adapter(model, seed=7)
    adapter_dir = tmp_path / "adapter"
    lora.save_adapter(model, str(adapter_dir), "/nonexistent/base")
    assert cli(["export", str(adapter_dir), "--out", str(tmp_path / "bad")]) == 2  # the base it names is gone
    assert "/nonexistent/base" in capsys.readouterr().err
    out = tmp_path / "merged"
    assert cli(["export", str(adapter_dir), "--out", str(out), "--base", arithmetic_model_dir]) == 0
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = model(input_ids=ids).logits  # (1, T, V)
        got = load_causal_lm(str(out), "float32").eval()(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
