"""Core data types that flow through the platform: the reward vector, rollouts, experience and loss output.

Everything here imports only torch and the standard library. Tensor shapes are written next to every field:

    B  = number of sequences in the batch (prompts x samples per prompt)
    P  = prompt length (prompts are LEFT-padded to P)
    C  = completion length (completions are RIGHT-padded to C)
    K  = number of reward components
    S  = max number of steps (process rewards), Kp = number of process components
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

ComponentKind = Literal["reward", "constraint", "process"]
COMPONENT_KINDS: tuple[str, ...] = ("reward", "constraint", "process")


@dataclass
class RewardVector:
    """A named reward vector per sample: the one interface between reward plugins and objectives.

    NaN in ``values`` means "not applicable to this sample" (or a failure under ``on_error: nan``).
    A ``constraint`` component holds 1.0 for satisfied and 0.0 for violated.
    """

    names: tuple[str, ...]  # K component names, from the recipe
    kinds: tuple[str, ...]  # K kinds: "reward" | "constraint" | "process"
    values: Tensor  # (B, K) float32; NaN = not applicable
    steps: Tensor | None = None  # (B, S, Kp) per-step rewards of the process components, in order; NaN-padded
    step_ends: Tensor | None = None  # (B, S) completion token index of each step's last token; -1 padded
    bonus: Tensor | None = None  # (B, S) dense per-step bonus, already weighted (MRT progress); 0 padded

    def __post_init__(self) -> None:
        if len(self.names) != len(self.kinds):
            raise ValueError(f"RewardVector: {len(self.names)} names but {len(self.kinds)} kinds")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"RewardVector: duplicate component names in {self.names}")
        for k in self.kinds:
            if k not in COMPONENT_KINDS:
                raise ValueError(f"RewardVector: unknown kind {k!r}; expected one of {COMPONENT_KINDS}")
        if self.values.dim() != 2 or self.values.shape[1] != len(self.names):
            raise ValueError(
                f"RewardVector: values must have shape (B, {len(self.names)}), got {tuple(self.values.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.values.shape[0])

    @property
    def process_names(self) -> tuple[str, ...]:
        """The Kp process components, in the order of the last axis of ``steps``."""
        return tuple(n for n, k in zip(self.names, self.kinds) if k == "process")

    @property
    def has_steps(self) -> bool:
        """True when step rewards (or a step bonus) and their token positions are present: step-level objectives
        (GRPO, PPO) then use them."""
        if self.step_ends is None or self.step_ends.shape[1] == 0:
            return False
        return (self.steps is not None and self.steps.shape[-1] > 0) or self.bonus is not None

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no reward component named {name!r}; components are {list(self.names)}") from None

    def component(self, name: str) -> Tensor:
        """(B,) values of one component."""
        return self.values[:, self.index(name)]

    def select(self, rows: Tensor | Sequence[int]) -> "RewardVector":
        """Sub-batch by row indices (keeps names/kinds)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        return RewardVector(
            names=self.names,
            kinds=self.kinds,
            values=self.values[idx],
            steps=None if self.steps is None else self.steps[idx],
            step_ends=None if self.step_ends is None else self.step_ends[idx],
            bonus=None if self.bonus is None else self.bonus[idx],
        )

    def means(self) -> dict[str, float]:
        """Per-component mean over applicable (non-NaN) samples; NaN if none applies."""
        out: dict[str, float] = {}
        for j, name in enumerate(self.names):
            col = self.values[:, j]
            ok = ~torch.isnan(col)
            out[name] = float(col[ok].mean()) if bool(ok.any()) else math.nan
        return out

    @staticmethod
    def cat(vectors: Sequence["RewardVector"]) -> "RewardVector":
        first = vectors[0]
        for v in vectors[1:]:
            if v.names != first.names or v.kinds != first.kinds:
                raise ValueError("RewardVector.cat: component names/kinds differ")
        values = torch.cat([v.values for v in vectors], dim=0)
        if all(v.steps is None for v in vectors):
            return RewardVector(first.names, first.kinds, values)
        if any(v.steps is None or v.step_ends is None for v in vectors):
            raise ValueError("RewardVector.cat: some vectors have step rewards and step ends, others not")
        width = max(int(v.steps.shape[1]) for v in vectors)  # S
        steps = torch.cat([_pad_steps(v.steps, width, math.nan) for v in vectors], dim=0)  # (B, S, Kp)
        ends = torch.cat([_pad_steps(v.step_ends, width, -1) for v in vectors], dim=0)  # (B, S)
        bonus = None
        if any(v.bonus is not None for v in vectors):
            zero = [torch.zeros(v.step_ends.shape) if v.bonus is None else v.bonus for v in vectors]
            bonus = torch.cat([_pad_steps(b, width, 0.0) for b in zero], dim=0)  # (B, S)
        return RewardVector(first.names, first.kinds, values, steps, ends, bonus)


