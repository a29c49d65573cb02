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
    """The width of the model's hidden states, read from its config (``config_hidden_size``)."""
    from transformers import AutoConfig

    from rlhf.train.precision import config_hidden_size

    return config_hidden_size(AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code))


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
        fast = not gpu and cpu_has_fast_bf16()  # /proc/cpuinfo read once, for the choice and its log line
        chosen = auto_precision("cuda" if gpu else "cpu", hidden, fast_cpu_bf16=fast)
        why = ("GPUs" if gpu else f"CPU {'with' if fast else 'without'} native bf16, hidden size {hidden} "
               f"(bf16 from {BF16_MIN_HIDDEN})")
    log.info("train.precision: auto -> %s (%s)", chosen, why)
    train = recipe.train.model_copy(update={"precision": chosen})
    return recipe.model_copy(update={"train": train})
