"""PPO with a (vector) critic: the clipped policy surrogate, the clipped value loss and the KL controllers.

Policy (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7), per completion token t with
rho_t = pi_theta(o_t) / pi_old(o_t) and the GAE advantage A_t (``rlhf.advantages.gae``, combined over streams):

    l_t^policy = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)     (+ kl_coef * k3 KL, optional)

computed by the shared clipped surrogate (``rlhf.objectives.common.Surrogate``), so the aggregations (token_mean /
seq_mean / dr_grpo), the asymmetric clip and the k3 KL term are the same as every policy-gradient objective's. In RLHF the KL to the reference usually sits in the
reward instead (Ziegler et al. 2019, sec. 2.2: r_t = -beta * KL_t + [t = last] r(x, y)); then kl_coef = 0 here.

Value (the clipped value loss of OpenAI baselines' ppo2 / Ziegler et al.'s lm-human-preferences, used by TRL and
OpenRLHF), per token t and critic stream s, with returns R_t = A_t + V_old,t (GAE targets):

    l_t^value = 1/2 * max((V_t - R_t)^2, (clip(V_t, V_old,t - c, V_old,t + c) - R_t)^2)

averaged over unmasked tokens and streams.

Adaptive KL coefficient (Ziegler et al. 2019, sec. 2.2), after a batch of n_steps samples with observed KL:

    e_t      = clip(KL_t / KL_target - 1, -0.2, 0.2)
    beta_t+1 = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

Pure torch and the standard library. Run the tests: pytest tests/unit/test_ppo_parts.py -q
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from rlhf.objectives.common import Surrogate, masked_mean, masked_sum
from rlhf.types import LossOutput

# --------------------------------------------------------------------------- value loss


def value_loss(
    values: Tensor,
    old_values: Tensor | None,
    returns: Tensor,
    mask: Tensor,
    clip: float | None,
    token_normalizer: float | None = None,
) -> LossOutput:
    """Clipped value loss (module docstring) averaged over unmasked tokens and all S streams.

    values (B, C, S) with grad; old_values (B, C, S) the critic's values at rollout time (may be None when
    clip is None); returns (B, C, S) GAE targets; mask (B, C). clip None -> the plain 1/2 (V - R)^2.
    token_normalizer: divide the sum by token_normalizer * S instead of this batch's unmasked-token count * S
    (micro-batch shards that sum to one mean, as ``Surrogate.loss``).
    Metrics: loss/value, value/clip_frac (share of token-streams where the clipped branch is the larger loss),
    value/mean, value/explained_variance = 1 - Var(R - V) / Var(R) over unmasked tokens of all streams (NaN when
    Var(R) = 0; NaN metrics are skipped by the trainer's averaging).
    """
    if values.dim() != 3 or values.shape != returns.shape:
        raise ValueError(
            f"value_loss: values and returns must both be (B, C, S); got {tuple(values.shape)}, {tuple(returns.shape)}"
        )
    if mask.shape != values.shape[:2]:
        raise ValueError(f"value_loss: mask must be (B, C) = {tuple(values.shape[:2])}, got {tuple(mask.shape)}")
    m = (mask != 0).unsqueeze(-1).expand_as(values).to(values.dtype)  # (B, C, S)
    returns = returns.to(values.dtype)
    unclipped = (values - returns).pow(2)  # (B, C, S)
    if clip is None:
        per_token = unclipped  # (B, C, S)
        clipped_wins = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        if old_values is None:
            raise ValueError("value_loss: clip needs old_values")
        old_values = old_values.to(values.dtype)
        clipped_values = old_values + (values - old_values).clamp(-clip, clip)  # (B, C, S)
        clipped = (clipped_values - returns).pow(2)  # (B, C, S)
        per_token = torch.max(unclipped, clipped)  # (B, C, S)
        clipped_wins = clipped > unclipped  # (B, C, S)
    per_token = 0.5 * per_token
    if token_normalizer is None:
        loss = masked_mean(per_token, m)
    else:
        loss = masked_sum(per_token, m) / (token_normalizer * values.shape[-1])

    with torch.no_grad():
        v = values.detach()
        metrics = {
            "loss/value": float(loss.detach()),
            "value/clip_frac": float(masked_mean(clipped_wins.to(v.dtype), m)),
            "value/mean": float(masked_mean(v, m)),
            "value/explained_variance": explained_variance(v, returns.detach(), m),
        }
    return LossOutput(loss=loss, metrics=metrics)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over entries where mask != 0 (population variances); NaN when Var(R) == 0."""
    on = mask != 0
    r = returns[on].double()
    if r.numel() == 0:
        return math.nan
    var_r = r.var(correction=0)
    if float(var_r) == 0.0:
        return math.nan
    return float(1.0 - (r - values[on].double()).var(correction=0) / var_r)


# --------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """A constant KL coefficient beta; ``update`` is a no-op (same interface as the adaptive controller)."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 sec. 2.2: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)."""

    def __init__(self, init: float, target: float, horizon: int) -> None:
        if target <= 0:
            raise ValueError(f"AdaptiveKLController: target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"AdaptiveKLController: horizon must be > 0, got {horizon}")
        self.value = float(init)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """current_kl: the observed KL(pi || pi_ref) of the batch; n_steps: samples in it."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)  # e_t, the clipped proportional error
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])  # target/horizon come from the recipe; the checkpoint's are informative


# --------------------------------------------------------------------------- objective


@dataclass
class PPO:
    surrogate: Surrogate = field(default_factory=Surrogate)  # kl_coef 0 when the KL is in the reward
    value_clip: float | None = 0.2  # the critic's clipped value loss (None: unclipped)

    name: ClassVar[str] = "ppo"

    @classmethod
    def from_config(cls, cfg: Any) -> "PPO":
        """From a PPO config: the surrogate's fields, with kl_coef only when kl_mode == "loss"."""
        return cls(surrogate=Surrogate.from_config(cfg, kl_coef=cfg.kl_coef if cfg.kl_mode == "loss" else 0.0),
                   value_clip=cfg.critic.value_clip)

    @property
    def needs_reference(self) -> bool:
        """Its update reads reference logprobs (the KL loss term)."""
        return self.surrogate.needs_reference

    def value_loss(self, values: Tensor, old_values: Tensor | None, returns: Tensor, mask: Tensor) -> LossOutput:
        """The critic's clipped value loss (``value_loss``) with this objective's clip."""
        return value_loss(values, old_values, returns, mask, self.value_clip)


__all__ = ["PPO", "AdaptiveKLController", "FixedKLController", "explained_variance", "value_loss"]
