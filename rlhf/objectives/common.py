"""What every objective shares: the one clipped surrogate, masked reductions and per-token log-probabilities.

``Surrogate`` is the policy-gradient loss of every policy-gradient objective here (GRPO, RLOO, REINFORCE++, PPO,
CGPO's CRPG / CRRAFT rows). Per completion token t of sample i, with ratio rho = pi_theta(o_t) / pi_old(o_t) and
advantage A (per sample (B,) or per token (B, C)):

    l_it = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + kl_coef * D_KL,it      (DeepSeekMath eq. 3)

with the k3 estimator D_KL = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 (eq. 4; Schulman 2020), multiplied by rho
with ``kl_ratio_correction`` (DeepSeek-V3.2's unbiased estimate, TRL's ``use_bias_correction_kl``). eps_high
defaults to eps_low; a larger one is DAPO's clip-higher. Rows marked in ``nll_rows`` (CGPO's CRRAFT) take
-A * log pi per token instead of the clipped term (no ratio, no clipping), aggregated the same way. Aggregation:

    seq_mean:    1/G sum_i 1/|o_i| sum_t l_it            exactly eq. 3 (TRL loss_type="grpo")
    token_mean:  1/sum_i |o_i| sum_i sum_t l_it          DAPO's token-level loss (TRL "bnpo"; "dapo" with a
                                                         global token count -> pass ``token_normalizer``)
    dr_grpo:     1/(G * L_max) sum_i sum_t l_it          Dr. GRPO (Liu et al. 2025): a constant denominator;
                                                         ``token_normalizer`` = rows * max_new_tokens (TRL
                                                         "dr_grpo"); defaults to the padded B * C

Off-policy correction (``correction``, ``rlhf.objectives.offpolicy``): with ``behaviour_logprobs`` b (the rollout
engine's) and the proximal p (``old_logprobs``), kind behaviour takes the ratio against b (pi_old := b); kinds tis,
mis and decoupled keep pi_old := p and multiply each token's policy term (and each NLL-row term) by a detached
weight w >= 0 derived from p / b; the KL term is never reweighted:

    l_it = -w_it min(rho A, clip(rho) A) + kl_coef * D_KL,it

Since w >= 0, this is the clipped term with w folded into A (the former advantage-folding TIS), computed once.

``completion_logprobs`` computes log pi(o_t | q, o_<t) for each completion token, the quantity every
policy-gradient loss here is written in (e.g. the ratio in DeepSeekMath eq. 3, Shao et al. 2024):

    logprobs[b, j] = log_softmax(logits[b, P + j - 1] / temperature)[input_ids[b, P + j]]

Prompts are LEFT-padded to P and completions RIGHT-padded to C (see ``rlhf.types``), so position ids are
derived from the attention mask: a left-padded row's first real token sits at position 0, exactly as if the row
were run alone. Imports only torch and the standard library.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlhf.objectives.offpolicy import Correction
from rlhf.types import LossOutput

LOSS_AGGREGATIONS = ("token_mean", "seq_mean", "dr_grpo")


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of ``x * mask`` (over ``dim``, or everything). Entries where mask == 0 are ignored even if NaN/inf."""
    mask = mask.to(x.dtype)
    x = torch.where(mask != 0, x, torch.zeros_like(x)) * mask
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over entries where mask != 0 (mask may be fractional weights); 0 where the mask is empty."""
    total = masked_sum(x, mask, dim)
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim=dim)
    return torch.where(count > 0, total / count.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(total))


def top_k_per_group(scores: Tensor, group_ids: Tensor, top_k: int, eligible: Tensor,
                    lengths: Tensor | None = None) -> Tensor:
    """(B,) bool on scores' device: per group, its ``top_k`` eligible rows (eligible (B,) bool) by score (scores
    (B,)), highest first; ties go to the shorter row (lengths (B,), when given), then to the lower row index.
    The selection of CGPO's CRRAFT and of RSF."""
    values = scores.detach().double().cpu().tolist()
    sizes = [0.0] * len(values) if lengths is None else lengths.detach().double().cpu().tolist()
    ok = eligible.detach().cpu().tolist()
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        if ok[i]:
            groups.setdefault(int(g), []).append(i)
    kept = torch.zeros(len(values), dtype=torch.bool)  # (B,)
    for rows in groups.values():
        for i in sorted(rows, key=lambda i: (-values[i], sizes[i], i))[:top_k]:
            kept[i] = True
    return kept.to(scores.device)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """(B, T) position of each token counting only real tokens; 0 on left padding."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def unwrapped(model: Any) -> Any:
    """The model under DeepSpeed / DDP wrappers (which forward kwargs to ``.module``), however nested: the LoRA
    reference (``rlhf.models.lora.AdapterDisabled``) wraps the DeepSpeed engine, whose own ``config`` is
    DeepSpeed's; peft and transformers models are their own (peft forwards ``config`` and
    ``get_output_embeddings`` to the base model)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def _accepts_logits_to_keep(model: Any) -> bool:
    """True when the (possibly wrapped) HF model's forward takes ``logits_to_keep`` (transformers >= 4.50)."""
    try:
        return "logits_to_keep" in inspect.signature(unwrapped(model).forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def completion_logprobs(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    temperature: float = 1.0,
) -> Tensor:
    """(B, C) log-probability of each completion token under ``model`` (a HF causal LM).

    input_ids, attention_mask: (B, P + C), prompt left-padded to ``prompt_len`` = P, completion right-padded.
    Values on completion padding are the logprob of the pad token (mask them out downstream).
    Only the C positions that predict completion tokens are turned into log-probabilities, one row at a time
    (``selected_logprobs``), so the float32 (C, V) softmax temporary is per sequence, not per batch.
    """
    B, T = input_ids.shape
    C = T - prompt_len
    if prompt_len < 1:
        raise ValueError(f"completion_logprobs: prompt_len must be >= 1 (got {prompt_len})")
    if C <= 0:
        return input_ids.new_zeros((B, 0), dtype=torch.float32)
    position_ids = position_ids_from_mask(attention_mask)  # (B, P + C)
    kwargs: dict[str, Any] = {}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = C + 1  # positions P-1 .. P+C-1; the last one is dropped below
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T or C + 1, V)
    logits = logits[:, -(C + 1) : -1]  # (B, C, V): position P + j - 1 predicts completion token j
    return selected_logprobs(logits, input_ids[:, prompt_len:], temperature)  # (B, C)


