"""Padding-free forwards: the real tokens of a padded batch packed back to back, and their completion logprobs.

    packed = pack_rows(input_ids, attention_mask, prompt_len, row_tokens=0)  # (R, L) rows of whole sequences
    logprobs = packed_completion_logprobs(model, input_ids, attention_mask, prompt_len, temperature)  # (B, C)
    groups = balanced_partition(attention_mask.sum(1), parts)  # micro-batches of equal rows, about equal tokens

A batch here is laid out as everywhere else (``rlhf.types``): prompts LEFT-padded to P, completions RIGHT-padded
to C, so each row's real tokens are one contiguous run. Packing drops the padding: the runs are placed back to back
into R rows of L tokens (first-fit decreasing into rows of max(``row_tokens``, longest run); one row when
``row_tokens`` is None), each run at positions 0..n-1, the tail of a row filled with ``pad_id`` at positions
restarting at 0. Called with ``attention_mask=None`` and no cache, transformers (checked on 5.19) finds the runs
from the position ids (``masking_utils.find_packed_sequence_indices``: a new sequence wherever the position does
not grow by one) and builds a block-diagonal causal mask (sdpa, eager, flex), or runs varlen flash attention (one
row only: ``varlen_attention``). Every token then attends to exactly the tokens it attends to in the padded batch,
at the same positions, so the logprobs are those of the padded forward (tests/unit/test_packing.py) with nothing
computed for padding. Rows as long as the longest run keep sdpa's attention cost near the padded one's (one row
of N tokens would cost N^2).

Only the positions that predict a completion token reach the output head, gathered from the packed rows
(``logits_to_keep`` as an index tensor for one row where the model takes it; otherwise a forward pre-hook on the
head that gathers its input), so the head and its float32 softmax see sum(completion lengths) positions instead
of B x (C + 1). Imports only torch and the standard library.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor

from rlhf.objectives.common import _accepts_logits_to_keep, position_ids_from_mask, selected_logprobs, unwrapped


@dataclass(frozen=True)
class PackedRows:
    """The real tokens of a (B, T) padded batch in R rows of L tokens, and where each completion token's
    predictor landed."""

    input_ids: Tensor  # (R, L) long: the rows' runs back to back, tails pad_id
    position_ids: Tensor  # (R, L) long: 0..n-1 per run, restarting at 0 on each tail
    predictor: Tensor  # (B, C) long: flat index into (R * L) of the token predicting completion token j; 0 if none
    valid: Tensor  # (B, C) bool: completion token j is real and has a real token before it in its row

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.input_ids.shape[0]), int(self.input_ids.shape[1])


def _place(lengths: list[int], row_tokens: int | None) -> tuple[list[int], list[int], list[int]]:
    """Row and offset of each run (first-fit decreasing into rows of max(row_tokens, longest run)), and each
    row's fill. Runs of length 0 take no room (row 0, offset 0)."""
    capacity = sum(lengths) if row_tokens is None else max(row_tokens, max(lengths, default=0))
    rows, offsets, fills = [0] * len(lengths), [0] * len(lengths), []
    for b in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties keep batch order
        n = lengths[b]
        if n == 0:
            continue
        r = next((r for r, f in enumerate(fills) if f + n <= capacity), len(fills))
        if r == len(fills):
            fills.append(0)
        rows[b], offsets[b], fills[r] = r, fills[r], fills[r] + n
    return rows, offsets, fills or [1]


def pack_rows(input_ids: Tensor, attention_mask: Tensor, prompt_len: int, row_tokens: int | None = None,
              pad_id: int = 0) -> PackedRows:
    """Pack the real tokens of input_ids, attention_mask (B, P + C) (prompt left-padded to ``prompt_len`` = P,
    completion right-padded) into rows of at most max(row_tokens, longest row) tokens; row_tokens None: one row."""
    real = attention_mask.bool()  # (B, T)
    lengths = real.sum(dim=1)  # (B,)
    first = real.long().argmax(dim=1)  # (B,) first real column
    last = real.shape[1] - 1 - real.flip(1).long().argmax(dim=1)  # (B,) last real column
    holes = (lengths > 0) & (last - first + 1 != lengths)  # (B,)
    if bool(holes.any()):
        raise ValueError(f"packing: rows {holes.nonzero().flatten().tolist()[:5]} have padding between real tokens; "
                         "packing needs each row's real tokens contiguous (left-padded prompt, right-padded "
                         "completion)")
    rows, offsets, fills = _place(lengths.tolist(), row_tokens)
    R, L = len(fills), max(fills)
    device = input_ids.device
    start = torch.tensor(rows, device=device) * L + torch.tensor(offsets, device=device)  # (B,) flat start
    pos = position_ids_from_mask(attention_mask)  # (B, T) 0..n-1 on real tokens
    dest = start.unsqueeze(1) + pos  # (B, T) flat index of each real token
    ids = input_ids.new_full((R * L,), pad_id)  # (R * L,)
    ids[dest[real]] = input_ids[real]
    fill = torch.tensor(fills, device=device)  # (R,)
    positions = (torch.arange(L, device=device).unsqueeze(0) - fill.unsqueeze(1)).clamp(min=0)  # (R, L) tails
    positions = positions.reshape(-1)  # (R * L,)
    positions[dest[real]] = pos[real]
    valid = real[:, prompt_len:] & (pos[:, prompt_len:] >= 1)  # (B, C)
    predictor = torch.where(valid, dest[:, prompt_len:] - 1, torch.zeros_like(dest[:, prompt_len:]))  # (B, C)
    return PackedRows(input_ids=ids.view(R, L), position_ids=positions.view(R, L), predictor=predictor, valid=valid)


