"""Saving a model shard by shard (rlhf/models/shards.py): the directory is what save_pretrained writes and
from_pretrained reads -- one model.safetensors when it fits one shard, else numbered shards and an index -- with the
same tensors; the policy's checkpoint save uses it so a rank never holds the whole model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from rlhf.models.shards import INDEX, WEIGHTS, ShardWriter, streams_exactly


def _model(cls=LlamaConfig, tie=False):
    torch.manual_seed(0)
    cfg = cls(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=97, max_position_embeddings=32, tie_word_embeddings=tie)
    return AutoModelForCausalLM.from_config(cfg)


def _save(model, out, per_shard):
    """Write the model's parameters, `per_shard` at a time, then its config (as the trainer does)."""
    writer = ShardWriter(str(out))
    items = list(model.named_parameters())
    for i in range(0, len(items), per_shard):
        writer.add({n: p.detach().clone() for n, p in items[i:i + per_shard]})
    files = writer.close()
    model.config.save_pretrained(str(out))
    return files


@pytest.mark.parametrize("cls,tie", [(LlamaConfig, False), (Qwen2Config, True)])
def test_shards_load_back_with_from_pretrained(tmp_path, cls, tie):
    model = _model(cls, tie)
    files = _save(model, tmp_path, per_shard=5)
    n = -(-len(list(model.named_parameters())) // 5)
    assert files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)] + [INDEX]
    index = json.loads((tmp_path / INDEX).read_text())
    assert set(index["weight_map"]) == {name for name, _ in model.named_parameters()}
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.parameters())
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".partial")]
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    if tie:
        assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()


def test_one_shard_is_model_safetensors_and_stale_files_go(tmp_path):
    model = _model()
    _save(model, tmp_path, per_shard=5)  # an earlier, sharded save into the same directory
    assert _save(model, tmp_path, per_shard=10**6) == [WEIGHTS]
    assert sorted(f for f in os.listdir(tmp_path) if "safetensors" in f) == [WEIGHTS]
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


def test_a_tensor_written_twice_is_refused(tmp_path):
    writer = ShardWriter(str(tmp_path))
    writer.add({"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="'a' was already written"):
        writer.add({"a": torch.ones(2)})


def test_dense_models_stream_exactly():
    assert streams_exactly(_model(LlamaConfig)) and streams_exactly(_model(Qwen2Config, tie=True))


def test_stale_shards_go_from_a_relative_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run.output_dir is often relative ("runs/x")
    model = _model()
    _save(model, "rel", per_shard=5)
    assert _save(model, "rel", per_shard=10**6) == [WEIGHTS]
    assert sorted(f for f in os.listdir("rel") if "safetensors" in f) == [WEIGHTS]
