"""Pareto maths for multi-objective weighting: non-domination, exact hypervolume, contributions, a bounded front.

All objectives are MAXIMISED. A point is a sequence of d floats (one per reward component); a set of n points is
(n, d) as nested sequences (lists, tuples, or a 2-D tensor's rows).

    p weakly dominates q   <=>  p_k >= q_k for every k
    p dominates q          <=>  p weakly dominates q and p != q

Hypervolume of a set S w.r.t. a reference point r (d floats):

    HV(S; r) = Lebesgue measure of  U_{p in S, p > r}  [r_1, p_1] x ... x [r_d, p_d]

where ``p > r`` means strictly better in EVERY coordinate; any other point spans a box of zero volume and
contributes nothing. The exclusive contribution of p_i is HV(S) - HV(S without p_i): 0 for a dominated point or
one with an exact duplicate in S; for a non-dominated point it may exceed "its own slab" when removing it
uncovers points that only it dominated.

Algorithms (exact, pure Python floats):

- d = 1: max(p) - r.
- d = 2: sort by x descending and sweep (O(n log n)).
- d = 3: sweep along z descending while maintaining the 2-D non-dominated front of the (x, y) projections
  sorted by x, with its area updated incrementally on each insertion (the dimension sweep of Beume et al.,
  O(n log n) comparisons plus list edits).
- d >= 4: Lebesgue-measure-by-dimension-sweep (HSO-style slicing): sort by the last coordinate descending; slice
  i has thickness z_i - z_{i+1} and cross-section HV_{d-1} of the (non-dominated) projections of the first i
  points; the cross-section is recomputed only when the projected front changes.

``ParetoBuffer`` keeps a bounded non-dominated set for online use (hypervolume gain of each new point); its state
is plain lists / floats / ints so it can be saved as JSON. Imports only the standard library.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from typing import Any, Sequence

Point = tuple[float, ...]


# --------------------------------------------------------------------------------------------- helpers


def _to_point(p: Any, d: int | None, what: str) -> Point:
    """One point as a tuple of floats; NaN is rejected, the length must be d (when given)."""
    q = tuple(float(v) for v in p)
    if d is not None and len(q) != d:
        raise ValueError(f"{what}: point {q} has {len(q)} coordinates, expected {d}")
    if any(math.isnan(v) for v in q):
        raise ValueError(f"{what}: point {q} contains NaN")
    return q


def _to_points(points: Sequence[Sequence[float]], d: int | None, what: str) -> list[Point]:
    """(n, d) nested sequence -> list of n tuples; all of the same length d (taken from the first if not given)."""
    out: list[Point] = []
    for p in points:
        q = _to_point(p, d, what)
        if d is None:
            d = len(q)
            if d == 0:
                raise ValueError(f"{what}: points must have at least one coordinate")
        out.append(q)
    return out


def _weakly_dominates(a: Point, b: Point) -> bool:
    return all(x >= y for x, y in zip(a, b))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when ``a`` Pareto-dominates ``b`` (>= in every objective and > in at least one; maximisation)."""
    if len(a) != len(b):
        raise ValueError(f"dominates: points of different dimension {len(a)} and {len(b)}")
    better = False
    for x, y in zip(a, b):
        if x < y:
            return False
        if x > y:
            better = True
    return better


