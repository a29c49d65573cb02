"""Weight update rules (rlhf.weighting.updates): mirror descent with a floor, gradient influence (from the
gradients and from the Gram matrix, incl. sharded Grams), projected dual ascent, schedules.

Run: pytest tests/unit/test_weight_updates.py -q
"""

import math

import pytest
import torch

from rlhf.weighting.updates import (
    gradient_gram,
    gradient_influence,
    influence_from_gram,
    lagrange_step,
    mirror_descent_step,
    project_floored_simplex,
    schedule_value,
)


def close(a, b, tol=1e-6):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


def t(*xs, dtype=torch.float64):
    return torch.tensor(xs, dtype=dtype)


# -------------------------------------------------------------------------------------- mirror descent


def test_mirror_descent_hand_values():
    # w ∝ (0.5 * 2, 0.5 * 1) = (2/3, 1/3)
    close(mirror_descent_step(t(0.5, 0.5), t(1.0, 0.0), lr=math.log(2)), [2 / 3, 1 / 3])
    # K=3, lr=ln 3, s=(1,0,-1): w ∝ (3, 1, 1/3) * 1/3 -> (9, 3, 1) / 13
    close(mirror_descent_step(t(1 / 3, 1 / 3, 1 / 3), t(1.0, 0.0, -1.0), lr=math.log(3)), [9 / 13, 3 / 13, 1 / 13])
    # unnormalised weights: only ratios matter; lr = 0 just normalises
    close(mirror_descent_step(t(2.0, 6.0), t(5.0, -3.0), lr=0.0), [0.25, 0.75])


def test_mirror_descent_invariances():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    s = torch.randn(5, generator=g, dtype=torch.float64)
    base = mirror_descent_step(w, s, lr=0.7)
    close(base.sum(), 1.0, 1e-12)
    close(mirror_descent_step(w, s + 123.4, lr=0.7), base, 1e-12)  # shift of all scores
    close(mirror_descent_step(3.5 * w, s, lr=0.7), base, 1e-12)  # scale of the weights
    # two steps with lr = one step with 2 * lr (multiplicative updates compose)
    close(mirror_descent_step(mirror_descent_step(w, s, 0.7), s, 0.7), mirror_descent_step(w, s, 1.4), 1e-12)


def test_mirror_descent_is_numerically_stable():
    out = mirror_descent_step(t(0.5, 0.5), t(1e4, 0.0), lr=10.0)
    assert torch.isfinite(out).all()
    close(out, [1.0, 0.0])
    out = mirror_descent_step(t(0.5, 0.5, dtype=torch.float32), t(-1e5, -1e5 - 1.0, dtype=torch.float32), lr=1.0)
    assert out.dtype == torch.float32
    close(out, [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))], 1e-6)


def test_mirror_descent_zero_weight_stays_zero_unless_floored():
    close(mirror_descent_step(t(0.0, 1.0), t(100.0, 0.0), lr=1.0), [0.0, 1.0])
    close(mirror_descent_step(t(0.0, 1.0), t(100.0, 0.0), lr=1.0, min_weight=0.1), [0.1, 0.9])


def test_floor_hand_values():
    # (0.9, 0.1) with floor 0.2: the small one sits at the floor, the other takes the rest
    close(mirror_descent_step(t(0.9, 0.1), t(0.0, 0.0), lr=1.0, min_weight=0.2), [0.8, 0.2])
    # no-op when everything is above the floor
    close(mirror_descent_step(t(0.5, 0.3, 0.2), t(0.0, 0.0, 0.0), lr=1.0, min_weight=0.1), [0.5, 0.3, 0.2])
    # one floored, the others keep their ratio 0.7 : 0.25 and share 0.9
    close(project_floored_simplex(t(0.7, 0.25, 0.05), 0.1), [0.7 * 0.9 / 0.95, 0.25 * 0.9 / 0.95, 0.1])
    # cascade: flooring 0.045 rescales 0.105 to 0.105 * 0.9 / 0.955 < 0.1, so it is floored too
    close(project_floored_simplex(t(0.85, 0.105, 0.045), 0.1), [0.8, 0.1, 0.1])
    # min_weight * K == 1 -> uniform
    close(mirror_descent_step(t(0.9, 0.05, 0.05), t(3.0, 0.0, 0.0), lr=1.0, min_weight=1 / 3), [1 / 3] * 3)


