"""Preference pairs for DPO-family objectives and reward models: load (prompt, chosen, rejected) rows and batch
them as token ids.

    rows = load_preference_rows("prefs.jsonl")                       # list of dicts, validated
    batch = collate_preference(tokenizer, rows[:8], max_len=256)     # PreferenceBatch, right-padded
    rm = collate_rm(tokenizer, rows[:8], 256, heads, columns, None)  # RMBatch: + (B, K) labels, (B,) margins

Rows are plain dicts with string ``prompt``, ``chosen`` and ``rejected`` (renamed from the configured columns);
other columns are kept (e.g. per-pair margin rewards for MODPO). Every row is checked when loaded: a missing
column, a non-string value, an empty completion or a pair whose chosen equals its rejected is an error naming
the file and the row (0-based, plus the line for jsonl).

Tokens follow ``rlhf.data.collate`` exactly (the same functions build them): ``[bos] + prompt`` then
``completion + [eos]``, each tokenized with ``add_special_tokens=False``. ``*_loss_mask`` is 1 on the completion
tokens and the eos, as in ``SFTBatch.loss_mask`` (token t is a target predicted from the logits at t - 1).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from rlhf.data.collate import completion_token_ids, prompt_token_ids
from rlhf.data.loaders import DataLoadError, check_text, read_jsonl

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")


@dataclass
class PreferenceBatch:
    """B preference pairs; chosen and rejected are right-padded to the same length T so they can share a forward."""

    chosen_ids: Tensor  # (B, T) long, [bos] + prompt + chosen + eos, right-padded with pad_token_id
    chosen_mask: Tensor  # (B, T) long, 1 on real tokens
    chosen_loss_mask: Tensor  # (B, T) float32, 1 on chosen completion tokens and its eos
    rejected_ids: Tensor  # (B, T) long, [bos] + prompt + rejected + eos, right-padded
    rejected_mask: Tensor  # (B, T) long
    rejected_loss_mask: Tensor  # (B, T) float32, 1 on rejected completion tokens and its eos

    @property
    def batch_size(self) -> int:
        return int(self.chosen_ids.shape[0])

    def stacked(self) -> tuple[Tensor, Tensor, Tensor]:
        """(2B, T) input_ids, attention_mask, loss_mask: rows [0, B) chosen, [B, 2B) rejected (one forward)."""
        return (
            torch.cat([self.chosen_ids, self.rejected_ids], dim=0),
            torch.cat([self.chosen_mask, self.rejected_mask], dim=0),
            torch.cat([self.chosen_loss_mask, self.rejected_loss_mask], dim=0),
        )

    def to(self, device: torch.device | str) -> "PreferenceBatch":
        return PreferenceBatch(*(t.to(device) for t in self._tensors()))

    def slice(self, start: int, stop: int) -> "PreferenceBatch":
        return PreferenceBatch(*(t[start:stop] for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.chosen_ids, self.chosen_mask, self.chosen_loss_mask,
                self.rejected_ids, self.rejected_mask, self.rejected_loss_mask)


# --------------------------------------------------------------------------- loading


def _read_parquet(path: str) -> list[dict]:
    from datasets import load_dataset

    try:
        return load_dataset("parquet", data_files=path, split="train").to_list()
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise DataLoadError(f"cannot load parquet {path}: {e}") from e


def _validate_row(row: dict, where: str, columns: dict[str, str]) -> dict[str, Any]:
    """Check one raw row and return it with the three columns renamed to prompt/chosen/rejected."""
    missing = [col for col in columns.values() if col not in row]
    if missing:
        raise DataLoadError(f"{where}: missing column(s) {missing}; the row has columns {list(row)}")
    for key, col in columns.items():
        if not isinstance(row[col], str):
            raise DataLoadError(
                f"{where}: column {col!r} ({key}) is {type(row[col]).__name__} {row[col]!r:.80}, expected a string"
            )
        check_text(row[col], f"{where}: column {col!r} ({key})")
    chosen, rejected = row[columns["chosen"]], row[columns["rejected"]]
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise DataLoadError(f"{where}: {key} completion (column {columns[key]!r}) is empty")
    if chosen == rejected:
        raise DataLoadError(f"{where}: chosen and rejected are identical ({chosen[:80]!r}); the pair teaches nothing")
    renamed = {col: key for key, col in columns.items()}
    out: dict[str, Any] = {}
    for k, v in row.items():
        new = renamed.get(k, k)
        if new in out:
            raise DataLoadError(f"{where}: cannot rename column {k!r} to {new!r}: a {new!r} column exists too; "
                                f"the row has columns {list(row)}")
        out[new] = v
    return out


def load_preference_rows(
    path: str,
    prompt_column: str = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
) -> list[dict]:
    """Validated preference rows from a ``.jsonl`` / ``.json`` (one object per line) or ``.parquet`` file."""
    if not os.path.isfile(path):
        raise DataLoadError(f"preference data: file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json"):
        rows, lines = read_jsonl(path)
    elif ext == ".parquet":
        rows = _read_parquet(path)
        lines = None
    else:
        raise DataLoadError(f"preference data: {path!r} is neither .jsonl nor .parquet")
    if not rows:
        raise DataLoadError(f"{path}: no rows (the file is empty)")
    columns = {"prompt": prompt_column, "chosen": chosen_column, "rejected": rejected_column}
    if len(set(columns.values())) != 3:
        raise DataLoadError(f"{path}: prompt/chosen/rejected columns must differ, got {columns}")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}, row {i}" + (f" (line {lines[i]})" if lines is not None else "")
        out.append(_validate_row(row, where, columns))
    return out


# --------------------------------------------------------------------------- batching


def _pair_texts(rows: Sequence[dict], i: int) -> tuple[str, str, str]:
    row = rows[i]
    for key in PREFERENCE_KEYS:
        if not isinstance(row.get(key), str):
            raise ValueError(
                f"collate_preference: row {i} needs a string {key!r}, got {row.get(key)!r}; row keys are {sorted(row)}"
            )
    return row["prompt"], row["chosen"], row["rejected"]


def _fill(seqs: list[list[int]], targets: list[list[int]], T: int, pad: int) -> tuple[Tensor, Tensor, Tensor]:
    B = len(seqs)
    ids = torch.full((B, T), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    loss_mask = torch.zeros((B, T), dtype=torch.float32)  # (B, T)
    for b, (s, tgt) in enumerate(zip(seqs, targets)):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1
        loss_mask[b, : len(s)] = torch.tensor(tgt, dtype=torch.float32)
    return ids, mask, loss_mask


def collate_preference(tokenizer, rows: Sequence[dict], max_len: int) -> PreferenceBatch:
    """Tokenize B pairs into a ``PreferenceBatch`` right-padded to the longest of all 2B sequences.

    Sequences longer than ``max_len`` lose their tail (a warning gives the count). A row whose prompt alone fills
    ``max_len`` (no completion token left) is an error naming the row.
    """
    if not rows:
        raise ValueError("collate_preference: no rows")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ValueError("collate_preference: the tokenizer has no pad_token_id")
    seqs: dict[str, list[list[int]]] = {"chosen": [], "rejected": []}
    targets: dict[str, list[list[int]]] = {"chosen": [], "rejected": []}
    n_truncated = 0
    for i in range(len(rows)):
        prompt, chosen, rejected = _pair_texts(rows, i)
        p_ids = prompt_token_ids(tokenizer, prompt)
        if len(p_ids) >= max_len:
            raise ValueError(f"collate_preference: row {i}'s prompt is {len(p_ids)} tokens, >= max_len={max_len}; "
                             "no completion token would be left (raise max_len or shorten the prompt)")
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            c_ids = completion_token_ids(tokenizer, text)
            ids, tgt = p_ids + c_ids, [0] * len(p_ids) + [1] * len(c_ids)
            if len(ids) > max_len:
                n_truncated += 1
                ids, tgt = ids[:max_len], tgt[:max_len]
            seqs[key].append(ids)
            targets[key].append(tgt)
    if n_truncated:
        warnings.warn(f"collate_preference: {n_truncated}/{2 * len(rows)} sequences were longer than "
                      f"max_len={max_len} and lost their tail (and eos)", stacklevel=2)
    T = max(len(s) for key in seqs for s in seqs[key])
    chosen = _fill(seqs["chosen"], targets["chosen"], T, int(pad))
    rejected = _fill(seqs["rejected"], targets["rejected"], T, int(pad))
    return PreferenceBatch(*chosen, *rejected)


# --------------------------------------------------------------------------- reward-model pairs


@dataclass
class RMBatch:
    """B preference pairs for reward-model training, with each head's preference label and a margin per pair."""

    pairs: PreferenceBatch  # (B, T) chosen / rejected ids and masks
    labels: Tensor  # (B, K) float32: 1 chosen preferred, -1 rejected preferred, 0 no preference (per head)
    margin: Tensor | None  # (B,) float32 or None

    @property
    def batch_size(self) -> int:
        return self.pairs.batch_size

    def to(self, device: torch.device | str) -> "RMBatch":
        return RMBatch(self.pairs.to(device), self.labels.to(device),
                       None if self.margin is None else self.margin.to(device))

    def slice(self, start: int, stop: int) -> "RMBatch":
        return RMBatch(self.pairs.slice(start, stop), self.labels[start:stop],
                       None if self.margin is None else self.margin[start:stop])


