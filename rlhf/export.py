"""`rlhf export CHECKPOINT --out DIR [--base MODEL]`: a checkpoint as a standalone Hugging Face model directory.

    rlhf export runs/grpo_lora_tiny_cpu/checkpoints/step_000020 --out exported/
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('exported')"

CHECKPOINT is a checkpoint step directory (its `model/` is used; the manifest is verified) or a model directory.
A LoRA adapter (adapter_config.json + adapter_model.safetensors, what model.lora checkpoints hold) is merged into
its base model — the one adapter_config.json points at, or --base — with the same merge the weight sync uses
(rlhf.models.lora.merge_weight: W + scale * B @ A); the output is safetensors + config + tokenizer. A full-model
checkpoint is checked to load and copied.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


class ExportError(ValueError):
    """The checkpoint cannot be exported; the message names the file or flag to fix."""


def model_dir_of(checkpoint: str) -> str:
    """`checkpoint/model` for a checkpoint step directory (manifest verified), else `checkpoint` itself."""
    from rlhf.train.checkpoint import verify

    path = Path(checkpoint)
    if not path.is_dir():
        raise ExportError(f"{checkpoint}: not a directory")
    if (path / "MANIFEST.json").is_file():
        verify(path)  # truncated or incomplete checkpoints are refused here
    if (path / "model").is_dir():
        return str(path / "model")
    return str(path)


def _recipe_dtype(checkpoint: str) -> str | None:
    """model.dtype of the recipe saved next to a checkpoint's model/, if any."""
    import yaml

    for candidate in (Path(checkpoint) / "recipe.yaml", Path(checkpoint).parent / "recipe.yaml"):
        if candidate.is_file():
            data = yaml.safe_load(candidate.read_text()) or {}
            return (data.get("model") or {}).get("dtype")
    return None


def export(checkpoint: str, out: str, base: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Write a loadable HF model directory to `out`; returns what was done (for the CLI to print)."""
    from rlhf.models import lora
    from rlhf.models.load import load_causal_lm, load_tokenizer

    src = model_dir_of(checkpoint)
    if os.path.exists(out) and os.listdir(out):
        raise ExportError(f"--out {out}: exists and is not empty; choose a new directory")
    if os.path.realpath(out) == os.path.realpath(src):
        raise ExportError("--out: must differ from the checkpoint's model directory")
    dtype = dtype or _recipe_dtype(checkpoint) or "float32"

    if not lora.is_adapter_dir(src):
        if base is not None:
            raise ExportError(f"--base: {src} is a full model, not a LoRA adapter; drop --base")
        load_causal_lm(src, dtype)  # raises ModelLoadError naming the directory if it does not load
        shutil.copytree(src, out, dirs_exist_ok=True)
        return {"kind": "full", "source": src, "out": out}

    config = lora.read_adapter_config(src)
    where = os.path.join(src, lora.ADAPTER_CONFIG)
    scale = lora.adapter_scale(config, where)
    base_dir = lora.adapter_base_dir(src, base)
    adapter = lora.read_adapter_weights(src)
    tok_dir = src if os.path.isfile(os.path.join(src, "tokenizer_config.json")) else base_dir
    tokenizer = load_tokenizer(tok_dir)
    if "SEQ_CLS" in str(config.get("task_type")):  # a reward model's adapter: its heads are in its config.json
        from transformers import AutoConfig

        from rlhf.models.reward import head_names, load_reward_model

        heads = head_names(AutoConfig.from_pretrained(src))
        model = load_reward_model(base_dir, heads, dtype, pad_token_id=tokenizer.pad_token_id)
    else:
        model = load_causal_lm(base_dir, dtype)
    state = model.state_dict()
    lora.check_adapter_covers(state.keys(), adapter, where)
    merged = dict(lora.merge_adapter(state.items(), adapter, scale))
    model.load_state_dict(merged, strict=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    n_merged = sum(1 for k in adapter if k.endswith(".lora_A.weight"))
    return {"kind": "lora", "source": src, "base": base_dir, "out": out, "merged_modules": n_merged,
            "replaced_modules": sum(1 for k in adapter if not k.endswith((".lora_A.weight", ".lora_B.weight"))),
            "scale": scale}
