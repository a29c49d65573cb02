"""Process (step-level) rewards: segmentation, step -> token mapping, anti-hacking transforms, step advantages.

A completion is cut into steps (``segment``); each step's span of characters is mapped to the index of the
completion token holding the step's last character (``StepLocator``), the ``step_ends`` of the reward vector.
Step scores come from ``@process_reward`` plugins as (B, S) NaN-padded tensors.

Transforms against step-reward hacking (Gao et al. 2024, *On Designing Effective RL Reward at Training Time for
LLM Reasoning*), applied per component to a row's valid steps r_1..r_n:

    clip:   r_s <- min(r_s - eta, 0)                       rewards can only punish; repeating steps never pays
    delta:  r_s <- r_s - r_{s+1}  (s < n),   r_n <- r_n    the sum from step s on telescopes to r_s, so the
                                                           return of any step is bounded by one step's score

Step-level GRPO advantages (DeepSeekMath, Shao et al. 2024, sec. 4.1.3, process supervision): within each group,
all valid step rewards of all its samples are normalised together, r~ = (r - mean) / (std + eps), and the
advantage of completion token t is the sum of the normalised rewards of the steps ending at or after t:

    A_t = sum_{s : end_s >= t} r~_s

Dense PPO rewards put each step's reward on its last token (``dense_step_rewards``), for GAE.

Imports only torch and the standard library (the tokenizer is any object with ``decode``).
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

SEGMENTERS = ("newline", "delimiter", "regex", "function")
TRANSFORMS = ("none", "clip", "delta")
OUTCOMES = ("min", "mean", "last", "sum", "product")


# --------------------------------------------------------------------------- segmentation


@dataclass(frozen=True)
class Segmenter:
    """Cuts a completion into steps: (start, end) character spans, end exclusive, whitespace trimmed.

    by: newline   one step per non-blank line
        delimiter a literal separator (e.g. "\\n\\n", "Step ")
        regex     a separator regex (e.g. r"\\n(?=Step \\d)")
        function  'module:attr', fn(text) -> list[str]: the steps in order, each a substring of the text
    """

    by: str = "newline"
    delimiter: str | None = None
    pattern: str | None = None
    function: str | None = None

    def __post_init__(self) -> None:
        if self.by not in SEGMENTERS:
            raise ValueError(f"process.segment: unknown segmenter {self.by!r}; expected one of {SEGMENTERS}")
        needs = {"delimiter": self.delimiter, "regex": self.pattern, "function": self.function}
        if self.by in needs and not needs[self.by]:
            key = {"delimiter": "delimiter", "regex": "pattern", "function": "function"}[self.by]
            raise ValueError(f"process.segment={self.by} needs process.{key}")
        if self.by == "regex":
            try:
                re.compile(self.pattern or "")
            except re.error as exc:
                raise ValueError(f"process.pattern {self.pattern!r} is not a valid regex: {exc}") from None

    @classmethod
    def from_config(cls, cfg: Any) -> "Segmenter":
        return cls(by=cfg.segment, delimiter=cfg.delimiter, pattern=cfg.pattern, function=cfg.function)

    def __call__(self, text: str) -> list[tuple[int, int]]:
        if self.by == "function":
            return _locate_pieces(text, _user_function(self.function)(text), self.function)
        if self.by == "newline":
            cuts = [(m.start(), m.end()) for m in re.finditer(r"\n", text)]
        elif self.by == "delimiter":
            cuts = [(m.start(), m.end()) for m in re.finditer(re.escape(self.delimiter or ""), text)]
        else:
            cuts = [(m.start(), m.end()) for m in re.finditer(self.pattern or "", text) if m.end() > m.start()]
        spans, start = [], 0
        for cut_start, cut_end in cuts + [(len(text), len(text))]:
            span = _trim(text, start, cut_start)
            if span is not None:
                spans.append(span)
            start = cut_end
        return spans


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span without leading/trailing whitespace; None when blank."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _user_function(ref: str | None) -> Callable[[str], Sequence[str]]:
    module_name, _, attr = (ref or "").partition(":")
    if not module_name or not attr:
        raise ValueError(f"process.function {ref!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"process.function {ref!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"process.function {ref!r}: {module_name!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def _locate_pieces(text: str, pieces: Sequence[str], who: str | None) -> list[tuple[int, int]]:
    """Spans of the user segmenter's pieces, found in order in the text."""
    if not isinstance(pieces, (list, tuple)):
        raise ValueError(f"process.function {who!r} returned {type(pieces).__name__}; expected a list of steps")
    spans, pos = [], 0
    for i, piece in enumerate(pieces):
        if not isinstance(piece, str):
            raise ValueError(f"process.function {who!r}: step {i} is {type(piece).__name__}, not str")
        at = text.find(piece, pos)
        if at < 0:
            raise ValueError(f"process.function {who!r}: step {i} {piece[:40]!r} is not a substring of the completion "
                             "after the previous step; a segmenter returns pieces of the text, in order")
        span = _trim(text, at, at + len(piece))
        if span is not None:
            spans.append(span)
        pos = at + len(piece)
    return spans