def _non_dominated_points(points: list[Point]) -> list[int]:
    """Indices (ascending) of the non-dominated points; among exact duplicates only the first survives.

    Sorting lexicographically descending (ties by index) puts every weak dominator of a point before it, so one
    pass that compares against the survivors so far suffices (dominance is transitive). O(n log n + n*f*d), f the
    front size.
    """
    order = sorted(range(len(points)), key=lambda i: (tuple(-v for v in points[i]), i))
    front: list[Point] = []
    kept: list[int] = []
    for i in order:
        p = points[i]
        if any(_weakly_dominates(f, p) for f in front):
            continue
        front.append(p)
        kept.append(i)
    return sorted(kept)


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (ascending) of the Pareto-optimal points of ``points`` (n, d), all objectives maximised.

    A point is kept when no other point dominates it; of several identical points only the first is kept.
    """
    return _non_dominated_points(_to_points(points, None, "non_dominated"))


# ----------------------------------------------------------------------------------------- hypervolume


class _Front2D:
    """2-D non-dominated set of boxes [0, x] x [0, y] (x, y > 0), kept sorted by x ascending (so y descending),
    with the area of their union maintained on insertion."""

    __slots__ = ("xs", "ys", "area")

    def __init__(self) -> None:
        self.xs: list[float] = []  # (m,) strictly increasing
        self.ys: list[float] = []  # (m,) strictly decreasing
        self.area = 0.0

    def insert(self, x: float, y: float) -> float:
        """Add the box [0, x] x [0, y]; returns the area gained (>= 0)."""
        xs, ys = self.xs, self.ys
        j = bisect_left(xs, x)  # first point with x' >= x: the highest among those
        if j < len(xs) and ys[j] >= y:
            return 0.0  # weakly dominated
        hi = bisect_right(xs, x)  # points [0, hi) have x' <= x
        k = hi
        while k > 0 and ys[k - 1] <= y:  # the run of points just left of x that (x, y) dominates
            k -= 1
        left = xs[k - 1] if k > 0 else 0.0
        right_height = ys[hi] if hi < len(ys) else 0.0  # height over (xs[hi-1], x] before the insertion
        old, prev = 0.0, left
        for i in range(k, hi):
            old += (xs[i] - prev) * ys[i]
            prev = xs[i]
        old += (x - prev) * right_height
        gain = (x - left) * y - old
        xs[k:hi] = [x]
        ys[k:hi] = [y]
        self.area += gain
        return gain


def _hv2(points: list[Point]) -> float:
    """Area of the union of [0, x] x [0, y]; sweep by x descending."""
    area, top = 0.0, 0.0
    for x, y in sorted(points, reverse=True):
        if y > top:
            area += x * (y - top)
            top = y
    return area


def _hv3(points: list[Point]) -> float:
    """Volume of the union of [0, p]; sweep by z descending over an incremental 2-D front."""
    pts = sorted(points, key=lambda p: p[2], reverse=True)
    front = _Front2D()
    volume = 0.0
    for i, (x, y, z) in enumerate(pts):
        front.insert(x, y)
        z_next = pts[i + 1][2] if i + 1 < len(pts) else 0.0
        volume += front.area * (z - z_next)
    return volume


def _hv(points: list[Point], d: int) -> float:
    """Hypervolume of the union of [0, p] for points with all coordinates > 0 (already shifted by the reference)."""
    if not points:
        return 0.0
    if d == 1:
        return max(p[0] for p in points)
    if d == 2:
        return _hv2(points)
    if d == 3:
        return _hv3(points)
    pts = sorted(points, key=lambda p: p[-1], reverse=True)
    front: list[Point] = []  # non-dominated (d-1)-projections of the points swept so far
    section = 0.0  # HV_{d-1}(front)
    volume = 0.0
    for i, p in enumerate(pts):
        q = p[:-1]
        if not any(_weakly_dominates(f, q) for f in front):
            front = [f for f in front if not _weakly_dominates(q, f)]
            front.append(q)
            section = _hv(front, d - 1)
        z_next = pts[i + 1][-1] if i + 1 < len(pts) else 0.0
        volume += section * (p[-1] - z_next)
    return volume


def _shifted(points: list[Point], ref: Point, what: str) -> list[Point]:
    """Points strictly better than ``ref`` in every coordinate, as offsets p - ref (all > 0)."""
    out = []
    for p in points:
        if any(v == math.inf for v in p):
            raise ValueError(f"{what}: point {p} has an infinite coordinate (infinite hypervolume)")
        if all(v > r for v, r in zip(p, ref)):
            out.append(tuple(v - r for v, r in zip(p, ref)))
    return out


def _reference(reference: Sequence[float], what: str) -> Point:
    ref = tuple(float(v) for v in reference)
    if not ref:
        raise ValueError(f"{what}: the reference point must have at least one coordinate")
    if not all(math.isfinite(v) for v in ref):
        raise ValueError(f"{what}: the reference point {ref} must be finite")
    return ref


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume of ``points`` (n, d) w.r.t. ``reference`` (d,), maximisation (see the module docstring).

    Points not strictly better than the reference in every coordinate contribute nothing; no points -> 0.0.
    Raises ValueError on NaN, +inf coordinates (-inf is allowed: such a point never beats the reference), a
    non-finite reference or mismatched dimensions.
    """
    ref = _reference(reference, "hypervolume")
    pts = _shifted(_to_points(points, len(ref), "hypervolume"), ref, "hypervolume")
    return _hv(pts, len(ref))


def hypervolume_contributions(points: Sequence[Sequence[float]], reference: Sequence[float]) -> list[float]:
    """(n,) exclusive contribution HV(all) - HV(all without i) of each point, >= 0.

    Zero for points that do not beat the reference, dominated points and points with an exact duplicate; the
    others need one hypervolume each (n * HV cost), computed on the remaining points (including dominated ones,
    which removing point i may uncover).
    """
    ref = _reference(reference, "hypervolume_contributions")
    d = len(ref)
    raw = _to_points(points, d, "hypervolume_contributions")
    for p in raw:
        if any(v == math.inf for v in p):
            raise ValueError(f"hypervolume_contributions: point {p} has an infinite coordinate")
    beats = [i for i, p in enumerate(raw) if all(v > r for v, r in zip(p, ref))]
    shifted = {i: tuple(v - r for v, r in zip(raw[i], ref)) for i in beats}
    contributions = [0.0] * len(raw)
    if not beats:
        return contributions
    valid = [shifted[i] for i in beats]
    total = _hv(valid, d)
    counts: dict[Point, int] = {}
    for q in valid:
        counts[q] = counts.get(q, 0) + 1
    for pos in _non_dominated_points(valid):
        if counts[valid[pos]] > 1:
            continue  # an identical point remains: removing this one changes nothing
        rest = valid[:pos] + valid[pos + 1 :]
        contributions[beats[pos]] = max(0.0, total - _hv(rest, d))
    return contributions


