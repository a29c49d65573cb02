"""Helpers shared by every objective: masked reductions and per-token log-probabilities of completions.

``completion_logprobs`` computes log pi(o_t | q, o_<t) for each completion token, the quantity every
policy-gradient loss here is written in (e.g. the ratio in DeepSeekMath eq. 3, Shao et al. 2024):

    logprobs[b, j] = log_softmax(logits[b, P + j - 1] / temperature)[input_ids[b, P + j]]

Prompts are LEFT-padded to P and completions RIGHT-padded to C (see ``rlhf.types``), so position ids are
derived from the attention mask: a left-padded row's first real token sits at position 0, exactly as if the row
were run alone. Imports only torch and the standard library.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of ``x * mask`` (over ``dim``, or everything). Entries where mask == 0 are ignored even if NaN/inf."""
    mask = mask.to(x.dtype)
    x = torch.where(mask != 0, x, torch.zeros_like(x)) * mask
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over entries where mask != 0 (mask may be fractional weights); 0 where the mask is empty."""
    total = masked_sum(x, mask, dim)
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim=dim)
    return torch.where(count > 0, total / count.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(total))


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """(B, T) position of each token counting only real tokens; 0 on left padding."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def _accepts_logits_to_keep(model: Any) -> bool:
    """True when the (possibly wrapped) HF model's forward takes ``logits_to_keep`` (transformers >= 4.50)."""
    inner = getattr(model, "module", model)  # DeepSpeed / DDP wrappers forward kwargs to .module
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def completion_logprobs(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    temperature: float = 1.0,
) -> Tensor:
    """(B, C) log-probability of each completion token under ``model`` (a HF causal LM).

    input_ids, attention_mask: (B, P + C), prompt left-padded to ``prompt_len`` = P, completion right-padded.
    Values on completion padding are the logprob of the pad token (mask them out downstream).
    Only the C positions that predict completion tokens are turned into log-probabilities, one row at a time,
    so the float32 (C, V) softmax temporary is per sequence, not per batch.
    """
    B, T = input_ids.shape
    C = T - prompt_len
    if prompt_len < 1:
        raise ValueError(f"completion_logprobs: prompt_len must be >= 1 (got {prompt_len})")
    if C <= 0:
        return input_ids.new_zeros((B, 0), dtype=torch.float32)
    position_ids = position_ids_from_mask(attention_mask)  # (B, P + C)
    kwargs: dict[str, Any] = {}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = C + 1  # positions P-1 .. P+C-1; the last one is dropped below
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T or C + 1, V)
    logits = logits[:, -(C + 1) : -1]  # (B, C, V): position P + j - 1 predicts completion token j
    targets = input_ids[:, prompt_len:]  # (B, C)
    rows = []
    for b in range(B):
        logp = torch.log_softmax(logits[b].float() / temperature, dim=-1)  # (C, V)
        rows.append(logp.gather(-1, targets[b].unsqueeze(-1)).squeeze(-1))  # (C,)
    return torch.stack(rows, dim=0)  # (B, C)


def token_logprobs(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T-1) log-probability of tokens 1..T-1 of right-padded sequences (token t predicted at t-1).

    For full sequences such as preference pairs (no left padding); mask the result with ``loss_mask[:, 1:]``.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T, V)
    targets = input_ids[:, 1:]  # (B, T-1)
    rows = []
    for b in range(input_ids.shape[0]):
        logp = torch.log_softmax(logits[b, :-1].float(), dim=-1)  # (T-1, V)
        rows.append(logp.gather(-1, targets[b].unsqueeze(-1)).squeeze(-1))  # (T-1,)
    return torch.stack(rows, dim=0)  # (B, T-1)
