"""Off-policy corrections for stale or mismatched samples, and the rollout/trainer mismatch metrics.

Three log-probabilities per completion token (all (B, C), on the completion mask):

    b      behaviour: the rollout engine's, for the policy version that sampled the token (``rollout_logprobs``);
           under asynchronous training up to k versions older than the trainer's, and always from other kernels
    p      proximal: the trainer's own logprob at consumption, before this update (``old_logprobs``; equal to
           ``logprobs.detach()`` for one epoch x one mini-batch)
    theta  current: the trainer's logprob with grad

The shared surrogate (``rlhf.objectives.common.Surrogate``) takes a ``Correction`` that says which of b and p is its
"old" policy (the one the PPO ratio and clip are taken against) and which detached per-token weight w multiplies the
clipped policy term (and CGPO's NLL rows), never the KL term:

    none       old = p, w = 1. Ignores b: exact only when b = p (synchronous, same kernels). No variance, and a
               bias that grows with staleness and engine mismatch.
    behaviour  old = b, w = 1: coupled PPO, the ratio theta / b is clipped as usual (what OpenRLHF and verl do in
               asynchronous mode by default). Unbiased at the first step, but the trust region is centred on a stale
               policy, so a large gap b -> p makes the clip cut most of the gradient (or none of it).
    tis        truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
               off-policy RL training"; Ionides 2008): old = p, w = min(exp(p - b), cap). Truncation caps the
               variance at the cost of a bias towards the behaviour policy on tokens whose ratio exceeds the cap.
               Sequence level: w_i = min(exp(sum_t (p - b)), cap), the true sequence likelihood ratio, truncated;
               unbiased below the cap but its variance grows exponentially with the length.
    mis        masked importance sampling (IcePop, Ling Team 2025, "Every step evolves"): old = p, w = exp(p - b)
               inside [low, high], else 0 (the token is dropped). No truncation bias inside the band, no
               unbounded weights; the dropped tokens bias the gradient (it ignores the most mismatched tokens).
               Sequence level: the geometric-mean ratio g_i = exp(mean_t (p - b)) filters whole samples: every
               token of sample i gets w = 1 if low <= g_i <= high, else 0. g_i is a length-normalised per-token
               average, not a likelihood ratio of anything, so multiplying by it would be neither an unbiased
               estimator nor a variance reduction; it is used as a rejection test only, and accepted samples are
               trained as on-policy (weight 1, low variance, bias bounded by the band).
    decoupled  decoupled PPO (Hilton et al. 2022; AReaL, Fu et al. 2025): old = p, so the trust region is
               anchored at the proximal policy, not at the stale one; w = exp(p - b) corrects for sampling from b,
               and tokens with w > cap are dropped (w = 0), not truncated. Exact importance weights on the kept
               tokens with variance bounded by the cap; the bias is the missing contribution of the dropped (most
               stale) tokens, rather than truncation's systematic shrinking of large ratios.

Weights are detached, 1 off the mask, and 0 (not masked) on dropped tokens: dropped tokens stay in the loss's
denominator, so a token normaliser computed from the loss mask (one mean over micro-batches) stays valid.

Metrics of a correction (over the tokens where mask != 0): ``offpolicy/is_weight_{mean,max,min}`` (the weights
applied, dropped tokens as 0), ``offpolicy/truncated_frac`` (tis: share at the cap), ``offpolicy/masked_frac``
(mis, decoupled: share dropped), ``offpolicy/behaviour_ratio_mean`` (behaviour: mean exp(p - b)); tis also logs
the names of the former advantage-folding TIS, ``mismatch/tis_weight_mean`` and ``mismatch/tis_clip_frac``.

``mismatch_metrics`` measures the gap: with d = b - p on the sampled tokens (which come from b),
``mismatch/kl_k1`` = mean(d) and ``mismatch/kl_k3`` = mean(exp(-d) - 1 + d) (>= 0) both estimate KL(b || p);
plus the mean and max |d|. Imports only torch and the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

CORRECTIONS = ("none", "behaviour", "tis", "mis", "decoupled")
LEVELS = ("token", "sequence")
TOKEN_ONLY = ("behaviour", "decoupled")


def mismatch_metrics(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """old_logprobs, rollout_logprobs, mask: (B, C). Means over the tokens where mask != 0."""
    on = mask != 0  # (B, C)
    if not bool(on.any()):
        return {}
    d = (rollout_logprobs.float() - old_logprobs.float())[on]  # (T,)
    return {
        "mismatch/kl_k1": float(d.mean()),
        "mismatch/kl_k3": float((torch.exp(-d) - 1 + d).mean()),
        "mismatch/logprob_abs_mean": float(d.abs().mean()),
        "mismatch/logprob_abs_max": float(d.abs().max()),
    }


@dataclass(frozen=True)
class Correction:
    """Which off-policy correction the surrogate applies (module docstring); built from ``objective.off_policy``.

    ``kind="auto"`` is accepted here so that an objective can be built from an unresolved recipe section, but
    using it (``needs_behaviour``, ``needs_proximal``, ``weights``) is an error: the driver resolves it first.
    """

    kind: str = "none"
    level: str = "token"
    cap: float = 2.0  # tis: truncation cap; decoupled: drop threshold
    low: float = 0.5  # mis: band [low, high] of kept ratios
    high: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in ("auto",) + CORRECTIONS:
            raise ValueError(f"objective.off_policy.correction={self.kind!r}; expected one of "
                             f"{('auto',) + CORRECTIONS}")
        if self.level not in LEVELS:
            raise ValueError(f"objective.off_policy.level={self.level!r}; expected one of {LEVELS}")
        if self.kind in TOKEN_ONLY and self.level != "token":
            raise ValueError(f"objective.off_policy.correction: {self.kind} is token-level only; set "
                             "objective.off_policy.level: token")
        if not self.cap > 0:
            raise ValueError(f"objective.off_policy.cap must be > 0, got {self.cap}")
        if not 0 < self.low < self.high:
            raise ValueError(f"objective.off_policy.low ({self.low}) must be > 0 and < objective.off_policy.high "
                             f"({self.high})")
        if not self.low <= 1.0 <= self.high:
            raise ValueError(f"objective.off_policy.low / objective.off_policy.high: the band [{self.low}, "
                             f"{self.high}] must contain 1 (the ratio of on-policy tokens)")

    @classmethod
    def from_config(cls, cfg: Any) -> "Correction":
        """From an ``objective.off_policy`` section (``rlhf.config.objectives.OffPolicyConfig``). A recipe's
        trainers get the section with ``auto`` resolved (``rlhf.config.pipeline.trained_objective``: decoupled
        under async); a section used on its own, outside a recipe, trains synchronously, so ``auto`` is none."""
        kind = "none" if cfg.correction == "auto" else cfg.correction
        return cls(kind=kind, level=cfg.level, cap=cfg.cap, low=cfg.low, high=cfg.high)

    def resolved(self) -> "Correction":
        """Self, or a ValueError while the kind is still "auto"."""
        if self.kind == "auto":
            raise ValueError("objective.off_policy.correction is 'auto': resolve it first (none when training is "
                             "synchronous, decoupled when asynchronous) before training with the surrogate")
        return self

    @property
    def needs_behaviour(self) -> bool:
        """The loss needs the behaviour (rollout) logprobs b."""
        return self.resolved().kind != "none"

    @property
    def needs_proximal(self) -> bool:
        """The loss uses the proximal logprobs p as its old policy and weights by p / b."""
        return self.resolved().kind in ("tis", "mis", "decoupled")

    def weights(self, proximal: Tensor, behaviour: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """(B, C) detached float32 weights w and this correction's metrics.

        proximal p, behaviour b, mask: (B, C). w = 1 off the mask and for kinds none / behaviour (whose metrics
        only describe the gap: behaviour_ratio_mean); metrics are over the tokens where mask != 0, {} if none.
        """
        kind = self.resolved().kind
        on = mask != 0  # (B, C)
        log_r = torch.where(on, proximal.detach().float() - behaviour.detach().float(),
                            torch.zeros(on.shape, dtype=torch.float32, device=on.device))  # (B, C) log(p / b)
        ones = torch.ones_like(log_r)  # (B, C)
        if kind == "none":
            return ones, {}
        if kind == "behaviour":
            metrics = {"offpolicy/behaviour_ratio_mean": float(torch.exp(log_r[on]).mean())} if bool(on.any()) else {}
            return ones, metrics

        if kind == "tis":
            if self.level == "token":
                w = torch.exp(log_r).clamp(max=self.cap)  # (B, C)
            else:
                seq = torch.exp(log_r.sum(dim=1, keepdim=True)).clamp(max=self.cap)  # (B, 1) sequence ratio, capped
                w = seq.expand_as(log_r)  # (B, C)
            dropped = torch.zeros_like(on)  # (B, C) nothing dropped, only truncated
        elif kind == "mis":
            if self.level == "token":
                r = torch.exp(log_r)  # (B, C)
                dropped = (r < self.low) | (r > self.high)  # (B, C)
                w = torch.where(dropped, torch.zeros_like(r), r)  # (B, C)
            else:
                count = on.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
                g = torch.exp(log_r.sum(dim=1, keepdim=True) / count)  # (B, 1) geometric-mean ratio
                out = (g < self.low) | (g > self.high)  # (B, 1)
                dropped = out.expand_as(on)  # (B, C)
                w = torch.where(dropped, torch.zeros_like(log_r), ones)  # (B, C)
        else:  # decoupled
            r = torch.exp(log_r)  # (B, C)
            dropped = r > self.cap  # (B, C)
            w = torch.where(dropped, torch.zeros_like(r), r)  # (B, C)
        w = torch.where(on, w, ones)  # (B, C) 1 off the mask
        return w, self._metrics(kind, w, dropped & on, on)

    def _metrics(self, kind: str, w: Tensor, dropped: Tensor, on: Tensor) -> dict[str, float]:
        """w, dropped, on: (B, C); statistics of the applied weights over the loss mask."""
        if not bool(on.any()):
            return {}
        kept = w[on]  # (T,)
        metrics = {
            "offpolicy/is_weight_mean": float(kept.mean()),
            "offpolicy/is_weight_max": float(kept.max()),
            "offpolicy/is_weight_min": float(kept.min()),
        }
        if kind == "tis":
            at_cap = float((kept >= self.cap).float().mean())
            metrics["offpolicy/truncated_frac"] = at_cap
            metrics["mismatch/tis_weight_mean"] = metrics["offpolicy/is_weight_mean"]  # the former TIS names
            metrics["mismatch/tis_clip_frac"] = at_cap
        else:
            metrics["offpolicy/masked_frac"] = float(dropped[on].float().mean())
        return metrics