# ---------------------------------------------------------------------------------------------- buffer


class ParetoBuffer:
    """A bounded non-dominated set of points with its hypervolume w.r.t. a fixed reference point.

    ``add(p)`` (maximisation):

    - p not strictly better than the reference in every coordinate, or weakly dominated by (or equal to) a stored
      point: nothing changes, returns 0.0;
    - otherwise the stored points that p weakly dominates are dropped and p is appended; if that makes more than
      ``max_size`` points, the point with the smallest exclusive hypervolume contribution is evicted (ties: the
      oldest). Returns HV(after) - HV(before), >= 0: the evicted point contributes no more than p does, so the
      hypervolume never decreases (tiny negative round-off is clamped to 0).

    Points are kept in insertion order. ``state_dict()`` holds only lists / floats / ints (JSON-safe).
    """

    def __init__(self, reference: Sequence[float], max_size: int = 64) -> None:
        self._reference = _reference(reference, "ParetoBuffer")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"ParetoBuffer: max_size must be a positive int, got {max_size!r}")
        self.max_size = max_size
        self._points: list[Point] = []
        self._hypervolume = 0.0

    # ------------------------------------------------------------------------------------------- views

    @property
    def reference(self) -> Point:
        return self._reference

    @property
    def dim(self) -> int:
        return len(self._reference)

    @property
    def points(self) -> list[Point]:
        """(m, d) the stored points (a copy), oldest first."""
        return list(self._points)

    @property
    def hypervolume(self) -> float:
        return self._hypervolume

    def __len__(self) -> int:
        return len(self._points)

    def contributions(self) -> list[float]:
        """(m,) exclusive hypervolume contribution of each stored point."""
        return hypervolume_contributions(self._points, self._reference)

    # ----------------------------------------------------------------------------------------- updates

    def add(self, point: Sequence[float]) -> float:
        """Offer one point (d,); returns the hypervolume gain (>= 0). See the class docstring."""
        p = _to_point(point, self.dim, "ParetoBuffer.add")
        if any(v == math.inf for v in p):
            raise ValueError(f"ParetoBuffer.add: point {p} has an infinite coordinate")
        if not all(v > r for v, r in zip(p, self._reference)):
            return 0.0
        if any(_weakly_dominates(q, p) for q in self._points):
            return 0.0
        points = [q for q in self._points if not _weakly_dominates(p, q)]
        points.append(p)
        if len(points) > self.max_size:
            contrib = hypervolume_contributions(points, self._reference)
            worst = min(range(len(points)), key=lambda i: (contrib[i], i))
            del points[worst]
        before = self._hypervolume
        self._points = points
        self._hypervolume = hypervolume(points, self._reference)
        return max(0.0, self._hypervolume - before)

    def clear(self) -> None:
        self._points = []
        self._hypervolume = 0.0

    # ----------------------------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": list(self._reference),
            "max_size": self.max_size,
            "points": [list(p) for p in self._points],
            "hypervolume": self._hypervolume,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore reference, max_size and points from ``state``; the hypervolume is recomputed from the points."""
        reference = _reference(state["reference"], "ParetoBuffer.load_state_dict")
        max_size = state.get("max_size", self.max_size)
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"ParetoBuffer.load_state_dict: max_size must be a positive int, got {max_size!r}")
        points = _to_points(state["points"], len(reference), "ParetoBuffer.load_state_dict")
        if len(points) > max_size:
            raise ValueError(f"ParetoBuffer.load_state_dict: {len(points)} points exceed max_size={max_size}")
        if len(_non_dominated_points(points)) != len(points):
            raise ValueError("ParetoBuffer.load_state_dict: stored points are not mutually non-dominated")
        for p in points:
            if not all(math.isfinite(v) and v > r for v, r in zip(p, reference)):
                raise ValueError(f"ParetoBuffer.load_state_dict: point {p} does not beat the reference {reference}")
        self._reference = reference
        self.max_size = max_size
        self._points = points
        self._hypervolume = hypervolume(points, reference)


__all__ = [
    "dominates",
    "non_dominated",
    "hypervolume",
    "hypervolume_contributions",
    "ParetoBuffer",
]