PREFERENCE_LABELS = (1, -1, 0)


def rm_label(row: dict, column: str | None) -> float:
    """A head's preference label of one row: 1 when the head takes chosen's side (no column), else the column's
    1 / -1 / 0 (null counts as 0: no preference)."""
    if column is None:
        return 1.0
    if column not in row:
        raise ValueError(f"has no preference column {column!r} (columns: {sorted(row)})")
    v = row[column]
    if v is None:
        return 0.0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in PREFERENCE_LABELS:
        raise ValueError(f"column {column!r} is {v!r}; a preference label is 1 (chosen), -1 (rejected), 0 or null")
    return float(v)


def rm_margin(row: dict, column: str) -> float:
    v = row.get(column)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"margin column {column!r} is {v!r}; it must be a finite number")
    return float(v)


def check_rm_rows(rows: Sequence[dict], where: str, heads: Sequence[str], preference_columns: dict[str, str],
                  margin_column: str | None) -> None:
    """Every row has a usable label per head (and a margin): a DataLoadError names the data key, row and column."""
    for i, row in enumerate(rows):
        try:
            for head in heads:
                rm_label(row, preference_columns.get(head))
            if margin_column is not None:
                rm_margin(row, margin_column)
        except ValueError as exc:
            raise DataLoadError(f"{where}: row {i} {exc}") from None


def collate_rm(tokenizer, rows: Sequence[dict], max_len: int, heads: Sequence[str],
               preference_columns: dict[str, str], margin_column: str | None) -> RMBatch:
    """Tokenize B pairs (as ``collate_preference``) with their (B, K) labels and (B,) margins."""
    labels = torch.tensor([[rm_label(r, preference_columns.get(h)) for h in heads] for r in rows],
                          dtype=torch.float32)  # (B, K)
    margin = (None if margin_column is None
              else torch.tensor([rm_margin(r, margin_column) for r in rows], dtype=torch.float32))  # (B,)
    return RMBatch(collate_preference(tokenizer, rows, max_len), labels, margin)
