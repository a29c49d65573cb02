"""Load tokenizers and causal LMs (local dir or hub id) and resolve a recipe's ``model`` section to a directory.

    model_dir, tok_dir = resolve_model_dir(recipe.model, corpus_fn, work_dir, seed)
    tokenizer = load_tokenizer(tok_dir)
    model = load_causal_lm(model_dir, recipe.model.dtype)

A path that looks local (starts with ``/``, ``./``, ``../`` or ``~``, or exists on disk) must exist; anything else
is treated as a hub id (set ``HF_HUB_OFFLINE=1`` to forbid network access; the cache is still used).
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlhf.config.schema import ModelConfig
from rlhf.models.tiny import materialize_tiny

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message names the path."""


def _looks_local(path: str) -> bool:
    return path.startswith(LOCAL_PREFIXES) or path in (".", "..") or os.path.exists(path)


def _check_path(path: str, what: str) -> str:
    """Expand ``~``; raise for a local-looking path that does not exist. Returns the path to hand to transformers."""
    if not path:
        raise ModelLoadError(f"{what}: empty path")
    if not _looks_local(path):
        return path  # hub id
    try:
        expanded = os.path.expanduser(path)
        is_dir = os.path.isdir(expanded)
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a name too long
        raise ModelLoadError(f"{what}: cannot use path {path!r}: {e}") from None
    if not is_dir:
        raise ModelLoadError(
            f"{what}: {path!r} looks like a local directory (not a hub id) but "
            f"{'is not a directory' if os.path.exists(expanded) else 'does not exist'}"
        )
    return expanded


def _where(path: str) -> str:
    return f"local directory {path!r}" if _looks_local(path) else f"hub id {path!r}"


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer from ``path``, guaranteed to have a pad token.

    A tokenizer without a pad token gets ``pad_token = eos_token`` (as TRL does). Padding is always masked out by
    attention/loss masks, so sharing the id with eos is safe; a completion still ends at its first eos.
    """
    resolved = _check_path(path, "load_tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise ModelLoadError(f"load_tokenizer: cannot load a tokenizer from {_where(path)}: {e}") from e
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"load_tokenizer: tokenizer at {path!r} has neither a pad token nor an eos token")
        log.warning("tokenizer at %s has no pad token; using eos %r as pad", path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """AutoModelForCausalLM in ``dtype`` ("float32" | "bfloat16" | "float16"); train/eval mode is the caller's."""
    if dtype not in DTYPES:
        raise ValueError(f"load_causal_lm: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    resolved = _check_path(path, "load_causal_lm")
    try:
        return AutoModelForCausalLM.from_pretrained(
            resolved, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise ModelLoadError(f"load_causal_lm: cannot load a causal LM from {_where(path)}: {e}") from e


def resolve_model_dir(
    model_cfg: ModelConfig, corpus_fn: Callable[[], Iterable[str]], work_dir: str, seed: int
) -> tuple[str, str]:
    """Return ``(model_dir, tokenizer_dir)``.

    ``model.tiny``: train a tokenizer on ``corpus_fn()`` and build the model into ``work_dir/tiny_model`` (reused
    when unchanged); the tokenizer sits in the same dir. ``model.path``: the path as is (hub ids allowed), with
    the tokenizer from ``model.tokenizer`` or the model path.
    """
    if model_cfg.tiny is not None:  # the schema refuses model.tokenizer next to model.tiny
        model_dir = materialize_tiny(model_cfg.tiny, corpus_fn(), os.path.join(work_dir, "tiny_model"), seed)
        return model_dir, model_dir
    assert model_cfg.path is not None  # schema: exactly one of path / tiny
    # fail here, before any actor starts, with the recipe key that names the missing directory
    _check_path(model_cfg.path, "model.path")
    if model_cfg.tokenizer is not None:
        _check_path(model_cfg.tokenizer, "model.tokenizer")
    return model_cfg.path, model_cfg.tokenizer or model_cfg.path
