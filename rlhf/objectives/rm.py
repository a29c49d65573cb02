"""Reward-model training: Bradley-Terry on preference pairs, with K named scalar heads (a multi-objective RM).

For pair i and head k, with scores r_c = r_k(prompt, chosen) and r_r = r_k(prompt, rejected), a preference label
y in {+1 (chosen preferred), -1 (rejected preferred), 0 (no preference)} and an optional margin m_i,

    d_ik = y_ik * (r_c - r_r)                                  how far the preferred completion leads
    L    = 1/|L| sum_{(i, k): y_ik != 0} [ -log sigmoid(d_ik - m_i) ]
           + center_coef * 1/|L| sum_{(i, k): y_ik != 0} (r_c + r_r)^2

i.e. the Bradley-Terry negative log-likelihood of the labelled (pair, head) cells (|L| counts them per micro-batch:
the trainer averages micro-batches and ranks, as TRL's per-batch mean; with sparse per-head labels a micro-batch
with few labelled cells weighs as much as one with many; a micro-batch with none adds no gradient and logs NaN) (Ouyang et al. 2022; the margin
of Llama 2; the centring term of TRL's RewardTrainer, which keeps rewards near 0 so heads stay comparable). With
one head and every label +1 it is the usual pairwise RM loss. Metrics: loss, pair accuracy (d > 0), the mean
margin d and the chosen/rejected means, per head when there are several.

The model is a Hugging Face sequence-classification model (``num_labels`` = K): its forward returns the scores of
the last non-pad token, (B, K). Imports only torch.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.objectives.common import position_ids_from_mask
from rlhf.types import LossOutput


def sequence_scores(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T) right-padded ids -> (B, K) float32 scores of a sequence-classification model (its last token)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask))
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits.float()  # (B, K)


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, labels: Tensor, margin: Tensor | None = None,
                       center_coef: float = 0.0, heads: Sequence[str] = ()) -> tuple[Tensor, dict[str, float]]:
    """() loss and metrics. chosen/rejected (B, K) scores, labels (B, K) in {1, -1, 0}, margin (B,) or None;
    ``heads`` names the K columns for per-head metrics (K > 1)."""
    y = labels.to(chosen.dtype)  # (B, K)
    cell = (y != 0).to(chosen.dtype)  # (B, K) labelled cells
    n = cell.sum().clamp(min=1.0)
    lead = y * (chosen - rejected)  # (B, K)
    m = torch.zeros_like(lead) if margin is None else margin.to(lead.dtype).reshape(-1, 1).expand_as(lead)
    labelled = cell > 0  # (B, K) bool
    zero = torch.zeros_like(lead)
    # unlabelled cells are replaced before any function of them: their values (even NaN) reach neither the loss
    # nor its gradient (masking after the function would still send NaN * 0 = NaN back)
    nll = torch.where(labelled, -F.logsigmoid(torch.where(labelled, lead - m, zero)), zero)  # (B, K)
    loss = nll.sum() / n
    if center_coef:
        total = torch.where(labelled, chosen + rejected, zero)  # (B, K)
        loss = loss + center_coef * (total ** 2).sum() / n
    with torch.no_grad():
        metrics = {"loss/rm": float(loss.detach()) if bool(labelled.any()) else float("nan"),
                   **_means("rm", lead, chosen, rejected, cell)}
        if len(heads) > 1:
            for k, name in enumerate(heads):
                metrics.update(_means(f"rm/{name}", lead[:, k], chosen[:, k], rejected[:, k], cell[:, k]))
    return loss, metrics


def _means(prefix: str, lead: Tensor, chosen: Tensor, rejected: Tensor, cell: Tensor) -> dict[str, float]:
    """Accuracy, margin and score means over the labelled cells (NaN where none is labelled)."""
    n = float(cell.sum())
    if n == 0:
        return {f"{prefix}/acc": float("nan")}

    def mean(t: Tensor) -> float:
        return float((t * cell).sum()) / n

    return {f"{prefix}/acc": mean((lead > 0).to(lead.dtype)), f"{prefix}/margin": mean(lead),
            f"{prefix}/chosen": mean(chosen), f"{prefix}/rejected": mean(rejected), f"{prefix}/pairs": n}


class RewardModelObjective:
    """Objective ``rm``: supervised on preference pairs (``RMBatch``: collated pairs, labels, margins)."""

    name: ClassVar[str] = "rm"

    def __init__(self, heads: Sequence[str] = ("score",), center_coef: float = 0.0) -> None:
        self.heads, self.center_coef = tuple(heads), center_coef

    @classmethod
    def from_config(cls, cfg: Any) -> "RewardModelObjective":
        return cls(cfg.heads, cfg.center_coef)

    def loss_sft(self, model: Any, batch: Any) -> LossOutput:
        """One forward over chosen and rejected together (2B rows); the Bradley-Terry loss and its metrics."""
        ids, mask, _ = batch.pairs.stacked()  # (2B, T)
        chosen, rejected = sequence_scores(model, ids, mask).chunk(2)  # (B, K) each
        loss, metrics = bradley_terry_loss(chosen, rejected, batch.labels, batch.margin, self.center_coef,
                                           self.heads)
        return LossOutput(loss=loss, metrics=metrics)