def _pad_steps(t: Tensor, width: int, value: float) -> Tensor:
    """Right-pad the step axis (dim 1) of (B, S[, Kp]) to ``width``."""
    pad_shape = (t.shape[0], width - t.shape[1], *t.shape[2:])
    return torch.cat([t, torch.full(pad_shape, value, dtype=t.dtype)], dim=1)


@dataclass
class SamplingSettings:
    """Generation settings shared by every rollout engine."""

    n: int = 1  # samples per prompt
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    greedy: bool = False
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks: equal work per engine)
    # the sampled tokens' logprobs in RolloutBatch.logprobs; False lets the hf engine skip the forward pass that
    # computes them (the batch then holds NaN there). vllm returns them either way.
    logprobs: bool = True


@dataclass
class RolloutBatch:
    """What a rollout engine returns: B = n_prompts * n sequences, grouped contiguously by prompt.

    Row ``i`` belongs to prompt ``group_ids[i]``; rows of one group are adjacent.
    """

    prompts: list[str]  # (B,) prompt text (repeated per sample)
    completions: list[str]  # (B,) decoded completion text (special tokens stripped)
    prompt_ids: Tensor  # (B, P) long, left-padded with pad_token_id
    prompt_mask: Tensor  # (B, P) long, 1 on real prompt tokens
    completion_ids: Tensor  # (B, C) long, right-padded with pad_token_id
    completion_mask: Tensor  # (B, C) long, 1 on generated tokens up to and including EOS
    logprobs: Tensor  # (B, C) float32, engine's logprob of each sampled token (0 on padding)
    group_ids: Tensor  # (B,) long, index of the prompt each row came from
    finished: Tensor  # (B,) bool, True when the completion ended with EOS (not truncated)
    extras: dict[str, list[Any]] = field(default_factory=dict)  # per-row dataset columns (e.g. answer)
    weight_version: int = 0  # version of the weights that generated this batch

    @property
    def batch_size(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def completion_lengths(self) -> Tensor:
        """(B,) number of generated tokens."""
        return self.completion_mask.sum(dim=1)

    def input_ids(self) -> Tensor:
        """(B, P + C) prompt and completion concatenated."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    def attention_mask(self) -> Tensor:
        """(B, P + C)"""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)


@dataclass
class ExperienceBatch:
    """Tensors a training worker needs for one policy-gradient update (one shard of it)."""

    input_ids: Tensor  # (B, P + C) long
    attention_mask: Tensor  # (B, P + C) long
    completion_mask: Tensor  # (B, C) float32, 1 on tokens that count in the loss
    advantages: Tensor  # (B,) sequence-level or (B, C) token-level float32
    old_logprobs: Tensor | None = None  # (B, C) logprobs under the policy that generated (set by trainer)
    ref_logprobs: Tensor | None = None  # (B, C) logprobs under the frozen reference
    prompt_len: int = 0  # P: completion token j sits at input position P + j
    values: Tensor | None = None  # (B, C, S) critic values when the batch was generated (PPO)
    returns: Tensor | None = None  # (B, C, S) GAE returns, the critic's targets (PPO)
    rollout_logprobs: Tensor | None = None  # (B, C) the rollout engine's logprobs (mismatch metrics, TIS)
    pair_info: Tensor | None = None  # (B, 2) online pairs (rows 2i, 2i+1): the pair's [weight, beta] on both rows
    nll_rows: Tensor | None = None  # (B,) bool: rows whose term is advantage x NLL, not the clipped surrogate (CGPO)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def _map(self, fn: Any) -> "ExperienceBatch":
        """A copy with `fn` applied to every tensor field (None fields stay None)."""
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), Tensor)})

    def to(self, device: torch.device | str) -> "ExperienceBatch":
        return self._map(lambda t: t.to(device))

    def slice(self, start: int, stop: int) -> "ExperienceBatch":
        return self._map(lambda t: t[start:stop])

    def select(self, index: Tensor) -> "ExperienceBatch":
        """Rows in the order of `index` ((B',) long)."""
        return self._map(lambda t: t[index])


@dataclass
class SFTBatch:
    """Supervised batch: loss on target tokens only."""

    input_ids: Tensor  # (B, T) long, right-padded
    attention_mask: Tensor  # (B, T) long
    loss_mask: Tensor  # (B, T) float32, 1 where token t is a target (predicted from t-1)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> "SFTBatch":
        return SFTBatch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))

    def slice(self, start: int, stop: int) -> "SFTBatch":
        return SFTBatch(self.input_ids[start:stop], self.attention_mask[start:stop], self.loss_mask[start:stop])


@dataclass
class LossOutput:
    """A scalar loss to back-propagate and detached float metrics to log."""

    loss: Tensor  # () scalar with grad
    metrics: dict[str, float] = field(default_factory=dict)
