"""DPO-family loss: hand-computed values (sigmoid, cdpo, ipo, margin, reference-free), then TRL as an oracle.

Run: pytest tests/unit/test_dpo_loss.py -q

The TRL oracle calls TRL 1.16's own loss code on identical tensors:

- ``trl.DPOTrainer._compute_loss`` (the loss lives inline there; there is no separate ``dpo_loss`` in 1.16),
  called unbound with a stub ``self`` that carries only the attributes it reads and a stub model whose output
  holds fixed per-token log-probs (what TRL's fused LM head returns: ``log_probs``, 0 on non-completion
  positions, plus the ``entropy`` / ``mean_logits`` / ``is_top1`` it logs). Reference log-probs come in through
  the precomputed-ref path (``precompute_ref_logps=True``), so no reference model is needed.
- TRL 1.16's DPO "sigmoid" ignores ``label_smoothing`` (it is only used by robust/exo/aot), so cDPO is checked
  against two TRL formulas that are exactly cDPO: ``CPOTrainer.cpo_loss`` (loss_type="sigmoid", alpha=0) fed
  the log-ratios pi - ref, and DPOTrainer's ``aot_unpaired`` on inputs whose chosen and rejected log-ratios are
  already sorted ascending (its sorts are then the identity and its loss is -(1-eps) log s(beta h) -
  eps log s(-beta h)).
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from rlhf.config.registry import build_objective, capabilities
from rlhf.config.schema import DPOConfig, OnlineDPOConfig
from rlhf.objectives import PairObjective
from rlhf.objectives.dpo import DPO, sequence_logps

BETA = 0.5
# three pairs; chosen log-ratios c = pi_c - ref_c = [1, -1, 0.5], rejected r = pi_r - ref_r = [-1, 1, -0.5]
POL_C = torch.tensor([-3.0, -6.0, -2.0])
REF_C = torch.tensor([-4.0, -5.0, -2.5])
POL_R = torch.tensor([-5.0, -4.0, -7.0])
REF_R = torch.tensor([-4.0, -5.0, -6.5])
# h = c - r = [2, -2, 1]; beta h = [1, -1, 0.5]
SP = {x: math.log1p(math.exp(x)) for x in (-2.5, -1.5, -1.0, -0.5, 0.5, 1.0, 1.5)}  # softplus = -log sigmoid(-x)


def close(a, b, tol=1e-6):
    torch.testing.assert_close(a.detach(), torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


def _args():
    return POL_C.clone(), POL_R.clone(), REF_C.clone(), REF_R.clone()


# --------------------------------------------------------------------------- by hand


def test_sigmoid_by_hand():
    # -log s(x) = softplus(-x): softplus(-1) = 0.3132617, softplus(1) = 1.3132617, softplus(-0.5) = 0.4740770
    # mean = (0.3132617 + 1.3132617 + 0.4740770) / 3 = 0.7002001
    out = DPO(beta=BETA).loss(*_args())
    assert SP[-1.0] == pytest.approx(0.3132617, abs=1e-7) and SP[-0.5] == pytest.approx(0.4740770, abs=1e-7)
    close(out.loss, 0.7002001197388509)
    assert out.metrics["loss/dpo"] == pytest.approx(0.7002001197388509, abs=1e-6)
    # rewards beta * (pi - ref): chosen [0.5, -0.5, 0.25], rejected [-0.5, 0.5, -0.25]
    assert out.metrics["rewards/chosen"] == pytest.approx(0.25 / 3, abs=1e-6)
    assert out.metrics["rewards/rejected"] == pytest.approx(-0.25 / 3, abs=1e-6)
    assert out.metrics["rewards/margin"] == pytest.approx(0.5 / 3, abs=1e-6)  # mean of [1, -1, 0.5]
    assert out.metrics["rewards/accuracy"] == pytest.approx(2 / 3, abs=1e-6)  # pairs 0 and 2
    assert out.metrics["pairs"] == 3.0


def test_sigmoid_gradient_by_hand():
    # d/d pi_c of -log s(beta h) / B = -beta * s(-beta h) / B; s(-1) = 0.2689414, s(1) = 0.7310586, s(-0.5) = 0.3775407
    pol_c = POL_C.clone().requires_grad_(True)
    DPO(beta=BETA).loss(pol_c, POL_R, REF_C, REF_R).loss.backward()
    close(pol_c.grad, [-0.5 * 0.2689414 / 3, -0.5 * 0.7310586 / 3, -0.5 * 0.3775407 / 3], tol=1e-7)


def test_cdpo_by_hand():
    # eps = 0.1: 0.9 softplus(-x) + 0.1 softplus(x)
    #   x = 1:   0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.4132617
    #   x = -1:  0.9 * 1.3132617 + 0.1 * 0.3132617 = 1.2132617
    #   x = 0.5: 0.9 * 0.4740770 + 0.1 * 0.9740770 = 0.5240770
    # mean = 0.7168668 (= the sigmoid mean + eps * mean(beta h), since softplus(x) - softplus(-x) = x)
    out = DPO(beta=BETA, loss_type="cdpo", label_smoothing=0.1).loss(*_args())
    close(out.loss, 0.7168667864055175)
    close(out.loss, 0.7002001197388509 + 0.1 * (0.5 / 3))
    close(DPO(beta=BETA, loss_type="cdpo", label_smoothing=0.0).loss(*_args()).loss, 0.7002001197388509)


def test_ipo_by_hand():
    # beta = 0.5 -> target 1 / (2 beta) = 1.
    # summed (ipo_average=False): h = [2, -2, 1] -> (h - 1)^2 = [1, 9, 0], mean 10/3
    out = DPO(beta=BETA, loss_type="ipo", ipo_average=False).loss(*_args())
    close(out.loss, 10 / 3)
    # averaged: chosen lengths [2, 4, 1], rejected [1, 2, 5]
    #   c / |y_w| = [0.5, -0.25, 0.5], r / |y_l| = [-1, 0.5, -0.1] -> h = [1.5, -0.75, 0.6]
    #   (h - 1)^2 = [0.25, 3.0625, 0.16], mean = 3.4725 / 3 = 1.1575
    out = DPO(beta=BETA, loss_type="ipo").loss(
        *_args(), chosen_lengths=torch.tensor([2, 4, 1]), rejected_lengths=torch.tensor([1, 2, 5])
    )
    close(out.loss, 1.1575)
    # logged rewards stay on summed log-probs
    assert out.metrics["rewards/chosen"] == pytest.approx(0.25 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="chosen_lengths"):
        DPO(beta=BETA, loss_type="ipo").loss(*_args())


def test_margin_is_subtracted_from_the_logit():
    # margin m = [0.5, 0, -1]: logits beta h - m = [0.5, -1, 1.5]
    # losses softplus(-0.5) = 0.4740770, softplus(1) = 1.3132617, softplus(-1.5) = 0.2014133; mean 0.6629173
    margin = torch.tensor([0.5, 0.0, -1.0])
    out = DPO(beta=BETA).loss(*_args(), margin=margin)
    close(out.loss, (SP[-0.5] + SP[1.0] + SP[-1.5]) / 3)
    close(out.loss, 0.6629173165603607)
    # a positive margin raises every pair's loss (the chosen must win by more); rewards are not shifted
    base = DPO(beta=BETA).loss(*_args())
    up = DPO(beta=BETA).loss(*_args(), margin=torch.full((3,), 0.3))
    assert float(up.loss) > float(base.loss)
    assert up.metrics["rewards/margin"] == base.metrics["rewards/margin"]
    # equivalent to lowering pi_c by m / beta
    shifted = DPO(beta=BETA).loss(POL_C - margin / BETA, POL_R, REF_C, REF_R)
    close(out.loss, shifted.loss)
    # cdpo takes the margin in the same place: eps-mixture of softplus(-(bh - m)) and softplus(bh - m)
    cd = DPO(beta=BETA, loss_type="cdpo", label_smoothing=0.1).loss(*_args(), margin=margin)
    close(cd.loss, sum(0.9 * SP[-x] + 0.1 * SP[x] for x in (0.5, -1.0, 1.5)) / 3)
    with pytest.raises(ValueError, match="margin"):
        DPO(beta=BETA, loss_type="ipo", ipo_average=False).loss(*_args(), margin=margin)


def test_reference_free():
    # h = pi_c - pi_r = [2, -2, 5]; beta h = [1, -1, 2.5]
    # softplus(-1) + softplus(1) + softplus(-2.5) = 0.3132617 + 1.3132617 + 0.0788897 -> mean 0.5684710
    dpo = DPO(beta=BETA, reference_free=True)
    assert dpo.needs_reference is False and DPO().needs_reference is True
    out = dpo.loss(POL_C, POL_R, None, None)
    close(out.loss, (SP[-1.0] + SP[1.0] + SP[-2.5]) / 3)
    close(out.loss, 0.5684710364429985)
    assert out.metrics["rewards/chosen"] == pytest.approx(BETA * float(POL_C.mean()), abs=1e-6)
    with pytest.raises(ValueError, match="reference_free"):
        dpo.loss(POL_C, POL_R, REF_C, REF_R)
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        DPO().loss(POL_C, POL_R, None, None)


def test_normalizer_sums_shards_to_the_mean():
    full = DPO(beta=BETA).loss(*_args()).loss
    a = DPO(beta=BETA).loss(*(t[:2] for t in _args()), normalizer=3).loss
    b = DPO(beta=BETA).loss(*(t[2:] for t in _args()), normalizer=3).loss
    close(a + b, full)


def test_validation():
    assert DPO.name == "dpo"
    # offline pairs (the preference stage) vs. pairs of fresh samples (the online-pairs stage)
    dpo_caps, online_caps = capabilities(DPOConfig()), capabilities(OnlineDPOConfig())
    assert (dpo_caps.stage, dpo_caps.data, dpo_caps.rollouts) == ("preference", "pairs", False)
    assert (online_caps.stage, online_caps.data, online_caps.rollouts) == ("online_pairs", "prompts", True)
    with pytest.raises(ValueError, match="loss_type"):
        DPO(loss_type="hinge")
    with pytest.raises(ValueError, match="cdpo"):
        DPO(loss_type="sigmoid", label_smoothing=0.1)  # no silent no-op flag
    with pytest.raises(ValueError, match="0.5"):
        DPO(loss_type="cdpo", label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta"):
        DPO(beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        DPO().loss(POL_C, POL_R[:2], REF_C, REF_R)
    cfg = DPOConfig(beta=0.2, loss_type="cdpo", label_smoothing=0.05)
    assert DPO.from_config(cfg) == DPO(beta=0.2, loss_type="cdpo", label_smoothing=0.05)
    assert build_objective(cfg) == DPO(beta=0.2, loss_type="cdpo", label_smoothing=0.05)
    online = OnlineDPOConfig(beta=0.3, loss_type="ipo", ipo_average=False, reference_free=True)
    assert build_objective(online) == DPO(beta=0.3, loss_type="ipo", ipo_average=False, reference_free=True)
    assert isinstance(build_objective(online), PairObjective)


def test_pair_loss_is_the_loss_with_per_pair_weight_and_beta():
    dpo = DPO(beta=BETA)
    close(dpo.pair_loss(*_args()).loss, 0.7002001197388509)  # test_sigmoid_by_hand
    margin = torch.tensor([0.5, 0.0, -1.0])
    close(dpo.pair_loss(*_args(), margin=margin).loss, (SP[-0.5] + SP[1.0] + SP[-1.5]) / 3)
    ipo = DPO(beta=BETA, loss_type="ipo")
    lengths = dict(chosen_lengths=torch.tensor([2, 4, 1]), rejected_lengths=torch.tensor([1, 2, 5]))
    close(ipo.pair_loss(*_args(), **lengths).loss, 1.1575)  # test_ipo_by_hand
    # pair_info (B, 2) [weight, beta]: h = [2, -2, 1]; betas [0.5, 1, 0.25] -> logits [1, -2, 0.25];
    # weights [2, 1, 0]: (2 softplus(-1) + softplus(2) + 0) / 3
    info = torch.tensor([[2.0, 0.5], [1.0, 1.0], [0.0, 0.25]])
    out = dpo.pair_loss(*_args(), pair_info=info)
    close(out.loss, (2 * SP[-1.0] + math.log1p(math.exp(2.0))) / 3)
    # the logged loss is the unweighted mean; the implicit rewards use each pair's beta
    assert out.metrics["loss/dpo"] == pytest.approx((SP[-1.0] + math.log1p(math.exp(2.0))
                                                     + math.log1p(math.exp(-0.25))) / 3, abs=1e-6)
    assert out.metrics["rewards/chosen"] == pytest.approx((0.5 * 1 + 1.0 * -1 + 0.25 * 0.5) / 3, abs=1e-6)
    # the normalizer passes through: two shards sum to the mean
    a = dpo.pair_loss(*(t[:2] for t in _args()), normalizer=3).loss
    b = dpo.pair_loss(*(t[2:] for t in _args()), normalizer=3).loss
    close(a + b, 0.7002001197388509)


def test_sequence_logps():
    per_token = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, -0.25, -4.0]])  # (B, C), NaN on padding
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    close(sequence_logps(per_token, mask), [-3.0, -4.25])
    close(sequence_logps(per_token, mask, average=True), [-1.5, -2.125])
    close(sequence_logps(per_token, torch.zeros_like(mask)), [0.0, 0.0])


# --------------------------------------------------------------------------- TRL oracle

# 3 pairs, sequences of T = 6 tokens; completion_mask (2B, T) marks completion tokens (chosen rows then rejected)
T = 6
COMPLETION_MASK = torch.tensor(
    [
        [0, 0, 1, 1, 1, 0],  # chosen 0: 3 completion tokens
        [0, 1, 1, 1, 1, 1],  # chosen 1: 5
        [0, 0, 0, 1, 0, 0],  # chosen 2: 1
        [0, 0, 1, 1, 0, 0],  # rejected 0: 2
        [0, 0, 0, 1, 1, 1],  # rejected 1: 3
        [0, 1, 1, 1, 1, 0],  # rejected 2: 4
    ]
)


def _per_token_logps(seed=0):
    """(2B, T-1) fixed per-token log-probs of tokens 1..T-1; 0 where the shifted completion mask is 0."""
    g = torch.Generator().manual_seed(seed)
    return -torch.rand((6, T - 1), generator=g) * 2 * COMPLETION_MASK[:, 1:]


class _FusedHeadStub:
    """Stands in for the model: returns what TRL's fused LM head returns, with fixed log-probs."""

    def __init__(self, log_probs):
        self.log_probs = log_probs

    def __call__(self, **kwargs):
        n, t = self.log_probs.shape
        return SimpleNamespace(
            log_probs=self.log_probs,
            entropy=torch.zeros(n, t),
            mean_logits=torch.zeros(n, t),
            is_top1=torch.zeros(n, t, dtype=torch.bool),
        )


