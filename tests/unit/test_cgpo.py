"""CGPO's pieces against hand computations: calibrated reward, CRPG advantages, CODPO pairs and loss, CRRAFT
selection and loss, and the CRRAFT-as-advantage identity (its policy-gradient step equals the NLL gradient)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlhf.config.registry import build_objective, capabilities
from rlhf.config.schema import CGPOConfig
from rlhf.objectives.cgpo import (
    CGPO,
    calibrated_reward,
    codpo_loss,
    codpo_pair_info,
    codpo_pairs,
    crpg_advantages,
    crpg_scores,
    crraft_loss,
    crraft_select,
    group_mean_baseline,
    satisfied_mask,
    task_reward,
    task_scale,
)
from rlhf.objectives import PairObjective, Surrogate
from rlhf.objectives.dpo import DPO

NAN = float("nan")


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_task_reward_and_judges():
    values = torch.tensor([[1.0, 2.0], [NAN, 3.0], [NAN, NAN]])
    r = task_reward(values, torch.tensor([1.0, 0.5]))
    assert r[0].item() == pytest.approx(2.0) and r[1].item() == pytest.approx(1.5) and math.isnan(r[2].item())
    judges = torch.tensor([[1.0, 1.0], [1.0, 0.0], [NAN, 1.0], [0.0, NAN]])
    assert satisfied_mask(judges).tolist() == [True, False, True, False]
    assert satisfied_mask(torch.zeros(3, 0)).tolist() == [True, True, True]  # no judges: all satisfied


def test_calibrated_reward_against_baseline_and_group_mean():
    reward = torch.tensor([1.0, 3.0, 0.0, 2.0])
    baseline = torch.tensor([2.0, 2.0, 0.0, 0.0])
    cal = calibrated_reward(reward, baseline)
    assert cal.tolist() == pytest.approx([sig(-1), sig(1), 0.5, sig(2)])
    groups = torch.tensor([0, 0, 1, 1])
    assert group_mean_baseline(reward, groups).tolist() == pytest.approx([2.0, 2.0, 1.0, 1.0])
    mean_nan = group_mean_baseline(torch.tensor([NAN, 4.0, NAN, NAN]), groups)
    assert mean_nan[0].item() == 4.0 and math.isnan(mean_nan[2].item())


def test_crpg_violations_are_negatives_then_group_relative():
    cal = torch.tensor([0.9, 0.6, 0.3, 0.8, 0.8, 0.2])
    ok = torch.tensor([False, True, True, True, True, True])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    assert crpg_scores(cal, ok).tolist() == pytest.approx([0.0, 0.6, 0.3, 0.8, 0.8, 0.2])
    adv = crpg_advantages(cal, ok, groups, scale_std=False)
    # group 0: scores 0, .6, .3 -> mean .3; group 1: .8, .8, .2 -> mean .6
    assert adv.tolist() == pytest.approx([-0.3, 0.3, 0.0, 0.2, 0.2, -0.4], abs=1e-6)
    adv_std = crpg_advantages(cal, ok, groups, scale_std=True, eps=0.0)
    std0 = math.sqrt(((0.3) ** 2 + 0.3 ** 2 + 0.0) / 2)  # unbiased std of (0, .6, .3), as group_normalize
    assert adv_std[:3].tolist() == pytest.approx([-0.3 / std0, 0.3 / std0, 0.0], abs=1e-5)
    # the best-rewarded sample of group 0 violated a judge: its advantage is negative, below a satisfied one
    assert adv[0] < adv[2] < adv[1]


def test_codpo_pairs_by_hand():
    cal = torch.tensor([0.9, 0.6, 0.3, 0.8, 0.8, 0.2, 0.5, 0.5, 0.7, 0.1, NAN, 0.4])
    ok = torch.tensor([False, True, True, True, True, True, True, True, False, False, True, True])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4])
    # g0: chosen best satisfying (row 1), rejected the violator (row 0) even though its reward is higher
    # g1: no violator: chosen row 3 (tie with 4 -> lower index), rejected the worst (row 5)
    # g2: all satisfy and tie -> skipped; g3: nothing satisfies -> skipped; g4: NaN row ignored, one row left
    assert codpo_pairs(cal, ok, groups) == [(1, 0), (3, 5)]


def test_codpo_loss_is_dpo_plus_length_normalised_nll():
    dpo = DPO(beta=0.5)
    pc, pr = torch.tensor([-4.0, -6.0], requires_grad=True), torch.tensor([-5.0, -3.0])
    rc, rr = torch.tensor([-4.5, -6.0]), torch.tensor([-4.0, -4.0])
    lengths = torch.tensor([2.0, 3.0])
    out = codpo_loss(dpo, pc, pr, rc, rr, lengths, nll_coef=0.1)
    h = [(-4.0 + 4.5) - (-5.0 + 4.0), (-6.0 + 6.0) - (-3.0 + 4.0)]  # [1.5, -1.0]
    dpo_hand = sum(-math.log(sig(0.5 * x)) for x in h) / 2
    nll_hand = (4.0 / 2 + 6.0 / 3) / 2
    assert out.loss.item() == pytest.approx(dpo_hand + 0.1 * nll_hand, rel=1e-6)
    assert out.metrics["loss/codpo_nll"] == pytest.approx(nll_hand)
    out.loss.backward()
    # d/d pc_j: -(1 - sig(beta h_j)) * beta / 2  -  0.1 / (len_j * 2)
    hand_grad = [-(1 - sig(0.5 * x)) * 0.5 / 2 - 0.1 / (n * 2) for x, n in zip(h, [2, 3])]
    assert pc.grad.tolist() == pytest.approx(hand_grad, rel=1e-5)


def _cgpo_cfg(**tasks):
    return CGPOConfig(tasks=tasks, beta=0.5)


def test_codpo_pair_info_weights_each_task_to_its_own_mean():
    cfg = _cgpo_cfg(a={"rewards": ["r"], "optimizer": "codpo", "weight": 2.0, "beta": 0.2},
                    b={"rewards": ["r"], "optimizer": "codpo"})
    info = codpo_pair_info(["a", "b", "b", "b"], cfg)
    # P = 4; task a: 1 pair, weight 2 -> 2 * 4 / 1 = 8, beta 0.2; task b: 3 pairs, weight 1 -> 4 / 3, beta 0.5
    assert info.shape == (4, 2)
    assert info[:, 0].tolist() == pytest.approx([8.0, 4 / 3, 4 / 3, 4 / 3])
    assert info[:, 1].tolist() == pytest.approx([0.2, 0.5, 0.5, 0.5])


def test_codpo_loss_with_per_task_beta_and_weight_is_the_weighted_sum_of_task_means():
    cfg = _cgpo_cfg(a={"rewards": ["r"], "optimizer": "codpo", "weight": 2.0, "beta": 0.2},
                    b={"rewards": ["r"], "optimizer": "codpo", "weight": 0.5})
    tasks = ["a", "b", "b"]
    pc, pr = torch.tensor([-4.0, -6.0, -2.0], requires_grad=True), torch.tensor([-5.0, -3.0, -2.5])
    rc, rr = torch.tensor([-4.5, -6.0, -2.0]), torch.tensor([-4.0, -4.0, -3.0])
    lengths = torch.tensor([2.0, 3.0, 1.0])
    out = codpo_loss(DPO(beta=0.5), pc, pr, rc, rr, lengths, nll_coef=0.1, pair_info=codpo_pair_info(tasks, cfg))
    h = [(-4.0 + 4.5) - (-5.0 + 4.0), (-6.0 + 6.0) - (-3.0 + 4.0), (-2.0 + 2.0) - (-2.5 + 3.0)]  # [1.5, -1, -0.5]
    nll = [4.0 / 2, 6.0 / 3, 2.0 / 1]

    def pair_loss(i, beta):
        return -math.log(sig(beta * h[i])) + 0.1 * nll[i]

    task_a = pair_loss(0, 0.2)  # beta_a = 0.2
    task_b = (pair_loss(1, 0.5) + pair_loss(2, 0.5)) / 2  # beta_b = the objective's 0.5
    assert out.loss.item() == pytest.approx(2.0 * task_a + 0.5 * task_b, rel=1e-6)
    # the per-pair beta also sets the logged implicit rewards
    chosen = [0.2 * 0.5, 0.5 * 0.0, 0.5 * 0.0]
    assert out.metrics["rewards/chosen"] == pytest.approx(sum(chosen) / 3, rel=1e-6)


def test_codpo_task_beta_is_refused_on_other_optimizers():
    with pytest.raises(ValueError, match=r"objective.tasks.a.beta: a DPO beta applies to optimizer codpo only"):
        _cgpo_cfg(a={"rewards": ["r"], "optimizer": "crpg", "beta": 0.2})


def test_crraft_select_top_k_and_threshold():
    cal = torch.tensor([0.9, 0.6, 0.3, 0.2, 0.1, 0.15, NAN, 0.7])
    ok = torch.tensor([False, True, True, True, True, True, True, True])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    assert crraft_select(cal, ok, groups).tolist() == [False, True, False, True, False, False, False, True]
    top2 = crraft_select(cal, ok, groups, top_k=2)
    assert top2.tolist() == [False, True, True, True, False, True, False, True]
    thr = crraft_select(cal, ok, groups, threshold=0.5)
    assert thr.tolist() == [False, True, False, False, False, False, False, True]


def test_crraft_loss_token_mean_on_selected_rows():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0], [-7.0, -7.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    selected = torch.tensor([True, True, False])
    assert crraft_loss(logprobs, mask, selected).item() == pytest.approx((1 + 2 + 3) / 3)
    assert crraft_loss(logprobs, mask, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_task_scale():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    rows = torch.tensor([True, True, False, False])
    assert task_scale(mask, rows, "token_mean") == pytest.approx(9 / 3)
    assert task_scale(mask, rows, "seq_mean") == pytest.approx(4 / 2)
    assert task_scale(mask, torch.zeros(4, dtype=torch.bool), "token_mean") == 0.0


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean"])
def test_crraft_rows_take_the_nll_form_even_after_the_policy_moved(loss_agg):
    """CGPO's surrogate with nll_rows: the CRRAFT rows' gradient is advantage x NLL's (no ratio, no clipping) even
    when pi_old != pi (a later mini-batch or epoch), the other rows keep the clipped surrogate; at pi_old = pi the
    whole loss has the gradient of the plain surrogate (so one update per batch is unchanged)."""
    torch.manual_seed(0)
    theta = torch.randn(4, 3, 5, requires_grad=True)  # per-row, per-position logits over 5 tokens
    targets = torch.randint(0, 5, (4, 3))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    selected = torch.tensor([True, False, True, False])
    adv = torch.tensor([1.5, -0.7, 1.5, 0.4])
    obj = CGPO(surrogate=Surrogate(loss_agg=loss_agg, clip_eps=0.2))

    def logprobs() -> torch.Tensor:
        return torch.log_softmax(theta, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (4, 3)

    def grad(fn) -> torch.Tensor:
        theta.grad = None
        fn().backward()
        return theta.grad.clone()

    old = (logprobs() + 0.5).detach()  # the policy has moved: ratios far outside the clip range
    g = grad(lambda: obj.surrogate.loss(logprobs(), old, None, adv, mask, nll_rows=selected).loss)
    agg = Surrogate(loss_agg=loss_agg).aggregate
    by_hand = grad(lambda: Surrogate(loss_agg=loss_agg, clip_eps=0.2).loss(
        logprobs(), old, None, torch.where(selected, 0.0, adv), mask).loss
        + agg(-(torch.where(selected, adv, 0.0).unsqueeze(1)) * logprobs(), mask, None))
    assert torch.allclose(g, by_hand, atol=1e-6)
    surrogate_only = grad(lambda: obj.surrogate.loss(logprobs(), old, None, adv, mask).loss)
    assert not torch.allclose(g, surrogate_only, atol=1e-4), "the clipped surrogate would differ here"
    at_start = grad(lambda: obj.surrogate.loss(logprobs(), None, None, adv, mask, nll_rows=selected).loss)
    assert torch.allclose(at_start, grad(lambda: obj.surrogate.loss(logprobs(), None, None, adv, mask).loss),
                          atol=1e-6)


def test_crraft_nll_rows_by_hand():
    # rows 0 (CRRAFT, A = 2) and 1 (CRPG, A = -1, ratios [1.5, 0.5], both clipped at 0.2), 2 + 1 tokens, token_mean:
    #   row 0: -A * logp = -2 * (-1) and -2 * (-3) -> 2 + 6 = 8 (no ratio: its old logprobs do not matter)
    #   row 1: -min(rho A, clip(rho) A): rho 1.5 -> -min(-1.5, -1.2) = 1.5; rho 0.5 -> -min(-0.5, -0.8) = 0.8
    #          but the second token is masked -> 1.5
    # loss = (8 + 1.5) / 3 tokens; CRRAFT part 8 / 3
    lp = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-5.0, 0.0], [-2.0 - math.log(1.5), -2.0 - math.log(0.5)]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = Surrogate(clip_eps=0.2).loss(lp, old, None, torch.tensor([2.0, -1.0]), mask,
                                       nll_rows=torch.tensor([True, False]))
    assert out.loss.item() == pytest.approx((8 + 1.5) / 3, abs=1e-6)
    assert out.metrics["loss/nll_rows"] == pytest.approx(8 / 3, abs=1e-6)
    assert out.metrics["loss/total"] == pytest.approx((8 + 1.5) / 3, abs=1e-6)
    out.loss.backward()
    # d/dlogp: CRRAFT tokens -A / 3; row 1 token 0: -rho A / 3 (unclipped side is the min) = 1.5 / 3
    torch.testing.assert_close(lp.grad, torch.tensor([[-2 / 3, -2 / 3], [1.5 / 3, 0.0]]), atol=1e-6, rtol=0)
    # seq_mean: each row's own token mean, then the mean over rows: (8 / 2 + 1.5 / 1) / 2
    seq = Surrogate(clip_eps=0.2, loss_agg="seq_mean").loss(lp, old, None, torch.tensor([2.0, -1.0]), mask,
                                                           nll_rows=torch.tensor([True, False]))
    assert seq.loss.item() == pytest.approx((8 / 2 + 1.5) / 2, abs=1e-6)


def test_cgpo_surrogate_loss():
    obj = CGPO(surrogate=Surrogate(kl_coef=0.0), pair=DPO(beta=0.1), nll_coef=0.5, uses_pairs=True)
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    pg = obj.surrogate.loss(lp, None, None, torch.tensor([2.0]), torch.ones(1, 2))
    assert pg.loss.item() == pytest.approx(-2.0)  # -A * ratio(=1), token mean
    pg.loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.0, -1.0]]))  # -A / 2 tokens


def test_cgpo_pair_loss():
    obj = CGPO(surrogate=Surrogate(kl_coef=0.0), pair=DPO(beta=0.1), nll_coef=0.5, uses_pairs=True)
    assert isinstance(obj, PairObjective)
    pc, pr = torch.tensor([-2.0]), torch.tensor([-3.0])
    pair = obj.pair_loss(pc, pr, torch.tensor([-2.0]), torch.tensor([-3.0]), chosen_lengths=torch.tensor([4.0]),
                         rejected_lengths=torch.tensor([2.0]))
    # h = 0 -> -log sigmoid(0) = log 2; NLL term 0.5 * 2 / 4
    assert pair.loss.item() == pytest.approx(-F.logsigmoid(torch.tensor(0.0)).item() + 0.5 * 2.0 / 4.0)
    assert pair.loss.item() == pytest.approx(math.log(2) + 0.25)
    # the NLL term is length-normalised: the chosen completions' lengths are required
    with pytest.raises(TypeError, match="chosen_lengths"):
        obj.pair_loss(pc, pr, torch.tensor([-2.0]), torch.tensor([-3.0]))
    # per-pair [weight, beta] reach the DPO term and weight the NLL term: ref chosen -2.5 -> h = 0.5, beta 0.7,
    # weight 3: 3 * (-log s(0.35) + 0.5 * 2 / 4)
    info = obj.pair_loss(pc, pr, torch.tensor([-2.5]), torch.tensor([-3.0]), chosen_lengths=torch.tensor([4.0]),
                         pair_info=torch.tensor([[3.0, 0.7]]))
    assert info.loss.item() == pytest.approx(3 * (-math.log(sig(0.35)) + 0.25), rel=1e-6)


def test_cgpo_needs_reference_and_loss_agg():
    assert CGPO(surrogate=Surrogate(kl_coef=0.0), pair=DPO(beta=0.1), uses_pairs=True).needs_reference
    assert not CGPO(surrogate=Surrogate(kl_coef=0.0), uses_pairs=False).needs_reference
    assert not CGPO(surrogate=Surrogate(kl_coef=0.0), pair=DPO(reference_free=True), uses_pairs=True).needs_reference
    assert CGPO(surrogate=Surrogate(kl_coef=0.1), uses_pairs=False).needs_reference
    with pytest.raises(ValueError, match="loss_agg"):
        CGPO(surrogate=Surrogate(loss_agg="dr_grpo"))
    with pytest.raises(ValueError, match="loss_agg"):
        CGPOConfig(tasks={"a": {"rewards": ["r"]}}, loss_agg="dr_grpo")


def test_reference_free_codpo_pairs_get_no_reference_under_a_kl_term():
    """The pair step reads reference logprobs only when the CODPO loss needs them: a reference-free CODPO next to a
    KL term on the CRPG rows must not be handed reference logprobs (DPO refuses them when reference_free)."""
    obj = CGPO(surrogate=Surrogate(kl_coef=0.1), pair=DPO(reference_free=True), uses_pairs=True)
    assert obj.needs_reference and not obj.pairs_need_reference  # the KL term needs it, the pairs do not
    assert CGPO(surrogate=Surrogate(kl_coef=0.1), pair=DPO(), uses_pairs=True).pairs_need_reference
    assert DPO().pairs_need_reference and not DPO(reference_free=True).pairs_need_reference
    with pytest.raises(ValueError, match="reference_free=True but reference log-probs were passed"):
        obj.pair_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-2.5]),
                      chosen_lengths=torch.tensor([3]))


def test_cgpo_from_config():
    tasks = {"a": {"rewards": ["r"], "optimizer": "crpg"}, "b": {"rewards": ["r"], "optimizer": "codpo"}}
    cfg = CGPOConfig(tasks=tasks, beta=0.5, clip_eps=0.1, clip_eps_high=0.3, kl_coef=0.0, loss_agg="seq_mean",
                     nll_coef=0.25)
    obj = build_objective(cfg)
    assert isinstance(obj, CGPO)
    assert obj.surrogate == Surrogate(clip_eps=0.1, clip_eps_high=0.3, kl_coef=0.0, loss_agg="seq_mean")
    assert obj.pair == DPO(beta=0.5) and obj.nll_coef == 0.25 and obj.uses_pairs
    assert obj.needs_reference and capabilities(cfg).needs_reference  # the CODPO pairs read the reference
    crpg_only = build_objective(_cgpo_cfg(a={"rewards": ["r"]}))
    assert not crpg_only.uses_pairs and not crpg_only.needs_reference
