"""Pareto maths (rlhf.weighting.pareto): non-domination, exact hypervolume (hand values and an exact grid
cross-check in d = 2, 3, 4), exclusive contributions, ParetoBuffer gains / eviction / state.

Run: pytest tests/unit/test_pareto.py -q
"""

import itertools
import json
import math
import random
import time

import pytest
import torch

from rlhf.weighting.pareto import (
    ParetoBuffer,
    dominates,
    hypervolume,
    hypervolume_contributions,
    non_dominated,
)

# ----------------------------------------------------------------------------------------- brute force


def grid_cells(points, reference):
    """Set of covered unit cells for INTEGER points / reference: cell c (its lower corner) lies in the union of
    boxes [ref, p] iff some p has p_k >= c_k + 1 in every coordinate. Exact, no sampling."""
    d = len(reference)
    covered = set()
    for p in points:
        if all(v > r for v, r in zip(p, reference)):
            ranges = [range(int(reference[k]), int(p[k])) for k in range(d)]
            covered.update(itertools.product(*ranges))
    return covered


def grid_hypervolume(points, reference):
    return float(len(grid_cells(points, reference)))


def random_int_points(rng, n, d, lo=0, hi=5):
    return [tuple(rng.randint(lo, hi) for _ in range(d)) for _ in range(n)]


# --------------------------------------------------------------------------------------- non_dominated


def test_dominates():
    assert dominates((2, 2), (1, 2)) and not dominates((1, 2), (2, 2))
    assert not dominates((1, 2), (1, 2))  # equal is not domination
    assert not dominates((3, 1), (1, 3))


def test_non_dominated_basic_and_duplicates():
    pts = [(1, 3), (2, 2), (1.5, 1.5), (3, 1), (2, 2), (0, 0), (1, 3)]
    assert non_dominated(pts) == [0, 1, 3]  # (1.5,1.5),(0,0) dominated; repeated (2,2),(1,3) dropped
    assert non_dominated([]) == []
    assert non_dominated([(5.0,)]) == [0]
    assert non_dominated([(1.0,), (3.0,), (3.0,), (2.0,)]) == [1]
    assert non_dominated(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.2]])) == [0, 1, 2]


def test_non_dominated_matches_brute_force():
    rng = random.Random(0)
    for d in (2, 3, 4):
        for _ in range(20):
            pts = random_int_points(rng, 25, d, 0, 4)
            expected = [
                i
                for i, p in enumerate(pts)
                if not any(dominates(q, p) for q in pts) and all(pts[j] != p for j in range(i))
            ]
            assert non_dominated(pts) == expected


def test_non_dominated_rejects_bad_input():
    with pytest.raises(ValueError):
        non_dominated([(1, 2), (1, 2, 3)])
    with pytest.raises(ValueError):
        non_dominated([(1, math.nan)])


# --------------------------------------------------------------------------------- hypervolume by hand


def test_hypervolume_2d_hand_values():
    staircase = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume(staircase, (0, 0)) == pytest.approx(6.0)  # 3 + 2 + 1 columns
    assert hypervolume(staircase + [(1.5, 1.5)], (0, 0)) == pytest.approx(6.0)  # dominated point: unchanged
    assert hypervolume(staircase + [(2, 2)], (0, 0)) == pytest.approx(6.0)  # duplicate: unchanged
    assert hypervolume([(5, 0)], (0, 0)) == 0.0  # does not beat the reference in y
    assert hypervolume([(-1, 4)], (0, 0)) == 0.0
    assert hypervolume([(5, 0), (1, 1)], (0, 0)) == pytest.approx(1.0)
    assert hypervolume([], (0, 0)) == 0.0
    # shifted reference: boxes [1,3]x[1,2] and [1,2]x[1,3] -> 2 + 2 - 1
    assert hypervolume([(3, 2), (2, 3)], (1, 1)) == pytest.approx(3.0)
    assert hypervolume([(-math.inf, 2.0), (1.0, 1.0)], (0, 0)) == pytest.approx(1.0)


def test_hypervolume_1d():
    assert hypervolume([(1.0,), (3.0,), (2.0,)], (0.5,)) == pytest.approx(2.5)
    assert hypervolume([(0.1,)], (0.5,)) == 0.0


