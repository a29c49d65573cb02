"""Rollout/trainer mismatch metrics and truncated importance sampling (``Correction("tis")`` in the surrogate),
against hand values. The other corrections: tests/unit/test_offpolicy_corrections.py."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.objectives.common import Surrogate
from rlhf.objectives.offpolicy import Correction, mismatch_metrics


def test_mismatch_metrics_by_hand():
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    rollout = torch.tensor([[-1.5, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    m = mismatch_metrics(old, rollout, mask)
    d = torch.tensor([-0.5, 0.0])  # rollout - old on the mask
    assert m["mismatch/kl_k1"] == pytest.approx(-0.25)
    assert m["mismatch/kl_k3"] == pytest.approx(float((torch.exp(-d) - 1 + d).mean()))
    assert m["mismatch/kl_k3"] == pytest.approx((math.exp(0.5) - 1 - 0.5) / 2)
    assert m["mismatch/logprob_abs_mean"] == pytest.approx(0.25)
    assert m["mismatch/logprob_abs_max"] == pytest.approx(0.5)
    assert mismatch_metrics(old, rollout, torch.zeros_like(mask)) == {}


def test_tis_weights_are_truncated_ratios_and_one_off_mask():
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    rollout = torch.tensor([[-1.0 - math.log(3.0), -1.0 + math.log(2.0), -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w, metrics = Correction("tis", cap=2.0).weights(old, rollout, mask)
    assert w.tolist()[0] == pytest.approx([2.0, 0.5, 1.0])  # 3 capped at 2; 1/2; padding -> 1
    assert metrics["mismatch/tis_weight_mean"] == pytest.approx(1.25)  # (2 + 0.5) / 2, the former names
    assert metrics["mismatch/tis_clip_frac"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cap"):
        Correction("tis", cap=0.0)


def test_tis_scales_each_tokens_policy_gradient_term():
    """TIS in the surrogate = w times each token's clipped term (w > 0), so gradients scale by w: the sum of the
    unweighted single-token gradients times their weights."""
    torch.manual_seed(0)
    logprobs = (torch.randn(2, 3) * 0.1 - 1.0).requires_grad_()
    old = logprobs.detach() + torch.randn(2, 3) * 0.05
    rollout = old + torch.randn(2, 3) * 0.5
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])  # (B,)
    tis = Correction("tis", cap=1.5)
    w, metrics = tis.weights(old, rollout, mask)
    assert 0 <= metrics["mismatch/tis_clip_frac"] <= 1
    out = Surrogate(clip_eps=0.2, loss_agg="token_mean", correction=tis).loss(logprobs, old, None, adv, mask,
                                                                               behaviour_logprobs=rollout)
    assert out.metrics["mismatch/tis_clip_frac"] == metrics["mismatch/tis_clip_frac"]
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    plain = torch.zeros_like(logprobs)
    obj = Surrogate(clip_eps=0.2, loss_agg="token_mean")
    for b in range(2):
        for t in range(3):
            if mask[b, t]:
                one = torch.zeros_like(mask)
                one[b, t] = 1.0
                # token (b, t) alone, same normaliser (5 tokens) as the full batch
                lo = obj.loss(logprobs, old, None, adv, one, token_normalizer=5.0)
                (g,) = torch.autograd.grad(lo.loss, logprobs)
                plain += w[b, t] * g
    assert torch.allclose(grad, plain, atol=1e-6)
