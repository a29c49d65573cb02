"""Off-policy corrections in the shared surrogate (``rlhf.objectives.offpolicy.Correction`` in
``rlhf.objectives.common.Surrogate``): every kind and level against numbers worked out by hand on a 2 x 3 batch
with one padded token, their metrics, the ``objective.off_policy`` validators, ``none`` bit-identical to the
surrogate before corrections, and ``tis`` equal to the former advantage-folding TIS.

The batch (B = 2, C = 3, the last token of row 1 is padding), with p = -1 on every token:

    r   = p / b   = [[3, 0.6, 1.25], [0.25, 1.5, (9)]]     b = p - log r
    rho = pi / p  = [[1.1, 0.7, 1.0], [1.3, 0.7, (5)]]     logprobs = p + log rho
    A             = [1, -2] per sample; clip 0.2 -> [0.8, 1.2]; token_mean over 5 tokens

The unweighted per-token terms -min(rho A, clip(rho) A): row 0 (A = 1): -1.1, -0.7, -1.0 (0.7 is below the clip
but the min picks it); row 1 (A = -2): 1.3 -> -min(-2.6, -2.4) = 2.6; 0.7 -> -min(-1.4, -1.6) = 1.6 (clipped:
no gradient).
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from rlhf.config.objectives import (CGPOConfig, GiGPOConfig, GRPOConfig, OffPolicyConfig, PPOConfig,
                                    ReinforcePPConfig, RLOOConfig)
from rlhf.objectives.common import Surrogate, masked_mean
from rlhf.objectives.offpolicy import Correction

R = [[3.0, 0.6, 1.25], [0.25, 1.5, 9.0]]
RHO = [[1.1, 0.7, 1.0], [1.3, 0.7, 5.0]]
TERMS = [[-1.1, -0.7, -1.0], [2.6, 1.6, 0.0]]  # the unweighted per-token policy terms (module docstring)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])


def _batch():
    """proximal p, behaviour b, logprobs (with grad), each (2, 3)."""
    p = torch.full((2, 3), -1.0)
    b = p - torch.tensor(R).log()
    logprobs = (p + torch.tensor(RHO).log()).requires_grad_()
    return p, b, logprobs


def _hand_loss(w):
    """token_mean of w * TERMS over the 5 counted tokens, plain Python."""
    return sum(w[i][t] * TERMS[i][t] for i in range(2) for t in range(3) if MASK[i, t]) / 5


def close(x, y, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32),
                               atol=tol, rtol=0)


# --------------------------------------------------------------------------- weights and metrics by hand


@pytest.mark.parametrize("corr, w, metrics", [
    # tis token, cap 2: 3 -> 2 (truncated); mean (2 + 0.6 + 1.25 + 0.25 + 1.5) / 5 = 1.12
    (Correction("tis", cap=2.0), [[2.0, 0.6, 1.25], [0.25, 1.5, 1.0]],
     {"is_weight_mean": 1.12, "is_weight_max": 2.0, "is_weight_min": 0.25, "truncated_frac": 0.2}),
    # tis sequence, cap 2: row 0 3 * 0.6 * 1.25 = 2.25 -> 2 (3 tokens at the cap), row 1 0.25 * 1.5 = 0.375
    (Correction("tis", level="sequence", cap=2.0), [[2.0, 2.0, 2.0], [0.375, 0.375, 1.0]],
     {"is_weight_mean": (6 + 0.75) / 5, "is_weight_max": 2.0, "is_weight_min": 0.375, "truncated_frac": 0.6}),
    # mis token, band [0.5, 2]: 3 and 0.25 dropped
    (Correction("mis", low=0.5, high=2.0), [[0.0, 0.6, 1.25], [0.0, 1.5, 1.0]],
     {"is_weight_mean": 3.35 / 5, "is_weight_max": 1.5, "is_weight_min": 0.0, "masked_frac": 0.4}),
    # mis sequence, band [0.7, 2]: g0 = 2.25 ** (1/3) = 1.31 kept (weight 1), g1 = 0.375 ** (1/2) = 0.61 dropped
    (Correction("mis", level="sequence", low=0.7, high=2.0), [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]],
     {"is_weight_mean": 0.6, "is_weight_max": 1.0, "is_weight_min": 0.0, "masked_frac": 0.4}),
    # mis sequence, band [0.5, 1.2]: g0 = 1.31 dropped, g1 = 0.61 kept
    (Correction("mis", level="sequence", low=0.5, high=1.2), [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
     {"is_weight_mean": 0.4, "is_weight_max": 1.0, "is_weight_min": 0.0, "masked_frac": 0.6}),
    # decoupled, cap 2: 3 > 2 dropped, the rest are the plain ratios
    (Correction("decoupled", cap=2.0), [[0.0, 0.6, 1.25], [0.25, 1.5, 1.0]],
     {"is_weight_mean": 3.6 / 5, "is_weight_max": 1.5, "is_weight_min": 0.0, "masked_frac": 0.2}),
])
def test_weights_and_metrics_by_hand(corr, w, metrics):
    p, b, _ = _batch()
    b[1, 2] = -math.inf  # padding may hold anything
    weights, m = corr.weights(p, b, MASK)
    close(weights, w)
    assert not weights.requires_grad
    expected = {f"offpolicy/{k}": v for k, v in metrics.items()}
    if corr.kind == "tis":  # the former TIS metric names, for existing dashboards
        expected["mismatch/tis_weight_mean"] = metrics["is_weight_mean"]
        expected["mismatch/tis_clip_frac"] = metrics["truncated_frac"]
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-6), k


def test_none_and_behaviour_weights_are_one():
    p, b, _ = _batch()
    w, m = Correction("none").weights(p, b, MASK)
    assert torch.equal(w, torch.ones(2, 3)) and m == {}
    w, m = Correction("behaviour").weights(p, b, MASK)
    assert torch.equal(w, torch.ones(2, 3))
    assert m == {"offpolicy/behaviour_ratio_mean": pytest.approx((3 + 0.6 + 1.25 + 0.25 + 1.5) / 5)}
    assert Correction("tis").weights(p, b, torch.zeros(2, 3))[1] == {}  # no counted token: no metrics


def test_sequence_tis_survives_huge_log_ratios():
    p = torch.zeros(2, 4)
    b = torch.tensor([[-60.0, -60.0, -60.0, -60.0], [60.0, 60.0, 60.0, 60.0]])  # sums of +-240 (exp overflows)
    w, _ = Correction("tis", level="sequence", cap=3.0).weights(p, b, torch.ones(2, 4))
    assert torch.equal(w, torch.tensor([[3.0] * 4, [0.0] * 4]))
    w, _ = Correction("mis", level="sequence").weights(p, b, torch.ones(2, 4))
    assert torch.equal(w, torch.zeros(2, 4))


def test_needs_flags():
    flags = {k: (Correction(k).needs_behaviour, Correction(k).needs_proximal)
             for k in ("none", "behaviour", "tis", "mis", "decoupled")}
    assert flags == {"none": (False, False), "behaviour": (True, False), "tis": (True, True),
                     "mis": (True, True), "decoupled": (True, True)}
    with pytest.raises(ValueError, match="resolve it first"):
        Correction("auto").needs_behaviour


# --------------------------------------------------------------------------- the surrogate by hand


@pytest.mark.parametrize("corr, w", [
    (Correction("none"), [[1.0] * 3] * 2),
    (Correction("tis", cap=2.0), [[2.0, 0.6, 1.25], [0.25, 1.5, 1.0]]),
    (Correction("tis", level="sequence", cap=2.0), [[2.0, 2.0, 2.0], [0.375, 0.375, 1.0]]),
    (Correction("mis"), [[0.0, 0.6, 1.25], [0.0, 1.5, 1.0]]),
    (Correction("mis", level="sequence", low=0.7), [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]),
    (Correction("decoupled", cap=2.0), [[0.0, 0.6, 1.25], [0.25, 1.5, 1.0]]),
])
def test_weighted_surrogate_by_hand(corr, w):
    """Loss: w * the unweighted terms; gradient: -w rho A / 5 where the min picks the unclipped side, else 0;
    the ratio and the clip are taken against the proximal p (clip_frac 1/5: row 1's 0.7 with A < 0)."""
    p, b, lp = _batch()
    out = Surrogate(clip_eps=0.2, correction=corr).loss(lp, p, None, ADV, MASK, behaviour_logprobs=b)
    assert out.loss.item() == pytest.approx(_hand_loss(w), abs=1e-6)
    # none 1.4 / 5, tis -0.82 / 5, tis sequence -4.025 / 5, mis 0.73 / 5, mis sequence -2.8 / 5, decoupled 1.38 / 5
    assert out.loss.item() == pytest.approx({"none": 1.4, "tis": -0.82 if corr.level == "token" else -4.025,
                                             "mis": 0.73 if corr.level == "token" else -2.8,
                                             "decoupled": 1.38}[corr.kind] / 5, abs=1e-6)
    assert out.metrics["clip_frac"] == pytest.approx(0.2)
    assert out.metrics["ratio/mean"] == pytest.approx((1.1 + 0.7 + 1.0 + 1.3 + 0.7) / 5)
    assert out.metrics["loss/policy"] == pytest.approx(_hand_loss(w), abs=1e-6)
    out.loss.backward()
    grad = [[-w[0][0] * 1.1 / 5, -w[0][1] * 0.7 / 5, -w[0][2] * 1.0 / 5],
            [-w[1][0] * 1.3 * -2 / 5, 0.0, 0.0]]  # row 1: 0.7 is clipped, the third token is padding
    close(lp.grad, grad)
    assert any(k.startswith("offpolicy/") for k in out.metrics) is (corr.kind != "none")


def test_behaviour_kind_takes_the_ratio_against_b():
    """theta / b = rho * r = [[3.3, 0.42, 1.25], [0.325, 1.05]]: row 0 (A = 1): 3.3 and 1.25 clip at 1.2, 0.42
    stays -> -1.2, -0.42, -1.2; row 1 (A = -2): 0.325 clips at 0.8 -> -min(-0.65, -1.6) = 1.6, 1.05 -> 2.1."""
    p, b, lp = _batch()
    out = Surrogate(clip_eps=0.2, correction=Correction("behaviour")).loss(lp, p, None, ADV, MASK,
                                                                           behaviour_logprobs=b)
    assert out.loss.item() == pytest.approx((-1.2 - 0.42 - 1.2 + 1.6 + 2.1) / 5, abs=1e-6)
    assert out.metrics["ratio/mean"] == pytest.approx((3.3 + 0.42 + 1.25 + 0.325 + 1.05) / 5, abs=1e-6)
    assert out.metrics["clip_frac"] == pytest.approx(3 / 5)  # 3.3, 1.25 (A > 0) and 0.325 (A < 0)
    assert out.metrics["offpolicy/behaviour_ratio_mean"] == pytest.approx(6.6 / 5)
    out.loss.backward()
    close(lp.grad, [[0.0, -0.42 / 5, 0.0], [0.0, -1.05 * -2 / 5, 0.0]])  # only 0.42 and 1.05 are unclipped


def test_kl_term_is_not_weighted():
    """ref = pi * 2 on every token: k3 = 2 - log 2 - 1 per token, added unweighted (kl_coef 0.1)."""
    p, b, lp = _batch()
    ref = lp.detach() + math.log(2.0)
    corr = Correction("decoupled", cap=2.0)
    out = Surrogate(clip_eps=0.2, kl_coef=0.1, correction=corr).loss(lp, p, ref, ADV, MASK, behaviour_logprobs=b)
    k3 = 2 - math.log(2.0) - 1
    assert out.loss.item() == pytest.approx(1.38 / 5 + 0.1 * k3, abs=1e-6)
    assert out.metrics["kl"] == pytest.approx(k3, abs=1e-6)


def test_nll_rows_are_weighted_by_hand():
    """Row 0 an NLL row (A = 1), tis weights [[2, 0.6, 1.25], ...]: -A * w * log pi per token with
    log pi = -1 + log rho; row 1 keeps its weighted clipped terms 0.25 * 2.6 + 1.5 * 1.6."""
    p, b, lp = _batch()
    out = Surrogate(clip_eps=0.2, correction=Correction("tis", cap=2.0)).loss(
        lp, p, None, ADV, MASK, nll_rows=torch.tensor([True, False]), behaviour_logprobs=b)
    nll = sum(-1.0 * w * (-1.0 + math.log(rho)) for w, rho in zip([2.0, 0.6, 1.25], RHO[0]))
    assert out.loss.item() == pytest.approx((nll + 0.25 * 2.6 + 1.5 * 1.6) / 5, abs=1e-6)
    assert out.metrics["loss/nll_rows"] == pytest.approx(nll / 5, abs=1e-6)
    assert out.metrics["offpolicy/truncated_frac"] == pytest.approx(0.2)


def test_proximal_defaults_to_detached_logprobs():
    """old_logprobs None: p = logprobs, so r = pi / b = rho * r here; decoupled drops 3.3 (> cap 2)."""
    p, b, lp = _batch()
    out = Surrogate(correction=Correction("decoupled", cap=2.0)).loss(lp, None, None, ADV, MASK,
                                                                      behaviour_logprobs=b)
    w = [[0.0, 0.42, 1.25], [0.325, 1.05, 1.0]]
    # ratios are 1 (pi_old = pi): the terms are -A per token
    assert out.loss.item() == pytest.approx(sum(-w[i][t] * ADV[i].item() for i in range(2) for t in range(3)
                                                if MASK[i, t]) / 5, abs=1e-6)
    assert out.metrics["offpolicy/masked_frac"] == pytest.approx(0.2)


def test_errors():
    p, b, lp = _batch()
    with pytest.raises(ValueError, match="needs behaviour_logprobs"):
        Surrogate(correction=Correction("mis")).loss(lp, p, None, ADV, MASK)
    with pytest.raises(ValueError, match=r"'auto': resolve it first"):
        Surrogate(correction=Correction("auto")).loss(lp, p, None, ADV, MASK, behaviour_logprobs=b)
    with pytest.raises(ValueError, match="objective.off_policy.level"):
        Correction("decoupled", level="sequence")
    with pytest.raises(ValueError, match="objective.off_policy.cap"):
        Correction("tis", cap=0.0)
    with pytest.raises(ValueError, match="objective.off_policy.high"):
        Correction("mis", low=1.5, high=1.2)


# --------------------------------------------------------------------------- equal to the former code


def _previous_surrogate(lp, old, ref, adv, mask, clip=0.2, clip_high=0.28, kl_coef=0.0, agg="token_mean",
                        norm=None, nll_rows=None, kl_ratio=False):
    """The surrogate as it was before corrections (loss and metrics), for (B,) advantages with nll_rows."""
    agg_fn = Surrogate(loss_agg=agg).aggregate
    if nll_rows is not None and bool(nll_rows.any()):
        loss, metrics = _previous_surrogate(lp, old, ref, torch.where(nll_rows, 0.0, adv), mask, clip, clip_high,
                                            kl_coef, agg, norm, None, kl_ratio)
        nll = agg_fn(-torch.where(nll_rows, adv, 0.0).unsqueeze(1) * lp, mask.to(lp.dtype), norm)
        metrics["loss/nll_rows"] = float(nll.detach())
        metrics["loss/total"] = float((loss + nll).detach())
        return loss + nll, metrics
    on = mask != 0
    mask = mask.to(lp.dtype)
    old = lp.detach() if old is None else old
    a = adv.unsqueeze(1) if adv.dim() == 1 else adv
    ratio = torch.exp(torch.where(on, lp - old, torch.zeros_like(lp)))
    policy = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip_high) * a)
    per_token, kl = policy, None
    if ref is not None:
        lr = torch.where(on, ref - lp, torch.zeros_like(lp))
        kl = torch.exp(lr) - lr - 1
        kl = kl * ratio if kl_ratio else kl
        per_token = per_token + kl_coef * kl if kl_coef > 0 else per_token
    loss = agg_fn(per_token, mask, norm)
    with torch.no_grad():
        out = ((ratio < 1 - clip) & (a < 0)) | ((ratio > 1 + clip_high) & (a > 0))
        metrics = {"loss/total": float(loss.detach()), "loss/policy": float(agg_fn(policy, mask, norm)),
                   "clip_frac": float(masked_mean(out.to(mask.dtype), mask)),
                   "ratio/mean": float(masked_mean(ratio, mask)), "tokens": float(mask.sum())}
        if kl is not None:
            metrics["kl"] = float(masked_mean(kl, mask))
    return loss, metrics