def selected_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """(B, N) float32 log_softmax(logits / temperature)[targets] for logits (B, N, V) of any float dtype.

    Row by row (one float32 (N, V) temporary at a time, updated in place) in both passes, and the backward writes one (B, N, V)
    gradient: d/dx_i = g * (1[i = target] - softmax(x / T)_i) / T. What it keeps for the backward is the logits
    themselves (no log_softmax output per row), so memory is logits + their gradient, and no per-row slice of
    the batch's gradient is materialised at full size (as autograd does for ``logits[b]``)."""
    return _SelectedLogprobs.apply(logits, targets, float(temperature))


class _SelectedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
        out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)  # (B, N)
        lse = torch.empty_like(out)  # (B, N) logsumexp of logits / T
        for b in range(logits.shape[0]):
            x = logits[b].to(torch.float32, copy=True).div_(temperature)  # (N, V): the one temporary
            lse[b] = torch.logsumexp(x, dim=-1)
            out[b] = x.gather(-1, targets[b].unsqueeze(-1)).squeeze(-1) - lse[b]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        logits, targets, lse = ctx.saved_tensors
        t = ctx.temperature
        grad_logits = torch.empty_like(logits)  # (B, N, V)
        for b in range(logits.shape[0]):
            g = grad[b].float().unsqueeze(-1)  # (N, 1)
            row = logits[b].to(torch.float32, copy=True)  # (N, V): the one temporary, then in place
            row.div_(t).sub_(lse[b].unsqueeze(-1)).exp_().mul_(-g)  # -g * softmax(x / T)
            row.scatter_add_(-1, targets[b].unsqueeze(-1), g)
            grad_logits[b] = row.div_(t)
        return grad_logits, None, None


