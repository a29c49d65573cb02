"""Static weighting (rlhf.weighting): both normalisation orders, NaN handling, metrics, state_dict.

Run: pytest tests/unit/test_weighting.py -q
"""

import math

import pytest
import torch

from rlhf.config.schema import RewardComponentConfig, WeightingConfig
from rlhf.types import RewardVector
from rlhf.weighting import DynamicWeighting, StaticWeighting, Weighting, build_weighting

NAN = float("nan")
R = 1 / math.sqrt(2)  # 0.70710678


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


def make(normalize, kinds=("reward", "reward"), weights=(1.0, 0.5)):
    comps = [
        RewardComponentConfig(name="a", plugin="p", kind=kinds[0], weight=weights[0]),
        RewardComponentConfig(name="b", plugin="p", kind=kinds[1], weight=weights[1]),
    ]
    return build_weighting(WeightingConfig(normalize=normalize), comps)


# rewards [[1,0],[0,1],[1,1],[0,0]], groups [0,0,1,1], weights a=1, b=0.5
RV = RewardVector(("a", "b"), ("reward", "reward"), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
GROUPS = torch.tensor([0, 0, 1, 1])


def test_build_weighting_returns_protocol():
    w = make("sum_then_normalize")
    assert isinstance(w, DynamicWeighting) and isinstance(w, Weighting)


def test_advantage_scale_is_one_without_a_hypervolume_gain():
    # fixed weights never scale the advantages; a built weighting's scale is the hypervolume gain (1 until then)
    assert StaticWeighting(("a", "b"), ("reward", "reward"), (1.0, 0.5)).advantage_scale == 1.0
    assert make("sum_then_normalize").advantage_scale == 1.0
    assert make("component_then_sum").advantage_scale == 1.0


def test_component_then_sum_by_hand():
    # a: group0 [1,0] -> [+R,-R], group1 [1,0] -> [+R,-R]   (pair: dev +-0.5, unbiased std 0.5*sqrt2)
    # b: group0 [0,1] -> [-R,+R], group1 [1,0] -> [+R,-R]
    # 1*a + 0.5*b = [R - R/2, -R + R/2, R + R/2, -R - R/2] = [0.35355, -0.35355, 1.06066, -1.06066]
    adv, _ = make("component_then_sum").scalarize(RV, GROUPS, scale_std=True, eps=1e-6)
    close(adv, [0.5 * R, -0.5 * R, 1.5 * R, -1.5 * R])


def test_sum_then_normalize_by_hand():
    # weighted sums [1, 0.5, 1.5, 0]; group0 [1, 0.5] -> [+R, -R]; group1 [1.5, 0] -> [+R, -R]
    adv, _ = make("sum_then_normalize").scalarize(RV, GROUPS, scale_std=True, eps=1e-6)
    close(adv, [R, -R, R, -R])


def test_orders_agree_without_std_scaling():
    # centring is linear: both give the centred weighted sums [0.25, -0.25, 0.75, -0.75]
    for order in ("component_then_sum", "sum_then_normalize"):
        adv, _ = make(order).scalarize(RV, GROUPS, scale_std=False, eps=1e-6)
        close(adv, [0.25, -0.25, 0.75, -0.75])


# one group of four: a NaN component, and a row where nothing applies
RV_NAN = RewardVector(
    ("a", "b"), ("reward", "reward"), torch.tensor([[1.0, NAN], [0.0, 1.0], [2.0, 3.0], [NAN, NAN]])
)
G1 = torch.zeros(4, dtype=torch.long)


def test_weighted_sum_nan():
    # NaN components count 0, an all-NaN row stays NaN
    ws = make("sum_then_normalize").weighted_sum(RV_NAN)
    close(ws[:3], [1.0, 0.5, 3.5])
    assert math.isnan(ws[3])


def test_sum_then_normalize_nan_by_hand():
    # sums [1, 0.5, 3.5] (row 3 all-NaN: left out, advantage 0); mean 5/3;
    # deviations [-2/3, -7/6, 11/6]; unbiased var (16 + 49 + 121) / 36 / 2 = 31/12
    adv, _ = make("sum_then_normalize").scalarize(RV_NAN, G1, scale_std=True, eps=0.0)
    s = math.sqrt(31 / 12)
    close(adv, [(-2 / 3) / s, (-7 / 6) / s, (11 / 6) / s, 0.0])


def test_component_then_sum_nan_by_hand():
    # a over [1, 0, 2]: mean 1, std 1 -> [0, -1, 1]; b over [1, 3]: mean 2, std sqrt2 -> [-, -R, +R]
    # NaN components contribute 0: [0, -1 - 0.5R, 1 + 0.5R, 0]
    adv, _ = make("component_then_sum").scalarize(RV_NAN, G1, scale_std=True, eps=0.0)
    close(adv, [0.0, -1 - 0.5 * R, 1 + 0.5 * R, 0.0])


def test_metrics_and_constraint_violation_rate():
    rv = RewardVector(
        ("a", "b"),
        ("reward", "constraint"),
        torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, NAN], [NAN, 0.0], [NAN, 1.0]]),
    )
    w = make("sum_then_normalize", kinds=("reward", "constraint"), weights=(2.0, 0.5))
    _, m = w.scalarize(rv, torch.tensor([0, 0, 0, 1, 1]), scale_std=True, eps=1e-6)
    assert m["reward/a/mean"] == pytest.approx(1.0)  # [1, 0, 2]
    assert m["reward/a/weighted"] == pytest.approx(2.0)
    assert m["weights/a"] == 2.0
    assert m["reward/b/mean"] == pytest.approx(0.5)  # [1, 0, 0, 1]
    assert m["reward/b/weighted"] == pytest.approx(0.25)
    assert m["weights/b"] == 0.5
    assert m["constraint/b/violation_rate"] == pytest.approx(0.5)  # two 0.0 among four applicable
    assert "constraint/a/violation_rate" not in m


def test_weights_are_matched_by_name_not_position():
    # the reward vector lists components in the other order; weights must follow the names
    rv = RewardVector(("b", "a"), ("reward", "reward"), RV.values[:, [1, 0]])
    adv_swapped, _ = make("component_then_sum").scalarize(rv, GROUPS, True, 1e-6)
    adv, _ = make("component_then_sum").scalarize(RV, GROUPS, True, 1e-6)
    torch.testing.assert_close(adv_swapped, adv)


def test_unknown_component_raises():
    rv = RewardVector(("a", "zzz"), ("reward", "reward"), RV.values)
    with pytest.raises(KeyError, match="zzz"):
        make("sum_then_normalize").scalarize(rv, GROUPS, True, 1e-6)


def test_state_dict_roundtrip_changes_weights():
    w = StaticWeighting(("a", "b"), ("reward", "reward"), (1.0, 0.5))
    state = w.state_dict()
    assert state["weights"] == {"a": 1.0, "b": 0.5}
    w2 = StaticWeighting(("a", "b"), ("reward", "reward"), (0.0, 0.0))
    w2.load_state_dict(state)
    torch.testing.assert_close(w2.weighted_sum(RV), torch.tensor([1.0, 0.5, 1.5, 0.0]))
    with pytest.raises(ValueError):
        w2.load_state_dict({"kind": "static", "weights": {"a": 1.0}})


def test_unknown_kind_and_order_raise():
    class Cfg:
        kind = "dynamic_nope"
        normalize = "sum_then_normalize"

    with pytest.raises(ValueError, match="dynamic_nope"):
        build_weighting(Cfg(), [])
    with pytest.raises(ValueError):
        StaticWeighting(["a"], ["reward"], [1.0], normalize="sideways")
