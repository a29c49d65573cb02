"""The objective registry (rlhf.config.registry): each kind builds the right objective from its recipe section,
and its capabilities (what it needs from the runtime) are checked by hand, field by field.

Run: pytest tests/unit/test_registry.py -q
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rlhf.config.objectives import GiGPOConfig, RSFConfig
from rlhf.config.registry import REGISTRY, Capabilities, build_objective, capabilities, spec_of
from rlhf.config.schema import (
    CGPOConfig,
    DPOConfig,
    GRPOConfig,
    MAHDPOConfig,
    MODPOConfig,
    OnlineDPOConfig,
    PPOConfig,
    PRMObjectiveConfig,
    RMConfig,
    ReinforcePPConfig,
    RLOOConfig,
)
from rlhf.objectives import (
    RSF,
    CGPO,
    DPO,
    GRPO,
    MAHDPO,
    MODPO,
    PPO,
    PRM,
    RewardModelObjective,
    RLOO,
    GiGPO,
    PairObjective,
    PolicyGradientObjective,
    ReinforcePP,
    SupervisedObjective,
    Surrogate,
)


def _cgpo(**tasks):
    return CGPOConfig(tasks=tasks or {"a": {"rewards": ["r"]}})


SECTIONS = {
    "grpo": (GRPOConfig(), GRPO),
    "rsf": (RSFConfig(), RSF),
    "gigpo": (GiGPOConfig(), GiGPO),
    "rloo": (RLOOConfig(), RLOO),
    "reinforce_pp": (ReinforcePPConfig(), ReinforcePP),
    "ppo": (PPOConfig(), PPO),
    "cgpo": (_cgpo(), CGPO),
    "online_dpo": (OnlineDPOConfig(), DPO),
    "dpo": (DPOConfig(), DPO),
    "modpo": (MODPOConfig(), MODPO),
    "prm": (PRMObjectiveConfig(), PRM),
    "rm": (RMConfig(), RewardModelObjective),
    "mah_dpo": (MAHDPOConfig(heads=["a", "b"]), MAHDPO),
}


def test_the_registry_covers_the_recipe_kinds():
    assert set(REGISTRY) == set(SECTIONS)
    for kind, (cfg, _) in SECTIONS.items():
        assert cfg.kind == kind and spec_of(kind).config is type(cfg)


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_build_objective_returns_the_kinds_class(kind):
    cfg, cls = SECTIONS[kind]
    obj = build_objective(cfg)
    assert type(obj) is cls
    # the role protocols the trainer reads
    if kind in ("grpo", "gigpo", "rloo", "reinforce_pp", "ppo", "cgpo"):
        assert isinstance(obj.surrogate, Surrogate)
    if kind in ("grpo", "gigpo", "rloo"):
        assert isinstance(obj, PolicyGradientObjective)
    if kind in ("cgpo", "online_dpo", "dpo", "modpo", "mah_dpo"):
        assert isinstance(obj, PairObjective)
    if kind in ("prm", "rm"):
        assert isinstance(obj, SupervisedObjective)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown objective kind 'nope'"):
        build_objective(SimpleNamespace(kind="nope"))
    with pytest.raises(ValueError, match="nope"):
        capabilities(SimpleNamespace(kind="nope"))


# --------------------------------------------------------------------------- capabilities by hand


def test_grpo_capabilities():
    assert capabilities(GRPOConfig()) == Capabilities(
        stage="policy_gradient", data="prompts", needs_reference=False, grouped=True, mini_batches=1,
        dynamic_weighting=True, conditioning=True, step_level=True, token_level=False, critic=False,
        reward_margins=False, mask_truncated=False, sampling_rounds=None, sweep_weights="rewards",
    )
    caps = capabilities(GRPOConfig(kl_coef=0.04, mini_batches=4, mask_truncated=True, dynamic_sampling=True,
                                   max_sampling_rounds=6))
    assert (caps.needs_reference, caps.mini_batches, caps.mask_truncated) == (True, 4, True)
    assert caps.sampling_rounds == 6  # DAPO dynamic sampling: up to max_sampling_rounds generate() rounds
    assert capabilities(GRPOConfig(max_sampling_rounds=6)).sampling_rounds is None  # dynamic sampling off


def test_gigpo_capabilities():
    # grouped like GRPO; no dynamic weighting or step-level MRT bonus (its steps are agent turns)
    assert capabilities(GiGPOConfig(mini_batches=2)) == Capabilities(
        stage="policy_gradient", data="prompts", needs_reference=False, grouped=True, mini_batches=2,
        dynamic_weighting=False, step_level=False, sweep_weights="rewards",
    )
    assert capabilities(GiGPOConfig(kl_coef=0.02)).needs_reference is True


def test_rloo_capabilities():
    assert capabilities(RLOOConfig(mini_batches=2)) == Capabilities(
        stage="policy_gradient", data="prompts", needs_reference=False, grouped=True, mini_batches=2,
        dynamic_weighting=True, conditioning=True, sweep_weights="rewards",
    )
    assert capabilities(RLOOConfig(kl_coef=0.1)).needs_reference is True


def test_reinforce_pp_capabilities():
    caps = capabilities(ReinforcePPConfig())  # kl_coef 0.01 in the token rewards: the reference is needed
    assert caps == Capabilities(stage="policy_gradient", data="prompts", needs_reference=True, grouped=False,
                                token_level=True, dynamic_weighting=True, conditioning=True,
                                sweep_weights="rewards")
    assert capabilities(ReinforcePPConfig(baseline="group")).grouped is True  # REINFORCE++-baseline
    assert capabilities(ReinforcePPConfig(baseline="none")).grouped is False
    assert capabilities(ReinforcePPConfig(kl_coef=0.0)).needs_reference is False
    # the objective agrees: its token advantages read the reference when kl_coef > 0
    assert build_objective(ReinforcePPConfig()).needs_reference is True
    assert build_objective(ReinforcePPConfig(kl_coef=0.0)).needs_reference is False


def test_ppo_capabilities():
    caps = capabilities(PPOConfig())
    assert caps == Capabilities(stage="policy_gradient", data="prompts", needs_reference=True, grouped=False,
                                critic=True, step_level=True, dynamic_weighting=False, sweep_weights="rewards")
    # the reference is needed whenever kl_coef > 0, whether the KL is a reward penalty or a loss term
    assert capabilities(PPOConfig(kl_coef=0.05, kl_mode="reward")).needs_reference is True
    assert capabilities(PPOConfig(kl_coef=0.05, kl_mode="loss")).needs_reference is True
    assert capabilities(PPOConfig(kl_coef=0.0, kl_mode="reward")).needs_reference is False
    assert capabilities(PPOConfig(kl_coef=0.0, kl_mode="loss")).needs_reference is False
    assert capabilities(PPOConfig(mini_batches=3)).mini_batches == 3


def test_cgpo_capabilities():
    caps = capabilities(_cgpo())
    assert caps == Capabilities(stage="cgpo", data="prompts", needs_reference=False, grouped=True, mini_batches=1,
                                sweep_weights=None, dynamic_weighting=False, step_level=False)
    codpo = {"rewards": ["r"], "optimizer": "codpo"}
    assert capabilities(_cgpo(a=codpo)).needs_reference is True  # CODPO pairs against the reference
    free = CGPOConfig(tasks={"a": codpo}, reference_free=True)
    assert capabilities(free).needs_reference is False
    assert capabilities(CGPOConfig(tasks={"a": {"rewards": ["r"]}}, kl_coef=0.1)).needs_reference is True
    assert capabilities(CGPOConfig(tasks={"a": {"rewards": ["r"]}}, mini_batches=2)).mini_batches == 2
    # the objective agrees with the capability in each case
    for cfg in (_cgpo(), _cgpo(a=codpo), free):
        assert build_objective(cfg).needs_reference is capabilities(cfg).needs_reference


def test_pair_capabilities():
    assert capabilities(OnlineDPOConfig()) == Capabilities(stage="online_pairs", data="prompts", needs_reference=True,
                                                           grouped=True, sweep_weights="rewards")
    assert capabilities(OnlineDPOConfig(reference_free=True)).needs_reference is False
    dpo = capabilities(DPOConfig())
    assert dpo == Capabilities(stage="preference", data="pairs", needs_reference=True)
    assert dpo.rollouts is False and dpo.sweep_weights is None and dpo.grouped is False
    assert capabilities(DPOConfig(reference_free=True)).needs_reference is False
    assert capabilities(MODPOConfig()) == Capabilities(stage="preference", data="pairs", needs_reference=True,
                                                       reward_margins=True, sweep_weights="preference_and_rewards")


def test_prm_capabilities():
    caps = capabilities(PRMObjectiveConfig())
    assert caps == Capabilities(stage="prm", data="step_labels", needs_reference=False)
    assert caps.rollouts is False


def test_rm_capabilities():
    caps = capabilities(RMConfig(heads=["correct", "concise"]))
    assert caps == Capabilities(stage="rm", data="rm_pairs", needs_reference=False,
                                score_heads=("correct", "concise"))
    assert caps.rollouts is False
    with pytest.raises(ValueError, match=r"objective.preference_columns: \['x'\] are not heads"):
        RMConfig(heads=["a"], preference_columns={"x": "col"})
    with pytest.raises(ValueError, match=r"objective.heads: duplicate names \['a'\]"):
        RMConfig(heads=["a", "a"])


@pytest.mark.parametrize("kind", ["grpo", "gigpo", "rloo", "reinforce_pp", "cgpo", "online_dpo", "dpo"])
def test_objective_and_capabilities_agree_on_the_reference(kind):
    cfg, _ = SECTIONS[kind]
    assert build_objective(cfg).needs_reference is capabilities(cfg).needs_reference


def test_ppo_reward_kl_needs_the_reference_but_not_in_the_loss():
    # kl_mode reward: the surrogate has no KL term (the objective does not read ref logprobs in its loss), but the
    # runtime loads the reference for the reward's KL penalty
    cfg = PPOConfig(kl_coef=0.05, kl_mode="reward")
    assert build_objective(cfg).surrogate.kl_coef == 0.0 and build_objective(cfg).needs_reference is False
    assert capabilities(cfg).needs_reference is True
    loss = PPOConfig(kl_coef=0.05, kl_mode="loss")
    assert build_objective(loss).surrogate.kl_coef == 0.05 and build_objective(loss).needs_reference is True