def test_floor_properties_random():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        k = int(torch.randint(2, 8, (1,), generator=g))
        w = torch.rand(k, generator=g, dtype=torch.float64) ** 4
        s = torch.randn(k, generator=g, dtype=torch.float64) * 3
        m = float(torch.rand(1, generator=g)) / k
        out = mirror_descent_step(w, s, lr=1.0, min_weight=m)
        close(out.sum(), 1.0, 1e-12)
        assert bool((out >= m - 1e-12).all())
        unfloored = mirror_descent_step(w, s, lr=1.0)
        free = out > m + 1e-12
        if int(free.sum()) >= 2:  # ratios among the free components are preserved
            r = out[free] / unfloored[free]
            close(r, torch.full_like(r, float(r[0])), 1e-9)
        # KKT of the KL projection: floored components had the smallest unfloored weights
        if bool(free.any()) and bool((~free).any()):
            assert float(unfloored[~free].max()) <= float(unfloored[free].min()) + 1e-12


def test_mirror_descent_rejects_bad_input():
    with pytest.raises(ValueError):
        mirror_descent_step(t(0.5, 0.5), t(0.0, 0.0), lr=1.0, min_weight=0.6)  # 0.6 * 2 > 1
    with pytest.raises(ValueError):
        mirror_descent_step(t(0.5, 0.5), t(0.0, 0.0, 0.0), lr=1.0)
    with pytest.raises(ValueError):
        mirror_descent_step(t(-0.5, 1.5), t(0.0, 0.0), lr=1.0)
    with pytest.raises(ValueError):
        mirror_descent_step(t(0.0, 0.0), t(0.0, 0.0), lr=1.0)
    with pytest.raises(ValueError):
        mirror_descent_step(t(0.5, 0.5), t(math.nan, 0.0), lr=1.0)
    with pytest.raises(ValueError):
        mirror_descent_step(t(0.5, 0.5), t(0.0, 0.0), lr=-1.0)
    with pytest.raises(ValueError):
        mirror_descent_step(t(0.5, 0.5), t(0.0, 0.0), lr=1.0, min_weight=-0.1)


# ------------------------------------------------------------------------------------------- influence


def test_influence_hand_orthogonal():
    grads = t(3.0, 0.0, 0.0, 4.0).reshape(2, 2)  # g1 = (3, 0), g2 = (0, 4); sum (3, 4), norm 5
    close(gradient_influence(grads, eps=0.0), [9 / 5, 16 / 5])
    close(influence_from_gram(t(9.0, 0.0, 0.0, 16.0).reshape(2, 2), eps=0.0), [9 / 5, 16 / 5])
    # sum of influences = ||sum g|| (= 5)
    close(gradient_influence(grads, eps=0.0).sum(), 5.0)


def test_influence_hand_conflict():
    # g1 = (1, 0), g2 = (-0.5, 1): sum (0.5, 1), norm sqrt(1.25); <g1,sum> = 0.5, <g2,sum> = 0.75
    grads = t(1.0, 0.0, -0.5, 1.0).reshape(2, 2)
    close(gradient_influence(grads, eps=0.0), [0.5 / math.sqrt(1.25), 0.75 / math.sqrt(1.25)])
    # exactly opposite gradients: aggregate 0 -> influence 0 (eps keeps it finite)
    close(gradient_influence(t(1.0, 2.0, -1.0, -2.0).reshape(2, 2)), [0.0, 0.0])
    # a component opposing the consensus gets a negative score
    out = gradient_influence(t(1.0, 0.0, 1.0, 0.1, -0.5, 0.0).reshape(3, 2), eps=0.0)
    assert out[0] > 0 and out[1] > 0 and out[2] < 0


