"""Token-level batching: SFT batches (prompt + completion + eos, loss on the completion) and left-padded prompts.

    batch = collate_sft(tokenizer, rows, max_len=128)                  # SFTBatch, right-padded
    ids, mask = encode_prompts(tokenizer, prompts, max_prompt_tokens)   # (B, P), left-padded for generation

One bos convention for both, so SFT and rollout see the same prompt tokens: the prompt text (already chat
formatted, see ``rlhf.data.chat``) is tokenized with ``add_special_tokens=False`` and ``bos_token_id`` is
prepended when the tokenizer has one and the text did not already start with it (chat templates often write
bos themselves). The completion is tokenized separately with ``add_special_tokens=False`` and followed by eos.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from rlhf.types import SFTBatch


def _require(tokenizer, attr: str, where: str) -> int:
    value = getattr(tokenizer, attr, None)
    if value is None:
        raise ValueError(f"{where}: the tokenizer has no {attr}")
    return int(value)


def prompt_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a (formatted) prompt: ``[bos] + tokens`` (bos only if the tokenizer has one)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def completion_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a target completion followed by eos."""
    eos = _require(tokenizer, "eos_token_id", "completion_token_ids")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos]


def _row_texts(rows: Sequence[dict], i: int) -> tuple[str, str]:
    row = rows[i]
    for key in ("prompt", "completion"):
        if not isinstance(row.get(key), str):
            raise ValueError(
                f"collate_sft: row {i} needs a string {key!r}, got {row.get(key)!r}; row keys are {sorted(row)}"
            )
    return row["prompt"], row["completion"]


def collate_sft(tokenizer, rows: Sequence[dict], max_len: int, observation_template: str | None = None) -> SFTBatch:
    """Right-padded ``prompt + completion + eos`` with ``loss_mask`` = 1 on completion tokens and the eos only.

    ``observation_template`` (an agent's demonstrations, e.g. ``"<obs>{observation}</obs>\n"``): the completion
    is a multi-turn transcript; its observations (the template's matches) are encoded on their own, as the agent
    rollout appends them, and get no loss, and each model turn between them is encoded on its own too, so no
    token spans a turn and an observation. Sequences longer than ``max_len`` lose their tail (a warning gives the
    count).
    """
    if not rows:
        raise ValueError("collate_sft: no rows")
    pad = _require(tokenizer, "pad_token_id", "collate_sft")
    seqs: list[list[int]] = []
    targets: list[list[int]] = []
    n_truncated = 0
    for i in range(len(rows)):
        prompt, completion = _row_texts(rows, i)
        p_ids = prompt_token_ids(tokenizer, prompt)
        if observation_template is None:
            c_ids = completion_token_ids(tokenizer, completion)
            c_tgt = [1] * len(c_ids)
        else:
            c_ids, c_tgt = _transcript_ids(tokenizer, completion, observation_template)
        ids, tgt = p_ids + c_ids, [0] * len(p_ids) + c_tgt
        if len(ids) > max_len:
            n_truncated += 1
            ids, tgt = ids[:max_len], tgt[:max_len]
        seqs.append(ids)
        targets.append(tgt)
    if n_truncated:
        warnings.warn(f"collate_sft: {n_truncated}/{len(rows)} sequences were longer than max_len={max_len} "
                      "and lost their tail (and eos)", stacklevel=2)
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(seqs), T), dtype=torch.long)  # (B, T)
    loss_mask = torch.zeros((len(seqs), T), dtype=torch.float32)  # (B, T)
    for b, (ids, tgt) in enumerate(zip(seqs, targets)):
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, : len(ids)] = 1
        loss_mask[b, : len(ids)] = torch.tensor(tgt, dtype=torch.float32)
    return SFTBatch(input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask)


def transcript_pieces(text: str, observation_template: str) -> list[tuple[str, bool]]:
    """A multi-turn transcript as (piece, is_model) in order: the template's matches are observations."""
    import re

    if "{observation}" not in observation_template:
        raise ValueError(f"observation template {observation_template!r} has no {{observation}} field")
    before, after = observation_template.split("{observation}", 1)
    pattern = re.compile(re.escape(before) + r"(.*?)" + re.escape(after), re.DOTALL)
    pieces, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            pieces.append((text[pos:m.start()], True))
        pieces.append((m.group(0), False))
        pos = m.end()
    if pos < len(text):
        pieces.append((text[pos:], True))
    return pieces


def _transcript_ids(tokenizer, text: str, observation_template: str) -> tuple[list[int], list[int]]:
    """(ids, targets) of a transcript + eos: each piece encoded on its own; observations are not targets."""
    ids: list[int] = []
    targets: list[int] = []
    for piece, is_model in transcript_pieces(text, observation_template):
        piece_ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"])
        ids += piece_ids
        targets += [int(is_model)] * len(piece_ids)
    return ids + [_require(tokenizer, "eos_token_id", "collate_sft")], targets + [1]


def _truncate_left(ids: list[int], max_tokens: int, bos: int | None) -> list[int]:
    """Keep the last tokens; a leading bos stays in front."""
    if bos is None or not ids or ids[0] != bos:
        return ids[-max_tokens:]
    if max_tokens == 1:
        return [bos]
    return [bos] + ids[1:][-(max_tokens - 1):]


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids ``(B, P)`` and attention mask ``(B, P)``; ``P`` = longest prompt (<= max).

    Prompts longer than ``max_prompt_tokens`` lose their beginning (the bos, if any, is kept); a warning gives
    the count.
    """
    if not prompts:
        raise ValueError("encode_prompts: no prompts")
    if max_prompt_tokens < 1:
        raise ValueError(f"encode_prompts: max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    pad = _require(tokenizer, "pad_token_id", "encode_prompts")
    encoded = [prompt_token_ids(tokenizer, p) for p in prompts]
    too_long = sum(len(ids) > max_prompt_tokens for ids in encoded)
    if too_long:
        warnings.warn(f"encode_prompts: {too_long}/{len(prompts)} prompts were longer than "
                      f"max_prompt_tokens={max_prompt_tokens} (data.max_prompt_tokens) and lost their beginning",
                      stacklevel=2)
        encoded = [_truncate_left(ids, max_prompt_tokens, tokenizer.bos_token_id) for ids in encoded]
    return left_pad(encoded, pad)


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids ``(B, P)`` and attention mask ``(B, P)`` of token-id lists; ``P`` = the longest."""
    P = max(len(ids) for ids in rows)
    ids_t = torch.full((len(rows), P), pad, dtype=torch.long)  # (B, P)
    mask_t = torch.zeros((len(rows), P), dtype=torch.long)  # (B, P)
    for b, ids in enumerate(rows):
        if len(ids):
            ids_t[b, P - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
            mask_t[b, P - len(ids):] = 1
    return ids_t, mask_t
