"""Static linear scalarisation of the reward vector: fixed weights w_k from the recipe, two normalisation orders.

With r_ik the raw value of component k for sample i, w_k its weight and N_g(.) the group normalisation of
``rlhf.advantages.group`` (GRPO's r~ = (r - mean_group) / (std_group + eps), DeepSeekMath sec. 4.1.2):

    sum_then_normalize:  A_i = N_g( sum_k w_k r_ik )          the usual multi-reward GRPO (TRL's default)
    component_then_sum:  A_i = sum_k w_k N_g(r_.k)_i          per-component ("decoupled") normalisation, as in
                                                              GDPO (arXiv 2601.05242), without its extra
                                                              batch-level renormalisation of the sum

NaN ("not applicable") handling:

- sum_then_normalize: a NaN component counts as 0 in the weighted sum; a row whose components are ALL NaN has
  a NaN sum, is left out of its group's statistics and gets advantage 0 (same as TRL).
- component_then_sum: a NaN component is left out of that component's group statistics and contributes 0 to
  the row's advantage (so an all-NaN row gets 0).

Per-sample weights (preference conditioning): when ``rv.sample_weights`` (B, K) is set, sample i's weight on
component k is w_k * m_ik (m: the prompt's drawn weight on a conditioned component, 1 on the others), in both
orders and in ``weighted_sum``; the NaN rules above are unchanged. A group's samples share their m, so the group
baselines compare samples under their prompt's own weights. Metrics add the distribution of the per-sample weights
(``weights/sample/NAME/{mean,min,max}``); ``reward/NAME/weighted`` is the mean of w_k m_ik r_ik.

Process components are weighted through their outcome summary in ``values``; per-step scores are not used here.
Imports only torch and the standard library.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from rlhf.advantages.group import group_normalize
from rlhf.types import RewardVector

NORMALIZE_ORDERS = ("component_then_sum", "sum_then_normalize")


class StaticWeighting:
    """Fixed weights per named component. Stateless apart from the weights themselves (kept in state_dict)."""

    kind = "static"

    def __init__(
        self,
        names: Sequence[str],
        kinds: Sequence[str],
        weights: Sequence[float],
        normalize: str = "sum_then_normalize",
    ) -> None:
        if not (len(names) == len(kinds) == len(weights)):
            raise ValueError("StaticWeighting: names, kinds and weights must have the same length")
        if normalize not in NORMALIZE_ORDERS:
            raise ValueError(f"StaticWeighting: normalize={normalize!r}; expected one of {NORMALIZE_ORDERS}")
        self.names = tuple(names)
        self.kinds = tuple(kinds)
        self.weights = {n: float(w) for n, w in zip(names, weights)}
        self.normalize = normalize

    @classmethod
    def from_config(cls, cfg: Any, components: Sequence[Any]) -> "StaticWeighting":
        """From a ``WeightingConfig`` and the recipe's ``RewardComponentConfig`` list."""
        return cls(
            names=[c.name for c in components],
            kinds=[c.kind for c in components],
            weights=[c.weight for c in components],
            normalize=cfg.normalize,
        )

    advantage_scale = 1.0  # fixed weights never scale the advantages

    # ------------------------------------------------------------------ scalarisation

    def _weight_vector(self, rv: RewardVector) -> Tensor:
        """(K,) weights in the order of ``rv.names``."""
        missing = [n for n in rv.names if n not in self.weights]
        if missing:
            raise KeyError(f"StaticWeighting: no weight for components {missing}; known: {list(self.weights)}")
        return torch.tensor([self.weights[n] for n in rv.names], dtype=rv.values.dtype, device=rv.values.device)

    def sample_weights(self, rv: RewardVector) -> Tensor:
        """(B, K) weight of every sample on every component: w_k, times ``rv.sample_weights`` when set."""
        w = self._weight_vector(rv)  # (K,)
        if rv.sample_weights is None:
            return w.expand_as(rv.values)
        return w * rv.sample_weights.to(rv.values.dtype)  # (B, K)

    def weighted_sum(self, rv: RewardVector) -> Tensor:
        """(B,) raw scalar reward sum_k w_ik r_ik; NaN components count 0, all-NaN rows stay NaN."""
        values = rv.values  # (B, K)
        total = torch.nansum(values * self.sample_weights(rv), dim=1)  # (B,)
        all_nan = torch.isnan(values).all(dim=1)  # (B,)
        return torch.where(all_nan, torch.full_like(total, math.nan), total)

    def scalarize(
        self, rv: RewardVector, group_ids: Tensor, scale_std: bool = True, eps: float = 1e-6
    ) -> tuple[Tensor, dict[str, float]]:
        """(B,) advantages and per-component metrics. See the module docstring for the two orders."""
        if self.normalize == "sum_then_normalize":
            advantages = group_normalize(self.weighted_sum(rv), group_ids, scale_std, eps)  # (B,)
        else:
            per_component = group_normalize(rv.values, group_ids, scale_std, eps)  # (B, K), NaN -> 0
            advantages = (per_component * self.sample_weights(rv)).sum(dim=1)  # (B,)
        return advantages, self.metrics(rv)

    def metrics(self, rv: RewardVector) -> dict[str, float]:
        """Per component: raw mean (NaN-ignored), weighted mean, weight; violation rate for constraints; with
        per-sample weights, their mean, min and max per component."""
        out: dict[str, float] = {}
        per_sample = self.sample_weights(rv)  # (B, K)
        for j, (name, kind) in enumerate(zip(rv.names, rv.kinds)):
            col = rv.values[:, j]  # (B,)
            ok = ~torch.isnan(col)  # (B,)
            applicable = col[ok]
            mean = float(applicable.mean()) if applicable.numel() else math.nan
            weight = self.weights[name]
            out[f"reward/{name}/mean"] = mean
            out[f"weights/{name}"] = weight
            if rv.sample_weights is None:
                out[f"reward/{name}/weighted"] = weight * mean
            else:
                w = per_sample[:, j]  # (B,)
                out[f"reward/{name}/weighted"] = float((w[ok] * applicable).mean()) if applicable.numel() else math.nan
                out[f"weights/sample/{name}/mean"] = float(w.mean())
                out[f"weights/sample/{name}/min"] = float(w.min())
                out[f"weights/sample/{name}/max"] = float(w.max())
            if kind == "constraint":
                out[f"constraint/{name}/violation_rate"] = (
                    float((applicable == 0.0).float().mean()) if applicable.numel() else math.nan
                )
        return out

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "normalize": self.normalize, "weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(f"StaticWeighting.load_state_dict: state is for weighting {state.get('kind')!r}")
        weights = state["weights"]
        if set(weights) != set(self.weights):
            raise ValueError(
                f"StaticWeighting.load_state_dict: components {sorted(weights)} != recipe's {sorted(self.weights)}"
            )
        self.weights = {n: float(weights[n]) for n in self.names}
        self.normalize = state.get("normalize", self.normalize)