def _trl_dpo_stub(loss_type, beta, label_smoothing=0.0):
    return SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )


def _trl_dpo(loss_type, beta, policy_token_logps, ref_chosen, ref_rejected, label_smoothing=0.0):
    trl = pytest.importorskip("trl")
    stub = _trl_dpo_stub(loss_type, beta, label_smoothing)
    inputs = {
        "input_ids": torch.zeros((6, T), dtype=torch.long),
        "attention_mask": torch.ones((6, T), dtype=torch.long),
        "completion_mask": COMPLETION_MASK,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = trl.DPOTrainer._compute_loss(stub, _FusedHeadStub(policy_token_logps), inputs, False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


def _ours(dpo, token_logps, ref_chosen, ref_rejected):
    shift_mask = COMPLETION_MASK[:, 1:]  # (2B, T-1): token t+1 is a completion token
    logps = sequence_logps(token_logps, shift_mask)  # (2B,)
    lengths = shift_mask.sum(dim=1)  # (2B,)
    chosen, rejected = logps.chunk(2)
    kw = {"chosen_lengths": lengths[:3], "rejected_lengths": lengths[3:]} if dpo.needs_lengths else {}
    if dpo.reference_free:
        ref_chosen = ref_rejected = None
    return dpo.loss(chosen, rejected, ref_chosen, ref_rejected, **kw)


def _compare(dpo, trl_loss_type, token_seed=0, ref_chosen=None, ref_rejected=None, label_smoothing=0.0):
    ref_chosen = torch.tensor([-2.0, -7.5, -0.4]) if ref_chosen is None else ref_chosen
    ref_rejected = torch.tensor([-1.5, -3.0, -4.2]) if ref_rejected is None else ref_rejected
    theirs_lp = _per_token_logps(token_seed).requires_grad_(True)
    ours_lp = theirs_lp.detach().clone().requires_grad_(True)
    # TRL sums every position (its fused head gives 0 off the completion); mask so its gradient is 0 there too
    theirs_in = theirs_lp * COMPLETION_MASK[:, 1:]
    trl_loss, trl_metrics = _trl_dpo(trl_loss_type, dpo.beta, theirs_in, ref_chosen, ref_rejected, label_smoothing)
    out = _ours(dpo, ours_lp, ref_chosen, ref_rejected)
    trl_loss.backward()
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), trl_loss.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, atol=1e-6, rtol=0)
    assert float(theirs_lp.grad.abs().sum()) > 0  # the comparison is not between two zero gradients
    return out, trl_metrics


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_trl_oracle_sigmoid(beta, seed):
    out, trl_metrics = _compare(DPO(beta=beta), "sigmoid", token_seed=seed)
    for ours, theirs in (("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                         ("rewards/margin", "rewards/margins"), ("rewards/accuracy", "rewards/accuracies"),
                         ("logps/chosen", "logps/chosen"), ("logps/rejected", "logps/rejected")):
        assert out.metrics[ours] == pytest.approx(trl_metrics[theirs], abs=1e-6), ours


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_trl_oracle_ipo(beta):
    # TRL averages each log-ratio over its completion tokens (completion_mask.sum) before eq. 17
    _compare(DPO(beta=beta, loss_type="ipo"), "ipo")


def test_trl_oracle_reference_free():
    # reference-free = zero reference log-probs fed through TRL's precomputed-ref path
    _compare(DPO(beta=0.1, reference_free=True), "sigmoid", ref_chosen=torch.zeros(3), ref_rejected=torch.zeros(3))


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_trl_oracle_cdpo_aot_unpaired_presorted(eps):
    # aot_unpaired sorts chosen and rejected log-ratios separately; make both ascending so the sort is a no-op.
    # Check the premise on the tensors themselves, then compare.
    ref_chosen, ref_rejected = torch.tensor([10.0, 0.0, -10.0]), torch.tensor([5.0, 0.0, -5.0])
    logps = sequence_logps(_per_token_logps(0), COMPLETION_MASK[:, 1:])
    assert torch.all(torch.diff(logps[:3] - ref_chosen) > 0) and torch.all(torch.diff(logps[3:] - ref_rejected) > 0)
    _compare(DPO(beta=0.5, loss_type="cdpo", label_smoothing=eps), "aot_unpaired",
             ref_chosen=ref_chosen, ref_rejected=ref_rejected, label_smoothing=eps)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_trl_oracle_cdpo_cpo_loss(eps):
    trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    stub = SimpleNamespace(alpha=0.0, loss_type="sigmoid", beta=0.5, label_smoothing=eps,
                           accelerator=SimpleNamespace(device=torch.device("cpu")))
    pol_c, pol_r, ref_c, ref_r = _args()
    # cpo_loss is reference-free DPO; feeding it the log-ratios pi - ref makes its logit beta * h
    theirs, _, _ = trl_cpo.CPOTrainer.cpo_loss(stub, pol_c - ref_c, pol_r - ref_r)
    ours = DPO(beta=0.5, loss_type="cdpo", label_smoothing=eps).loss(pol_c, pol_r, ref_c, ref_r)
    torch.testing.assert_close(ours.loss, theirs.mean(), atol=1e-6, rtol=0)
    # and reference-free cDPO against cpo_loss on the raw log-probs
    theirs_rf, _, _ = trl_cpo.CPOTrainer.cpo_loss(stub, pol_c, pol_r)
    ours_rf = DPO(beta=0.5, loss_type="cdpo", label_smoothing=eps, reference_free=True).loss(pol_c, pol_r, None, None)
    torch.testing.assert_close(ours_rf.loss, theirs_rf.mean(), atol=1e-6, rtol=0)
