"""DynamicWeighting: schedules, Lagrange constraints, hypervolume-guided and gradient-based weights, exact state."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.config.schema import RewardComponentConfig, WeightingConfig
from rlhf.types import RewardVector
from rlhf.weighting import build_weighting

COMPS = [RewardComponentConfig(name="a", plugin="p", weight=1.0),
         RewardComponentConfig(name="b", plugin="p", weight=0.5)]


def rv(a, b):
    return RewardVector(("a", "b"), ("reward", "reward"), torch.tensor([a, b], dtype=torch.float32).T)


def test_static_kind_keeps_recipe_weights():
    w = build_weighting(WeightingConfig(), COMPS, total_steps=10)
    w.begin_step(5)
    assert w.observe(rv([1.0, 0.0], [0.0, 1.0])) == {}
    assert w.weights == {"a": 1.0, "b": 0.5}


def test_linear_and_step_schedules_by_hand():
    cfg = WeightingConfig(schedules={"a": {"kind": "linear", "start": 1.0, "end": 0.0},
                                     "b": {"kind": "step", "start": 1.0, "step_every": 4, "step_factor": 0.5}})
    w = build_weighting(cfg, COMPS, total_steps=10)
    w.begin_step(0)
    assert w.weights == pytest.approx({"a": 1.0, "b": 0.5})
    w.begin_step(5)  # a: halfway to 0; b: 0.5 * 0.5^(5 // 4)
    assert w.weights == pytest.approx({"a": 0.5, "b": 0.25})
    w.begin_step(10)
    assert w.weights == pytest.approx({"a": 0.0, "b": 0.125})


def test_constraint_multiplier_rises_under_violation_and_relaxes():
    cfg = WeightingConfig(constraints=[{"component": "b", "min": 0.8, "lr": 1.0, "max_multiplier": 0.5}])
    w = build_weighting(cfg, COMPS)
    m = w.observe(rv([1.0, 1.0], [0.5, 0.5]))  # b mean 0.5 < 0.8: violation 0.3
    assert m["constraint/b/violated"] == 1.0
    assert w.weights["b"] == pytest.approx(0.5 + 0.3)
    w.observe(rv([1.0, 1.0], [0.5, 0.5]))  # 0.6 -> clipped at 0.5
    assert w.weights["b"] == pytest.approx(0.5 + 0.5)
    w.observe(rv([1.0, 1.0], [1.0, 1.0]))  # satisfied by 0.2: 0.5 - 0.2
    assert w.weights["b"] == pytest.approx(0.5 + 0.3)
    _, metrics = w.scalarize(rv([1.0, 0.0], [1.0, 1.0]), torch.tensor([0, 0]))
    assert metrics["constraint/b/multiplier"] == pytest.approx(0.3)
    upper = build_weighting(WeightingConfig(constraints=[{"component": "a", "max": 0.2, "lr": 1.0}]), COMPS)
    upper.observe(rv([1.0, 1.0], [0.0, 0.0]))  # a = 1 > 0.2: pushed down by 0.8
    assert upper.weights["a"] == pytest.approx(1.0 - 0.8)


def test_hypervolume_rule_moves_weight_to_the_component_that_expands_the_front():
    cfg = WeightingConfig(kind="hypervolume", hypervolume={"reference": [0.0, 0.0], "lr": 1.0, "delta": 0.5,
                                                            "min_weight": 0.0})
    w = build_weighting(cfg, COMPS)
    # front {(0.9, 0.1)} (HV 0.09); the next batch mean is p = (0.5, 0.2), spreads (0.1, 0.1), probes of 0.05:
    #   a: HV({(0.9, 0.1), (0.55, 0.2)}) = 0.09 + 0.55 * 0.1 = 0.145 -> slope 1.1
    #   b: HV({(0.9, 0.1), (0.5, 0.25)}) = 0.09 + 0.5 * 0.15 = 0.165 -> slope 1.5   => weight moves toward b
    w.observe(rv([0.9, 0.9], [0.1, 0.1]))
    w.observe(rv([0.4, 0.6], [0.1, 0.3]))
    simplex = w.state_dict()["simplex"]
    assert simplex[1] > simplex[0], simplex
    m = w.observe(rv([0.4, 0.6], [0.1, 0.3]))
    assert m["pareto/gain"] == 0.0 and m["pareto/front_size"] == 2
    assert m["pareto/hypervolume"] == pytest.approx(0.9 * 0.1 + 0.5 * 0.1)
    # the first gain scales the next advantages: HV grew from 0.09 to 0.14
    adv, metrics = w.scalarize(rv([1.0, 0.0], [0.0, 0.0]), torch.tensor([0, 0]))
    assert metrics["weights/hv_scale"] == pytest.approx(1.0)  # the last step gained nothing


def test_hypervolume_gain_scale_is_the_advantage_scale_by_hand():
    cfg = WeightingConfig(kind="hypervolume", hypervolume={"reference": [0.0, 0.0], "lr": 0.0, "gain_scale": 1.0,
                                                            "max_scale": 3.0})
    w = build_weighting(cfg, COMPS)
    assert w.advantage_scale == 1.0
    w.observe(rv([0.9, 0.9], [0.1, 0.1]))  # the first point: the front starts at HV 0.09, nothing gained relative
    assert w.hv_scale == pytest.approx(1.0)
    w.observe(rv([0.4, 0.6], [0.1, 0.3]))  # (0.5, 0.2) joins: HV 0.09 -> 0.14, gain 0.05 -> 1 + 0.05 / 0.09
    assert w.hv_scale == pytest.approx(1 + 0.05 / 0.09)
    assert w.advantage_scale == w.hv_scale  # what RLOO / REINFORCE++ multiply their advantages by
    # scalarize applies the same factor to GRPO's advantages: weighted sums [1, 0] -> [+R, -R] times the scale
    adv, metrics = w.scalarize(rv([1.0, 0.0], [0.0, 0.0]), torch.tensor([0, 0]), scale_std=True, eps=0.0)
    r = 1 / 2 ** 0.5
    torch.testing.assert_close(adv, torch.tensor([r, -r]) * (1 + 0.05 / 0.09))
    assert metrics["weights/hv_scale"] == pytest.approx(1 + 0.05 / 0.09)
    w.hv_scale = 1.5
    assert w.advantage_scale == 1.5
    adv15, _ = w.scalarize(rv([1.0, 0.0], [0.0, 0.0]), torch.tensor([0, 0]), scale_std=True, eps=0.0)
    torch.testing.assert_close(adv15, torch.tensor([1.5 * r, -1.5 * r]))


def test_hypervolume_rule_values_a_component_that_lags_the_front():
    cfg = WeightingConfig(kind="hypervolume", hypervolume={"reference": [0.0, 0.0], "lr": 1.0, "delta": 0.5,
                                                            "min_weight": 0.0})
    w = build_weighting(cfg, COMPS)
    w.observe(rv([0.9, 0.9], [0.1, 0.1]))
    w.observe(rv([0.5, 0.5], [0.5, 0.5]))  # front {(0.9, 0.1), (0.5, 0.5)}, HV 0.09 + 0.4 * 0.5 = 0.29
    # p = (0.4, 0.3), spreads (0.1, 0.1): dominated, so a probe of delta * spread alone would gain nothing on
    # either component. Shortfalls: a lags (0.5, 0.5) by 0.1; b lags (0.5, 0.5) by 0.2 ((0.9, 0.1) is below it).
    #   a: probe (0.55, 0.3) gains [0.5, 0.55] x [0.1, 0.3] = 0.01 over a move of 0.15 -> 1/15
    #   b: probe (0.4, 0.55) gains [0, 0.4] x [0.5, 0.55] = 0.02 over a move of 0.25 -> 0.08
    before = w.state_dict()["simplex"]
    m = w.observe(rv([0.3, 0.5], [0.2, 0.4]))
    assert m["pareto/shortfall/a"] == pytest.approx(0.1) and m["pareto/shortfall/b"] == pytest.approx(0.2)
    assert m["pareto/marginal/a"] == pytest.approx(1 / 15) and m["pareto/marginal/b"] == pytest.approx(0.08)
    after = w.state_dict()["simplex"]
    assert after[1] - before[1] > 0 and after != before
    assert m["pareto/gain"] == 0.0


def test_gradient_rule_by_hand():
    cfg = WeightingConfig(kind="gradient", gradient={"lr": 1.0, "min_weight": 0.0})
    w = build_weighting(cfg, COMPS)
    assert w.needs_gradients(1) and w.needs_gradients(2)
    # orthogonal gradients g_a = (3, 0), g_b = (0, 4): influence = (G 1) / ||g_a + g_b|| = (9, 16) / 5
    gram = torch.tensor([[9.0, 0.0], [0.0, 16.0]])
    m = w.gradient_update(gram)
    assert m["gradient/influence/a"] == pytest.approx(1.8) and m["gradient/influence/b"] == pytest.approx(3.2)
    e = torch.exp(torch.tensor([1.8, 3.2], dtype=torch.float64))
    expected = (e / e.sum()).tolist()
    assert w.state_dict()["simplex"] == pytest.approx(expected)
    assert w.weights == pytest.approx({"a": 1.0 * 2 * expected[0], "b": 0.5 * 2 * expected[1]})
    assert m["gradient/cosine"] == pytest.approx(0.0)


def test_state_round_trip_is_exact_through_json():
    cfg = WeightingConfig(kind="hypervolume", constraints=[{"component": "b", "min": 0.5}])
    w = build_weighting(cfg, COMPS)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        w.observe(RewardVector(("a", "b"), ("reward", "reward"), torch.rand(8, 2, generator=g)))
    state = json.loads(json.dumps(w.state_dict()))
    w2 = build_weighting(cfg, COMPS)
    w2.load_state_dict(state)
    assert w2.state_dict() == w.state_dict()
    batch = RewardVector(("a", "b"), ("reward", "reward"), torch.rand(8, 2, generator=g))
    assert w2.observe(batch) == w.observe(batch) and w2.weights == w.weights
    with pytest.raises(ValueError, match="kind"):
        build_weighting(WeightingConfig(), COMPS).load_state_dict(state)
