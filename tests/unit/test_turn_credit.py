"""Per-turn credit assignment (rlhf.advantages.turns) and the GiGPO objective (rlhf.objectives.gigpo), by hand.

Run: pytest tests/unit/test_turn_credit.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.advantages.group import group_normalize
from rlhf.advantages.turns import (
    anchor_group_sizes,
    anchor_metrics,
    anchor_normalize,
    discounted_returns,
    episode_vector,
    group_step_normalize,
    turn_rewards,
    turn_token_values,
)
from rlhf.config.objectives import GiGPOConfig
from rlhf.config.registry import Capabilities, build_objective, capabilities
from rlhf.config.schema import Recipe, RewardComponentConfig, WeightingConfig
from rlhf.objectives import GRPO, GiGPO, PolicyGradientObjective, Surrogate
from rlhf.types import RewardVector
from rlhf.weighting import build_weighting

NAN = math.nan
R = 1 / math.sqrt(2)  # 0.70710678


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0, equal_nan=True)


def weighting(names, kinds, weights, normalize="sum_then_normalize"):
    comps = [RewardComponentConfig(name=n, plugin="p", kind=k, weight=w) for n, k, w in zip(names, kinds, weights)]
    return build_weighting(WeightingConfig(normalize=normalize), comps)


# --------------------------------------------------------------------------- turn rewards and returns


# components ok (reward, w 1), fmt (constraint, w 0.5), prm (process, w 2; its value is the summarised outcome)
NAMES, KINDS, WEIGHTS = ("ok", "fmt", "prm"), ("reward", "constraint", "process"), {"ok": 1.0, "fmt": 0.5, "prm": 2.0}
RV3 = RewardVector(
    NAMES, KINDS,
    values=torch.tensor([[1.0, 1.0, 0.3], [1.0, NAN, 0.9], [NAN, NAN, 0.5]]),
    steps=torch.tensor([[[0.1], [NAN], [0.2]], [[0.4], [NAN], [NAN]], [[NAN], [NAN], [NAN]]]),  # (B=3, S=3, Kp=1)
    step_ends=torch.tensor([[2, 5, 9], [3, -1, -1], [-1, -1, -1]]),
)


def test_turn_rewards_by_hand():
    # row 0: prm turns 2*[0.1, NaN->0, 0.2] = [0.2, 0, 0.4]; outcome ok + 0.5 fmt = 1.5 on the last turn (t=2); prm's
    #        outcome value 0.3 is left out (the row has turn scores: sequence_part)          -> [0.2, 0, 1.9]
    # row 1: prm [0.8]; outcome 1 + (fmt NaN ignored) = 1 on its only turn                    -> [1.8, 0, 0]
    # row 2: no valid turn: its outcome (2 * 0.5 from prm's value) is put nowhere            -> [0, 0, 0]
    rewards, valid = turn_rewards(RV3, WEIGHTS)
    close(rewards, [[0.2, 0.0, 1.9], [1.8, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert valid.tolist() == [[True, True, True], [True, False, False], [False, False, False]]


def test_all_nan_outcome_counts_zero():
    rv = RewardVector(("ok",), ("reward",), torch.tensor([[NAN]]), step_ends=torch.tensor([[0, 4]]))
    rewards, _ = turn_rewards(rv, {"ok": 1.0})
    close(rewards, [[0.0, 0.0]])


def test_episode_vector_is_the_sum_of_turn_rewards():
    # prm's value becomes the sum of its turn scores where it has any: row 0 0.1 + 0.2 = 0.3, row 1 0.4;
    # row 2 has none and keeps its outcome value 0.5 (the episode advantage still sees it)
    ev = episode_vector(RV3)
    close(ev.values, [[1.0, 1.0, 0.3], [1.0, NAN, 0.4], [NAN, NAN, 0.5]])
    w = weighting(NAMES, KINDS, WEIGHTS.values())
    rewards, _ = turn_rewards(RV3, WEIGHTS)
    close(w.weighted_sum(ev)[:2], rewards.sum(1)[:2])  # 2.1, 1.8


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [3.0, 7.0, 7.0]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    # gamma 0.5, row 0: R2 = 2, R1 = 0 + 0.5 * 2 = 1, R0 = 1 + 0.5 * 1 = 1.5; row 1: R0 = 3 (invalid turns: 0)
    close(discounted_returns(rewards, valid, 0.5), [[1.5, 1.0, 2.0], [3.0, 0.0, 0.0]])
    close(discounted_returns(rewards, valid, 1.0), [[3.0, 2.0, 2.0], [3.0, 0.0, 0.0]])
    close(discounted_returns(rewards, valid, 0.0), [[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])


# --------------------------------------------------------------------------- step groups

# episode group 0 = rows 0, 1, 2; group 1 = row 3
VALUES = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0], [10.0, 0.0]])
VALID = torch.tensor([[True, True], [True, True], [True, False], [True, True]])
KEYS = torch.tensor([[7, 8], [7, -1], [7, 9], [7, 8]])
GIDS = torch.tensor([0, 0, 0, 1])


def test_anchor_normalize_by_hand():
    # anchor (g0, key 7): 1, 3, 5 -> mean 3, unbiased std sqrt((4 + 0 + 4) / 2) = 2 -> -1, 0, +1
    # (g0, key 8): row 0 turn 1 alone -> 0; row 1 turn 1 has key -1 -> 0; row 2 turn 1 is invalid -> 0
    # group 1: (g1, 7) and (g1, 8) are singletons (row 0's key 8 is in another episode group) -> 0
    adv = anchor_normalize(VALUES, VALID, KEYS, GIDS, scale_std=True, eps=1e-6)
    close(adv, [[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    centred = anchor_normalize(VALUES, VALID, KEYS, GIDS, scale_std=False)
    close(centred, [[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])


def test_anchor_normalize_uses_group_normalize_conventions():
    flat = torch.tensor([1.0, 3.0, 5.0])
    close(anchor_normalize(VALUES, VALID, KEYS, GIDS)[:3, 0], group_normalize(flat, torch.zeros(3)))


def test_group_step_normalize_by_hand():
    # group 0 valid turns: 1, 2, 3, 4, 5 -> mean 3, unbiased std sqrt(10 / 4) = 1.58114
    # group 1: 10, 0 -> mean 5, std sqrt(50) = 7.07107 -> +-0.70711 (keys are not read)
    s = math.sqrt(2.5)
    adv = group_step_normalize(VALUES, VALID, GIDS)
    close(adv, [[-2 / s, -1 / s], [0.0, 1 / s], [2 / s, 0.0], [R, -R]])


def test_anchor_sizes_and_metrics():
    sizes = anchor_group_sizes(VALID, KEYS, GIDS)
    assert sizes.tolist() == [[3, 1], [3, 0], [3, 0], [1, 1]]
    m = anchor_metrics(VALID, KEYS, GIDS)
    # 7 valid turns, 3 of them in an anchor group of >= 2; anchor groups >= 2: g0 has 1, g1 has 0 -> mean 0.5
    assert m["gigpo/anchor_coverage"] == pytest.approx(3 / 7)
    assert m["gigpo/anchor_groups"] == pytest.approx(0.5)


def test_turn_token_values_by_hand():
    values = torch.tensor([[10.0, 20.0], [30.0, 99.0], [5.0, 5.0]])
    ends = torch.tensor([[2, 5], [3, -1], [-1, -1]])
    # row 0: tokens 0-2 -> turn 0, 3-5 -> turn 1, 6-7 after the last turn -> 0
    # row 1: tokens 0-3 -> turn 0, the rest 0 (turn 1 is padding, its 99 never shows); row 2: no turn -> all 0
    out = turn_token_values(values, ends, width=8)
    close(out, [[10, 10, 10, 20, 20, 20, 0, 0], [30, 30, 30, 30, 0, 0, 0, 0], [0] * 8])
    with pytest.raises(ValueError, match="beyond the completion width 5"):
        turn_token_values(values, ends, width=5)


# --------------------------------------------------------------------------- GiGPO


def _race(win_a: float, win_b: float) -> RewardVector:
    """One group, two episodes from the same start state (key 0): A takes 3 turns (states 0, 1, 2; token ends
    1, 4, 6), B stops after 1 turn (state 0, token end 2). One outcome component, win (weight 1)."""
    return RewardVector(("win",), ("reward",), torch.tensor([[win_a], [win_b]]),
                        step_ends=torch.tensor([[1, 4, 6], [2, -1, -1]]),
                        step_keys=torch.tensor([[0, 1, 2], [0, -1, -1]]))


def test_gigpo_episodes_ending_at_different_turns():
    gigpo = GiGPO(gamma=0.5, omega=1.0)
    w = weighting(("win",), ("reward",), (1.0,))
    g = torch.tensor([0, 0])
    # A wins after 3 turns, B loses after 1. Turn rewards A [0, 0, 1], B [0] (each outcome on its own last turn)
    # returns (gamma .5): A [0.25, 0.5, 1], B [0]. Episode: returns 1 vs 0 -> +R, -R.
    # anchor state 0: A0 0.25, B0 0 -> +R, -R; A's turns 1, 2 are alone in their states -> 0
    adv, m = gigpo.advantages(_race(1.0, 0.0), g, w, width=8)
    a, b = R + R, -R - R
    close(adv, [[a, a, R, R, R, R, R, R], [b, b, b, -R, -R, -R, -R, -R]])  # after the last turn: episode part only
    assert m["gigpo/anchor_coverage"] == pytest.approx(2 / 4) and m["gigpo/anchor_groups"] == 1.0
    assert m["gigpo/turns_mean"] == 2.0
    assert m["adv/episode_abs_mean"] == pytest.approx(R, abs=1e-5)  # (eps in the std)
    assert m["adv/step_abs_mean"] == pytest.approx(2 * R / 4, abs=1e-5)  # |+-R| on 2 of the 4 valid turns
    # both win: equal returns -> episode advantage 0; at state 0 the faster win has the larger return
    # (A0 0.25 vs B0 1: -R, +R), discounting credits the short path
    adv, _ = gigpo.advantages(_race(1.0, 1.0), g, w, width=8)
    close(adv, [[-R, -R, 0, 0, 0, 0, 0, 0], [R, R, R, 0, 0, 0, 0, 0]])
    # step_groups group: all 4 turns pooled: A [0.25, 0.5, 1], B [1] -> mean 0.6875, unbiased std 0.375
    # -> A [-1.16667, -0.5, 0.83333], B [0.83333] (episode part 0)
    adv, _ = GiGPO(gamma=0.5, step_groups="group").advantages(_race(1.0, 1.0), g, w, width=8)
    x, y, z = -0.4375 / 0.375, -0.1875 / 0.375, 0.3125 / 0.375
    close(adv, [[x, x, y, y, y, z, z, 0], [z, z, z, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("normalize", ["sum_then_normalize", "component_then_sum"])
def test_gigpo_omega_zero_is_grpo(normalize):
    torch.manual_seed(0)
    B, S, C = 8, 4, 24
    values = torch.rand(B, 2)
    values[1, 1] = NAN
    values[5] = NAN  # a row with no applicable component
    n_turns = torch.tensor([1, 4, 2, 3, 4, 1, 2, 3])
    ends = torch.full((B, S), -1)
    for i, n in enumerate(n_turns.tolist()):
        ends[i, :n] = torch.arange(n) * 5 + 3
    rv = RewardVector(("a", "b"), ("reward", "constraint"), values, step_ends=ends,
                      step_keys=torch.where(ends >= 0, torch.randint(0, 2, (B, S)), -1))
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    w = weighting(("a", "b"), ("reward", "constraint"), (1.0, 0.5), normalize)
    grpo, metrics_grpo = GRPO().advantages(rv, g, w, width=C)  # (B,)
    ours, metrics = GiGPO(omega=0.0, gamma=0.9).advantages(rv, g, w, width=C)  # (B, C)
    close(ours, grpo.unsqueeze(1).expand(B, C))
    assert {k: metrics[k] for k in metrics_grpo} == pytest.approx(metrics_grpo, nan_ok=True)
    assert metrics["adv/step_abs_mean"] == 0.0 and metrics["adv/episode_abs_mean"] > 0


def test_gigpo_episode_part_is_the_normalised_return_with_process_turns():
    # omega 0, sum_then_normalize: A^E = group_normalize(sum_t r_t), process turn scores included
    rv = RewardVector(NAMES, KINDS, RV3.values[:2], RV3.steps[:2], RV3.step_ends[:2],
                      step_keys=torch.tensor([[0, 1, 2], [0, -1, -1]]))
    w = weighting(NAMES, KINDS, WEIGHTS.values())
    adv, m = GiGPO(omega=0.0).advantages(rv, torch.tensor([0, 0]), w, width=10)
    close(adv[:, 0], group_normalize(torch.tensor([2.1, 1.8]), torch.tensor([0, 0])))  # +R, -R
    assert m["reward/prm/mean"] == pytest.approx(0.6)  # the outcome values 0.3, 0.9, as GRPO logs them


def test_gigpo_refuses_what_it_cannot_use():
    w = weighting(("win",), ("reward",), (1.0,))
    single = RewardVector(("win",), ("reward",), torch.tensor([[1.0], [0.0]]))
    with pytest.raises(ValueError, match="rollout.kind: agent"):
        GiGPO().advantages(single, torch.tensor([0, 0]), w, width=4)
    no_keys = RewardVector(("win",), ("reward",), torch.tensor([[1.0], [0.0]]), step_ends=torch.tensor([[1], [2]]))
    with pytest.raises(ValueError, match="step_keys"):
        GiGPO().advantages(no_keys, torch.tensor([0, 0]), w, width=4)
    adv, m = GiGPO(step_groups="group").advantages(no_keys, torch.tensor([0, 0]), w, width=4)  # no keys needed
    assert adv.shape == (2, 4) and "gigpo/anchor_coverage" not in m
    with pytest.raises(ValueError, match="width"):
        GiGPO().advantages(_race(1.0, 0.0), torch.tensor([0, 0]), w)
    with pytest.raises(ValueError, match="step_groups"):
        GiGPO(step_groups="turn")


# --------------------------------------------------------------------------- config and registry


def test_gigpo_config_and_capabilities():
    cfg = GiGPOConfig(omega=0.5, gamma=0.9, step_groups="group", kl_coef=0.01, scale_std=False)
    obj = build_objective(cfg)
    assert type(obj) is GiGPO and isinstance(obj, PolicyGradientObjective) and isinstance(obj.surrogate, Surrogate)
    assert (obj.omega, obj.gamma, obj.step_groups, obj.scale_std, obj.needs_reference) == (0.5, 0.9, "group",
                                                                                            False, True)
    assert capabilities(GiGPOConfig()) == Capabilities(
        stage="policy_gradient", data="prompts", needs_reference=False, grouped=True, sweep_weights="rewards",
        dynamic_weighting=False, step_level=False)
    with pytest.raises(ValueError):
        GiGPOConfig(gamma=1.5)
    with pytest.raises(ValueError):
        GiGPOConfig(omega=-1.0)


def _recipe(rollout):
    return Recipe.model_validate({"model": {"path": "unused"}, "rewards": [{"name": "r", "plugin": "exact_match"}],
                                  "objective": {"kind": "gigpo"}, "rollout": rollout})


def test_registry_refuses_gigpo_without_agent_rollout():
    with pytest.raises(ValueError, match=r"objective gigpo needs rollout.kind: agent \(its step groups are the "
                                         r"turns of agent episodes\)"):
        _recipe({"kind": "single_turn"})
    recipe = _recipe({"kind": "agent", "agent": {"env": "some.module:Env"}})
    assert recipe.objective.kind == "gigpo" and recipe.rollout.kind == "agent"
