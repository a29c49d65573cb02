"""SFT: token-mean negative log-likelihood on target tokens (the standard supervised fine-tuning objective).

    L = - 1/|T| sum_{(b, t) in T} log p_theta(x_{b,t} | x_{b,<t}),    T = {(b, t): loss_mask[b, t] = 1}

``loss_mask[b, t] = 1`` means token t is a target, predicted from the logits at position t - 1 (see
``rlhf.types.SFTBatch``). The mean is over all target tokens of the batch, not per sequence. Imports only torch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.objectives.common import masked_mean, position_ids_from_mask
from rlhf.types import LossOutput, SFTBatch


def sft_loss(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """() token-mean cross entropy. logits (B, T, V), input_ids (B, T), loss_mask (B, T); 0 if no target."""
    B, T, V = logits.shape
    pred = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t + 1
    targets = input_ids[:, 1:]  # (B, T-1)
    target_mask = loss_mask[:, 1:].float()  # (B, T-1)
    nll = F.cross_entropy(pred.reshape(-1, V), targets.reshape(-1), reduction="none").view(B, T - 1)  # (B, T-1)
    return masked_mean(nll, target_mask)


class SFT:
    name: ClassVar[str] = "sft"

    @classmethod
    def from_config(cls, cfg: Any = None) -> "SFT":
        return cls()

    def loss_sft(self, model: Any, batch: SFTBatch) -> LossOutput:
        """Forward ``model`` (a HF causal LM) on the batch and return the token-mean NLL of its targets."""
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids_from_mask(batch.attention_mask),
        )
        logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T, V)
        loss = sft_loss(logits, batch.input_ids, batch.loss_mask)
        tokens = float(batch.loss_mask[:, 1:].sum())
        return LossOutput(loss=loss, metrics={"loss/sft": float(loss.detach()), "sft/tokens": tokens})