def balanced_partition(tokens: Tensor, parts: int) -> list[list[int]]:
    """Rows 0..n-1 split into ``parts`` groups of n / parts rows each, with about the same total of ``tokens`` (n,)
    per group: longest rows first, each into the open group (fewer than n / parts rows) with the fewest tokens so
    far (LPT with a cardinality cap). Every row lands in exactly one group; groups keep their rows in batch order.
    Equal row counts keep per-micro-batch sequence means (loss_agg seq_mean) and dr_grpo's constant denominator
    exact."""
    n = int(tokens.shape[0])
    if parts < 1 or n % parts:
        raise ValueError(f"balanced_partition: {n} rows do not split into {parts} equal groups")
    size, counts = n // parts, [int(t) for t in tokens.tolist()]
    groups: list[list[int]] = [[] for _ in range(parts)]
    load = [0] * parts
    for b in sorted(range(n), key=lambda i: -counts[i]):  # stable: ties keep batch order
        g = min((g for g in range(parts) if len(groups[g]) < size), key=lambda g: (load[g], g))
        groups[g].append(b)
        load[g] += counts[b]
    return [sorted(g) for g in groups]


def varlen_attention(model: Any) -> bool:
    """True when the model attends with flash attention, which takes packed sequences (varlen) only as a batch of
    ONE row (transformers' ``_is_packed_sequence``); sdpa, eager and flex build the block-diagonal mask for any
    number of rows."""
    return "flash" in str(unwrapped(model).config._attn_implementation)


def output_head(model: Any) -> torch.nn.Module:
    """The module that turns a causal LM's hidden states into logits (through DeepSpeed/DDP and peft wrappers)."""
    inner = unwrapped(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Module):
        raise TypeError(f"train.packing: {type(inner).__name__} has no output head (get_output_embeddings); packing "
                        "needs a transformers causal LM")
    return head


@contextmanager
def head_sees(head: torch.nn.Module, keep: Tensor) -> Iterator[None]:
    """While open, ``head`` is applied only to the flat positions ``keep`` (M,) of its (R, L, d) input, giving
    (1, M, out) (a forward pre-hook that gathers; removed on exit)."""

    def gather(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]  # (R, L, d)
        return (hidden.reshape(-1, hidden.shape[-1])[keep].unsqueeze(0), *args[1:])  # (1, M, d)

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def packed_completion_logprobs(model: Any, input_ids: Tensor, attention_mask: Tensor, prompt_len: int,
                               temperature: float = 1.0, one_row: bool | None = None) -> Tensor:
    """(B, C) float32 log-probability of each completion token under ``model`` (a transformers causal LM), from one
    packed forward: equal to ``completion_logprobs`` on the real tokens; 0 on completion padding.

    input_ids, attention_mask: (B, P + C), prompt left-padded to ``prompt_len`` = P, completion right-padded.
    one_row: pack everything into one row (True) or first-fit into rows as long as the longest sequence (False:
    attention costs about what it costs padded, not (sum of lengths)^2 under sdpa); None: one row exactly when the
    model uses flash attention (``varlen_attention``), whose varlen kernels need it and cost the same either way.
    """
    if prompt_len < 1:
        raise ValueError(f"packed_completion_logprobs: prompt_len must be >= 1 (got {prompt_len})")
    B, C = input_ids.shape[0], input_ids.shape[1] - prompt_len
    out = torch.zeros((B, max(C, 0)), dtype=torch.float32, device=input_ids.device)  # (B, C)
    if C <= 0:
        return out
    one_row = varlen_attention(model) if one_row is None else one_row
    packed = pack_rows(input_ids, attention_mask, prompt_len, None if one_row else 0)
    keep = packed.predictor[packed.valid]  # (M,) flat predictor positions, row-major over (b, j)
    if keep.numel() == 0:
        return out
    targets = input_ids[:, prompt_len:][packed.valid].unsqueeze(0)  # (1, M)
    kwargs: dict[str, Any] = {"input_ids": packed.input_ids, "position_ids": packed.position_ids,
                              "attention_mask": None, "use_cache": False}
    if packed.shape[0] == 1 and _accepts_logits_to_keep(model):
        result = model(**kwargs, logits_to_keep=keep)  # logits (1, M, V)
    else:
        with head_sees(output_head(model), keep):
            result = model(**kwargs)  # logits (1, M, V)
    logits = result.logits if hasattr(result, "logits") else result[0]  # (1, M, V)
    if logits.shape[:2] != (1, keep.numel()):
        raise RuntimeError(f"packed_completion_logprobs: expected logits for {keep.numel()} positions, got "
                           f"{tuple(logits.shape)} from {type(model).__name__}")
    out[packed.valid] = selected_logprobs(logits, targets, temperature)[0]
    return out