def test_influence_with_mixing_weights():
    g = torch.Generator().manual_seed(2)
    grads = torch.randn(4, 50, generator=g, dtype=torch.float64)
    a = t(0.1, 0.2, 0.3, 0.4)
    agg = (a[:, None] * grads).sum(0)  # (P,)
    expected = grads @ agg / agg.norm()
    close(gradient_influence(grads, weights=a, eps=0.0), expected, 1e-10)
    close(influence_from_gram(grads @ grads.T, weights=a, eps=0.0), expected, 1e-10)
    close((a * gradient_influence(grads, weights=a, eps=0.0)).sum(), agg.norm(), 1e-10)


def test_gradient_influence_equals_gram_version():
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        for k, p in ((2, 7), (3, 100), (5, 1000)):
            grads = torch.randn(k, p, generator=g, dtype=dtype)
            expected = influence_from_gram(grads @ grads.T)
            torch.testing.assert_close(gradient_influence(grads), expected, atol=0, rtol=0)


def test_sharded_gram_all_reduce_is_exact():
    """Partial Grams of column shards of the parameter vector sum to the full Gram -> the same influence."""
    g = torch.Generator().manual_seed(4)
    grads = torch.randn(3, 1001, generator=g, dtype=torch.float64)
    full = gradient_gram(grads)
    shards = torch.tensor_split(grads, [400, 700], dim=1)  # three uneven shards, like ZeRO partitions
    summed = sum(gradient_gram(s) for s in shards)
    close(summed, full, 1e-10)
    close(influence_from_gram(summed), gradient_influence(grads), 1e-10)
    two = gradient_gram(grads[:, :500]) + gradient_gram(grads[:, 500:])
    close(influence_from_gram(two), gradient_influence(grads), 1e-10)


def test_influence_half_precision_is_upcast():
    grads = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.bfloat16)
    out = gradient_influence(grads, eps=0.0)
    assert out.dtype == torch.float32
    close(out, [9 / 5, 16 / 5], 1e-5)


