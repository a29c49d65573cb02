"""Update rules for dynamic multi-objective weights: mirror descent on the simplex, gradient influence, Lagrange
multipliers, per-component schedules. Pure functions, no state, no I/O.

Mirror descent (exponentiated gradient) on the probability simplex, with a floor m (``min_weight``):

    u_k  = w_k * exp(lr * s_k) / sum_j w_j * exp(lr * s_j)          computed as a softmax of log w + lr * s
    w'_k = max(m, c * u_k)     with the scalar c in (0, 1] chosen so that sum_k w'_k = 1

The floored step is the KL (Bregman, negative-entropy) projection of u onto {w : sum w = 1, w_k >= m}: components
whose rescaled weight would fall below the floor sit exactly at m, the others keep their ratios and share the
remaining mass 1 - m * #floored. It is the identity when every u_k >= m; it needs m * K <= 1 (m * K == 1 gives
the uniform vector).

Gradient influence (gradient-based weight optimisation in the spirit of Lu et al. 2025, "Learning to Optimize
Multi-Objective Alignment Through Dynamic Reward Weighting", arXiv 2509.11452: weights move by mirror descent
along an influence score built from inner products of the per-objective policy gradients). With g_k (P,) the
gradient of component k's objective J_k, G[i, j] = <g_i, g_j> (K, K) and optional mixing weights a (K,) (default
all ones), the aggregate direction is g = sum_j a_j g_j and

    influence_k = <g_k, g> / (||g|| + eps) = (G a)_k / (sqrt(a^T G a) + eps)

i.e. the component of g_k along the unit aggregate direction u = g / ||g||. Read either way (<., .> is symmetric):
the rate d J_k / dt at which objective k improves when the parameters move along u, or the first-order gain of
the aggregate objective sum_j a_j J_j per unit step along g_k, scaled by 1 / ||g||. It is positive for a
component aligned with the consensus, negative for one in conflict with it, and sum_k a_k influence_k = ||g||
(up to eps). It depends on the gradients ONLY through G, so a ZeRO/FSDP-partitioned implementation computes the
partial Gram of its parameter shard on every rank and all-reduces (sums) it: sum over shards of the partial Grams
is exactly the full Gram.

Lagrange multipliers (projected dual ascent) for constraints "value >= threshold" (``direction="min"``) or
"value <= threshold" (``direction="max"``):

    violation = threshold - value  ("min")   or   value - threshold  ("max")
    lambda'   = clip(lambda + lr * violation, 0, max_multiplier)

Schedules (``schedule_value``) give a per-component weight as a function of the training step; see its docstring.

Imports only torch and the standard library.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULE_KINDS = ("constant", "linear", "cosine", "step")
LAGRANGE_DIRECTIONS = ("min", "max")


# -------------------------------------------------------------------------------------- mirror descent


def project_floored_simplex(weights: Tensor, min_weight: float) -> Tensor:
    """(K,) KL projection of a probability vector onto {w : sum w = 1, w >= min_weight}: w'_k = max(m, c * w_k).

    ``weights`` must be nonnegative and sum to 1 (up to round-off). Found by clamping, in rounds, the coordinates
    whose rescaled value drops below the floor (c only decreases, so at most K rounds). Raises ValueError when
    min_weight * K > 1.
    """
    k = weights.shape[0]
    m = float(min_weight)
    if not math.isfinite(m) or m < 0.0:
        raise ValueError(f"project_floored_simplex: min_weight must be finite and >= 0, got {min_weight!r}")
    if m * k > 1.0 + 1e-12:
        raise ValueError(f"project_floored_simplex: min_weight={m} * K={k} > 1, no weight vector fits the floor")
    if m == 0.0:
        return weights.clone()
    w = weights.to(torch.float64)  # (K,)
    free = torch.ones(k, dtype=torch.bool, device=weights.device)  # (K,) not clamped to the floor
    c = 1.0
    for _ in range(k + 1):
        n_free = int(free.sum())
        mass = float(w[free].sum()) if n_free else 0.0
        budget = 1.0 - m * (k - n_free)
        if n_free == 0 or mass <= 0.0 or budget <= 0.0:
            return torch.full_like(weights, m)  # only possible when m * K == 1 (up to round-off)
        c = budget / mass
        still_free = free & (c * w >= m)
        if torch.equal(still_free, free):
            break
        free = still_free
    out = torch.where(free, c * w, torch.full_like(w, m))  # (K,)
    return out.to(weights.dtype)


def mirror_descent_step(weights: Tensor, scores: Tensor, lr: float, min_weight: float = 0.0) -> Tensor:
    """(K,) one exponentiated-gradient step on the simplex, then the floor (see the module docstring).

    weights: (K,) nonnegative, positive sum (need not be normalised: only ratios matter).
    scores:  (K,) finite; a component with a higher score gains weight. Adding a constant to every score, or
             scaling ``weights`` by a positive constant, leaves the result unchanged.
    lr:      finite, >= 0 (0 just normalises ``weights`` and applies the floor).
    Returns a (K,) tensor in the dtype of ``weights`` that sums to 1 with every entry >= min_weight (computed in
    float64, so up to the rounding of the output dtype). A zero weight
    stays zero unless the floor lifts it. Raises ValueError on bad shapes/values or min_weight * K > 1.
    """
    if weights.dim() != 1 or weights.shape != scores.shape:
        raise ValueError(
            f"mirror_descent_step: weights and scores must both be (K,), got {tuple(weights.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if weights.numel() == 0:
        raise ValueError("mirror_descent_step: need at least one component")
    lr = float(lr)
    if not math.isfinite(lr) or lr < 0.0:
        raise ValueError(f"mirror_descent_step: lr must be finite and >= 0, got {lr!r}")
    min_weight = float(min_weight)
    if not math.isfinite(min_weight) or min_weight < 0.0 or min_weight * weights.numel() > 1.0 + 1e-12:
        raise ValueError(
            f"mirror_descent_step: need 0 <= min_weight * K <= 1, got min_weight={min_weight}, K={weights.numel()}"
        )
    w = weights.to(torch.float64)  # (K,)
    s = scores.to(device=w.device, dtype=torch.float64)  # (K,)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0.0:
        raise ValueError(f"mirror_descent_step: weights must be finite, >= 0, with a positive sum, got {weights}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"mirror_descent_step: scores must be finite, got {scores}")
    logits = torch.log(w) + lr * s  # (K,) log 0 = -inf keeps zero weights at zero
    logits = logits - logits[w > 0].max()  # stability: the largest live logit is 0
    u = torch.exp(logits)  # (K,)
    u = u / u.sum()
    out = project_floored_simplex(u, min_weight) if min_weight > 0 else u
    return out.to(weights.dtype)


# ------------------------------------------------------------------------------------------- influence


def influence_from_gram(gram: Tensor, weights: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """(K,) gradient influence scores from the Gram matrix ``gram`` (K, K), G[i, j] = <g_i, g_j>.

    influence_k = (G a)_k / (sqrt(a^T G a) + eps) with a = ``weights`` (K,) or all ones (see the module
    docstring). ``gram`` should be symmetric PSD (a sum of per-shard partial Grams is); a slightly negative
    a^T G a from round-off is treated as 0. Computed in at least float32; returned in that dtype.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"influence_from_gram: gram must be (K, K), got {tuple(gram.shape)}")
    if eps < 0:
        raise ValueError(f"influence_from_gram: eps must be >= 0, got {eps}")
    g = gram if gram.dtype in (torch.float32, torch.float64) else gram.float()  # (K, K)
    if weights is None:
        a = torch.ones(g.shape[0], dtype=g.dtype, device=g.device)  # (K,)
    else:
        if weights.shape != (g.shape[0],):
            raise ValueError(f"influence_from_gram: weights must be ({g.shape[0]},), got {tuple(weights.shape)}")
        a = weights.to(device=g.device, dtype=g.dtype)  # (K,)
    ga = g @ a  # (K,)  <g_k, sum_j a_j g_j>
    sq_norm = torch.clamp(a @ ga, min=0.0)  # ()  ||sum_j a_j g_j||^2
    return ga / (torch.sqrt(sq_norm) + eps)


