"""MAH-DPO: DPO per head of a multi-head policy, head k on objective k's preference labels ("Simultaneous
Multi-objective Alignment Across Verifiable and Non-verifiable Rewards": K LM heads on one trunk).

For pair i (prompt x, completions y_c "chosen" and y_r "rejected" as the file names them) and head k, with the
head's summed completion log-probs pi_k and the reference's ref (the initial model: one head), a label
y_ik in {+1 (objective k prefers y_c), -1 (it prefers y_r), 0 (no preference)}:

    h_ik = [pi_k(y_c|x) - ref(y_c|x)] - [pi_k(y_r|x) - ref(y_r|x)]       head k's implicit-reward difference
    L    = 1/B sum_i sum_{k: y_ik != 0} -log sigmoid(beta * y_ik * h_ik)     DPO, Rafailov et al. 2023, eq. 7

so head k's loss is DPO on the pairs its objective labels (a -1 label swaps the pair), pairs with no label for k
give head k nothing, and the trunk gets the gradient of every head's loss. The mean is over the B pairs (as
``DPO.loss``, with ``normalizer`` in its place for sharded batches): a pair weighs the same whichever heads it
labels.

``nll_coef`` > 0 adds, per labelled (pair, head) cell, an NLL term on the completion objective k prefers (y_w: the
chosen one when y_ik = +1, the rejected one when -1), per token (RPO, Pang et al. 2024, "Iterative Reasoning
Preference Optimization", eq. 2):

    L += nll_coef * 1/B sum_i sum_{k: y_ik != 0} -pi_k(y_w|x) / |y_w|

It keeps each head's likelihood of its preferred answers up: plain DPO may lower both completions of a pair, and a
head then drifts to malformed text (measured: bench/mah_dpo.py). With ``nll_coef`` 0 (the default) the loss is
the DPO sum above, unchanged.

Metrics: ``loss/mah_dpo``; ``rewards/accuracy`` and ``rewards/margin`` over the labelled (pair, head) cells of
each head on its own objective; and the K x K matrix ``head/{k}/pair_acc/{j}``: how often head k's implicit
reward beta * h_ik ranks the pair as objective j's labels say (y_ij * h_ik > 0), over the pairs j labels. A head
that beats the others on its own objective has the largest entry of its column j = k.

``head_sequence_logps(model, ids, mask, loss_mask)`` gives the (B, K) summed log-probs of every head from one trunk
forward: the model's forward takes ``all_heads=True`` and returns logits (B, K, T, V)
(``rlhf.models.multihead.MultiHeadCausalLM``); ``packed_head_sequence_logps`` the same from one padding-free
trunk forward (train.packing; rlhf/objectives/packing.py), every head applied only to the positions that predict
a loss-masked token. Imports only torch and the standard library.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.objectives.common import selected_logprobs, unwrapped
from rlhf.objectives.packing import head_sees, pack_rows, varlen_attention
from rlhf.types import LossOutput


def head_sequence_logps(model: Any, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> Tensor:
    """(B, K) summed log-probs of the loss-masked tokens under each head: right-padded (B, T) ids, mask and
    loss_mask (token t predicted from the logits at t - 1, as ``token_logprobs``)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, all_heads=True)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, K, T, V)
    B, K, T, V = logits.shape
    targets = input_ids[:, 1:].unsqueeze(1).expand(B, K, T - 1)  # (B, K, T-1)
    token = selected_logprobs(logits[:, :, :-1].reshape(B * K, T - 1, V),
                              targets.reshape(B * K, T - 1)).reshape(B, K, T - 1)  # (B, K, T-1)
    mask = loss_mask[:, 1:].unsqueeze(1).to(token.dtype)  # (B, 1, T-1)
    return torch.where(mask > 0, token, torch.zeros_like(token)).sum(-1)  # (B, K)


def packed_head_sequence_logps(model: Any, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor,
                               one_row: bool | None = None) -> Tensor:
    """(B, K) ``head_sequence_logps`` of right-padded (B, T) ids, mask and loss_mask from one packed trunk forward
    (each row's first token as its one-token "prompt"); one_row as ``packed_completion_logprobs``."""
    one_row = varlen_attention(model) if one_row is None else one_row
    packed = pack_rows(input_ids, attention_mask, 1, None if one_row else 0)  # predictors of tokens 1..T-1
    take = packed.valid & (loss_mask[:, 1:] != 0)  # (B, T-1) loss-masked tokens with a predictor
    keep = packed.predictor[take]  # (M,) flat predictor positions, row-major over (b, t)
    with ExitStack() as stack:
        for head in unwrapped(model).heads:  # each head sees only the M predictor positions
            stack.enter_context(head_sees(head, keep))
        out = model(input_ids=packed.input_ids, position_ids=packed.position_ids, attention_mask=None,
                    use_cache=False, all_heads=True)
    logits = (out.logits if hasattr(out, "logits") else out[0])[0]  # (K, M, V)
    K, M = logits.shape[0], logits.shape[1]
    token = selected_logprobs(logits, input_ids[:, 1:][take].unsqueeze(0).expand(K, M))  # (K, M)
    rows = take.nonzero()[:, 0]  # (M,) the batch row of each kept token
    return token.new_zeros((K, input_ids.shape[0])).index_add(1, rows, token).T  # (B, K)


