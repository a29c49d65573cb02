"""`rlhf export CHECKPOINT --out DIR [--base MODEL]`: a checkpoint as a standalone Hugging Face model directory.

    rlhf export runs/grpo_lora_tiny_cpu/checkpoints/step_000020 --out exported/
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('exported')"

CHECKPOINT is a checkpoint step directory (its `model/` is used; the manifest is verified) or a model directory.
A LoRA adapter (adapter_config.json + adapter_model.safetensors, what model.lora checkpoints hold) is merged into
its base model — the one adapter_config.json points at, or --base — with the same merge the weight sync uses
(rlhf.models.lora.merge_weight: W + scale * B @ A); the output is safetensors + config + tokenizer. A full-model
checkpoint is checked to load and copied (a multi-head one, MAH-DPO, with its heads: heads.safetensors +
heads.json).

    rlhf export runs/mah_dpo_tiny_cpu/checkpoints/step_000100 --out mixed/ --mix 0.7,0.3

``--mix`` (a multi-head checkpoint, rlhf/models/multihead.py): an ordinary HF causal LM whose lm_head is the merged
head sum_k w_k W_k, one weight per head in the order of heads.json; its logits are the mix's exactly (the heads
are linear), so vLLM or any transformers loader serves that fixed mix.
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


def add_export_options(parser: Any) -> None:
    """`rlhf export`'s --dtype and --mix (rlhf/cli.py builds the rest of the command)."""
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="dtype of the written weights (default: the checkpoint recipe's model.dtype)")
    parser.add_argument("--mix", default=None, metavar="W1,W2,...",
                        help="a multi-head (MAH-DPO) checkpoint: write an ordinary HF causal LM whose lm_head is "
                        "the heads mixed with these weights, one per head in heads.json's order (the vLLM route)")


def export(checkpoint: str, out: str, base: str | None = None, dtype: str | None = None,
           mix: str | None = None) -> dict[str, Any]:
    """Write a loadable HF model directory to `out`; returns what was done (``message``: for the CLI to print)."""
    from rlhf.models import lora
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.models.multihead import is_multihead_dir

    src = model_dir_of(checkpoint)
    if os.path.exists(out) and os.listdir(out):
        raise ExportError(f"--out {out}: exists and is not empty; choose a new directory")
    if os.path.realpath(out) == os.path.realpath(src):
        raise ExportError("--out: must differ from the checkpoint's model directory")
    dtype = dtype or _recipe_dtype(checkpoint) or "float32"
    if mix is not None:
        if not is_multihead_dir(src):
            raise ExportError(f"--mix: {src} is not a multi-head model (no heads.json); drop --mix")
        return _export_mix(src, out, mix, dtype)

    if not lora.is_adapter_dir(src):
        if base is not None:
            raise ExportError(f"--base: {src} is a full model, not a LoRA adapter; drop --base")
        load_causal_lm(src, dtype)  # raises ModelLoadError naming the directory if it does not load
        shutil.copytree(src, out, dirs_exist_ok=True)
        heads = " with its heads (heads.json)" if is_multihead_dir(src) else ""
        return {"kind": "full", "source": src, "out": out, "message": f"copied the full model {src}{heads}: {out}"}

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
            "scale": scale, "message": f"merged the LoRA adapter of {src} ({n_merged} modules, scale {scale:g}) "
            f"into {base_dir}: {out}"}


def _export_mix(src: str, out: str, mix_text: str, dtype: str) -> dict[str, Any]:
    """An ordinary HF causal LM: the trunk of the multi-head model at `src` with lm_head = its heads mixed."""
    from rlhf.models.load import load_tokenizer
    from rlhf.models.multihead import load_multihead, parse_mix, read_heads, save_multihead

    names, _saved_mix, _weights = read_heads(src)
    try:
        mix = parse_mix(mix_text, names)
    except ValueError as e:
        raise ExportError(str(e)) from None
    model = load_multihead(src, names, dtype, mix=mix)
    save_multihead(model, out, keep_heads=False)
    load_tokenizer(src).save_pretrained(out)
    shown = ", ".join(f"{n} {w:g}" for n, w in zip(names, mix))
    return {"kind": "mix", "source": src, "out": out, "heads": list(names), "mix": list(mix),
            "message": f"wrote {src} with its heads mixed ({shown}) into one lm_head: {out}"}
