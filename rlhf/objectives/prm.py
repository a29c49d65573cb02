"""PRM training: a causal LM learns to judge each step of a solution (Math-Shepherd style step-tag objective).

At the last token of each step tag (``rlhf.data.prm``) the model's two candidate logits, good and bad, give

    z = logit_good - logit_bad,     p = sigmoid(z) = softmax([logit_good, logit_bad])[0]
    L = - 1/|T| sum_{(b, t) in T} [ y log p + (1 - y) log(1 - p) ]          T = tag positions, y = step label

i.e. the two-way cross entropy restricted to the candidate tokens (what a scorer reads back), averaged over the
steps of the batch. Metrics: loss, step accuracy (p > 0.5 agrees with y), and the share of good steps.
Imports only torch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.objectives.common import masked_mean, position_ids_from_mask
from rlhf.types import LossOutput


def prm_logit_margin(logits: Tensor, candidates: Tensor) -> Tensor:
    """(B, T, V) logits, (2,) [good, bad] ids -> (B, T) z = logit_good - logit_bad."""
    pair = logits[..., candidates].float()  # (B, T, 2)
    return pair[..., 0] - pair[..., 1]


def prm_loss(margin: Tensor, labels: Tensor, tag_mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """() mean binary cross entropy over tag positions, and metrics. margin/labels/tag_mask (B, T)."""
    per_tag = F.binary_cross_entropy_with_logits(margin, labels, reduction="none")  # (B, T)
    loss = masked_mean(per_tag, tag_mask)
    with torch.no_grad():
        correct = ((margin > 0).float() == labels).float()  # (B, T)
        metrics = {
            "loss/prm": float(loss.detach()),
            "prm/step_acc": float(masked_mean(correct, tag_mask)),
            "prm/good_rate": float(masked_mean(labels, tag_mask)),
            "prm/steps": float(tag_mask.sum()),
        }
    return loss, metrics


class PRM:
    """Objective ``prm``: supervised, on step-labelled rows (no rollouts, no reference)."""

    name: ClassVar[str] = "prm"

    @classmethod
    def from_config(cls, cfg: Any = None) -> "PRM":
        return cls()

    def loss_sft(self, model: Any, batch: Any) -> LossOutput:
        """Forward ``model`` (a HF causal LM) on the batch; the step-tag loss and its metrics."""
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=position_ids_from_mask(batch.attention_mask))
        logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T, V)
        loss, metrics = prm_loss(prm_logit_margin(logits, batch.candidates), batch.labels, batch.tag_mask)
        return LossOutput(loss=loss, metrics=metrics)
