"""CGPO's constrained optimisers (Xu et al. 2024, "The Perfect Blend: Redefining RLHF with Mixture of Judges").

Every prompt belongs to a task; a task has its own reward components, judges (constraint components) and
optimiser. Per sample i of prompt s, with the task's reward r = sum_k w_k r_k (NaN components count 0):

    calibrated reward      R_i = sigmoid(r(s, a_i) - r(s, a_bar))                        (sec. 4.2, CRPG)
    satisfied              ok_i = every task judge returns 1 (NaN: not applicable -> satisfied)

a_bar is a baseline response: the dataset's reference answer (scored by the same reward components), or when
the task has no baseline column, the mean reward of the prompt's samples (r(s, a_bar) := mean_j r(s, a_j)).
R lies in (0, 1), so rewards of different tasks and reward models share one scale.

The three optimisers read (R, ok):

- CRPG (calibrated-regularised policy gradient): violating samples are negatives: R_i := 0 (the minimum of the
  calibrated reward) when not ok_i; then group-relative advantages A_i = (R_i - mean_g R) / (std_g R + eps)
  (``crpg_advantages``), trained with the clipped GRPO surrogate (``rlhf.objectives.grpo``).
- CODPO (constrained online DPO): per prompt, chosen = the satisfying sample of highest R; rejected = the
  violating sample of lowest R if any violates, else the lowest-R sample when it is strictly below chosen
  (``codpo_pairs``). Loss (``codpo_loss``): the DPO loss of ``rlhf.objectives.dpo`` plus a length-normalised NLL
  term on the chosen response,

      l = -log sigmoid(beta h) - lambda / |y_w| * log pi(y_w | x)

- CRRAFT (calibrated-regularised reward-ranking fine-tuning): per prompt, the best satisfying sample (top_k of
  them, optionally only when R > threshold) is selected (``crraft_select``) and the policy is fine-tuned on the
  selected rows: token-mean NLL (``crraft_loss``).

CRPG and CRRAFT share the trainer's policy-gradient update. A CRRAFT row carries advantage c and is marked as an
NLL row (``ExperienceBatch.nll_rows``): the shared surrogate gives it the term -c * log pi(o_it) per token,
aggregated like the surrogate, while CRPG rows keep -min(rho A, clip(rho) A). With c = N / N_sel (N counted tokens
of the optimizer step, N_sel of its selected rows; token_mean) the CRRAFT term is the selected rows' token-mean
NLL; under seq_mean c = B / B_sel gives the sequence-mean NLL. (While pi_old = pi the surrogate would have the
same gradient, A grad log pi at rho = 1; after an update on the batch, in a later mini-batch or epoch, only the
NLL form is still the CRRAFT step.) ``task_scale`` gives c; the same factor makes a CRPG task's term its own
token mean rather than its share of the step, so each step's loss is sum_t weight_t * L_t over CRPG/CRRAFT tasks t
(the runtime computes the factors per mini-batch: ``rlhf.runtime.cgpo.scale_terms``).

CODPO tasks share one optimizer step: pair p of task t gets beta_t (the task's ``beta``, default the objective's)
and weight w_p = weight_t * P / P_t (P pairs in the step, P_t of task t; ``codpo_pair_info``), so the mean over
pairs of w_p l_p is sum_t weight_t * L_t, with L_t the task's own mean pair loss, as for CRPG / CRRAFT tasks.

``CGPO`` is the objective object the trainer builds: its ``surrogate`` is the clipped policy gradient of the
CRPG + CRRAFT rows (with ``nll_rows``), its ``pair_loss`` the CODPO loss of the pairs (the trainer's online-pairs
update). Imports only torch and the standard library.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from rlhf.advantages.group import group_normalize
from rlhf.objectives.common import Surrogate, masked_mean, top_k_per_group
from rlhf.objectives.dpo import DPO
from rlhf.types import LossOutput

OPTIMIZERS = ("crpg", "codpo", "crraft")


# --------------------------------------------------------------------------- reward, judges, calibration


def task_reward(values: Tensor, weights: Tensor) -> Tensor:
    """(B,) weighted sum of a task's reward components. values (B, K_t), weights (K_t,).

    NaN (not applicable) components count 0; a row whose components are all NaN stays NaN.
    """
    total = torch.nansum(values * weights, dim=1)  # (B,)
    all_nan = torch.isnan(values).all(dim=1) if values.shape[1] else torch.ones_like(total, dtype=torch.bool)
    return torch.where(all_nan, torch.full_like(total, math.nan), total)


def satisfied_mask(judge_values: Tensor) -> Tensor:
    """(B,) bool: every judge is satisfied. judge_values (B, J) of 1.0 / 0.0 / NaN (not applicable: satisfied)."""
    return ~(judge_values == 0.0).any(dim=1)  # NaN == 0 is False


def group_mean_baseline(reward: Tensor, group_ids: Tensor) -> Tensor:
    """(B,) per row, the mean reward of its prompt's samples (NaN ignored; NaN if none applies)."""
    out = torch.full_like(reward, math.nan)  # (B,)
    for g in group_ids.unique():
        rows = group_ids == g  # (B,)
        vals = reward[rows]
        vals = vals[~torch.isnan(vals)]
        if vals.numel():
            out[rows] = vals.mean()
    return out