def test_hypervolume_3d_hand_values():
    assert hypervolume([(1, 2, 3)], (0, 0, 0)) == pytest.approx(6.0)  # a single box
    assert hypervolume([(2, 3, 4)], (1, 1, 1)) == pytest.approx(6.0)
    # two overlapping boxes: 2*3*4 + 3*2*1 - min-corner box 2*2*1
    assert hypervolume([(2, 3, 4), (3, 2, 1)], (0, 0, 0)) == pytest.approx(24 + 6 - 4)
    # unit bumps on the unit cube: each box has volume 2, every pairwise and the triple intersection is the
    # unit cube -> 3*2 - 3*1 + 1 = 4
    assert hypervolume([(2, 1, 1), (1, 2, 1), (1, 1, 2)], (0, 0, 0)) == pytest.approx(4.0)
    # the 8 corners of the cube [1,2]^3: (2,2,2) dominates the rest -> 8
    corners = list(itertools.product((1, 2), repeat=3))
    assert hypervolume(corners, (0, 0, 0)) == pytest.approx(8.0)
    assert non_dominated(corners) == [corners.index((2, 2, 2))]
    # the 3 corners of the unit cube adjacent to the far corner: (1,1,0) etc. don't beat the reference (0,0,0)
    assert hypervolume([(1, 1, 0), (1, 0, 1), (0, 1, 1)], (0, 0, 0)) == 0.0
    # same corners against the reference (-1,-1,-1): boxes 2x2x1 each, pairwise overlap 2x1x1, triple 1x1x1
    assert hypervolume([(1, 1, 0), (1, 0, 1), (0, 1, 1)], (-1, -1, -1)) == pytest.approx(3 * 4 - 3 * 2 + 1)


def test_hypervolume_4d_hand_values():
    assert hypervolume([(1, 2, 3, 4)], (0, 0, 0, 0)) == pytest.approx(24.0)
    # two boxes: 2*2*2*2 + 3*1*1*3 - (2*1*1*2)
    assert hypervolume([(2, 2, 2, 2), (3, 1, 1, 3)], (0, 0, 0, 0)) == pytest.approx(16 + 9 - 4)


def test_hypervolume_rejects_bad_input():
    with pytest.raises(ValueError):
        hypervolume([(1, 2)], (0, 0, 0))
    with pytest.raises(ValueError):
        hypervolume([(1, math.nan)], (0, 0))
    with pytest.raises(ValueError):
        hypervolume([(1, math.inf)], (0, 0))
    with pytest.raises(ValueError):
        hypervolume([(1, 1)], (0, math.inf))
    with pytest.raises(ValueError):
        hypervolume([], ())


# ------------------------------------------------------------------------------ exact grid cross-check


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypervolume_matches_grid(d):
    rng = random.Random(100 + d)
    for trial in range(30):
        n = rng.randint(1, 12)
        pts = random_int_points(rng, n, d, 0, 5)
        ref = tuple(rng.randint(-1, 1) for _ in range(d)) if trial % 3 == 0 else (0,) * d
        assert hypervolume(pts, ref) == pytest.approx(grid_hypervolume(pts, ref), abs=1e-9)


def test_hypervolume_5d_matches_grid():
    rng = random.Random(5)
    for _ in range(5):
        pts = random_int_points(rng, 6, 5, 0, 3)
        assert hypervolume(pts, (0,) * 5) == pytest.approx(grid_hypervolume(pts, (0,) * 5))


@pytest.mark.parametrize("d", [2, 3, 4])
def test_contributions_match_grid(d):
    """Exclusive contribution of p_i = number of cells covered by p_i and by no other point."""
    rng = random.Random(200 + d)
    for _ in range(15):
        pts = random_int_points(rng, rng.randint(1, 8), d, 0, 5)
        ref = (0,) * d
        got = hypervolume_contributions(pts, ref)
        for i in range(len(pts)):
            exclusive = grid_cells(pts, ref) - grid_cells(pts[:i] + pts[i + 1 :], ref)
            assert got[i] == pytest.approx(float(len(exclusive)), abs=1e-9)


# ------------------------------------------------------------------------------- contributions by hand


def test_contributions_hand_values():
    staircase = [(1, 3), (2, 2), (3, 1)]
    # removing any one of the three leaves 3 + 3 - 1 (or 4 + 3 - 2) = 5 -> each contributes 1
    assert hypervolume_contributions(staircase, (0, 0)) == pytest.approx([1.0, 1.0, 1.0])
    # a point dominated only by (2,2) is uncovered when (2,2) goes: HV without (2,2) = 3 + 0.5*1.5 + 1.5*1 = 5.25
    pts = staircase + [(1.5, 1.5)]
    assert hypervolume_contributions(pts, (0, 0)) == pytest.approx([1.0, 0.75, 1.0, 0.0])
    # duplicates contribute nothing; a point below the reference contributes nothing
    assert hypervolume_contributions([(2, 2), (2, 2), (5, -1)], (0, 0)) == [0.0, 0.0, 0.0]
    # 3-D unit bumps: each owns exactly its unit bump (HV 4, any two give 3)
    assert hypervolume_contributions([(2, 1, 1), (1, 2, 1), (1, 1, 2)], (0, 0, 0)) == pytest.approx([1, 1, 1])
    assert hypervolume_contributions([], (0, 0)) == []


# ----------------------------------------------------------------------------------------------- speed


def test_hypervolume_3d_is_fast():
    rng = random.Random(7)
    pts = []
    for _ in range(400):  # points on the positive octant of a sphere: all mutually non-dominated
        v = [abs(rng.gauss(0, 1)) + 1e-3 for _ in range(3)]
        norm = math.sqrt(sum(x * x for x in v))
        pts.append(tuple(x / norm for x in v))
    t0 = time.perf_counter()
    hv = hypervolume(pts, (0, 0, 0))
    elapsed = time.perf_counter() - t0
    assert 0.0 < hv < math.pi / 6  # inside the octant of the unit ball
    assert elapsed < 0.5, f"3-D hypervolume of 400 points took {elapsed:.3f}s"


