"""Multi-head causal LMs (MAH-DPO): K language-model heads on one shared trunk; one head's logits or a mix.

    model = load_multihead(path, heads=("correct", "concise"), dtype="float32", mix=(0.5, 0.5))
    out = model(input_ids=ids, attention_mask=mask)                   # .logits (B, T, V): sum_k w_k logits_k
    out = model(input_ids=ids, attention_mask=mask, all_heads=True)   # .logits (B, K, T, V)
    model.set_mix([0.7, 0.3])                                         # the mix of later forwards (and saves)

Heads are linear maps without bias, so a mix of their logits is the logits of the mixed head:
sum_k w_k (W_k h) = (sum_k w_k W_k) h. ``merged_head(heads, w)`` is that (V, H) matrix: an ordinary causal LM
whose lm_head is it generates with the mix (the hf engine's ``set_head_mix``; vLLM gets such a model from
``rlhf export CKPT --out DIR --mix 0.7,0.3``).

On disk (``save_multihead``; a checkpoint's ``model/``) the directory is an ordinary HF causal LM — the trunk and,
as its lm_head, the merged head at the model's mix, with ``tie_word_embeddings: false`` — so transformers, vLLM
and the hf engine load the default mix as it is; beside it:

    heads.safetensors   {"heads.<k>.weight": (V, H)} the K heads, in order
    heads.json          {"format": "rlhf-multihead", "version": 1, "heads": [K names], "mix": [K weights]}

``load_multihead`` reads both back. A plain causal-LM directory (no heads.json) starts every head as a copy of
its lm_head (untied from the input embeddings): all heads start equal to the model they were built from (the
MAH-DPO reference). The base model's own lm_head is frozen and unused by the forward; it only carries the merged
head into saved directories.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from rlhf.models.load import ModelLoadError, _check_path, _where, load_causal_lm

HEADS_FILE = "heads.safetensors"
HEADS_JSON = "heads.json"
FORMAT = "rlhf-multihead"


def is_multihead_dir(path: str) -> bool:
    """The directory holds a saved multi-head model (heads.json beside an HF causal LM)."""
    return os.path.isfile(os.path.join(path, HEADS_JSON))


def merged_head(heads: Tensor, mix: Sequence[float]) -> Tensor:
    """(V, H) sum_k mix_k heads_k of heads (K, V, H): the one linear head whose logits are the mix's."""
    w = torch.as_tensor(list(mix), dtype=torch.float32, device=heads.device)  # (K,)
    if w.shape[0] != heads.shape[0]:
        raise ValueError(f"merged_head: {w.shape[0]} mix weights for {heads.shape[0]} heads")
    return torch.einsum("k,kvh->vh", w, heads.float()).to(heads.dtype)  # (V, H)


def check_mix(mix: Sequence[float], heads: Sequence[str], where: str = "mix") -> tuple[float, ...]:
    """The mix as a tuple of K finite floats (an error names ``where`` otherwise)."""
    out = tuple(float(x) for x in mix)
    if len(out) != len(heads) or not all(torch.isfinite(torch.tensor(out))):
        raise ValueError(f"{where}: {list(mix)} must be {len(heads)} finite weights, one per head {list(heads)}")
    return out


def parse_mix(text: str, heads: Sequence[str]) -> tuple[float, ...]:
    """"0.7,0.3" -> (0.7, 0.3) for the K heads (an error names the heads)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--mix {text!r}: comma-separated numbers, one per head {list(heads)}") from None
    return check_mix(values, heads, f"--mix {text!r}")


class MultiHeadCausalLM(nn.Module):
    """A causal LM's trunk with K linear LM heads (module docstring). ``config`` is the base model's."""

    def __init__(self, base: Any, head_names: Sequence[str], heads: Tensor, mix: Sequence[float]) -> None:
        super().__init__()
        self.base = base
        self.config = base.config
        self.head_names = tuple(head_names)
        K, V, H = heads.shape
        if K != len(self.head_names):
            raise ValueError(f"MultiHeadCausalLM: {K} head weights for heads {list(self.head_names)}")
        self.heads = nn.ModuleList(nn.Linear(H, V, bias=False, dtype=heads.dtype) for _ in range(K))
        with torch.no_grad():
            for k, head in enumerate(self.heads):
                head.weight.copy_(heads[k])  # (V, H)
        self.mix = check_mix(mix, self.head_names)

    @property
    def trunk(self) -> nn.Module:
        """The base model without its LM head (e.g. LlamaModel): hidden states (B, T, H)."""
        return getattr(self.base, self.base.base_model_prefix)

    def set_mix(self, mix: Sequence[float]) -> None:
        self.mix = check_mix(mix, self.head_names)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                all_heads: bool = False, **kwargs: Any) -> Any:
        """``.logits``: (B, T, V) of the mix, or with ``all_heads`` (B, K, T, V) of every head."""
        from transformers.modeling_outputs import CausalLMOutputWithPast

        kwargs.setdefault("use_cache", False)
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            **kwargs).last_hidden_state  # (B, T, H)
        if all_heads:
            logits = torch.stack([head(hidden) for head in self.heads], dim=1)  # (B, K, T, V)
        else:
            logits = sum(w * head(hidden) for w, head in zip(self.mix, self.heads) if w != 0)  # (B, T, V)
            if not torch.is_tensor(logits):  # every weight 0
                logits = torch.zeros_like(self.heads[0](hidden))
        return CausalLMOutputWithPast(logits=logits)

    def head_weights(self) -> Tensor:
        """(K, V, H) the heads' weights (detached)."""
        return torch.stack([head.weight.detach() for head in self.heads])

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.base.gradient_checkpointing_enable(**kwargs)

    def save_pretrained(self, out_dir: str, state_dict: dict[str, Tensor] | None = None,
                        safe_serialization: bool = True) -> None:
        """Write the directory layout of the module docstring (``state_dict``: full tensors under this module's
        parameter names, e.g. gathered by the training backend; default this module's own)."""
        save_multihead(self, out_dir, state_dict)