def calibrated_reward(reward: Tensor, baseline: Tensor) -> Tensor:
    """(B,) sigmoid(r(s, a) - r(s, a_bar)) in (0, 1); NaN where either is NaN. reward, baseline (B,)."""
    return torch.sigmoid(reward - baseline)


# --------------------------------------------------------------------------- CRPG


def crpg_scores(calibrated: Tensor, satisfied: Tensor) -> Tensor:
    """(B,) the calibrated reward with violating samples set to 0, the minimum (CRPG's negatives)."""
    return torch.where(satisfied, calibrated, torch.zeros_like(calibrated))


def crpg_advantages(calibrated: Tensor, satisfied: Tensor, group_ids: Tensor, scale_std: bool = True,
                    eps: float = 1e-6) -> Tensor:
    """(B,) group-relative advantages of the CRPG scores; NaN scores (no applicable reward) get 0."""
    return group_normalize(crpg_scores(calibrated, satisfied), group_ids, scale_std, eps)


# --------------------------------------------------------------------------- CODPO


def codpo_pairs(calibrated: Tensor, satisfied: Tensor, group_ids: Tensor) -> list[tuple[int, int]]:
    """(chosen row, rejected row) per prompt group; groups without a satisfying sample or a usable rejected one
    are skipped. NaN-reward rows are ignored. Ties go to the lowest row index (deterministic)."""
    pairs: list[tuple[int, int]] = []
    for g in group_ids.unique().tolist():
        rows = [i for i in (group_ids == g).nonzero().flatten().tolist() if not math.isnan(float(calibrated[i]))]
        good = [i for i in rows if bool(satisfied[i])]
        bad = [i for i in rows if not bool(satisfied[i])]
        if not good:
            continue
        chosen = max(good, key=lambda i: (float(calibrated[i]), -i))
        if bad:
            rejected = min(bad, key=lambda i: (float(calibrated[i]), i))
        else:
            rejected = min(good, key=lambda i: (float(calibrated[i]), i))
            if not float(calibrated[rejected]) < float(calibrated[chosen]):
                continue  # every sample satisfies and they tie: no preference
        pairs.append((chosen, rejected))
    return pairs


def codpo_pair_info(pair_tasks: list[str], cfg: "CGPOConfig") -> Tensor:
    """(P, 2) [weight, beta] of each CODPO pair of one step: weight_t * P / P_t and beta_t (default cfg.beta) of its
    task t (see the module docstring). pair_tasks (P,) the task of each pair."""
    counts = Counter(pair_tasks)
    n = len(pair_tasks)
    rows = []
    for task in pair_tasks:
        tcfg = cfg.tasks[task]
        beta = cfg.beta if tcfg.beta is None else tcfg.beta
        rows.append([tcfg.weight * n / counts[task], beta])
    return torch.tensor(rows, dtype=torch.float32).reshape(n, 2)  # (P, 2)


def codpo_loss(dpo: DPO, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               ref_chosen_logps: Tensor | None, ref_rejected_logps: Tensor | None, chosen_lengths: Tensor,
               nll_coef: float, rejected_lengths: Tensor | None = None,
               normalizer: float | None = None, pair_info: Tensor | None = None) -> LossOutput:
    """DPO loss (``dpo``) + nll_coef * mean over pairs of -log pi(y_w) / |y_w|.

    policy_*_logps (B,) summed completion log-probs with grad; ref_*_logps (B,) or None (reference-free);
    chosen_lengths (B,) token counts of the chosen completions. normalizer: divide summed per-pair terms by this
    instead of B (as ``DPO.loss``). pair_info (B, 2) [weight, beta] per pair (``codpo_pair_info``): pair p's
    DPO term uses beta_p and both its terms are multiplied by weight_p; None: dpo.beta and weight 1.
    """
    lengths = {}
    if dpo.needs_lengths:
        lengths = dict(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    weights = None if pair_info is None else pair_info[:, 0].to(policy_chosen_logps.dtype)  # (B,)
    beta = None if pair_info is None else pair_info[:, 1]  # (B,)
    out = dpo.loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                   normalizer=normalizer, beta=beta, weights=weights, **lengths)
    nll = -policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype).clamp(min=1)  # (B,)
    denom = nll.shape[0] if normalizer is None else normalizer
    nll_term = (nll if weights is None else nll * weights).sum() / denom
    loss = out.loss + nll_coef * nll_term
    metrics = {**out.metrics, "loss/codpo_nll": float(nll.detach().mean()), "loss/total": float(loss.detach())}
    return LossOutput(loss=loss, metrics=metrics)