# --------------------------------------------------------------------------- steps -> token positions


class StepLocator:
    """Maps character positions of decoded completions to completion token indices.

    The completion text is ``tokenizer.decode(ids, skip_special_tokens=True)`` of the row's generated ids (how
    every engine decodes). A step ending at character e (exclusive) ends at the first token i whose decoded prefix
    ``decode(ids[:i+1])`` has at least e characters: the token holding the step's last character, also when one
    token spans the end of a step and the start of the next. Prefix lengths are found by binary search (they grow
    with i), so a row costs O(S log C) decodes.
    """

    def __init__(self, tokenizer: Any, completion_ids: Tensor, completion_mask: Tensor) -> None:
        self.tokenizer = tokenizer
        self.rows = [ids[mask.bool()].tolist() for ids, mask in zip(completion_ids, completion_mask)]  # (B,) lists
        self.width = int(completion_ids.shape[1])  # C

    def _prefix_len(self, row: int, i: int, cache: dict[int, int]) -> int:
        if i not in cache:
            cache[i] = len(self.tokenizer.decode(self.rows[row][: i + 1], skip_special_tokens=True))
        return cache[i]

    def token_ends(self, row: int, char_ends: Sequence[int]) -> list[int]:
        """Completion token index of each step end of one row."""
        n = len(self.rows[row])
        cache: dict[int, int] = {}
        out = []
        for end in char_ends:
            lo, hi = 0, n - 1
            if n == 0:
                raise ValueError(f"row {row}: a step ends at character {end} of an empty completion")
            while lo < hi:  # first i with prefix_len(i) >= end
                mid = (lo + hi) // 2
                if self._prefix_len(row, mid, cache) >= end:
                    hi = mid
                else:
                    lo = mid + 1
            out.append(lo)
        return out

    def __call__(self, char_ends: Sequence[Sequence[int]]) -> Tensor:
        """(B, S) long token index of each step's last token; -1 padded. char_ends: per row, the steps' ends."""
        if len(char_ends) != len(self.rows):
            raise ValueError(f"StepLocator: {len(char_ends)} rows of step ends for {len(self.rows)} completions")
        width = max((len(e) for e in char_ends), default=0)
        out = torch.full((len(char_ends), width), -1, dtype=torch.long)  # (B, S)
        for b, ends in enumerate(char_ends):
            if ends:
                out[b, : len(ends)] = torch.tensor(self.token_ends(b, ends), dtype=torch.long)
        return out


# --------------------------------------------------------------------------- transforms and summaries


def transform_steps(scores: Tensor, kind: str, clip_threshold: float = 0.0) -> Tensor:
    """(B, S) step scores (NaN padded, valid steps first) -> transformed (B, S); see the module docstring."""
    if kind == "none":
        return scores.clone()
    if kind == "clip":
        return torch.clamp(scores - clip_threshold, max=0.0)  # NaN stays NaN
    if kind != "delta":
        raise ValueError(f"unknown step transform {kind!r}; expected one of {TRANSFORMS}")
    nxt = torch.cat([scores[:, 1:], torch.full_like(scores[:, :1], math.nan)], dim=1)  # (B, S) r_{s+1}
    last = ~torch.isnan(scores) & torch.isnan(nxt)  # (B, S) the final valid step of each row
    return torch.where(last, scores, scores - nxt)


def summarize_steps(scores: Sequence[float], how: str) -> float:
    """A completion's outcome value from its step scores (NaN when it has none)."""
    if not scores:
        return math.nan
    if how == "min":
        return float(min(scores))
    if how == "mean":
        return float(sum(scores) / len(scores))
    if how == "last":
        return float(scores[-1])
    if how == "sum":
        return float(sum(scores))
    if how == "product":
        return float(math.prod(scores))
    raise ValueError(f"unknown step outcome {how!r}; expected one of {OUTCOMES}")


# --------------------------------------------------------------------------- advantages and dense rewards


def _valid(steps: Tensor, step_ends: Tensor) -> Tensor:
    """(B, S) bool: a scored step with a token position."""
    return ~torch.isnan(steps) & (step_ends >= 0)