# ---------------------------------------------------------------------------------------- ParetoBuffer


def test_buffer_gains_sum_to_hypervolume():
    rng = random.Random(11)
    buf = ParetoBuffer(reference=(0.0, 0.0, 0.0), max_size=1000)
    total_gain = 0.0
    for _ in range(150):
        p = tuple(rng.uniform(-0.2, 1.0) for _ in range(3))
        gain = buf.add(p)
        assert gain >= 0.0
        total_gain += gain
    assert total_gain == pytest.approx(buf.hypervolume, rel=1e-9, abs=1e-12)
    pts = buf.points
    assert non_dominated(pts) == list(range(len(pts)))  # stored points are mutually non-dominated
    assert buf.hypervolume == pytest.approx(hypervolume(pts, buf.reference))


def test_buffer_hand_values():
    buf = ParetoBuffer(reference=(0, 0), max_size=10)
    assert buf.add((1, 3)) == pytest.approx(3.0)
    assert buf.add((3, 1)) == pytest.approx(2.0)  # 3 + 3 - 1 = 5
    assert buf.add((2, 2)) == pytest.approx(1.0)  # 6
    assert buf.add((1.5, 1.5)) == 0.0  # dominated: not stored
    assert buf.add((2, 2)) == 0.0  # duplicate: not stored
    assert buf.add((5, -1)) == 0.0  # does not beat the reference: not stored
    assert len(buf) == 3
    assert buf.add((2, 3)) == pytest.approx(1.0)  # dominates (1,3) and (2,2): HV 2*3 + 1*1 = 7
    assert buf.points == [(3.0, 1.0), (2.0, 3.0)]
    assert buf.hypervolume == pytest.approx(7.0)


def test_buffer_eviction_keeps_bound_and_drops_smallest_contributor():
    buf = ParetoBuffer(reference=(0, 0), max_size=2)
    buf.add((1, 4))
    buf.add((4, 1))  # HV 4 + 4 - 1 = 7
    gain = buf.add((2, 2.2))  # contributions in {(1,4),(4,1),(2,2.2)}: 1*1.8=1.8, 2*1=2, 1*1.2=1.2
    assert len(buf) == 2
    assert buf.points == [(1.0, 4.0), (4.0, 1.0)]  # the newcomer is the smallest contributor
    assert gain == 0.0
    gain = buf.add((2.5, 3.5))  # contributions: (1,4): 1*0.5=0.5, (4,1): 1.5*1=1.5, new: 1.5*2.5=3.75
    assert buf.points == [(4.0, 1.0), (2.5, 3.5)]  # (1,4) evicted
    assert buf.hypervolume == pytest.approx(2.5 * 3.5 + 1.5 * 1.0)
    assert gain == pytest.approx(buf.hypervolume - 7.0)
    assert gain >= 0.0

    rng = random.Random(3)
    big = ParetoBuffer(reference=(0, 0, 0), max_size=8)
    hv_prev = 0.0
    for _ in range(200):
        v = [abs(rng.gauss(0, 1)) + 1e-3 for _ in range(3)]
        norm = math.sqrt(sum(x * x for x in v))
        big.add(tuple(x / norm for x in v))
        assert len(big) <= 8
        assert big.hypervolume >= hv_prev - 1e-12  # monotone
        hv_prev = big.hypervolume
    assert len(big) == 8


def test_buffer_state_round_trip_through_json():
    rng = random.Random(5)
    buf = ParetoBuffer(reference=(0.0, -1.0), max_size=5)
    for _ in range(40):
        buf.add((rng.uniform(0, 1), rng.uniform(-1, 1)))
    state = json.loads(json.dumps(buf.state_dict()))
    other = ParetoBuffer(reference=(9.0, 9.0), max_size=1)
    other.load_state_dict(state)
    assert other.points == buf.points
    assert other.reference == buf.reference and other.max_size == buf.max_size
    assert other.hypervolume == pytest.approx(buf.hypervolume)
    p = (0.99, 0.99)
    assert other.add(p) == pytest.approx(buf.add(p))
    assert other.points == buf.points


def test_buffer_rejects_bad_input():
    with pytest.raises(ValueError):
        ParetoBuffer(reference=(0, 0), max_size=0)
    buf = ParetoBuffer(reference=(0, 0))
    with pytest.raises(ValueError):
        buf.add((1, 2, 3))
    with pytest.raises(ValueError):
        buf.add((math.nan, 1))
    with pytest.raises(ValueError):
        buf.load_state_dict({"reference": [0, 0], "max_size": 4, "points": [[1, 1], [2, 2]]})  # dominated
    with pytest.raises(ValueError):
        buf.load_state_dict({"reference": [0, 0], "max_size": 1, "points": [[1, 2], [2, 1]]})  # too many