def test_influence_rejects_bad_shapes():
    with pytest.raises(ValueError):
        influence_from_gram(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        gradient_influence(torch.zeros(4))
    with pytest.raises(ValueError):
        influence_from_gram(torch.eye(2), weights=torch.ones(3))


# -------------------------------------------------------------------------------------------- Lagrange


def test_lagrange_grows_under_violation():
    # "min": value 0.5 must stay >= 0.8 -> violation 0.3
    assert lagrange_step(0.0, 0.5, 0.8, "min", lr=1.0) == pytest.approx(0.3)
    assert lagrange_step(0.3, 0.5, 0.8, "min", lr=2.0) == pytest.approx(0.9)
    # "max": value 0.5 must stay <= 0.2 -> violation 0.3
    assert lagrange_step(1.0, 0.5, 0.2, "max", lr=0.5) == pytest.approx(1.15)


def test_lagrange_shrinks_to_zero_when_satisfied():
    assert lagrange_step(0.5, 0.9, 0.8, "min", lr=1.0) == pytest.approx(0.4)  # slack 0.1
    assert lagrange_step(0.05, 0.9, 0.8, "min", lr=1.0) == 0.0  # would go negative: projected to 0
    assert lagrange_step(0.05, 0.1, 0.2, "max", lr=1.0) == 0.0
    lam = 1.0
    for _ in range(20):
        lam = lagrange_step(lam, 0.9, 0.8, "min", lr=1.0)
    assert lam == 0.0
    assert lagrange_step(0.7, 0.8, 0.8, "min", lr=1.0) == pytest.approx(0.7)  # on the boundary: unchanged


def test_lagrange_clipping_and_validation():
    assert lagrange_step(9.0, 0.0, 1.0, "min", lr=5.0, max_multiplier=10.0) == 10.0
    assert lagrange_step(0.0, 0.0, 1.0, "min", lr=5.0, max_multiplier=0.0) == 0.0
    assert lagrange_step(0.0, 0.0, 1.0, "min", lr=0.0) == 0.0
    with pytest.raises(ValueError):
        lagrange_step(0.0, 0.0, 1.0, "above", lr=1.0)
    with pytest.raises(ValueError):
        lagrange_step(0.0, 0.0, 1.0, "min", lr=-1.0)
    with pytest.raises(ValueError):
        lagrange_step(0.0, math.nan, 1.0, "min", lr=1.0)
    with pytest.raises(ValueError):
        lagrange_step(0.0, 0.0, 1.0, "min", lr=1.0, max_multiplier=-1.0)


# ------------------------------------------------------------------------------------------- schedules


def test_schedule_constant():
    assert schedule_value("constant", 0.7, 0.0, 0, 10) == 0.7
    assert schedule_value("constant", 0.7, 0.0, 1000, 10) == 0.7


def test_schedule_linear():
    assert schedule_value("linear", 1.0, 0.0, 0, 10) == pytest.approx(1.0)
    assert schedule_value("linear", 1.0, 0.0, 5, 10) == pytest.approx(0.5)
    assert schedule_value("linear", 1.0, 0.0, 10, 10) == pytest.approx(0.0)
    assert schedule_value("linear", 1.0, 0.0, 20, 10) == pytest.approx(0.0)  # clamped
    assert schedule_value("linear", 0.2, 1.0, 3, 4) == pytest.approx(0.8)


def test_schedule_cosine():
    assert schedule_value("cosine", 1.0, 0.0, 0, 100) == pytest.approx(1.0)
    assert schedule_value("cosine", 1.0, 0.0, 50, 100) == pytest.approx(0.5)
    assert schedule_value("cosine", 1.0, 0.0, 25, 100) == pytest.approx(1 - (1 - math.sqrt(0.5)) / 2)  # 0.85355
    assert schedule_value("cosine", 1.0, 0.0, 100, 100) == pytest.approx(0.0)
    assert schedule_value("cosine", 1.0, 0.0, 500, 100) == pytest.approx(0.0)
    assert schedule_value("cosine", 0.0, 2.0, 75, 100) == pytest.approx(2 * (1 + math.sqrt(0.5)) / 2)


def test_schedule_step():
    kw = dict(step_every=10, step_factor=0.5)
    assert schedule_value("step", 1.0, 123.0, 0, 0, **kw) == pytest.approx(1.0)  # end ignored
    assert schedule_value("step", 1.0, 123.0, 9, 0, **kw) == pytest.approx(1.0)
    assert schedule_value("step", 1.0, 123.0, 10, 0, **kw) == pytest.approx(0.5)
    assert schedule_value("step", 1.0, 123.0, 25, 0, **kw) == pytest.approx(0.25)
    assert schedule_value("step", 2.0, 0.0, 30, 100, step_every=15, step_factor=3.0) == pytest.approx(18.0)


def test_schedule_validation():
    with pytest.raises(ValueError):
        schedule_value("exp", 1.0, 0.0, 0, 10)
    with pytest.raises(ValueError):
        schedule_value("linear", 1.0, 0.0, 0, 0)  # total_steps must be >= 1
    with pytest.raises(ValueError):
        schedule_value("linear", 1.0, 0.0, -1, 10)
    with pytest.raises(ValueError):
        schedule_value("linear", 1.0, 0.0, 1.5, 10)
    with pytest.raises(ValueError):
        schedule_value("cosine", 1.0, math.nan, 0, 10)
    with pytest.raises(ValueError):
        schedule_value("step", 1.0, 0.0, 0, 10)  # missing step_every / step_factor
    with pytest.raises(ValueError):
        schedule_value("step", 1.0, 0.0, 0, 10, step_every=0, step_factor=0.5)
    with pytest.raises(ValueError):
        schedule_value("step", 1.0, 0.0, 0, 10, step_every=5, step_factor=-0.5)
    with pytest.raises(ValueError):
        schedule_value("linear", 1.0, 0.0, 0, 10, step_every=5)  # step options on a non-step kind
