"""The PPO critic: a transformer backbone with a linear value head of one output per reward stream.

    critic = load_value_model(model_dir, num_heads=K + 1)            # from a causal LM (or a saved critic)
    values = completion_values(critic, input_ids, attention_mask, P)  # (B, C, K + 1) V(s_t) per stream
    values = packed_completion_values(critic, input_ids, attention_mask, P)  # the same, padding-free (0 on padding)
    save_value_model(critic, out_dir)                                 # backbone (HF) + value_head.safetensors

The value head maps the last hidden state h_t to V(s_t) in R^S (one value per reward stream of a vector critic,
see ``rlhf.advantages.gae``), as the critic of Ziegler et al. 2019 (a copy of the policy's network with a scalar
head) and the value models of TRL / OpenRLHF, with S outputs instead of one.

Alignment (the same as ``rlhf.objectives.common.completion_logprobs``): completion token j sits at input position
P + j and is generated from the state whose last token is at position P + j - 1; that hidden state both predicts
token j (its logit) and holds V(s_j), the value of the state in which token j is chosen. So

    values[b, j] = head(h[b, P + j - 1])        j = 0 .. C-1

The last position P + C - 1 (the state after the final token) is not used: its value is 0 by definition in GAE.

``packed_completion_values`` (train.packing) runs the backbone on the batch's real tokens packed back to back
(``rlhf.objectives.packing.pack_rows``: position ids restarting per sequence, block-diagonal attention) and reads
the head at the same predictor positions, so every real value equals the padded one with nothing computed for
padding.

A saved critic is a directory with the backbone's ``save_pretrained`` files (config.json, model.safetensors) and
``value_head.safetensors`` (``weight`` (S, H), ``bias`` (S,)) + ``value_head.json`` ({"num_heads": S}).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModel, PreTrainedModel

from rlhf.models.load import DTYPES, ModelLoadError, _check_path, _where
from rlhf.objectives.common import position_ids_from_mask
from rlhf.objectives.packing import pack_rows, varlen_attention

HEAD_WEIGHTS = "value_head.safetensors"
HEAD_CONFIG = "value_head.json"


class ValueModel(nn.Module):
    """``backbone`` (a HF base model, e.g. LlamaModel) + ``head`` = nn.Linear(hidden_size, num_heads)."""

    def __init__(self, backbone: PreTrainedModel, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"ValueModel: num_heads must be >= 1, got {num_heads}")
        self.backbone = backbone
        self.config = backbone.config  # DeepSpeed reads hidden_size etc. from here
        hidden = int(backbone.config.hidden_size)
        dtype = next(backbone.parameters()).dtype
        self.head = nn.Linear(hidden, num_heads, dtype=dtype)
        with torch.no_grad():  # from the caller's RNG state: seed before building for a reproducible head
            self.head.weight.normal_(mean=0.0, std=1.0 / math.sqrt(hidden + 1))
            self.head.bias.zero_()

    @property
    def num_heads(self) -> int:
        return int(self.head.out_features)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None = None) -> Tensor:
        """(B, T, num_heads) float32 value of every position's hidden state. input_ids/attention_mask (B, T);
        attention_mask None with restarting position_ids: packed sequences (``packed_completion_values``)."""
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, H)
        return self.head(hidden.to(self.head.weight.dtype)).float()  # (B, T, num_heads)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)


def completion_values(model: ValueModel, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> Tensor:
    """(B, C, S) V(s_j) for each completion token j: the head at position P + j - 1 (module docstring).

    input_ids, attention_mask: (B, P + C), prompt left-padded to ``prompt_len`` = P, completion right-padded;
    position ids come from the mask, so a left-padded row is valued as if run alone. Padding values are garbage:
    mask them downstream.
    """
    T = input_ids.shape[1]
    C = T - prompt_len
    if prompt_len < 1:
        raise ValueError(f"completion_values: prompt_len must be >= 1 (got {prompt_len})")
    position_ids = position_ids_from_mask(attention_mask)  # (B, P + C)
    values = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)  # (B, T, S)
    return values[:, prompt_len - 1 : T - 1]  # (B, C, S): position P + j - 1 holds V(s_j)


def packed_completion_values(model: ValueModel, input_ids: Tensor, attention_mask: Tensor, prompt_len: int,
                             one_row: bool | None = None) -> Tensor:
    """(B, C, S) V(s_j) as ``completion_values`` gives on real completion tokens, from one padding-free forward
    (module docstring); 0 on completion padding (and where no real token precedes completion token j).

    input_ids, attention_mask: (B, P + C), prompt left-padded to ``prompt_len`` = P, completion right-padded.
    one_row: as ``packed_completion_logprobs`` (None: one row exactly under flash attention's varlen kernels).
    """
    if prompt_len < 1:
        raise ValueError(f"packed_completion_values: prompt_len must be >= 1 (got {prompt_len})")
    one_row = varlen_attention(model) if one_row is None else one_row
    packed = pack_rows(input_ids, attention_mask, prompt_len, None if one_row else 0)
    values = model(input_ids=packed.input_ids, attention_mask=None, position_ids=packed.position_ids)  # (R, L, S)
    flat = values.reshape(-1, values.shape[-1])  # (R * L, S)
    B, C = packed.valid.shape
    out = flat.new_zeros((B, C, flat.shape[1]))  # (B, C, S)
    out[packed.valid] = flat[packed.predictor[packed.valid]]  # (M, S) the head at each predictor position
    return out


def load_value_model(path: str, num_heads: int, dtype: str = "float32", trust_remote_code: bool = False) -> ValueModel:
    """Backbone via ``AutoModel`` (the base model out of a *ForCausalLM checkpoint, or a saved critic's backbone).

    When ``path/value_head.safetensors`` exists (a saved critic), the head is loaded from it and must have
    ``num_heads`` outputs; otherwise a fresh head is initialised from the caller's RNG state.
    """
    if dtype not in DTYPES:
        raise ValueError(f"load_value_model: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    resolved = _check_path(path, "load_value_model")
    try:
        backbone = AutoModel.from_pretrained(resolved, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise ModelLoadError(f"load_value_model: cannot load a backbone from {_where(path)}: {e}") from e
    model = ValueModel(backbone, num_heads)
    head_path = os.path.join(resolved, HEAD_WEIGHTS)
    if os.path.isfile(head_path):
        head = load_file(head_path)
        saved = int(head["weight"].shape[0])
        conf_path = os.path.join(resolved, HEAD_CONFIG)
        if os.path.isfile(conf_path):
            with open(conf_path, encoding="utf-8") as f:
                saved = int(json.load(f).get("num_heads", saved))
        if saved != num_heads or head["weight"].shape != model.head.weight.shape:
            raise ValueError(
                f"load_value_model: the critic saved at {path!r} has a value head of {saved} output(s) "
                f"(weight {tuple(head['weight'].shape)}) but num_heads={num_heads} was asked for (one per reward "
                "stream, +1 for a KL stream); start from the causal LM instead, or match the reward components"
            )
        with torch.no_grad():
            model.head.weight.copy_(head["weight"])
            model.head.bias.copy_(head["bias"])
    return model


def save_value_model(model: ValueModel, out_dir: str, state_dict: dict[str, Tensor] | None = None) -> None:
    """Write ``model`` to ``out_dir`` as a critic that ``load_value_model`` reads back.

    state_dict: full (gathered) parameters named as in ``model.named_parameters()`` (``backbone.*``, ``head.*``),
    e.g. ZeRO-3 params gathered by the trainer; written instead of the module's own tensors. Call on one rank.
    """
    if state_dict is None:
        state_dict = {name: p.detach() for name, p in model.named_parameters()}
    backbone_sd: dict[str, Tensor] = {}
    head_sd: dict[str, Tensor] = {}
    for name, tensor in state_dict.items():
        if name.startswith("backbone."):
            backbone_sd[name[len("backbone.") :]] = tensor
        elif name.startswith("head."):
            head_sd[name[len("head.") :]] = tensor.detach().to("cpu").contiguous()
        else:
            raise ValueError(f"save_value_model: unexpected parameter {name!r}; expected backbone.* or head.*")
    if set(head_sd) != {"weight", "bias"}:
        raise ValueError(f"save_value_model: the state dict must hold head.weight and head.bias, got {sorted(head_sd)}")
    os.makedirs(out_dir, exist_ok=True)
    model.backbone.save_pretrained(out_dir, state_dict=backbone_sd, safe_serialization=True)
    save_file(head_sd, os.path.join(out_dir, HEAD_WEIGHTS))
    with open(os.path.join(out_dir, HEAD_CONFIG), "w", encoding="utf-8") as f:
        json.dump({"num_heads": int(head_sd["weight"].shape[0])}, f)


__all__ = ["ValueModel", "completion_values", "load_value_model", "packed_completion_values", "save_value_model"]