def _scatter_to_tokens(values: Tensor, step_ends: Tensor, valid: Tensor, width: int) -> Tensor:
    """(B, S) per-step values -> (B, C): each added on its step's last token."""
    if bool(valid.any()) and int(step_ends[valid].max()) >= width:
        raise ValueError(f"a step ends at token {int(step_ends[valid].max())} beyond the completion width {width}")
    out = values.new_zeros((values.shape[0], width))  # (B, C)
    idx = torch.where(valid, step_ends, torch.zeros_like(step_ends))  # (B, S)
    return out.scatter_add(1, idx, torch.where(valid, values, torch.zeros_like(values)))


def step_group_normalize(steps: Tensor, step_ends: Tensor, group_ids: Tensor, scale_std: bool = True,
                         eps: float = 1e-6) -> Tensor:
    """(B, S) -> (B, S) step rewards normalised over all valid steps of each group; 0 on invalid steps.

    Unbiased std over the group's steps (as the outcome normaliser), eps added to it.
    """
    valid = _valid(steps, step_ends)  # (B, S)
    out = torch.zeros_like(steps)
    for g in group_ids.unique().tolist():
        rows = group_ids == g  # (B,)
        mask = valid & rows.unsqueeze(1)  # (B, S)
        vals = steps[mask]  # (n,)
        if vals.numel() == 0:
            continue
        centred = vals - vals.mean()
        if scale_std:
            std = vals.std() if vals.numel() > 1 else vals.new_zeros(())
            centred = centred / (std + eps) if float(std + eps) > 0 else centred
        out[mask] = centred
    return out


def step_token_advantages(normalized: Tensor, step_ends: Tensor, width: int) -> Tensor:
    """(B, S) normalised step rewards -> (B, C) token advantages A_t = sum of r~_s over steps with end_s >= t.

    Tokens after the last step end get 0 (no step is still to come for them).
    """
    valid = step_ends >= 0  # (B, S)
    at_end = _scatter_to_tokens(normalized, step_ends, valid, width)  # (B, C)
    return at_end.flip(1).cumsum(1).flip(1)  # (B, C) reverse cumulative sum


def process_advantages(steps: Tensor, step_ends: Tensor, group_ids: Tensor, weights: Sequence[float], width: int,
                       scale_std: bool = True, eps: float = 1e-6) -> Tensor:
    """(B, S, Kp) step rewards of Kp process components -> (B, C) token advantages, sum_k w_k A_t^(k)."""
    out = steps.new_zeros((steps.shape[0], width))  # (B, C)
    for k, w in enumerate(weights):
        if w == 0:
            continue
        norm = step_group_normalize(steps[..., k], step_ends, group_ids, scale_std, eps)  # (B, S)
        out = out + w * step_token_advantages(norm, step_ends, width)
    return out


def sequence_part(rv: Any) -> Any:
    """The reward vector that sequence-level estimators should see when step rewards are used densely: a process
    component's outcome value is blanked (NaN) on rows that have step rewards, so it is not counted twice."""
    from rlhf.types import RewardVector

    values = rv.values.clone()  # (B, K)
    for k, name in enumerate(rv.process_names):
        has = _valid(rv.steps[..., k], rv.step_ends).any(dim=1)  # (B,)
        values[has, rv.index(name)] = math.nan
    return RewardVector(rv.names, rv.kinds, values, sample_weights=rv.sample_weights)


def dense_step_rewards(steps: Tensor, step_ends: Tensor, weights: Sequence[float], width: int) -> Tensor:
    """(B, S, Kp) step rewards -> (B, C) token rewards: sum_k w_k r_s^(k) on each step's last token (for GAE)."""
    out = steps.new_zeros((steps.shape[0], width))  # (B, C)
    for k, w in enumerate(weights):
        valid = _valid(steps[..., k], step_ends)
        out = out + w * _scatter_to_tokens(steps[..., k], step_ends, valid, width)
    return out


def step_metrics(names: Sequence[str], raw: Sequence[Sequence[Sequence[float] | None]]) -> dict[str, float]:
    """Per process component: mean raw step score, steps per scored sample, and the rate of steps scoring > 0.5
    (for 0/1 step checkers and PRM probabilities: the rate of correct steps)."""
    out: dict[str, float] = {}
    for name, rows in zip(names, raw):
        flat = [s for r in rows if r for s in r]
        scored = [r for r in rows if r is not None]
        out[f"process/{name}/step_mean"] = sum(flat) / len(flat) if flat else math.nan
        out[f"process/{name}/steps_per_sample"] = sum(len(r) for r in scored) / len(scored) if scored else math.nan
        out[f"process/{name}/good_step_rate"] = sum(s > 0.5 for s in flat) / len(flat) if flat else math.nan
    return out
