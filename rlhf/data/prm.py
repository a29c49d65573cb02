"""Step-labelled data for process reward models (PRMs): encoding, batching, and a synthetic labelled task.

A PRM input is the prompt followed by the steps, each followed by a step tag (Math-Shepherd style):

    [bos] prompt  step_1 TAG  step_2 TAG ... step_n TAG

The model's logits at the LAST token of each tag are read: P(good) = softmax([logit_good, logit_bad])[0], with
``good``/``bad`` single tokens (e.g. "+" and "-"). Pieces are tokenised separately and concatenated, so the tag
positions are exact under any tokenizer (no merge across a step and its tag). Training (rlhf/objectives/prm.py)
and scoring (rewards/models/prm.py) both use ``encode_steps``, so they read the same positions.

Rows (jsonl, as in Math-Shepherd / PRM800K after flattening): ``{"prompt": str, "steps": [str, ...],
"labels": [0/1 or bool, ...]}``, one label per step (1 = the step is correct).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from rlhf.data.collate import prompt_token_ids


@dataclass
class PRMBatch:
    """Right-padded PRM inputs with the step-tag positions and their labels."""

    input_ids: Tensor  # (B, T) long
    attention_mask: Tensor  # (B, T) long
    tag_mask: Tensor  # (B, T) float32, 1 at the last token of each step tag (where the verdict is read)
    labels: Tensor  # (B, T) float32, the step's label (1 good, 0 bad) at tag positions, 0 elsewhere
    candidates: Tensor  # (2,) long, token ids [good, bad]

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: Any) -> "PRMBatch":
        return PRMBatch(self.input_ids.to(device), self.attention_mask.to(device), self.tag_mask.to(device),
                        self.labels.to(device), self.candidates.to(device))

    def slice(self, start: int, stop: int) -> "PRMBatch":
        return PRMBatch(self.input_ids[start:stop], self.attention_mask[start:stop], self.tag_mask[start:stop],
                        self.labels[start:stop], self.candidates)


def single_token(tokenizer: Any, text: str, what: str) -> int:
    """The id of ``text`` when it is exactly one token; else a ValueError naming the setting."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{what} {text!r} must be a single token of the tokenizer; it encodes to {len(ids)} tokens "
                         f"{ids}. Choose a string the tokenizer keeps whole (e.g. '+' / '-')")
    return int(ids[0])


def encode_steps(tokenizer: Any, prompt: str, steps: Sequence[str], tag: str) -> tuple[list[int], list[int]]:
    """(token ids, index of the last token of each step's tag). See the module docstring."""
    tag_ids = list(tokenizer(tag, add_special_tokens=False)["input_ids"])
    if not tag_ids:
        raise ValueError(f"the step tag {tag!r} encodes to no tokens; choose a visible string")
    ids = prompt_token_ids(tokenizer, prompt)
    positions = []
    for step in steps:
        ids += list(tokenizer(step, add_special_tokens=False)["input_ids"]) + tag_ids
        positions.append(len(ids) - 1)
    return ids, positions


def check_row(row: dict, index: int, steps_column: str = "steps", labels_column: str = "labels") -> None:
    """A clear error naming the row and column when a PRM row is malformed."""
    steps, labels = row.get(steps_column), row.get(labels_column)
    if not isinstance(row.get("prompt"), str):
        raise ValueError(f"PRM data row {index}: needs a string 'prompt'; row keys are {sorted(row)}")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"PRM data row {index}: column {steps_column!r} must be a list of strings, got {steps!r:.80}")
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(steps)):
        raise ValueError(f"PRM data row {index}: column {labels_column!r} must be a list with one label per step "
                         f"({len(steps)} steps), got {labels!r:.80}")
    if labels is not None and not all(x in (0, 1, True, False) for x in labels):
        raise ValueError(f"PRM data row {index}: labels must be 0/1 or true/false, got {labels!r:.80}")


def collate_prm(tokenizer: Any, rows: Sequence[dict], tag: str, good: str, bad: str, max_len: int,
                steps_column: str = "steps", labels_column: str = "labels") -> PRMBatch:
    """Batch step-labelled rows; steps whose tag falls beyond ``max_len`` are dropped (the sequence is cut)."""
    if not rows:
        raise ValueError("collate_prm: no rows")
    candidates = torch.tensor([single_token(tokenizer, good, "the PRM's good token"),
                               single_token(tokenizer, bad, "the PRM's bad token")], dtype=torch.long)  # (2,)
    encoded = []
    for i, row in enumerate(rows):
        check_row(row, i, steps_column, labels_column)
        ids, positions = encode_steps(tokenizer, row["prompt"], row[steps_column], tag)
        labels = row.get(labels_column) or [0] * len(positions)
        kept = [(p, float(y)) for p, y in zip(positions, labels) if p < max_len]
        encoded.append((ids[:max_len], kept))
    T = max(len(ids) for ids, _ in encoded)
    pad = int(tokenizer.pad_token_id)
    input_ids = torch.full((len(rows), T), pad, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
    tag_mask = torch.zeros((len(rows), T), dtype=torch.float32)  # (B, T)
    labels_t = torch.zeros((len(rows), T), dtype=torch.float32)  # (B, T)
    for b, (ids, kept) in enumerate(encoded):
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, : len(ids)] = 1
        for p, y in kept:
            tag_mask[b, p] = 1.0
            labels_t[b, p] = y
    return PRMBatch(input_ids, attention_mask, tag_mask, labels_t, candidates)


def make_step_labelled(rows: Sequence[dict], seed: int, error_rate: float = 0.5) -> list[dict]:
    """Step-labelled rows from worked chain-arithmetic rows (``completion`` = steps, one per line).

    With probability ``error_rate`` one step (uniform) gets a wrong result (off by 1..9) and, as in Math-Shepherd,
    it and every later step are labelled 0 (later steps build on the wrong value and are rewritten to do so).
    """
    rng = random.Random(seed)
    out = []
    for row in rows:
        steps = row["completion"].split("\n")
        labels = [1] * len(steps)
        if rng.random() < error_rate:
            bad = rng.randrange(len(steps))
            steps = _corrupt_from(steps, bad, rng.choice([-1, 1]) * rng.randint(1, 9))
            labels = [1] * bad + [0] * (len(steps) - bad)
        out.append({"prompt": row["prompt"], "steps": steps, "labels": labels, "answer": row.get("answer")})
    return out


def _corrupt_from(steps: list[str], bad: int, delta: int) -> list[str]:
    """Shift the result of step ``bad`` by ``delta`` and carry the wrong value through the later steps."""
    import re

    out = list(steps[:bad])
    carry = None
    for s in steps[bad:]:
        m = re.fullmatch(r"(-?\d+)([+\-*])(-?\d+)=(-?\d+)", s)
        if m is None:
            out.append(s)
            continue
        x, op, y = int(m.group(1)), m.group(2), int(m.group(3))
        x = x if carry is None else carry
        z = {"+": x + y, "-": x - y, "*": x * y}[op] + (delta if carry is None else 0)
        out.append(f"{x}{op}{y}={z}")
        carry = z
    return out
