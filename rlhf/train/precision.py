"""Mixed precision and activation checkpointing of a training rank's models (``train.precision``,
``train.gradient_checkpointing``).

    auto_precision("cpu", hidden_size=384)          # train.precision: auto -> "bf16" or "fp32" (below)
    check_precision("bf16", device)                  # an error on a GPU without bf16, a warning on a CPU that emulates it
    autocast_forward(model, "bf16", device)          # every forward of `model` runs under torch.autocast
    enable_checkpointing(model)                      # recompute each decoder layer in the backward pass

Mixed precision here is autocast over float32 weights: the weights (``model.dtype``) and the optimizer state stay
as they are, so the master weights are float32 and every optimizer update is exact; matmuls and attention run in
bf16 (fp16). Two things stay in float32 on purpose:

- the **output head** (the LM head's logits, a value or score head): a logit of magnitude ~15 rounded to bf16 is
  off by up to 0.03, which would move every token's logprob, and the policy ratio exp(new - old) by a few percent;
  the head's matmul is a small share of the work except for huge vocabularies;
- the **residual stream**: HF decoders add bf16 block outputs onto the float32 embedding output, so the stream
  (and the norms reading it) stays float32 by type promotion.

The autocast wraps the module's own ``forward`` (an instance attribute), so it applies wherever the module is
called: through DeepSpeed's engine (whose forward then sees no outer autocast and leaves it alone), directly, and
for the reference model. Backward passes run in the dtype of their forward ops. The gradients of float32
parameters are float32, so DeepSpeed's reductions and the optimizer are unchanged.

``train.precision: auto`` (the default) picks bf16 where it is faster and fp32 elsewhere: on GPUs (bf16 tensor
cores), and on a CPU with AVX512-BF16 or AMX when the model's hidden size is at least ``BF16_MIN_HIDDEN``. Below
that the matmuls are too small to pay for autocast's casts: one GRPO update of a 0.9M Llama (hidden 128) ran at
0.95x the float32 speed under bf16 autocast on an AMX Xeon, hidden 256 1.30x, 384 1.25x, 512 1.76x
(bench/README.md, ``python -m bench.bf16_speed``, 2026-12-08). The driver resolves it once per run
(rlhf/runtime/controller.py) and every rank and engine gets the concrete value.

fp16 needs loss scaling against gradient underflow: the torch backend scales with ``torch.amp.GradScaler``
(rlhf/train/torch.py); DeepSpeed's own fp16 mode (``model.dtype: float16``) is the route there, and the recipe
check says so.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(RuntimeError):
    """The machine that runs the rank cannot run the recipe's precision; the message names the key."""


def cpu_flags() -> set[str]:
    """The flags of the first processor in /proc/cpuinfo (empty where there is none, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX): 2.3x float32 here (../shared/STACK.md);
    without them torch emulates bf16 and it is slower than float32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


BF16_MIN_HIDDEN = 256  # train.precision auto: smallest hidden size at which bf16 autocast beats float32 on a CPU


def auto_precision(device_type: str, hidden_size: int | None, fast_cpu_bf16: bool | None = None) -> str:
    """What ``train.precision: auto`` means on `device_type` ("cuda" or "cpu") for a model of `hidden_size`
    (None: unknown, taken as large): "bf16" on a GPU; on a CPU "bf16" when it runs bf16 natively (AVX512-BF16 or
    AMX; `fast_cpu_bf16` overrides the probe) and the model is wide enough to gain from it, else "fp32"."""
    if device_type == "cuda":
        return "bf16"
    fast = cpu_has_fast_bf16() if fast_cpu_bf16 is None else fast_cpu_bf16
    return "bf16" if fast and (hidden_size is None or hidden_size >= BF16_MIN_HIDDEN) else "fp32"


def config_hidden_size(config: Any) -> int | None:
    """The width of a transformers config's hidden states (the text model's, for multimodal configs); None when
    there is no config or it does not say."""
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = text.to_dict().get("hidden_size")
    return size if isinstance(size, int) else None


def resolved(precision: str, device: torch.device, model: nn.Module) -> str:
    """`precision` with "auto" resolved for `device` and `model` (the driver normally resolves it first:
    rlhf/runtime/precision.py; this covers ranks built without the controller)."""
    if precision != "auto":
        return precision
    return auto_precision(device.type, config_hidden_size(getattr(model, "config", None)))


def check_precision(precision: str, device: torch.device) -> None:
    """Raise PrecisionError where `device` cannot run `precision`; warn where it runs it slowly (checked on the
    machine that runs the rank: a login node may validate the recipe)."""
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise PrecisionError(f"train.precision: bf16 -- GPU {torch.cuda.get_device_name(device)} has no bf16 "
                                 "(auto picks bf16 on every GPU); set train.precision: fp16 (torch backend) or fp32")
        if device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("train.precision: bf16 -- this CPU has neither AVX512-BF16 nor AMX: torch emulates bf16, "
                        "which is far slower than float32 (bench/README.md); the run is correct but slow, use fp32")


def autocast_forward(model: nn.Module, precision: str, device: torch.device,
                     head: nn.Module | None = None) -> None:
    """Run every forward of `model` under autocast to `precision` ("fp32": leave it as it is), and `head` (the
    output layer; default the model's output embeddings) in float32. In place; idempotent."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None or getattr(model.forward, "_rlhf_autocast", None) == dtype:
        return
    model.forward = _under_autocast(model.forward, device.type, dtype)
    head = head if head is not None else _output_head(model)
    if head is not None:
        head.forward = _in_float32(head.forward, device.type)


def _under_autocast(forward: Callable[..., Any], device_type: str, dtype: torch.dtype) -> Callable[..., Any]:
    @functools.wraps(forward)
    def autocast(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    autocast._rlhf_autocast = dtype  # type: ignore[attr-defined]
    return autocast


def _in_float32(forward: Callable[..., Any], device_type: str) -> Callable[..., Any]:
    @functools.wraps(forward)
    def float32(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return forward(hidden.float() if hidden.is_floating_point() else hidden, *args, **kwargs)

    return float32


def _output_head(model: nn.Module) -> nn.Module | None:
    """The LM head of a causal LM (through a peft wrapper), the score head of a sequence classifier, the value
    head of a ValueModel (an attribute ``head``); None if there is none to find."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        for name in ("score", "head"):
            candidate = getattr(model, name, None)
            if isinstance(candidate, nn.Module):
                return candidate
        base = getattr(model, "base_model", None)  # peft: PeftModel -> LoraModel -> the HF model
        if isinstance(base, nn.Module) and base is not model:
            return _output_head(getattr(base, "model", base))
    return head


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing of every decoder layer (transformers' own; non-reentrant, so frozen inputs such as
    a LoRA base's embeddings need no requires_grad and autocast state is restored in the recomputation)."""
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise PrecisionError(f"train.gradient_checkpointing: {type(model).__name__} has no "
                             "gradient_checkpointing_enable (not a transformers model)")
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})
