"""RSF: rejection-sampling fine-tuning on the best samples of each prompt's group (RAFT, Dong et al. 2023; the
training step of Directional Preference Alignment, Wang et al. 2024, "Arithmetic Control of LLMs for Diverse User
Preferences", sec. 3.2).

Per prompt s with samples a_1..a_G, each sample is scored by the weighting's scalar reward

    score_i = sum_k w_ik r_ik            (``weighting.weighted_sum``; under conditioning w_ik = w_k v_sk, so the
                                          score is the prompt's own preference v_s^T r_i; NaN components count 0)

and the ``top_k`` best samples of the group are kept (``rsf_select``): only those with score >= ``min_reward``
when a threshold is given (a group none of whose samples reaches it keeps nothing), ties broken by the lower row
index (``ties: first``, i.e. at random: a group's samples are i.i.d.) or by the shorter completion first
(``ties: shortest``). A sample whose score is NaN (no component applies) is never kept. The update is SFT on the
kept samples, nothing else:

    L = - 1 / |T_kept| sum_{(i, t) in T_kept} log pi(o_it | q_i, o_i<t)        T_kept: the kept rows' tokens

written as a policy-gradient objective so it reuses the rollout, scoring and weighting pipeline: ``advantages``
returns A_i = 1 on kept rows and 0 on the rest, and the runtime (capability ``selected_rows``,
rlhf/runtime/estimators.py) marks the kept rows as NLL rows of the shared surrogate (``Surrogate.loss`` with
``nll_rows``: -A log pi per token, no ratio, no clip) and takes the other rows out of the loss mask, so the
token-mean normaliser counts only the kept tokens and the loss is exactly the token-mean NLL above, in every
mini-batch, epoch and rank. ``kl_coef`` > 0 adds the k3 KL to the reference on the kept tokens (default 0: no
reference model is loaded).

Imports only torch and the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from rlhf.advantages.group import advantage_metrics
from rlhf.objectives.common import Surrogate, top_k_per_group
from rlhf.types import RewardVector

TIES = ("first", "shortest")


def rsf_select(scores: Tensor, group_ids: Tensor, top_k: int = 1, min_reward: float | None = None,
               ties: str = "first", lengths: Tensor | None = None) -> Tensor:
    """(B,) bool: per group, its ``top_k`` highest-scoring rows (scores (B,) float, NaN never kept), only rows
    with score >= ``min_reward`` when it is given; ties by lower row index (``first``) or by shorter completion,
    then lower row index (``shortest``: lengths (B,) completion tokens, required)."""
    if top_k < 1:
        raise ValueError(f"objective.top_k must be >= 1, got {top_k}")
    if ties not in TIES:
        raise ValueError(f"objective.ties={ties!r}; expected one of {TIES}")
    if ties == "shortest" and lengths is None:
        raise ValueError("objective.ties: shortest needs the completions' lengths (lengths=)")
    values = scores.detach().double()  # (B,) compared as Python floats are
    eligible = ~torch.isnan(values) if min_reward is None else values >= min_reward  # (B,); NaN >= x is False
    return top_k_per_group(scores, group_ids, top_k, eligible, lengths if ties == "shortest" else None)


@dataclass
class RSF:
    """Rejection-sampling fine-tuning (module docstring): 0/1 advantages marking the rows to fine-tune on."""

    surrogate: Surrogate = field(default_factory=Surrogate)
    top_k: int = 1
    min_reward: float | None = None
    ties: str = "first"

    name: ClassVar[str] = "rsf"

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"objective.top_k must be >= 1, got {self.top_k}")
        if self.ties not in TIES:
            raise ValueError(f"objective.ties={self.ties!r}; expected one of {TIES}")
        if self.surrogate.loss_agg != "token_mean":
            raise ValueError(f"objective.loss_agg={self.surrogate.loss_agg!r}: rsf trains the token-mean NLL of the "
                             "kept samples (use token_mean)")

    @classmethod
    def from_config(cls, cfg: Any) -> "RSF":
        """From an ``RSFConfig`` (kind="rsf")."""
        return cls(surrogate=Surrogate.from_config(cfg), top_k=cfg.top_k, min_reward=cfg.min_reward, ties=cfg.ties)

    @property
    def needs_reference(self) -> bool:
        """Only with a KL term (kl_coef > 0); plain RSF needs no reference model."""
        return self.surrogate.needs_reference

    def advantages(self, rv: RewardVector, group_ids: Tensor, weighting: Any, width: int | None = None,
                   lengths: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """(B,) float advantages, 1 on the kept rows and 0 on the rest, and metrics. ``width`` is ignored (step
        rewards count through their outcome values, as any component); lengths (B,) completion tokens, needed by
        ``ties: shortest`` and logged when given.

        Metrics: the weighting's (reward/NAME/mean over all samples, weights/sample/...), rsf/kept_frac (kept rows
        / rows), rsf/groups_kept_frac (groups keeping at least one row), rsf/score/{all,kept} (mean score),
        rsf/kept/NAME (a component's mean over the kept rows), rsf/length/{all,kept}, and advantage_metrics'
        reward/mean and adv/zero_std_groups (groups whose samples all score the same)."""
        _, metrics = weighting.scalarize(rv, group_ids)  # per-component metrics; a stateful weighting advances once
        scores = weighting.weighted_sum(rv)  # (B,) v^T r per sample; NaN where no component applies
        kept = rsf_select(scores, group_ids, self.top_k, self.min_reward, self.ties, lengths)  # (B,) bool
        advantages = kept.to(scores.dtype)  # (B,)
        metrics.update(advantage_metrics(scores, advantages, group_ids))
        n_groups = int(group_ids.unique().numel())
        groups_kept = int(group_ids[kept].unique().numel())
        metrics["rsf/kept_frac"] = float(kept.float().mean()) if kept.numel() else math.nan
        metrics["rsf/groups_kept_frac"] = groups_kept / n_groups if n_groups else math.nan
        metrics["rsf/score/all"] = _nanmean(scores)
        metrics["rsf/score/kept"] = _nanmean(scores[kept])
        for j, name in enumerate(rv.names):
            metrics[f"rsf/kept/{name}"] = _nanmean(rv.values[kept, j])
        if lengths is not None:
            metrics["rsf/length/all"] = _nanmean(lengths.float())
            metrics["rsf/length/kept"] = _nanmean(lengths[kept].float())
        return advantages, metrics


def _nanmean(x: Tensor) -> float:
    """Mean of the non-NaN entries of a 1-D tensor; NaN when there are none."""
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


__all__ = ["RSF", "TIES", "rsf_select"]