# --------------------------------------------------------------------------- CRRAFT


def crraft_select(calibrated: Tensor, satisfied: Tensor, group_ids: Tensor, top_k: int = 1,
                  threshold: float | None = None) -> Tensor:
    """(B,) bool: per prompt group, its top_k satisfying samples by calibrated reward (ties: lowest row first),
    only those with calibrated reward > threshold when a threshold is given. NaN rewards are never selected."""
    if top_k < 1:
        raise ValueError(f"crraft_select: top_k must be >= 1, got {top_k}")
    values = calibrated.detach().double().to(satisfied.device)  # (B,) compared as Python floats are
    eligible = satisfied.to(torch.bool) & ~torch.isnan(values)  # (B,)
    if threshold is not None:
        eligible &= values > threshold
    return top_k_per_group(values, group_ids, top_k, eligible)


def crraft_loss(logprobs: Tensor, mask: Tensor, selected: Tensor) -> Tensor:
    """() token-mean NLL over the selected rows. logprobs (B, C), mask (B, C), selected (B,) bool; 0 if none."""
    rows = selected.to(logprobs.dtype).unsqueeze(1) * mask.to(logprobs.dtype)  # (B, C)
    return -masked_mean(logprobs, rows)


def task_scale(completion_mask: Tensor, rows: Tensor, loss_agg: str) -> float:
    """c such that c * (the rows' summed per-token terms, normalised over the whole batch) is the rows' own mean.

    completion_mask (B, C) counted tokens of the whole batch, rows (B,) bool. token_mean: N / N_rows tokens;
    seq_mean: B / B_rows sequences. 0 when no row is given.
    """
    rows = rows.to(torch.bool)
    if loss_agg == "token_mean":
        total = float(completion_mask.sum())
        part = float(completion_mask[rows].sum())
    elif loss_agg == "seq_mean":
        total, part = float(rows.numel()), float(rows.sum())
    else:
        raise ValueError(f"task_scale: loss_agg {loss_agg!r}; CGPO supports token_mean and seq_mean")
    return total / part if part > 0 else 0.0


# --------------------------------------------------------------------------- the objective object


@dataclass
class CGPO:
    """The trainer-facing objective: the clipped policy gradient for CRPG/CRRAFT rows, the CODPO loss for pairs."""

    surrogate: Surrogate = field(default_factory=Surrogate)
    pair: DPO = field(default_factory=DPO)
    nll_coef: float = 1.0  # CODPO's lambda on the chosen response's length-normalised NLL
    uses_pairs: bool = False  # some task optimises with CODPO (its pairs need the reference)

    name: ClassVar[str] = "cgpo"

    def __post_init__(self) -> None:
        if self.surrogate.loss_agg not in ("token_mean", "seq_mean"):
            raise ValueError(f"CGPO: loss_agg {self.surrogate.loss_agg!r}; expected token_mean or seq_mean")
        if self.nll_coef < 0:
            raise ValueError(f"CGPO: nll_coef must be >= 0, got {self.nll_coef}")

    @classmethod
    def from_config(cls, cfg: Any) -> "CGPO":
        pair = DPO(beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
                   reference_free=cfg.reference_free)
        uses_pairs = any(t.optimizer == "codpo" for t in cfg.tasks.values())
        return cls(surrogate=Surrogate.from_config(cfg), pair=pair, nll_coef=cfg.nll_coef, uses_pairs=uses_pairs)

    @property
    def needs_reference(self) -> bool:
        """Its updates read reference logprobs: the surrogate's KL term, or CODPO pairs that are not reference-free."""
        return self.surrogate.needs_reference or self.pairs_need_reference

    @property
    def pairs_need_reference(self) -> bool:
        """The CODPO pair update reads reference logprobs (not with ``reference_free``, whatever the KL term)."""
        return self.uses_pairs and self.pair.needs_reference

    def pair_loss(self, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  ref_chosen_logps: Tensor | None, ref_rejected_logps: Tensor | None, *,
                  chosen_lengths: Tensor, rejected_lengths: Tensor | None = None,
                  normalizer: float | None = None, pair_info: Tensor | None = None) -> LossOutput:
        """CODPO on (B,) pairs, pair_info (B, 2) per-pair [weight, beta] or None: see ``codpo_loss``."""
        return codpo_loss(self.pair, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                          ref_rejected_logps, chosen_lengths, self.nll_coef, rejected_lengths, normalizer,
                          pair_info)


__all__ = [
    "CGPO",
    "OPTIMIZERS",
    "calibrated_reward",
    "codpo_loss",
    "codpo_pair_info",
    "codpo_pairs",
    "crpg_advantages",
    "crpg_scores",
    "crraft_loss",
    "crraft_select",
    "group_mean_baseline",
    "satisfied_mask",
    "task_reward",
    "task_scale",
]
