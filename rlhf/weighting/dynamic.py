"""Dynamic weighting: the static scalarisation with weights that change during the run, all state checkpointed.

Every on-policy run uses this class (``weighting.kind`` static, hypervolume or gradient). The effective weight of
component k at step t is

    w_k(t) = base_k * schedule_k(t) * K * s_k(t)  +  sign_k * lambda_k(t)

- ``base_k``: the recipe's ``rewards[].weight``;
- ``schedule_k(t)``: ``weighting.schedules.NAME`` (constant / linear / cosine / step; 1 without one);
- ``s(t)``: a point on the simplex (uniform 1/K at start, so K * s_k = 1), moved by mirror descent
  (``rlhf.weighting.updates.mirror_descent_step``) by one of the two dynamic rules below, floored at
  ``min_weight``;
- ``lambda_k(t)``: Lagrange multipliers of ``weighting.constraints`` (keep the batch mean of a component >= min or
  <= max): projected dual ascent, lambda <- clip(lambda + lr * violation, 0, max_multiplier); sign +1 for a
  lower bound (push the component up), -1 for an upper bound.

Dynamic rules, after *Learning to Optimize Multi-Objective Alignment Through Dynamic Reward Weighting* (our
formulation; every choice is spelled out here):

- **hypervolume-guided** (``kind: hypervolume``): each step's batch-mean reward vector p_t is offered to a buffer of
  non-dominated points (``ParetoBuffer``). Its hypervolume gain g_t scales the next step's advantages by
  min(1 + gain_scale * g_t / HV_t, max_scale) (steps that expanded the front are followed by bolder ones). Each
  component's marginal value is the hypervolume the front would gain if p_t improved along that component alone,
  per unit of improvement. The probe moves p_t by short_k + delta * spread_k (spread_k: the batch std of
  component k, at least 1e-3; short_k: how far component k lags the buffer points that are at least as good as p_t
  on every other component, 0 when p_t is on the front). Without short_k a point that fell behind the front on
  one component would see no gain from improving it, and the weights would ratchet toward whichever component
  still expands the front; with it, a lagging component keeps a positive value that shrinks with its lag. The
  scores, divided by their largest magnitude, drive a mirror-descent step: the weights move toward the
  components whose improvement would expand the front most.
- **gradient-based** (``kind: gradient``): the trainer computes the Gram matrix G_ij = <g_i, g_j> of the
  per-component policy gradients (each component's group-normalised advantages alone; exact under data
  parallelism and ZeRO-1/2: each rank reduces one shard of every gradient, takes that shard's partial Gram and
  the K x K partials are all-reduced). Influence_k = (G 1)_k / ||sum_j g_j|| is how much a step along
  component k's gradient moves the combined objective; mirror descent on it upweights components whose
  gradients help the others, and downweights those in conflict.

``observe(rv)`` runs once per step on the freshly scored batch (constraints, hypervolume), ``gradient_update(G)``
when the trainer returns a Gram matrix; both change the weights used by ``scalarize`` for this step's batch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from rlhf.types import RewardVector
from rlhf.weighting.pareto import ParetoBuffer, hypervolume
from rlhf.weighting.static import StaticWeighting
from rlhf.weighting.updates import influence_from_gram, lagrange_step, mirror_descent_step, schedule_value


class DynamicWeighting:
    def __init__(self, cfg: Any, components: Sequence[Any], total_steps: int | None = None) -> None:
        self.cfg = cfg
        self.kind = cfg.kind
        names = [c.name for c in components]
        self.core = StaticWeighting(names, [c.kind or "reward" for c in components],
                                    [c.weight for c in components], cfg.normalize)
        self.names = tuple(names)
        self.base = {c.name: float(c.weight) for c in components}
        self.total_steps = max(1, total_steps or 1)
        K = len(names)
        self.simplex = torch.full((K,), 1.0 / K, dtype=torch.float64) if K else torch.zeros(0, dtype=torch.float64)
        self.multipliers = [0.0 for _ in cfg.constraints]
        self.buffer: ParetoBuffer | None = None
        self.hv_scale = 1.0
        self.step = 0
        self._last: dict[str, float] = {}
        self._refresh()

    @classmethod
    def from_config(cls, cfg: Any, components: Sequence[Any], total_steps: int | None = None) -> "DynamicWeighting":
        return cls(cfg, components, total_steps)

    # ------------------------------------------------------------------ the weights

    def schedule_factor(self, name: str) -> float:
        s = self.cfg.schedules.get(name)
        if s is None:
            return 1.0
        return schedule_value(s.kind, s.start, s.end, self.step, s.steps or self.total_steps,
                              step_every=s.step_every, step_factor=s.step_factor)

    def _refresh(self) -> None:
        K = len(self.names)
        weights = {n: self.base[n] * self.schedule_factor(n) * K * float(self.simplex[k])
                   for k, n in enumerate(self.names)}
        for c, lam in zip(self.cfg.constraints, self.multipliers):
            weights[c.component] += lam if c.min is not None else -lam
        self.core.weights = weights

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.core.weights)

    @property
    def advantage_scale(self) -> float:
        """The hypervolume rule's gain scaling of this step's advantages (1 otherwise); ``scalarize`` applies it,
        estimators that do not call it for their advantages (RLOO, REINFORCE++) apply it themselves."""
        return self.hv_scale

    def begin_step(self, step: int) -> None:
        """Schedules follow the step number."""
        self.step = step
        self._refresh()

    # ------------------------------------------------------------------ the protocol

    def weighted_sum(self, rv: RewardVector) -> Tensor:
        return self.core.weighted_sum(rv)

    def scalarize(self, rv: RewardVector, group_ids: Tensor, scale_std: bool = True,
                  eps: float = 1e-6) -> tuple[Tensor, dict[str, float]]:
        advantages, metrics = self.core.scalarize(rv, group_ids, scale_std, eps)  # (B,)
        if self.hv_scale != 1.0:
            advantages = advantages * self.hv_scale
        return advantages, {**metrics, **self._metrics()}

    def _metrics(self) -> dict[str, float]:
        out = dict(self._last)
        if self.kind != "static":
            out.update({f"weights/simplex/{n}": float(self.simplex[k]) for k, n in enumerate(self.names)})
        for c, lam in zip(self.cfg.constraints, self.multipliers):
            out[f"constraint/{c.component}/multiplier"] = lam
        if self.kind == "hypervolume":
            out["weights/hv_scale"] = self.hv_scale
        return out

    # ------------------------------------------------------------------ updates

    def observe(self, rv: RewardVector) -> dict[str, float]:
        """Once per step, on the scored batch: constraint multipliers, then the hypervolume rule."""
        means = _column_means(rv, self.names)  # (K,) NaN-ignoring
        metrics: dict[str, float] = {}
        for i, c in enumerate(self.cfg.constraints):
            value = means[self.names.index(c.component)]
            if math.isnan(value):
                continue
            bound, direction = (c.min, "min") if c.min is not None else (c.max, "max")
            self.multipliers[i] = lagrange_step(self.multipliers[i], value, bound, direction, c.lr, c.max_multiplier)
            violated = value < bound if direction == "min" else value > bound
            metrics[f"constraint/{c.component}/violated"] = float(violated)
        if self.kind == "hypervolume" and not any(math.isnan(m) for m in means):
            metrics.update(self._hypervolume_update(means, rv))
        self._refresh()
        self._last = metrics
        return metrics

    def _hypervolume_update(self, point: list[float], rv: RewardVector) -> dict[str, float]:
        hv_cfg = self.cfg.hypervolume
        if self.buffer is None:
            reference = hv_cfg.reference or [p - 1.0 for p in point]
            self.buffer = ParetoBuffer(reference, hv_cfg.buffer_size)
        before = self.buffer.hypervolume
        spreads = [max(1e-3, s) for s in _column_stds(rv, self.names)]
        shortfalls = _shortfalls(self.buffer.points, point)
        scores = []
        for k in range(len(point)):  # the front's gain if the policy improved along component k alone
            move = shortfalls[k] + hv_cfg.delta * spreads[k]
            probe = list(point)
            probe[k] += move
            gained = hypervolume([*self.buffer.points, probe], self.buffer.reference) - before
            scores.append(max(0.0, gained) / move)
        gain = self.buffer.add(point)
        top = max(abs(s) for s in scores)
        if top > 0 and hv_cfg.lr > 0:
            normalised = torch.tensor([s / top for s in scores], dtype=torch.float64)
            self.simplex = mirror_descent_step(self.simplex, normalised, hv_cfg.lr, hv_cfg.min_weight)
        relative = gain / before if before > 0 else 0.0
        self.hv_scale = min(1.0 + hv_cfg.gain_scale * relative, hv_cfg.max_scale)
        return {"pareto/hypervolume": self.buffer.hypervolume, "pareto/gain": gain, "pareto/front_size": len(self.buffer),
                **{f"pareto/marginal/{n}": s for n, s in zip(self.names, scores)},
                **{f"pareto/shortfall/{n}": d for n, d in zip(self.names, shortfalls)}}

    def needs_gradients(self, step: int) -> bool:
        return self.kind == "gradient" and (step - 1) % self.cfg.gradient.every == 0 and len(self.names) > 1

    def gradient_update(self, gram: Tensor) -> dict[str, float]:
        """gram: (K, K) Gram matrix of the per-component policy gradients (summed over ranks)."""
        gram = gram.to(torch.float64)
        influence = influence_from_gram(gram)  # (K,)
        g = self.cfg.gradient
        self.simplex = mirror_descent_step(self.simplex, influence, g.lr, g.min_weight)
        self._refresh()
        norms = gram.diagonal().clamp(min=0).sqrt()
        out = {f"gradient/influence/{n}": float(influence[k]) for k, n in enumerate(self.names)}
        out.update({f"gradient/norm/{n}": float(norms[k]) for k, n in enumerate(self.names)})
        if len(self.names) == 2:
            out["gradient/cosine"] = float(gram[0, 1] / (norms[0] * norms[1]).clamp(min=1e-12))
        self._last.update(out)
        return out

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "simplex": self.simplex.tolist(),
                "multipliers": list(self.multipliers), "hv_scale": self.hv_scale,
                "buffer": None if self.buffer is None else self.buffer.state_dict(), "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"weighting state is for kind {state.get('kind')!r}, the recipe says {self.kind!r}")
        if len(state["simplex"]) != len(self.names) or len(state["multipliers"]) != len(self.multipliers):
            raise ValueError("weighting state does not match the recipe's reward components / constraints")
        self.step = int(state["step"])
        self.simplex = torch.tensor(state["simplex"], dtype=torch.float64)
        self.multipliers = [float(m) for m in state["multipliers"]]
        self.hv_scale = float(state["hv_scale"])
        if state.get("buffer") is not None:
            self.buffer = ParetoBuffer(state["buffer"]["reference"], state["buffer"]["max_size"])
            self.buffer.load_state_dict(state["buffer"])
        self._refresh()


def _shortfalls(front: Sequence[Sequence[float]], point: Sequence[float]) -> list[float]:
    """Per component k: how much point[k] must rise before no front point that is at least as good on every other
    component still dominates the point (0 when the point is not dominated). front: (N, K), point: (K,)."""
    out = []
    for k in range(len(point)):
        lag = 0.0
        for q in front:
            if all(q[j] >= point[j] for j in range(len(point)) if j != k):
                lag = max(lag, q[k] - point[k])
        out.append(lag)
    return out


def _column_means(rv: RewardVector, names: Sequence[str]) -> list[float]:
    out = []
    for n in names:
        col = rv.values[:, rv.names.index(n)]  # (B,)
        col = col[~torch.isnan(col)]
        out.append(float(col.mean()) if col.numel() else math.nan)
    return out


def _column_stds(rv: RewardVector, names: Sequence[str]) -> list[float]:
    out = []
    for n in names:
        col = rv.values[:, rv.names.index(n)]
        col = col[~torch.isnan(col)]
        out.append(float(col.std(unbiased=False)) if col.numel() > 1 else 0.0)
    return out