@dataclass
class MAHDPO:
    heads: tuple[str, ...]  # K head names = objective names, in the model's head order
    beta: float = 0.1
    mix: tuple[float, ...] = ()  # the default mix of the heads' logits (generation, saved lm_head); () = uniform
    nll_coef: float = 0.0  # weight of the per-head NLL on each labelled pair's preferred completion (0: none)

    name: ClassVar[str] = "mah_dpo"
    needs_reference: ClassVar[bool] = True
    pairs_need_reference: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.heads = tuple(self.heads)
        if not self.heads:
            raise ValueError("MAHDPO: needs at least one head")
        if not self.beta > 0:
            raise ValueError(f"MAHDPO: beta must be > 0, got {self.beta}")
        self.mix = tuple(self.mix) or tuple(1.0 / len(self.heads) for _ in self.heads)
        if len(self.mix) != len(self.heads):
            raise ValueError(f"MAHDPO: mix {list(self.mix)} needs one weight per head {list(self.heads)}")
        if not self.nll_coef >= 0:
            raise ValueError(f"MAHDPO: objective.nll_coef must be >= 0, got {self.nll_coef}")

    @classmethod
    def from_config(cls, cfg: Any) -> "MAHDPO":
        return cls(heads=tuple(cfg.heads), beta=cfg.beta, mix=tuple(cfg.mix or ()),
                   nll_coef=float(cfg.nll_coef))

    def loss(self, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, labels: Tensor, normalizer: float | None = None,
             chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None) -> LossOutput:
        """policy_*_logps (B, K) per head; ref_*_logps (B,); labels (B, K) in {1, -1, 0}; *_lengths (B,) completion
        tokens of each side (needed when ``nll_coef`` > 0; module docstring)."""
        B, K = policy_chosen_logps.shape
        if K != len(self.heads) or labels.shape != (B, K) or ref_chosen_logps.shape != (B,):
            raise ValueError(f"MAHDPO.loss: expected (B, {len(self.heads)}) policy logps and labels, (B,) reference "
                             f"logps; got {tuple(policy_chosen_logps.shape)}, {tuple(labels.shape)}, "
                             f"{tuple(ref_chosen_logps.shape)}")
        y = labels.to(policy_chosen_logps.dtype)  # (B, K)
        labelled = y != 0  # (B, K)
        h = ((policy_chosen_logps - ref_chosen_logps[:, None])
             - (policy_rejected_logps - ref_rejected_logps[:, None]))  # (B, K)
        logits = self.beta * y * h  # (B, K)
        zero = torch.zeros_like(logits)
        nll = torch.where(labelled, -F.logsigmoid(torch.where(labelled, logits, zero)), zero)  # (B, K)
        loss = nll.sum()
        sft = None
        if self.nll_coef > 0:
            if chosen_lengths is None or rejected_lengths is None:
                raise ValueError("MAHDPO.loss: objective.nll_coef > 0 needs the completions' lengths "
                                 "(chosen_lengths, rejected_lengths)")
            preferred = torch.where(y > 0, policy_chosen_logps, policy_rejected_logps)  # (B, K)
            lengths = torch.where(y > 0, chosen_lengths[:, None], rejected_lengths[:, None]).to(y.dtype)  # (B, K)
            sft = torch.where(labelled, -preferred / lengths.clamp(min=1), zero)  # (B, K) per-token NLL
            loss = loss + self.nll_coef * sft.sum()
        loss = loss / (B if normalizer is None else normalizer)
        with torch.no_grad():
            metrics = self._metrics(h.detach(), y, labelled, nll.detach())
            if sft is not None:
                n = float(labelled.sum())
                metrics["loss/nll"] = float(sft.detach().sum() / n) if n else float("nan")
        return LossOutput(loss=loss, metrics=metrics)

    def _metrics(self, h: Tensor, y: Tensor, labelled: Tensor, nll: Tensor) -> dict[str, float]:
        """Losses, own-objective accuracy and margin, and the (head, objective) pair-accuracy matrix."""
        n = float(labelled.sum())
        nan = float("nan")
        out: dict[str, float] = {
            f"loss/{self.name}": float(nll.sum() / n) if n else nan,
            "rewards/accuracy": float(((y * h > 0) & labelled).sum() / n) if n else nan,
            "rewards/margin": float((self.beta * y * h * labelled).sum() / n) if n else nan,
            "pairs": float(h.shape[0]),
        }
        for k, head in enumerate(self.heads):
            own = labelled[:, k]  # (B,)
            out[f"head/{head}/loss"] = float(nll[own, k].mean()) if bool(own.any()) else nan
            for j, objective in enumerate(self.heads):
                rows = labelled[:, j]  # (B,) the pairs objective j labels
                right = (y[rows, j] * h[rows, k] > 0).to(h.dtype)  # (n_j,)
                out[f"head/{head}/pair_acc/{objective}"] = float(right.mean()) if bool(rows.any()) else nan
        return out

    def pair_loss(self, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, *, pair_info: Tensor | None = None, normalizer: float | None = None,
                  chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None,
                  **unused: Any) -> LossOutput:
        """The trainer's pair update: ``loss`` with the (B, K) labels in pair_info and the (B,) completion lengths
        (used by the NLL term only)."""
        if pair_info is None:
            raise ValueError("MAHDPO.pair_loss: needs each pair's (B, K) head labels as pair_info")
        return self.loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                         pair_info, normalizer, chosen_lengths, rejected_lengths)


__all__ = ["MAHDPO", "head_sequence_logps"]