def _lm_head_key(base: Any) -> str:
    head = base.get_output_embeddings()
    for name, module in base.named_modules():
        if module is head:
            return f"{name}.weight"
    raise ModelLoadError("multi-head model: the base model has no output embeddings (lm_head)")


def _untie(base: Any) -> None:
    """Give the base model's lm_head its own tensor (it stays a frozen copy) and say so in its config."""
    out_emb, in_emb = base.get_output_embeddings(), base.get_input_embeddings()
    if out_emb.weight is in_emb.weight or out_emb.weight.data_ptr() == in_emb.weight.data_ptr():
        out_emb.weight = nn.Parameter(in_emb.weight.detach().clone())
    base.config.tie_word_embeddings = False
    text_config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    text_config.tie_word_embeddings = False
    out_emb.weight.requires_grad_(False)


def read_heads(path: str) -> tuple[tuple[str, ...], tuple[float, ...], Tensor]:
    """(names, mix, (K, V, H) weights) of a saved multi-head directory."""
    from safetensors.torch import load_file

    meta = json.loads(open(os.path.join(path, HEADS_JSON)).read())
    if meta.get("format") != FORMAT:
        raise ModelLoadError(f"{os.path.join(path, HEADS_JSON)}: format {meta.get('format')!r}, expected {FORMAT!r}")
    names = tuple(meta["heads"])
    tensors = load_file(os.path.join(path, HEADS_FILE))
    missing = [f"heads.{k}.weight" for k in range(len(names)) if f"heads.{k}.weight" not in tensors]
    if missing:
        raise ModelLoadError(f"{os.path.join(path, HEADS_FILE)}: lacks {missing}")
    weights = torch.stack([tensors[f"heads.{k}.weight"] for k in range(len(names))])  # (K, V, H)
    return names, check_mix(meta["mix"], names, os.path.join(path, HEADS_JSON)), weights


def load_multihead(path: str, heads: Sequence[str], dtype: str = "float32", trust_remote_code: bool = False,
                   mix: Sequence[float] | None = None) -> MultiHeadCausalLM:
    """A saved multi-head model (its heads must be ``heads``) or a causal LM whose lm_head every head copies;
    ``mix``: the forward's default mix (None: the saved one, else uniform)."""
    resolved = _check_path(path, "load_multihead")
    base = load_causal_lm(resolved, dtype, trust_remote_code)
    heads = tuple(heads)
    if is_multihead_dir(resolved):
        names, saved_mix, weights = read_heads(resolved)
        if names != heads:
            raise ModelLoadError(f"load_multihead: {_where(path)} has heads {list(names)}, the recipe asks for "
                                 f"{list(heads)} (objective.heads)")
        mix = saved_mix if mix is None else mix
    else:
        weights = base.get_output_embeddings().weight.detach().clone().unsqueeze(0).repeat(len(heads), 1, 1)
    _untie(base)
    mix = mix if mix is not None else [1.0 / len(heads)] * len(heads)
    return MultiHeadCausalLM(base, heads, weights.to(base.get_output_embeddings().weight.dtype), mix)


def save_multihead(model: MultiHeadCausalLM, out_dir: str, state_dict: dict[str, Tensor] | None = None,
                   mix: Sequence[float] | None = None, keep_heads: bool = True) -> None:
    """The base model with lm_head = the merged head at ``mix`` (default the model's), plus heads.safetensors and
    heads.json (``keep_heads``; without them: the ordinary HF model of one fixed mix, what vLLM serves)."""
    from safetensors.torch import save_file

    state = state_dict if state_dict is not None else {k: v.detach() for k, v in model.state_dict().items()}
    K = len(model.head_names)
    weights = torch.stack([state[f"heads.{k}.weight"] for k in range(K)])  # (K, V, H)
    mix = check_mix(model.mix if mix is None else mix, model.head_names)
    trunk = {k[len("base."):]: v for k, v in state.items() if k.startswith("base.")}
    trunk[_lm_head_key(model.base)] = merged_head(weights, mix).contiguous()  # (V, H)
    os.makedirs(out_dir, exist_ok=True)
    model.base.save_pretrained(out_dir, state_dict=trunk, safe_serialization=True)
    if keep_heads:
        save_file({f"heads.{k}.weight": weights[k].contiguous() for k in range(K)},
                  os.path.join(out_dir, HEADS_FILE))
        with open(os.path.join(out_dir, HEADS_JSON), "w") as f:
            json.dump({"format": FORMAT, "version": 1, "heads": list(model.head_names), "mix": list(mix)}, f,
                      indent=1)


__all__ = ["HEADS_FILE", "HEADS_JSON", "MultiHeadCausalLM", "check_mix", "is_multihead_dir", "load_multihead",
           "merged_head", "parse_mix", "read_heads", "save_multihead"]
