"""Core data types that flow through the platform: the reward vector, rollouts, experience and loss output.

Everything here imports only torch and the standard library. Tensor shapes are written next to every field:

    B  = number of sequences in the batch (prompts x samples per prompt)
    P  = prompt length (prompts are LEFT-padded to P)
    C  = completion length (completions are RIGHT-padded to C)
    K  = number of reward components
    S  = max number of steps (process rewards), Kp = number of process components
    N  = max number of segments (turns or steps) of a completion
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
    # (B, S) long: an id of the state each step (turn) was taken from, equal across a group's episodes when their
    # states are identical (GiGPO's anchor states); -1 where a step has no state (padding, single-turn)
    step_keys: Tensor | None = None
    # (B, K) per-sample factors on the weighting's weights (preference conditioning: the prompt's drawn weight on a
    # conditioned component, 1 on the others); None = 1 everywhere. Shared by the samples of a group.
    sample_weights: Tensor | None = None

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
        if self.sample_weights is not None and self.sample_weights.shape != self.values.shape:
            raise ValueError(f"RewardVector: sample_weights must have the shape of values {tuple(self.values.shape)}, "
                             f"got {tuple(self.sample_weights.shape)}")

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
            step_keys=None if self.step_keys is None else self.step_keys[idx],
            sample_weights=None if self.sample_weights is None else self.sample_weights[idx],
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
        sample_weights = None  # (B, K); a part without them weighs 1 everywhere
        if any(v.sample_weights is not None for v in vectors):
            sample_weights = torch.cat([torch.ones_like(v.values) if v.sample_weights is None else v.sample_weights
                                        for v in vectors], dim=0)
        if all(v.steps is None and v.step_ends is None for v in vectors):
            return RewardVector(first.names, first.kinds, values, sample_weights=sample_weights)
        if any(v.step_ends is None or (v.steps is None) != (first.steps is None) for v in vectors):
            raise ValueError("RewardVector.cat: some vectors have step rewards and step ends, others not")
        width = max(int(v.step_ends.shape[1]) for v in vectors)  # S
        ends = torch.cat([_pad_dim(v.step_ends, 1, width, -1, left=False) for v in vectors], dim=0)  # (B, S)
        steps = None
        if first.steps is not None:
            steps = torch.cat([_pad_dim(v.steps, 1, width, math.nan, left=False) for v in vectors], dim=0)  # (B,S,Kp)
        bonus = None
        if any(v.bonus is not None for v in vectors):
            zero = [torch.zeros(v.step_ends.shape) if v.bonus is None else v.bonus for v in vectors]
            bonus = torch.cat([_pad_dim(b, 1, width, 0.0, left=False) for b in zero], dim=0)  # (B, S)
        keys = None
        if any(v.step_keys is not None for v in vectors):
            filled = [torch.full(v.step_ends.shape, -1, dtype=torch.long) if v.step_keys is None else v.step_keys
                      for v in vectors]
            keys = torch.cat([_pad_dim(k, 1, width, -1, left=False) for k in filled], dim=0)  # (B, S)
        return RewardVector(first.names, first.kinds, values, steps, ends, bonus, keys, sample_weights)


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
    # the sampled tokens' logprobs in RolloutBatch.logprobs (the hf engine records them while sampling, a
    # log_softmax per token); False: the batch holds NaN there. vllm returns them either way.
    logprobs: bool = True


PAD = "pad"  # fill value of token-id fields: the tokenizer's pad id, given to RolloutBatch.cat


def _layout(kind: str, fill: Any = None, default: Any = dataclasses.MISSING) -> Any:
    """A RolloutBatch field with its layout, which `select` and `cat` map generically:

    rows: a list per row; tensor: a (B, ...) tensor; left / right: (B, L) left- / right-padded with `fill`;
    groups: (B,) group ids (renumbered by `select`, offset by `cat`); spans: (B, N, 2) padded on N with `fill`;
    columns: a dict of per-row lists."""
    kwargs: dict[str, Any] = {"metadata": {"layout": kind, "fill": fill}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if kind == "columns":
        kwargs["default_factory"] = dict
    return field(**kwargs)


@dataclass
class RolloutBatch:
    """Trajectories from the rollout: B = n_prompts * n rows, grouped contiguously by prompt (row ``i`` belongs
    to prompt ``group_ids[i]``).

    The token layout of a row is its prompt, LEFT-padded to P, then its completion, RIGHT-padded to C. The
    completion holds every token after the prompt in order: what the policy generated and, in a multi-turn
    episode, what the environment answered between turns. So there are two masks:

    - attention (``prompt_mask`` + ``completion_mask``, joined by ``attention_mask()``): 1 on every real token;
    - ``loss_mask``: 1 only on the tokens the policy generated (single-turn: equal to ``completion_mask``).

    ``versions`` records the policy version that generated each token (-1 where the policy generated nothing),
    and ``segments`` the turn (or step) spans of the completion. Fields are mapped generically by their layout
    (``select``, ``cat``), never copied by hand: a new field only needs its layout.
    """

    prompts: list[str] = _layout("rows")  # (B,) prompt text (repeated per sample)
    completions: list[str] = _layout("rows")  # (B,) decoded completion text (special tokens stripped)
    prompt_ids: Tensor = _layout("left", PAD)  # (B, P) long, left-padded with the pad token id
    prompt_mask: Tensor = _layout("left", 0)  # (B, P) long, 1 on real prompt tokens
    completion_ids: Tensor = _layout("right", PAD)  # (B, C) long, right-padded with the pad token id
    completion_mask: Tensor = _layout("right", 0)  # (B, C) long, 1 on real completion tokens (up to and incl. EOS)
    logprobs: Tensor = _layout("right", 0.0)  # (B, C) float32, the engine's logprob of each sampled token
    group_ids: Tensor = _layout("groups")  # (B,) long, index of the prompt each row came from
    finished: Tensor = _layout("tensor")  # (B,) bool, True when the completion ended with EOS (not truncated)
    loss_mask: Tensor | None = _layout("right", 0, default=None)  # (B, C) long; None -> completion_mask
    versions: Tensor | None = _layout("right", -1, default=None)  # (B, C) long; None -> 0 on completion tokens
    segments: Tensor | None = _layout("spans", -1, default=None)  # (B, N, 2) long [start, end); None -> 1 per row
    extras: dict[str, list[Any]] = _layout("columns")  # per-row dataset columns (e.g. answer)

    def __post_init__(self) -> None:
        if self.loss_mask is None:
            self.loss_mask = self.completion_mask.clone()
        if self.versions is None:
            self.versions = token_versions(self.completion_mask, 0)
        if self.segments is None:  # single turn: one segment, the whole completion
            lengths = self.completion_mask.sum(dim=1)  # (B,)
            self.segments = torch.stack([torch.zeros_like(lengths), lengths], dim=1).unsqueeze(1).long()  # (B, 1, 2)

    @property
    def batch_size(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def completion_lengths(self) -> Tensor:
        """(B,) number of completion tokens."""
        return self.completion_mask.sum(dim=1)

    @property
    def weight_version(self) -> int:
        """The oldest policy version among the generated tokens (0 for an empty batch)."""
        generated = self.versions[self.versions >= 0]
        return int(generated.min()) if generated.numel() else 0

    def input_ids(self) -> Tensor:
        """(B, P + C) prompt and completion concatenated."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    def attention_mask(self) -> Tensor:
        """(B, P + C) 1 on every real token."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    def select(self, rows: Tensor | Sequence[int]) -> "RolloutBatch":
        """The given rows in that order; group ids renumbered 0.. in order of first appearance."""
        idx = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        picked = idx.tolist()
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.metadata["layout"]
            if kind == "rows":
                out[f.name] = [value[i] for i in picked]
            elif kind == "columns":
                out[f.name] = {k: [v[i] for i in picked] for k, v in value.items()}
            elif kind == "groups":
                old = value[idx].tolist()
                order = {g: k for k, g in enumerate(dict.fromkeys(old))}
                out[f.name] = torch.tensor([order[g] for g in old], dtype=torch.long)
            else:
                out[f.name] = value[idx]
        return RolloutBatch(**out)

    def select_groups(self, groups: Sequence[int]) -> "RolloutBatch":
        """The rows of the given groups (in that order), with group ids renumbered 0..len(groups)-1."""
        rows = [i for g in groups for i in (self.group_ids == g).nonzero().flatten().tolist()]
        return self.select(rows)

    @staticmethod
    def cat(parts: Sequence["RolloutBatch"], pad_token_id: int) -> "RolloutBatch":
        """Rows of every part in order: token fields re-padded to the widest part, group ids offset so the parts'
        groups stay apart, per-row columns joined (a column some part lacks is None on that part's rows)."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            raise ValueError("RolloutBatch.cat: no parts")
        out: dict[str, Any] = {}
        for f in dataclasses.fields(RolloutBatch):
            values, kind = [getattr(p, f.name) for p in parts], f.metadata["layout"]
            fill = pad_token_id if f.metadata["fill"] == PAD else f.metadata["fill"]
            if kind == "rows":
                out[f.name] = [x for v in values for x in v]
            elif kind == "columns":  # every part's columns; a part without one has None in it for its rows
                keys = list(dict.fromkeys(k for v in values for k in v))
                out[f.name] = {k: [x for p, v in zip(parts, values) for x in v.get(k, [None] * p.batch_size)]
                               for k in keys}
            elif kind == "groups":
                offsets = [0]
                for v in values[:-1]:
                    offsets.append(offsets[-1] + (int(v.max()) + 1 if v.numel() else 0))
                out[f.name] = torch.cat([v + o for v, o in zip(values, offsets)])
            elif kind in ("left", "right"):
                width = max(int(v.shape[1]) for v in values)
                out[f.name] = torch.cat([_pad_dim(v, 1, width, fill, left=kind == "left") for v in values])
            elif kind == "spans":
                width = max(int(v.shape[1]) for v in values)
                out[f.name] = torch.cat([_pad_dim(v, 1, width, fill, left=False) for v in values])
            else:
                out[f.name] = torch.cat(values)
        return RolloutBatch(**out)


def token_versions(completion_mask: Tensor, version: int) -> Tensor:
    """(B, C) long: ``version`` on the completion's real tokens, -1 elsewhere (what one generation call made)."""
    return torch.where(completion_mask.bool(), torch.full_like(completion_mask, version, dtype=torch.long),
                       torch.full_like(completion_mask, -1, dtype=torch.long))


def _pad_dim(t: Tensor, dim: int, width: int, value: Any, left: bool) -> Tensor:
    """Pad dimension ``dim`` of ``t`` to ``width`` with ``value`` (on the left or the right)."""
    extra = width - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    pad = torch.full(shape, value, dtype=t.dtype)
    return torch.cat([pad, t] if left else [t, pad], dim=dim)


@dataclass
class ExperienceBatch:
    """Tensors a training worker needs for one update (one shard of it): the rows' tokens, the loss mask and the
    signals computed for them. Tensor fields are mapped generically (``to``, ``slice``, ``select``)."""

    input_ids: Tensor  # (B, P + C) long
    attention_mask: Tensor  # (B, P + C) long, 1 on every real token
    loss_mask: Tensor  # (B, C) float32, 1 on tokens that count in the loss (the policy's own tokens)
    advantages: Tensor  # (B,) sequence-level or (B, C) token-level float32
    old_logprobs: Tensor | None = None  # (B, C) logprobs under the policy that generated (set by trainer)
    ref_logprobs: Tensor | None = None  # (B, C) logprobs under the frozen reference
    prompt_len: int = 0  # P: completion token j sits at input position P + j
    values: Tensor | None = None  # (B, C, S) critic values when the batch was generated (PPO)
    returns: Tensor | None = None  # (B, C, S) GAE returns, the critic's targets (PPO)
    rollout_logprobs: Tensor | None = None  # (B, C) the rollout engine's logprobs (mismatch metrics, TIS)
    pair_info: Tensor | None = None  # (B, 2) online pairs (rows 2i, 2i+1): the pair's [weight, beta] on both rows
    nll_rows: Tensor | None = None  # (B,) bool: rows whose term is advantage x NLL, not the clipped surrogate (CGPO)
    advantage_scale: float = 1.0  # multiplies advantages the trainer finishes itself (token level: REINFORCE++)

    @classmethod
    def from_rollout(cls, rollout: RolloutBatch, advantages: Tensor, loss_mask: Tensor | None = None,
                     **signals: Any) -> "ExperienceBatch":
        """The rollout's tokens with ``advantages`` (and any other signal field); ``loss_mask`` defaults to the
        rollout's (the policy's own tokens)."""
        return cls(input_ids=rollout.input_ids(), attention_mask=rollout.attention_mask(),
                   loss_mask=rollout.loss_mask.float() if loss_mask is None else loss_mask,
                   advantages=advantages, prompt_len=int(rollout.prompt_ids.shape[1]), **signals)

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

    # fields whose dim 1 is the completion axis C (advantages only when token-level)
    COMPLETION_FIELDS = ("loss_mask", "advantages", "old_logprobs", "ref_logprobs", "values", "returns",
                         "rollout_logprobs")

    def trimmed(self) -> "ExperienceBatch":
        """These rows without the columns that are padding in every row: leading prompt columns and trailing
        completion columns (what a micro-batch of short rows carries from the longest rows of the batch). Every
        real token keeps its position id (they come from the mask) and what it attends to, so logprobs and losses
        are those of the untrimmed rows; completion-axis fields are cut to the same C'."""
        P = self.prompt_len
        C = self.input_ids.shape[1] - P
        real = self.attention_mask.bool().any(dim=0)  # (P + C,)
        lead = int(real[:P].long().argmax()) if bool(real[:P].any()) else P - 1  # keep >= 1 prompt column
        lead = min(lead, P - 1)
        keep_c = int(real[P:].nonzero().max()) + 1 if bool(real[P:].any()) else 0  # C'
        if lead == 0 and keep_c == C:
            return self
        fields = {"input_ids": self.input_ids[:, lead : P + keep_c],
                  "attention_mask": self.attention_mask[:, lead : P + keep_c], "prompt_len": P - lead}
        for name in self.COMPLETION_FIELDS:
            t = getattr(self, name)
            if isinstance(t, Tensor) and t.dim() >= 2:
                fields[name] = t[:, :keep_c]
        return dataclasses.replace(self, **fields)

    def completion_lengths(self) -> Tensor:
        """(B,) real completion tokens per row."""
        return self.attention_mask[:, self.prompt_len :].sum(dim=1)


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
