"""Tiny tokenizer + model built from config: round trips, special tokens, save/load, idempotent materialize.

Run: pytest tests/unit/test_tiny_model.py -q
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json

import pytest
import torch

from rlhf.config.schema import ModelConfig, TinyModelConfig
from rlhf.models.load import ModelLoadError, load_causal_lm, load_tokenizer, resolve_model_dir
from rlhf.models.tiny import FINGERPRINT_FILE, build_tiny_model, materialize_tiny, train_tokenizer

CORPUS = [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)] + ["a b  c", "the quick brown fox"]
SMALL = TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=64)


@pytest.mark.parametrize("text", ["12+7=19", "a b  c", " the  quick fox ", "-3*12=-36", "the fox"])
def test_tokenizer_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_digits_are_individual_tokens(tok):
    ids = tok("12+7=190", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["1", "2", "+", "7", "=", "1", "9", "0"]


def test_special_tokens(tok):
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<s>", "</s>", "<unk>")
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    assert tok.padding_side == "right"
    assert not tok.chat_template
    # no post-processor: bos/eos are added by rlhf.data.collate, never implicitly
    assert tok("1+1=")["input_ids"] == tok("1+1=", add_special_tokens=False)["input_ids"]
    assert tok.decode([tok.bos_token_id, *tok("7", add_special_tokens=False)["input_ids"], tok.eos_token_id],
                      skip_special_tokens=True) == "7"


def test_empty_corpus_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([], vocab_size=64)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_build_forward(tok, arch):
    cfg = SMALL.model_copy(update={"arch": arch})
    model = build_tiny_model(cfg, tok, seed=0)
    c = model.config
    assert c.vocab_size == len(tok)
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id) == (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert c.tie_word_embeddings and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.model.layers[0].self_attn.head_dim == 32 // 4
    assert next(model.parameters()).dtype == torch.float32
    ids = torch.tensor([tok("12+7=", add_special_tokens=False)["input_ids"]])  # (1, T)
    logits = model(input_ids=ids).logits  # (1, T, V)
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_same_seed_same_weights(tok):
    a, b = build_tiny_model(SMALL, tok, seed=3), build_tiny_model(SMALL, tok, seed=3)
    c = build_tiny_model(SMALL, tok, seed=4)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_save_load_round_trip(tok, tmp_path):
    model = build_tiny_model(SMALL, tok, seed=0).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = load_causal_lm(str(tmp_path), "float32").eval()
    tok2 = load_tokenizer(str(tmp_path))
    assert tok2("12+7=19")["input_ids"] == tok("12+7=19")["input_ids"]
    assert tok2.decode(tok2("a b  c")["input_ids"]) == "a b  c"
    ids = torch.tensor([tok("3+4=7", add_special_tokens=False)["input_ids"]])  # (1, T)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert load_causal_lm(str(tmp_path), "bfloat16").dtype == torch.bfloat16


def test_materialize_reuse_and_rebuild(tmp_path):
    out = str(tmp_path / "tiny_model")
    assert materialize_tiny(SMALL, CORPUS, out, seed=0) == out
    fp = json.loads((tmp_path / "tiny_model" / FINGERPRINT_FILE).read_text())
    assert fp["seed"] == 0 and fp["tiny"]["hidden_size"] == 32
    weights = tmp_path / "tiny_model" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    materialize_tiny(SMALL, iter(CORPUS), out, seed=0)  # same config/corpus/seed: reused untouched
    assert weights.stat().st_mtime_ns == mtime
    materialize_tiny(SMALL, CORPUS, out, seed=1)  # different seed: rebuilt
    assert json.loads((tmp_path / "tiny_model" / FINGERPRINT_FILE).read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_model"]  # no staging dirs left behind
    model = load_causal_lm(out, "float32")
    assert model.config.vocab_size == len(load_tokenizer(out))


def test_materialize_refuses_foreign_dir(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        materialize_tiny(SMALL, CORPUS, str(tmp_path), seed=0)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_resolve_model_dir(tmp_path):
    cfg = ModelConfig(tiny=SMALL)
    model_dir, tok_dir = resolve_model_dir(cfg, lambda: CORPUS, str(tmp_path), seed=0)
    assert model_dir == tok_dir == str(tmp_path / "tiny_model")
    assert resolve_model_dir(ModelConfig(path="org/model"), lambda: CORPUS, str(tmp_path), 0) == ("org/model",) * 2
    both = ModelConfig(path="org/model", tokenizer="org/tok")
    assert resolve_model_dir(both, lambda: [], str(tmp_path), 0) == ("org/model", "org/tok")
    with pytest.raises(ValueError, match="model.tokenizer"):
        resolve_model_dir(ModelConfig(tiny=SMALL, tokenizer="x/y"), lambda: CORPUS, str(tmp_path), 0)


def test_missing_local_path_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="nope.*local directory.*does not exist"):
        load_tokenizer(missing)
    with pytest.raises(ModelLoadError, match=r"\./not-here.*local directory"):
        load_causal_lm("./not-here", "float32")
    with pytest.raises(ModelLoadError, match="hub id 'no-such-org/no-such-model'"):
        load_tokenizer("no-such-org/no-such-model")  # offline: fails, but as a hub id
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(missing, "float64")


def test_pad_falls_back_to_eos(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    smap = tmp_path / "special_tokens_map.json"
    if smap.exists():
        m = json.loads(smap.read_text())
        m.pop("pad_token", None)
        smap.write_text(json.dumps(m))
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == "</s>" and loaded.pad_token_id == tok.eos_token_id
