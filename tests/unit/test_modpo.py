"""MODPO margin and loss by hand (Zhou et al. 2024): logit = (beta / w_k) h - w_-k^T delta_r / w_k."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.config.registry import build_objective, capabilities
from rlhf.config.schema import MODPOConfig
from rlhf.objectives import PairObjective
from rlhf.objectives.modpo import MODPO, modpo_margin
from rlhf.types import RewardVector


def _rv(values):
    return RewardVector(("a", "b"), ("reward", "reward"), torch.tensor(values, dtype=torch.float32))


def test_margin_by_hand_with_not_applicable():
    chosen = _rv([[1.0, 0.0], [0.5, float("nan")]])
    rejected = _rv([[0.0, 1.0], [1.5, 2.0]])
    margin, metrics = modpo_margin(chosen, rejected, {"a": 0.3, "b": 0.2}, preference_weight=0.5)
    # pair 0: (0.3 * 1 + 0.2 * -1) / 0.5 = 0.2 ; pair 1: (0.3 * -1 + 0 [b not applicable]) / 0.5 = -0.6
    torch.testing.assert_close(margin, torch.tensor([0.2, -0.6]))
    assert metrics["margin/not_applicable"] == pytest.approx(0.25)


def test_loss_by_hand():
    m = MODPO(beta=0.1, preference_weight=0.5)
    pc, pr = torch.tensor([-1.0]), torch.tensor([-3.0])
    rc, rr = torch.tensor([-2.0]), torch.tensor([-2.0])
    out = m.loss(pc, pr, rc, rr, margin=torch.tensor([0.2]))
    h = (-1.0 - -2.0) - (-3.0 - -2.0)  # 2
    logit = (0.1 / 0.5) * h - 0.2  # 0.2
    assert float(out.loss) == pytest.approx(-math.log(1 / (1 + math.exp(-logit))), rel=1e-6)
    with pytest.raises(ValueError, match="margin"):
        m.loss(pc, pr, rc, rr)
    with pytest.raises(ValueError, match="preference_weight"):
        MODPO(preference_weight=0.0)


def test_pair_loss_by_hand_and_from_config():
    m = build_objective(MODPOConfig(beta=0.1, preference_weight=0.5))
    assert isinstance(m, MODPO) and isinstance(m, PairObjective) and m.dpo.beta == pytest.approx(0.2)
    # reads the reference and the reward components' margins (capabilities of the kind)
    caps = capabilities(MODPOConfig())
    assert (caps.needs_reference, caps.reward_margins, caps.stage, caps.data) == (True, True, "preference", "pairs")
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    margin = torch.tensor([0.2, -0.6])
    # h = [2, -1]; logits (0.1 / 0.5) h - m = [0.2, 0.4]
    want = sum(-math.log(1 / (1 + math.exp(-x))) for x in (0.4 - 0.2, -0.2 + 0.6)) / 2
    out = m.pair_loss(pc, pr, rc, rr, margin=margin, chosen_lengths=None, rejected_lengths=None)
    assert float(out.loss) == pytest.approx(want, rel=1e-6)
    assert float(out.loss) == pytest.approx(float(m.loss(pc, pr, rc, rr, margin=margin).loss), rel=1e-7)
    # the normalizer passes through to the DPO loss: sum / 4 instead of the mean over 2
    assert float(m.pair_loss(pc, pr, rc, rr, margin=margin, normalizer=4).loss) == pytest.approx(want / 2, rel=1e-6)
    with pytest.raises(ValueError, match="margin"):
        m.pair_loss(pc, pr, rc, rr)