def _random(seed=0, token_adv=False):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(3, 4, generator=g) * 0.3 - 1.0).requires_grad_()
    old = lp.detach() + torch.randn(3, 4, generator=g) * 0.3
    ref = lp.detach() + torch.randn(3, 4, generator=g) * 0.3
    behaviour = old + torch.randn(3, 4, generator=g) * 0.6
    adv = torch.randn(3, 4, generator=g) if token_adv else torch.randn(3, generator=g)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    return lp, old, ref, behaviour, adv, mask


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "dr_grpo"])
@pytest.mark.parametrize("variant", ["plain", "kl", "kl_ratio", "nll", "token_adv", "no_old"])
def test_none_is_bit_identical_to_the_previous_surrogate(agg, variant):
    lp, old, ref, behaviour, adv, mask = _random(1, token_adv=variant == "token_adv")
    old = None if variant == "no_old" else old
    kl_coef = 0.05 if variant.startswith("kl") else 0.0
    nll = torch.tensor([True, False, True]) if variant == "nll" else None
    norm = 4.5 if variant == "plain" else None
    s = Surrogate(clip_eps=0.2, clip_eps_high=0.28, kl_coef=kl_coef, loss_agg=agg,
                  kl_ratio_correction=variant == "kl_ratio")
    assert s.correction == Correction("none")
    want, want_m = _previous_surrogate(lp, old, ref, adv, mask, kl_coef=kl_coef, agg=agg, norm=norm, nll_rows=nll,
                                       kl_ratio=variant == "kl_ratio")
    (want_g,) = torch.autograd.grad(want, lp)
    for b in (None, behaviour):  # kind none ignores behaviour logprobs
        out = s.loss(lp, old, ref, adv, mask, norm, nll_rows=nll, behaviour_logprobs=b)
        assert torch.equal(out.loss, want) and out.metrics == want_m
        (g,) = torch.autograd.grad(out.loss, lp)
        assert torch.equal(g, want_g)


