"""Tiny causal LMs and tokenizers built locally from config: tests, CPU demos, no model hub.

    tok = train_tokenizer(["12+7=19", "3+4=7"], vocab_size=64)
    model = build_tiny_model(TinyModelConfig(), tok, seed=0)
    path = materialize_tiny(TinyModelConfig(), corpus, "runs/x/tiny_model", seed=0)  # reused when unchanged

Tokenizer conventions (the rest of the platform relies on them):

- BPE trained with ``tokenizers`` on in-memory text. Pre-tokenizer: Metaspace (spaces become ``▁`` and start a
  new piece, no prefix space is added) followed by Digits(individual_digits=True): every digit is its own token,
  so "12+7=19" is ``1 2 + 7 = 1 9``. The Metaspace decoder turns ``▁`` back into spaces, so decoding is exact
  for any text whose characters were in the training corpus (plus digits, ``+-*=`` and space, always present).
  Characters never seen map to ``<unk>``: a tiny vocab has no byte fallback.
- Special tokens ``<pad>`` (id 0), ``<s>`` (bos, 1), ``</s>`` (eos, 2), ``<unk>`` (3). No post-processor: the
  tokenizer never adds bos/eos by itself; ``rlhf.data.collate`` prepends bos and appends eos explicitly.
- padding_side is the default (right); callers that need left padding pick it. No chat template.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rlhf.config.schema import TinyModelConfig

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0..3 in this order
SPACE_MARK = "▁"
# Always in the alphabet, whatever the corpus: digits, arithmetic operators and the space marker.
BASE_ALPHABET = list("0123456789+-*/=.") + [SPACE_MARK]
FINGERPRINT_FILE = "tiny_config.json"
FINGERPRINT_VERSION = 1


# --------------------------------------------------------------------------- tokenizer


def _empty_bpe_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="never", split=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=SPACE_MARK, prepend_scheme="never", split=True)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a small BPE tokenizer on in-memory ``texts`` and wrap it with pad/bos/eos/unk set."""
    texts = list(texts)
    if not texts:
        raise ValueError("train_tokenizer: the corpus is empty; give at least one text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"train_tokenizer: corpus item {bad[0]} is {type(texts[bad[0]]).__name__}, expected str")
    tok = _empty_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=BASE_ALPHABET,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # decoding must round-trip the text exactly
    )


# --------------------------------------------------------------------------- model


def _model_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    if cfg.vocab_size is not None and cfg.vocab_size < len(tokenizer):
        raise ValueError(f"model.tiny.vocab_size {cfg.vocab_size} is smaller than the trained tokenizer "
                         f"({len(tokenizer)} tokens); raise it or lower model.tiny.tokenizer_vocab_size")
    common = dict(
        vocab_size=cfg.vocab_size or len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    if cfg.arch == "llama":
        return LlamaConfig(head_dim=cfg.hidden_size // cfg.num_heads, **common)
    if cfg.arch == "qwen2":
        return Qwen2Config(**common)  # Qwen2 derives head_dim = hidden_size / num_heads
    raise ValueError(f"tiny.arch {cfg.arch!r} is not one of 'llama', 'qwen2'")


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    """A randomly initialised float32 Llama/Qwen2 sized for ``tokenizer`` (or model.tiny.vocab_size)."""
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(f"build_tiny_model: the tokenizer has no {name}; train it with train_tokenizer")
    config = _model_config(cfg, tokenizer)
    torch.manual_seed(seed)
    model_cls = LlamaForCausalLM if cfg.arch == "llama" else Qwen2ForCausalLM
    model = model_cls(config).to(torch.float32)
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    return model


# --------------------------------------------------------------------------- materialize (idempotent)


def _fingerprint(cfg: TinyModelConfig, corpus: list[str], seed: int) -> dict:
    digest = hashlib.sha256()
    for text in corpus:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return {
        "version": FINGERPRINT_VERSION,
        "tiny": cfg.model_dump(mode="json"),
        "seed": seed,
        "corpus_sha256": digest.hexdigest(),
        "corpus_size": len(corpus),
    }


def _read_fingerprint(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, FINGERPRINT_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # a half-written or foreign file: rebuild


def _is_complete(out_dir: str) -> bool:
    return all(os.path.isfile(os.path.join(out_dir, f)) for f in ("config.json", "model.safetensors", "tokenizer.json"))


def _write_model_dir(cfg: TinyModelConfig, corpus: list[str], target: str, seed: int, fingerprint: dict) -> None:
    tokenizer = train_tokenizer(corpus, cfg.tokenizer_vocab_size)
    model = build_tiny_model(cfg, tokenizer, seed)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    with open(os.path.join(target, FINGERPRINT_FILE), "w", encoding="utf-8") as f:
        json.dump(fingerprint, f, indent=2, sort_keys=True)  # written last: marks the dir complete


def materialize_tiny(cfg: TinyModelConfig, corpus: Iterable[str], out_dir: str, seed: int) -> str:
    """Train a tokenizer on ``corpus``, build the model, save both into ``out_dir`` (safetensors); return out_dir.

    Idempotent: when ``out_dir`` already holds a model whose ``tiny_config.json`` matches (config, seed, corpus
    hash) it is reused untouched. A stale tiny model dir is rebuilt; a non-empty dir that is not a tiny model dir
    is an error (never overwritten). The dir is built next to ``out_dir`` and renamed in place, so concurrent
    callers never see a half-written model.
    """
    corpus = list(corpus)
    fingerprint = _fingerprint(cfg, corpus, seed)
    if _read_fingerprint(out_dir) == fingerprint and _is_complete(out_dir):
        return out_dir
    if os.path.isdir(out_dir) and os.listdir(out_dir) and _read_fingerprint(out_dir) is None:
        raise FileExistsError(
            f"materialize_tiny: {out_dir} is not empty and holds no {FINGERPRINT_FILE}; "
            "refusing to overwrite a directory this function did not create"
        )
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tiny_model_", dir=parent)
    try:
        _write_model_dir(cfg, corpus, staging, seed, fingerprint)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)  # stale tiny model (fingerprint mismatch)
        try:
            os.rename(staging, out_dir)
        except OSError:
            if _read_fingerprint(out_dir) != fingerprint:  # someone else won the race with a different model
                raise
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir
