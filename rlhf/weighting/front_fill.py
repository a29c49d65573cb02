"""Front filling (after C-MORL, Liu et al. 2025, "Multi-Objective Reinforcement Learning through Efficient
Discovery of Pareto Front"): find the largest gaps of a measured Pareto front and turn each into a constrained run.

Input: the measured points, (n, K) floats, one per trained model, every component MAXIMISED (as in
rlhf.weighting.pareto). The rule, exactly:

1. **Front and scale.** F = the non-dominated points (``non_dominated``: of exact duplicates the first). Each
   component k is normalised by the range of ALL measured points: z_k = (v_k - lo_k) / span_k (span_k = max - min;
   a constant component has span 1, so all its differences are 0). Dominated points never enter what follows.
2. **Neighbours.** For each component k, sort F by z_k (ties by index); every two consecutive points are a
   neighbour pair. With K = 2 both sorts give the same pairs: the |F| - 1 consecutive points of the front. With
   K > 2 the pairs are the union over the K sorts (the generalisation: points adjacent along some objective).
3. **Gap size** of a pair {a, b}: the hypervolume their join a v b (component-wise max, the point that has the best
   of both) would add to F, in normalised units, w.r.t. the reference -0.1 in every component (each component's
   worst value minus 10% of its range: ``rlhf sweep``'s default reference). It is the most hypervolume a point in
   the gap can add. With K = 2 and consecutive a, b it is the empty rectangle between them,
   |z_a,1 - z_b,1| * |z_a,2 - z_b,2|, whatever the reference. Pairs of size 0 are no gap. Gaps are ranked by size
   (descending; ties by the pair's indices) and the first N are filled; N larger than the number of gaps is an
   error naming ``--fill``. All N gaps come from the measured front before any filling (one batch, as C-MORL).
4. **The constrained run of a gap** (the epsilon-constraint method, which also reaches the non-convex parts of a
   front that no weight vector reaches):

   - maximise m = the component along which the gap is widest, argmax_k |z_a,k - z_b,k| (ties: the lowest k);
   - warm-start from s = the neighbour worse on m (the run climbs m from there); o = the other neighbour;
   - every other component j gets a lower bound (a Lagrange constraint, ``weighting.constraints``):
     s_j - step * (s_j - o_j) where s is better on j (``step`` = 0.5: the gap's middle, so the run stops halfway
     across the gap instead of walking to o; step = 1: down to the worse neighbour's value), and s_j where s is
     not better (keep what the start has). With K = 2, s is always better on the other component.

Bounds are in the components' own units (they bound batch means of the training samples, whose values are what
the front's points are made of). Imports only the standard library and rlhf.weighting.pareto.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from rlhf.weighting.pareto import hypervolume, non_dominated

NORMALISED_REFERENCE = -0.1  # the gap sizes' reference in every normalised component (worst - 10% of the range)


@dataclass(frozen=True)
class FillSpec:
    """One gap of the front and the constrained run that fills it (indices are into the measured points)."""

    pair: tuple[int, int]  # the two neighbouring front points, ascending
    size: float  # the gap's normalised hypervolume (the most a point in it can add)
    maximize: int  # the component the run maximises (weight 1; the others weight 0)
    start: int  # the point whose model the run starts from (a front point: the neighbour worse on `maximize`)
    bounds: dict[int, float]  # component -> lower bound of its batch mean (every component but `maximize`)

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        """The spec with component names instead of indices (sweep.json)."""
        d = asdict(self)
        d["pair"] = list(self.pair)
        d["maximize"] = names[self.maximize]
        d["bounds"] = {names[k]: v for k, v in self.bounds.items()}
        return d


def _scale(points: list[list[float]]) -> tuple[list[float], list[float]]:
    """(lo, span) per component over all points; span 1 for a constant component."""
    K = len(points[0])
    lo = [min(p[k] for p in points) for k in range(K)]
    span = [max(p[k] for p in points) - lo[k] for k in range(K)]
    return lo, [s if s > 0 else 1.0 for s in span]


def front_gaps(points: Sequence[Sequence[float]]) -> list[tuple[tuple[int, int], float]]:
    """Every gap of the front of ``points`` (n, K): ((i, j) with i < j, normalised size > 0), largest first
    (steps 1-3 of the module docstring)."""
    pts = [[float(v) for v in p] for p in points]  # (n, K)
    if not pts:
        return []
    front = non_dominated(pts)
    lo, span = _scale(pts)
    z = {i: [(v - l) / s for v, l, s in zip(pts[i], lo, span)] for i in front}  # front point -> (K,) normalised
    K = len(pts[0])
    pairs: set[tuple[int, int]] = set()
    for k in range(K):
        order = sorted(front, key=lambda i: (z[i][k], i))
        pairs.update((min(a, b), max(a, b)) for a, b in zip(order, order[1:]))
    ref = [NORMALISED_REFERENCE] * K
    base = hypervolume([z[i] for i in front], ref)
    gaps = []
    for a, b in pairs:
        join = [max(x, y) for x, y in zip(z[a], z[b])]
        size = hypervolume([z[i] for i in front] + [join], ref) - base
        if size > 1e-12:
            gaps.append(((a, b), size))
    return sorted(gaps, key=lambda g: (-round(g[1], 12), g[0]))  # equal sizes up to round-off: by the pair


def fill_specs(points: Sequence[Sequence[float]], n: int, step: float = 0.5) -> list[FillSpec]:
    """The constrained runs that fill the ``n`` largest gaps of the front of ``points`` (n_points, K) (module
    docstring, step 4). Raises ValueError naming ``--fill`` when there are fewer than ``n`` gaps."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--fill {n!r}: give the number of gaps to fill, a positive integer")
    if not 0 < step <= 1:
        raise ValueError(f"fill step {step}: the constraint moves a share in (0, 1] of the way across the gap")
    pts = [[float(v) for v in p] for p in points]  # (n_points, K)
    if pts and len(pts[0]) < 2:
        raise ValueError(f"--fill {n}: a front needs at least two components")
    gaps = front_gaps(pts)
    if len(gaps) < n:
        size = len(non_dominated(pts)) if pts else 0
        raise ValueError(f"--fill {n}: the front has only {size} point{'s' * (size != 1)}, so {len(gaps)} "
                         f"gap{'s' * (len(gaps) != 1)}")
    lo, span = _scale(pts)
    specs = []
    for (a, b), size in gaps[:n]:
        widths = [abs(pts[a][k] - pts[b][k]) / span[k] for k in range(len(span))]  # (K,) normalised
        m = max(range(len(widths)), key=lambda k: (widths[k], -k))
        s, o = (a, b) if pts[a][m] < pts[b][m] else (b, a)
        bounds = {j: (pts[s][j] - step * (pts[s][j] - pts[o][j]) if pts[s][j] > pts[o][j] else pts[s][j])
                  for j in range(len(span)) if j != m}
        specs.append(FillSpec(pair=(a, b), size=size, maximize=m, start=s, bounds=bounds))
    return specs


__all__ = ["FillSpec", "front_gaps", "fill_specs"]
