"""``train.precision: auto`` resolved once per run, on the driver, into the precision every rank and engine uses.

    recipe = resolve_precision(recipe, model_dir)   # after Ray is up: the cluster's GPUs decide, else this CPU

The rule is rlhf/train/precision.py ``auto_precision``: bf16 on GPUs; on CPUs bf16 where the processor runs it
natively (AVX512-BF16 or AMX) and the model is wide enough to gain, else fp32. A CPU run's ranks and engines share
the driver's machine (or identical nodes), so the driver's processor stands for theirs; on a GPU cluster each
rank still checks its own GPU (``check_precision``: a GPU without bf16 is an error naming the key).
"""

from __future__ import annotations

import logging

from rlhf.config.schema import Recipe

log = logging.getLogger(__name__)


def model_hidden_size(model_dir: str, trust_remote_code: bool = False) -> int | None:
    """The width of the model's hidden states from its config (the text model's, for multimodal configs);
    None when the config does not say."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = text.to_dict().get("hidden_size")
    return int(size) if isinstance(size, int) else None


def resolve_precision(recipe: Recipe, model_dir: str) -> Recipe:
    """The recipe with ``train.precision: auto`` replaced by what it means here (unchanged otherwise)."""
    if recipe.train.precision != "auto":
        return recipe
    if recipe.model.dtype != "float32":  # the weights already compute in their own dtype
        chosen, why = "fp32", f"model.dtype is {recipe.model.dtype}"
    else:
        from rlhf.train.precision import BF16_MIN_HIDDEN, auto_precision, cpu_has_fast_bf16
        from rlhf.transport.placement import has_gpus

        gpu = has_gpus()
        hidden = None if gpu else model_hidden_size(model_dir, recipe.model.trust_remote_code)
        chosen = auto_precision("cuda" if gpu else "cpu", hidden)
        why = ("GPUs" if gpu else f"CPU {'with' if cpu_has_fast_bf16() else 'without'} native bf16, hidden size "
               f"{hidden} (bf16 from {BF16_MIN_HIDDEN})")
    log.info("train.precision: auto -> %s (%s)", chosen, why)
    train = recipe.train.model_copy(update={"precision": chosen})
    return recipe.model_copy(update={"train": train})
