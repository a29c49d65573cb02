"""Reward models: a causal LM's backbone with K named scalar heads, as a Hugging Face sequence-classification model.

    model = load_reward_model(path, heads=("score",), dtype="float32", pad_token_id=tok.pad_token_id)
    heads = head_names(model.config)           # ("score",) -- the saved model's labels, in output order

``path`` is a causal LM (training starts there: the backbone's weights are kept, the heads are new, drawn from
the caller's RNG) or a saved reward model (its heads must be the ones asked for). What training saves is an
ordinary ``AutoModelForSequenceClassification`` directory: ``num_labels`` = K and ``id2label`` = the head names,
so ``transformers`` (a pipeline, TRL, OpenRLHF) loads it as is. Its forward reads the scores at the last token
that is not ``pad_token_id``; training and the ``reward_model`` plugin call the same forward.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from rlhf.models.load import DTYPES, ModelLoadError, _check_path, _where


def head_names(config: Any) -> tuple[str, ...]:
    """The output names of a sequence-classification config, in order (HF's default labels LABEL_i included)."""
    id2label = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    return tuple(str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n))


def is_reward_model(path: str, trust_remote_code: bool = False) -> bool:
    """The directory holds a sequence-classification model (a saved RM), not a causal LM."""
    config = AutoConfig.from_pretrained(_check_path(path, "reward model"), trust_remote_code=trust_remote_code)
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def load_reward_model(path: str, heads: Sequence[str] | None, dtype: str = "float32", trust_remote_code: bool = False,
                      pad_token_id: int | None = None) -> PreTrainedModel:
    """A sequence-classification model with one output per head: a saved RM (its heads must match; heads None:
    whatever heads it has) or a causal LM's backbone with fresh heads."""
    if dtype not in DTYPES:
        raise ValueError(f"load_reward_model: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    resolved = _check_path(path, "load_reward_model")
    if os.path.isfile(os.path.join(resolved, "adapter_config.json")) and not os.path.isfile(
            os.path.join(resolved, "model.safetensors")):
        raise ModelLoadError(f"load_reward_model: {_where(path)} is a LoRA adapter (a model.lora checkpoint), not a "
                             "whole model: merge it with `rlhf export CHECKPOINT --out DIR` and point at DIR")
    try:
        saved = is_reward_model(resolved, trust_remote_code)
        if heads is None and not saved:
            raise ValueError("it is not a saved reward model, so its heads must be named")
        heads = tuple(heads) if heads is not None else ()
        kwargs: dict[str, Any] = {} if saved else dict(
            num_labels=len(heads), id2label=dict(enumerate(heads)), label2id={h: i for i, h in enumerate(heads)})
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise ModelLoadError(f"load_reward_model: cannot load a sequence-classification model from {_where(path)}: "
                             f"{e}") from e
    if saved and heads and head_names(model.config) != heads:
        raise ModelLoadError(f"load_reward_model: {_where(path)} has heads {list(head_names(model.config))}, the "
                             f"recipe asks for {list(heads)} (objective.heads)")
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # the forward finds each row's last token by it
    if model.config.pad_token_id is None:
        raise ModelLoadError(f"load_reward_model: {_where(path)} has no pad_token_id; the forward needs it to find "
                             "each sequence's last token (give the tokenizer a pad token)")
    return model