def gradient_gram(grads: Tensor) -> Tensor:
    """(K, K) Gram matrix grads @ grads.T of flattened per-component gradients (K, P), in at least float32.

    For a parameter vector split into shards, gram(full) == sum over shards of gradient_gram(shard columns).
    """
    if grads.dim() != 2:
        raise ValueError(f"gradient_gram: grads must be (K, P), got {tuple(grads.shape)}")
    g = grads if grads.dtype in (torch.float32, torch.float64) else grads.float()  # (K, P)
    return g @ g.T


def gradient_influence(grads: Tensor, weights: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """(K,) influence scores from per-component flattened policy gradients ``grads`` (K, P).

    Exactly ``influence_from_gram(grads @ grads.T, weights, eps)`` (half-precision grads are upcast to float32
    before the product).
    """
    return influence_from_gram(gradient_gram(grads), weights, eps)


# -------------------------------------------------------------------------------------------- Lagrange


def lagrange_step(
    multiplier: float,
    value: float,
    threshold: float,
    direction: str,
    lr: float,
    max_multiplier: float | None = None,
) -> float:
    """One projected dual-ascent step on a Lagrange multiplier (see the module docstring).

    direction "min": the constraint is value >= threshold; "max": value <= threshold. The multiplier grows by
    lr * violation while the constraint is violated, shrinks by lr * slack while it holds, and is clipped to
    [0, max_multiplier] (upper bound only when given). Raises ValueError on a bad direction, negative lr or
    max_multiplier, or non-finite inputs.
    """
    if direction not in LAGRANGE_DIRECTIONS:
        raise ValueError(f"lagrange_step: direction={direction!r}; expected one of {LAGRANGE_DIRECTIONS}")
    multiplier, value, threshold, lr = float(multiplier), float(value), float(threshold), float(lr)
    for name, v in (("multiplier", multiplier), ("value", value), ("threshold", threshold), ("lr", lr)):
        if not math.isfinite(v):
            raise ValueError(f"lagrange_step: {name} must be finite, got {v}")
    if lr < 0:
        raise ValueError(f"lagrange_step: lr must be >= 0, got {lr}")
    if max_multiplier is not None:
        max_multiplier = float(max_multiplier)
        if math.isnan(max_multiplier) or max_multiplier < 0:
            raise ValueError(f"lagrange_step: max_multiplier must be >= 0, got {max_multiplier}")
    violation = threshold - value if direction == "min" else value - threshold
    new = max(0.0, multiplier + lr * violation)
    if max_multiplier is not None:
        new = min(new, max_multiplier)
    return new


# ------------------------------------------------------------------------------------------- schedules


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def schedule_value(
    kind: str,
    start: float,
    end: float,
    step: int,
    total_steps: int,
    *,
    step_every: int | None = None,
    step_factor: float | None = None,
) -> float:
    """Value of a per-component weight schedule at training step ``step`` (>= 0).

    With t = clamp(step / total_steps, 0, 1):

        constant:  start                                        (end and total_steps ignored)
        linear:    start + (end - start) * t
        cosine:    start + (end - start) * (1 - cos(pi * t)) / 2
        step:      start * step_factor ** (step // step_every)  (end and total_steps ignored; not clamped)

    So linear / cosine give ``start`` at step 0 and ``end`` from ``total_steps`` on. ``step_every`` (int >= 1) and
    ``step_factor`` (finite, > 0) are required for "step" and must be None otherwise. Raises ValueError on any
    bad argument.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule_value: kind={kind!r}; expected one of {SCHEDULE_KINDS}")
    start, end = float(start), float(end)
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"schedule_value: start and end must be finite, got start={start}, end={end}")
    if not _is_int(step) or step < 0:
        raise ValueError(f"schedule_value: step must be an int >= 0, got {step!r}")
    if kind != "step" and (step_every is not None or step_factor is not None):
        raise ValueError(f"schedule_value: step_every / step_factor only apply to kind='step', not {kind!r}")
    if kind == "constant":
        return start
    if kind == "step":
        if not _is_int(step_every) or step_every < 1:  # type: ignore[operator]
            raise ValueError(f"schedule_value: kind='step' needs step_every as an int >= 1, got {step_every!r}")
        if step_factor is None or not math.isfinite(float(step_factor)) or float(step_factor) <= 0:
            raise ValueError(f"schedule_value: kind='step' needs a finite step_factor > 0, got {step_factor!r}")
        return start * float(step_factor) ** (step // step_every)  # type: ignore[operator]
    if not _is_int(total_steps) or total_steps < 1:
        raise ValueError(f"schedule_value: kind={kind!r} needs total_steps as an int >= 1, got {total_steps!r}")
    t = min(1.0, step / total_steps)
    if kind == "linear":
        return start + (end - start) * t
    return start + (end - start) * (1.0 - math.cos(math.pi * t)) / 2.0


__all__ = [
    "SCHEDULE_KINDS",
    "LAGRANGE_DIRECTIONS",
    "project_floored_simplex",
    "mirror_descent_step",
    "influence_from_gram",
    "gradient_gram",
    "gradient_influence",
    "lagrange_step",
    "schedule_value",
]