def _former_tis(adv, old, rollout, mask, cap):
    """The former apply_tis: advantages (B,) or (B, C) times min(exp(old - rollout), cap), 1 off the mask."""
    on = mask != 0
    w = torch.exp(torch.where(on, old - rollout, torch.zeros_like(old))).clamp(max=cap)
    a = adv.unsqueeze(1) if adv.dim() == 1 else adv
    return a * w, {"mismatch/tis_weight_mean": float(w[on].mean()),
                   "mismatch/tis_clip_frac": float((w[on] >= cap).float().mean())}


@pytest.mark.parametrize("token_adv", [False, True])
@pytest.mark.parametrize("nll", [False, True])
@pytest.mark.parametrize("agg", ["token_mean", "seq_mean"])
def test_tis_equals_the_former_advantage_folding(token_adv, nll, agg):
    lp, old, ref, behaviour, adv, mask = _random(2, token_adv=token_adv)
    rows = torch.tensor([False, True, True]) if nll else None
    folded, former = _former_tis(adv, old, behaviour, mask, cap=1.5)
    base = Surrogate(clip_eps=0.2, kl_coef=0.05, loss_agg=agg)
    want = base.loss(lp, old, ref, folded, mask, nll_rows=rows)
    (want_g,) = torch.autograd.grad(want.loss, lp)
    tis = Surrogate(clip_eps=0.2, kl_coef=0.05, loss_agg=agg, correction=Correction("tis", cap=1.5))
    out = tis.loss(lp, old, ref, adv, mask, nll_rows=rows, behaviour_logprobs=behaviour)
    (g,) = torch.autograd.grad(out.loss, lp)
    close(out.loss, want.loss)
    close(g, want_g)
    assert 0 < former["mismatch/tis_clip_frac"] < 1  # some weights hit the cap
    for k, v in {**want.metrics, **former}.items():
        assert out.metrics[k] == pytest.approx(v, abs=1e-6), k