def token_logprobs(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T-1) log-probability of tokens 1..T-1 of right-padded sequences (token t predicted at t-1).

    For full sequences such as preference pairs (no left padding); mask the result with ``loss_mask[:, 1:]``.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T, V)
    return selected_logprobs(logits[:, :-1], input_ids[:, 1:])  # (B, T-1)


@dataclass(frozen=True)
class Surrogate:
    """The one clipped policy-gradient surrogate (module docstring), built from an objective's shared fields."""

    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # None -> clip_eps (symmetric)
    kl_coef: float = 0.0  # beta of the k3 KL loss term
    loss_agg: str = "token_mean"
    kl_ratio_correction: bool = False  # multiply k3 by the ratio rho
    correction: Correction = Correction()  # off-policy correction; kind none ignores behaviour_logprobs

    def __post_init__(self) -> None:
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss_agg={self.loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")

    @classmethod
    def from_config(cls, cfg: Any, kl_coef: float | None = None) -> "Surrogate":
        """From an objective config's shared policy-gradient fields; ``kl_coef`` overrides the config's (0 when
        the KL sits in the reward instead of the loss). The correction comes from ``cfg.off_policy``: a recipe's
        trainers get it resolved (``rlhf.config.pipeline.trained_objective``); "auto" in a section used on its
        own means none (``Correction.from_config``)."""
        return cls(clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
                   kl_coef=cfg.kl_coef if kl_coef is None else kl_coef, loss_agg=cfg.loss_agg,
                   kl_ratio_correction=cfg.kl_ratio_correction, correction=Correction.from_config(cfg.off_policy))

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    @property
    def eps_high(self) -> float:
        return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high

    def loss(self, logprobs: Tensor, old_logprobs: Tensor | None, ref_logprobs: Tensor | None, advantages: Tensor,
             mask: Tensor, token_normalizer: float | None = None, nll_rows: Tensor | None = None,
             behaviour_logprobs: Tensor | None = None) -> LossOutput:
        """Clipped surrogate + kl_coef * k3 KL, aggregated by ``loss_agg``, with the off-policy ``correction``.

        logprobs (B, C) with grad; old_logprobs (B, C) or None (= logprobs.detach(), one update per rollout): the
        proximal policy; ref_logprobs (B, C) or None; advantages (B,) or token-level (B, C); mask (B, C) 1 on
        counted tokens. token_normalizer: for token_mean / dr_grpo, divide the token sum by this instead of this
        batch's token count (e.g. the mini-batch's global token count / number of micro-batches, so summed shards
        equal one mean). nll_rows (B,) bool: rows trained with -A * log pi (their A comes from ``advantages``).
        behaviour_logprobs (B, C) or None: the rollout engine's logprobs, required unless the correction is none.
        """
        kind = self.correction.resolved().kind
        weights, extra = None, {}
        if self.correction.needs_behaviour:
            if behaviour_logprobs is None:
                raise ValueError(f"objective.off_policy.correction: {kind} needs behaviour_logprobs (the rollout "
                                 "engine's logprobs of the sampled tokens)")
            proximal = logprobs.detach() if old_logprobs is None else old_logprobs  # (B, C)
            w, extra = self.correction.weights(proximal, behaviour_logprobs, mask)  # (B, C) detached
            if kind == "behaviour":
                old_logprobs = behaviour_logprobs  # coupled: the ratio and the clip are taken against b
            else:
                old_logprobs, weights = proximal, w.to(logprobs.dtype)
        if nll_rows is not None and bool(nll_rows.any()):
            rows = nll_rows.to(torch.bool)  # (B,)
            rows = rows.unsqueeze(1) if advantages.dim() == 2 else rows  # (B, 1) against token-level advantages
            out = self._clipped(logprobs, old_logprobs, ref_logprobs, torch.where(rows, 0.0, advantages), mask,
                                token_normalizer, weights)  # the surrogate on the other rows, KL on all
            weight = torch.where(rows, advantages, 0.0)  # (B,) or (B, C)
            weight = weight.unsqueeze(1) if weight.dim() == 1 else weight  # (B, 1) or (B, C)
            nll_term = -weight * logprobs  # (B, C)
            if weights is not None:
                nll_term = nll_term * weights  # (B, C)
            nll = self.aggregate(nll_term, mask.to(logprobs.dtype), token_normalizer)
            out.metrics["loss/nll_rows"] = float(nll.detach())
            out.metrics["loss/total"] = float((out.loss + nll).detach())
            out.metrics.update(extra)
            return LossOutput(loss=out.loss + nll, metrics=out.metrics)
        out = self._clipped(logprobs, old_logprobs, ref_logprobs, advantages, mask, token_normalizer, weights)
        out.metrics.update(extra)
        return out

    def _clipped(self, logprobs: Tensor, old_logprobs: Tensor | None, ref_logprobs: Tensor | None,
                 advantages: Tensor, mask: Tensor, token_normalizer: float | None,
                 weights: Tensor | None = None) -> LossOutput:
        """weights (B, C) or None: detached off-policy weights of the policy term (not of the KL term)."""
        if self.kl_coef > 0 and ref_logprobs is None:
            raise ValueError("the surrogate's KL term (kl_coef > 0) needs ref_logprobs")
        on = mask != 0  # (B, C) bool
        mask = mask.to(logprobs.dtype)  # (B, C)
        if old_logprobs is None:
            old_logprobs = logprobs.detach()
        adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, C)

        # zero the log-ratios on padding so exp() cannot overflow there (0 * inf would poison the gradient)
        log_ratio = torch.where(on, logprobs - old_logprobs, torch.zeros_like(logprobs))  # (B, C)
        ratio = torch.exp(log_ratio)  # (B, C)
        clipped = ratio.clamp(1 - self.clip_eps, 1 + self.eps_high)  # (B, C)
        policy_term = -torch.min(ratio * adv, clipped * adv)  # (B, C)
        if weights is not None:
            policy_term = weights * policy_term  # (B, C) off-policy weights, detached

        per_token = policy_term  # (B, C)
        kl = None
        if ref_logprobs is not None:
            log_ref_ratio = torch.where(on, ref_logprobs - logprobs, torch.zeros_like(logprobs))  # (B, C)
            kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # (B, C) k3 estimator, eq. 4
            if self.kl_ratio_correction:
                kl = kl * ratio  # (B, C) importance-weighted to the current policy
            if self.kl_coef > 0:
                per_token = per_token + self.kl_coef * kl

        loss = self.aggregate(per_token, mask, token_normalizer)
        with torch.no_grad():
            clipped_out = ((ratio < 1 - self.clip_eps) & (adv < 0)) | ((ratio > 1 + self.eps_high) & (adv > 0))
            metrics = {
                "loss/total": float(loss.detach()),
                "loss/policy": float(self.aggregate(policy_term, mask, token_normalizer)),
                "clip_frac": float(masked_mean(clipped_out.to(mask.dtype), mask)),
                "ratio/mean": float(masked_mean(ratio, mask)),
                "tokens": float(mask.sum()),
            }
            if kl is not None:
                metrics["kl"] = float(masked_mean(kl, mask))
        return LossOutput(loss=loss, metrics=metrics)

    def aggregate(self, per_token: Tensor, mask: Tensor, token_normalizer: float | None) -> Tensor:
        """(B, C) per-token losses -> () scalar."""
        if self.loss_agg == "seq_mean":
            return masked_mean(per_token, mask, dim=1).mean()  # mean over each sequence, then over sequences
        if self.loss_agg == "dr_grpo":
            denom = per_token.numel() if token_normalizer is None else token_normalizer
            return masked_sum(per_token, mask) / denom
        denom = mask.sum().clamp(min=1) if token_normalizer is None else token_normalizer
        return masked_sum(per_token, mask) / denom  # sum over all tokens / tokens in the batch