# --------------------------------------------------------------------------- the recipe section


def test_config_defaults_and_every_policy_gradient_objective_has_it():
    cfg = OffPolicyConfig()
    assert (cfg.correction, cfg.level, cfg.cap, cfg.low, cfg.high) == ("auto", "token", 2.0, 0.5, 2.0)
    tasks = {"t": {"rewards": ["r"]}}
    for c in (GRPOConfig(), GiGPOConfig(), RLOOConfig(), ReinforcePPConfig(), PPOConfig(), CGPOConfig(tasks=tasks)):
        assert c.off_policy == OffPolicyConfig()
    assert OffPolicyConfig.model_fields["correction"].description


def test_surrogate_from_config_builds_the_correction():
    cfg = GRPOConfig(off_policy={"correction": "mis", "level": "sequence", "low": 0.8, "high": 1.25, "cap": 3.0})
    assert Surrogate.from_config(cfg).correction == Correction("mis", "sequence", cap=3.0, low=0.8, high=1.25)
    alone = Surrogate.from_config(GRPOConfig())
    assert alone.correction.kind == "none"  # a section outside a recipe trains synchronously
    p, b, lp = _batch()
    with pytest.raises(ValueError, match="resolve it first"):
        Surrogate(correction=Correction("auto")).loss(lp, p, None, ADV, MASK)


@pytest.mark.parametrize("section, keys", [
    ({"low": 1.5, "high": 1.2}, ["objective.off_policy.low", "objective.off_policy.high"]),
    ({"low": 1.0, "high": 1.0}, ["objective.off_policy.low", "objective.off_policy.high"]),
    ({"low": 1.1, "high": 2.0}, ["objective.off_policy.low", "objective.off_policy.high", "contain 1"]),
    ({"correction": "behaviour", "level": "sequence"}, ["objective.off_policy.correction", "behaviour",
                                                        "objective.off_policy.level"]),
    ({"correction": "decoupled", "level": "sequence"}, ["objective.off_policy.correction", "decoupled",
                                                        "objective.off_policy.level"]),
    ({"cap": 0.0}, ["cap"]),
    ({"low": -0.5}, ["low"]),
    ({"correction": "importance"}, ["correction"]),
])
def test_config_validators_name_the_keys(section, keys):
    with pytest.raises(ValidationError) as e:
        GRPOConfig(off_policy=section)
    for key in keys:
        assert key in str(e.value)
    OffPolicyConfig(correction="tis", level="sequence")  # sequence level is fine for tis and mis
    OffPolicyConfig(correction="mis", level="sequence")
