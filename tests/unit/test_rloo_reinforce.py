"""RLOO and REINFORCE++ objectives (rlhf.objectives.rloo / reinforce_pp): hand-computed advantages and losses
(both train with the shared clipped surrogate, ``rlhf.objectives.common.Surrogate``), the hypervolume gain
scaling of their advantages, then TRL's RLOOTrainer as an oracle for the RLOO advantages on identical rewards.

Run: pytest tests/unit/test_rloo_reinforce.py -q

The TRL oracle (trl 1.16) builds a real ``trl.RLOOTrainer`` around a tiny random Llama (CPU, no hub access) and
runs its own ``_generate_and_score_completions`` (the leave-one-out lines are inline there, rloo_trainer.py
~1675-1699), with ``_generate`` replaced by fixed token ids and reward functions that return fixed numbers
(None -> NaN). TRL's beta is 0 (its KL goes into the reward; ours is a loss term) and normalize_advantages is
False (its default; we do not whiten RLOO advantages). TRL ships no REINFORCE++, so that side is checked by hand.
"""

import math

import pytest
import torch

from rlhf.config.registry import build_objective, capabilities
from rlhf.config.schema import ReinforcePPConfig, RewardComponentConfig, RLOOConfig, WeightingConfig
from rlhf.objectives import PolicyGradientObjective, Surrogate
from rlhf.objectives.reinforce_pp import ReinforcePP
from rlhf.objectives.rloo import RLOO
from rlhf.types import RewardVector
from rlhf.weighting import StaticWeighting, build_weighting

NAN = float("nan")


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


def _weighting(weights=(1.0, 0.5)):
    return StaticWeighting(("a", "b"), ("reward", "reward"), weights)


# --------------------------------------------------------------------------- RLOO advantages by hand

# two groups of 3, components a (w 1) and b (w 0.5)
RV = RewardVector(
    ("a", "b"),
    ("reward", "reward"),
    torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, NAN], [NAN, NAN], [1.0, 1.0], [3.0, 1.0]]),
)
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])


def test_rloo_weighted_sum_then_leave_one_out():
    # weighted sums: group 0 [1, 1, 2] -> 1 - 1.5, 1 - 1.5, 2 - 1
    #                group 1 [NaN, 1.5, 3.5] -> NaN row 0; 1.5 - 3.5, 3.5 - 1.5
    adv, m = RLOO().advantages(RV, GROUPS, _weighting())
    close(adv, [-0.5, -0.5, 1.0, 0.0, -2.0, 2.0])
    assert m["reward/mean"] == pytest.approx((1 + 1 + 2 + 1.5 + 3.5) / 5)
    assert m["adv/mean"] == pytest.approx(0.0, abs=1e-6)
    assert m["adv/zero_std_groups"] == 0.0
    assert m["reward/a/mean"] == pytest.approx(7 / 5)  # the weighting's own metrics come along


def test_rloo_per_component():
    # a: group 0 [1, 0, 2] -> 1 - 1, 0 - 1.5, 2 - 0.5;  group 1 [NaN, 1, 3] -> 0, -2, 2
    # b: group 0 [0, 2, NaN] -> 0 - 2, 2 - 0, 0;         group 1 [NaN, 1, 1] -> 0, 0, 0
    # 1 * a + 0.5 * b: [0 - 1, -1.5 + 1, 1.5, 0, -2, 2]  (differs from the weighted-sum order on NaN rows)
    adv, _ = RLOO(per_component=True).advantages(RV, GROUPS, _weighting())
    close(adv, [-1.0, -0.5, 1.5, 0.0, -2.0, 2.0])


def test_rloo_constant_group_counts_as_zero_std():
    rv = RewardVector(("a", "b"), ("reward", "reward"), torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [2.0, 0.0]]))
    adv, m = RLOO().advantages(rv, torch.tensor([0, 0, 1, 1]), _weighting())
    close(adv, [0.0, 0.0, -2.0, 2.0])
    assert m["adv/zero_std_groups"] == 0.5


# --------------------------------------------------------------------------- RLOO loss


def _loss_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    logprobs = (-torch.rand(3, 4, generator=g) * 2).requires_grad_(True)
    old = logprobs.detach() + 0.3 * torch.randn(3, 4, generator=g)
    ref = logprobs.detach() + 0.3 * torch.randn(3, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    return logprobs, old, ref, mask


def test_rloo_loss_is_the_shared_surrogate_with_kl_term():
    lp, old, ref, mask = _loss_inputs()
    adv = torch.tensor([1.0, -0.5, 2.0])
    cfg = RLOOConfig(clip_eps=0.1, clip_eps_high=0.3, kl_coef=0.04, loss_agg="seq_mean", per_component=True)
    obj = RLOO.from_config(cfg)
    # the same clipped surrogate as GRPO's, built from the same fields of the recipe section
    assert obj.surrogate == Surrogate(clip_eps=0.1, clip_eps_high=0.3, kl_coef=0.04, loss_agg="seq_mean")
    assert build_objective(cfg) == obj and isinstance(obj, PolicyGradientObjective)
    assert (obj.name, obj.needs_reference, obj.per_component) == ("rloo", True, True)
    assert RLOO().needs_reference is False and RLOO().surrogate == Surrogate()
    caps = capabilities(cfg)  # trained by the on-policy stage, with the reference loaded for the KL term
    assert (caps.stage, caps.needs_reference, caps.grouped, caps.token_level) == ("policy_gradient", True, True, False)
    out = obj.surrogate.loss(lp, old, ref, adv, mask)
    assert out.metrics["kl"] > 0
    no_kl = Surrogate(clip_eps=0.1, clip_eps_high=0.3, kl_coef=0.0, loss_agg="seq_mean").loss(lp, old, ref, adv, mask)
    assert abs(out.loss.item() - no_kl.loss.item()) > 1e-4  # the KL term is in the loss
    # by hand: seq_mean of -min(rho A, clip(rho, 0.9, 1.3) A) + 0.04 k3 per token
    lpd = lp.detach()
    rho = torch.exp(lpd - old)
    a = adv.unsqueeze(1)
    k3 = torch.exp(ref - lpd) - (ref - lpd) - 1
    per_token = -torch.min(rho * a, rho.clamp(0.9, 1.3) * a) + 0.04 * k3
    m = mask.float()
    want = ((per_token * m).sum(1) / m.sum(1)).mean()
    assert out.loss.item() == pytest.approx(want.item(), abs=1e-6)
    with pytest.raises(ValueError, match="loss_agg"):
        RLOOConfig(loss_agg="sum")
    with pytest.raises(ValueError, match="loss_agg"):
        RLOO(surrogate=Surrogate(loss_agg="sum"))


def test_rloo_loss_by_hand_ratio_one():
    # old = logprobs -> ratio 1, no clipping: token_mean loss = -sum_tokens A_i / tokens
    # tokens: row 0 (A = 1) x 2, row 1 (A = -3) x 1 -> -(1 + 1 - 3) / 3 = 1/3
    lp = torch.zeros(2, 2, requires_grad=True)
    out = RLOO().surrogate.loss(lp, None, None, torch.tensor([1.0, -3.0]), torch.tensor([[1, 1], [1, 0]]))
    assert out.loss.item() == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- REINFORCE++ by hand

RV1 = RewardVector(("a",), ("reward",), torch.tensor([[1.0], [3.0], [2.0], [NAN]]))
G1 = torch.tensor([0, 0, 1, 1])
W1 = StaticWeighting(("a",), ("reward",), (2.0,))


def test_sequence_scores_none_and_group():
    # weighted sums [2, 6, 4, NaN]; "none": NaN -> 0; "group": group 0 mean 4 -> [-2, 2], group 1 mean 4 -> [0, 0]
    s, m = ReinforcePP(baseline="none").sequence_scores(RV1, G1, W1)
    close(s, [2.0, 6.0, 4.0, 0.0])
    assert m["reward/mean"] == pytest.approx(4.0)
    s, _ = ReinforcePP(baseline="group").sequence_scores(RV1, G1, W1)
    close(s, [-2.0, 2.0, 0.0, 0.0])


def test_token_advantages_without_kl():
    # scores [1, -1], masks [1, 1, 0] / [1, 0, 0]: rewards [0, 1, 0] / [-1, 0, 0] -> returns [1, 1, 0] / [-1, 0, 0]
    # tokens {1, 1, -1}: mean 1/3, var (4/9 + 4/9 + 16/9) / 3 = 8/9, std 2 sqrt(2) / 3
    # -> (2/3) / std = 1/sqrt(2), (-4/3) / std = -sqrt(2)
    obj = ReinforcePP(eps=0.0)
    assert obj.needs_reference is False
    # its advantages are finished on the trainer, after the logprobs: a capability of the kind
    assert capabilities(ReinforcePPConfig(kl_coef=0.0)).token_level is True
    adv = obj.token_advantages(torch.tensor([1.0, -1.0]), torch.zeros(2, 3), None, torch.tensor([[1, 1, 0], [1, 0, 0]]))
    r = 1 / math.sqrt(2)
    close(adv, [[r, r, 0.0], [-2 * r, 0.0, 0.0]])


def test_token_advantages_with_kl_and_group_baseline():
    # scores [-2, 2, 0, 0] (group baseline above), C = 2 all on, beta 0.5, k1, log-ratios row 0 [-1, 0], row 1 [1, 0]
    # rewards: row 0 [0.5, -2], row 1 [-0.5, 2], rows 2, 3 [0, 0]
    # returns: row 0 [-1.5, -2], row 1 [1.5, 2], rows 2, 3 [0, 0]
    # 8 tokens: mean 0, var (2.25 + 4 + 2.25 + 4) / 8 = 1.5625, std 1.25 -> row 0 [-1.2, -1.6], row 1 [1.2, 1.6]
    obj = ReinforcePP(kl_coef=0.5, kl_estimator="k1", baseline="group", eps=0.0)
    assert obj.needs_reference is True
    scores, _ = obj.sequence_scores(RV1, G1, W1)
    ref = torch.full((4, 2), -1.0)
    old = ref + torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    adv = obj.token_advantages(scores, old, ref, torch.ones(4, 2))
    close(adv, [[-1.2, -1.6], [1.2, 1.6], [0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="ref_logprobs"):
        obj.token_advantages(scores, old, None, torch.ones(4, 2))


def test_token_advantages_gamma_and_reduce():
    # gamma 0.5, no KL: scores [4, 2], masks [1, 1, 1] / [1, 1, 0]
    # returns row 0 [1, 2, 4], row 1 [1, 2, 0]: tokens {1, 2, 4, 1, 2} mean 2, var (1 + 0 + 4 + 1 + 0) / 5 = 1.2
    obj = ReinforcePP(gamma=0.5, eps=0.0)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = obj.token_advantages(torch.tensor([4.0, 2.0]), torch.zeros(2, 3), None, mask)
    s = math.sqrt(1.2)
    close(adv, [[-1 / s, 0.0, 2 / s], [-1 / s, 0.0, 0.0]])
    # the reduce hook reaches global_normalize: pretend another rank holds 5 tokens equal to 2 (count 5, sum 10,
    # sumsq 20): tokens {1, 2, 4, 1, 2, 2 x5}, mean 2, var 6 / 10 = 0.6
    extra = torch.tensor([5.0, 10.0, 20.0], dtype=torch.float64)
    adv = obj.token_advantages(torch.tensor([4.0, 2.0]), torch.zeros(2, 3), None, mask, reduce=lambda t: t + extra)
    s = math.sqrt(0.6)
    close(adv, [[-1 / s, 0.0, 2 / s], [-1 / s, 0.0, 0.0]])


def test_reinforce_pp_loss_has_no_kl_term():
    lp, old, ref, mask = _loss_inputs(1)
    adv = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))  # (B, C) token-level
    cfg = ReinforcePPConfig(kl_coef=0.5, clip_eps=0.2, clip_eps_high=0.3, loss_agg="seq_mean")
    obj = ReinforcePP.from_config(cfg)
    # the shared surrogate without its KL term: the KL (kl_coef 0.5) is in the token rewards instead
    assert obj.surrogate == Surrogate(clip_eps=0.2, clip_eps_high=0.3, kl_coef=0.0, loss_agg="seq_mean")
    assert build_objective(cfg) == obj and obj.kl_coef == 0.5 and obj.needs_reference
    out = obj.surrogate.loss(lp, old, ref, adv, mask)
    assert out.metrics["loss/total"] == pytest.approx(out.metrics["loss/policy"])
    assert "kl" in out.metrics  # reported, not optimised
    # by hand: seq_mean of -min(rho A, clip(rho, 0.8, 1.3) A) per token, no KL
    rho = torch.exp(lp.detach() - old)
    per_token = -torch.min(rho * adv, rho.clamp(0.8, 1.3) * adv)
    m = mask.float()
    want = ((per_token * m).sum(1) / m.sum(1)).mean()
    assert out.loss.item() == pytest.approx(want.item(), abs=1e-6)
    with_kl = Surrogate(clip_eps=0.2, clip_eps_high=0.3, kl_coef=0.5, loss_agg="seq_mean").loss(lp, old, ref, adv, mask)
    assert abs(with_kl.loss.item() - out.loss.item()) > 1e-4  # a KL term would change it
    with pytest.raises(ValueError, match="KL"):
        ReinforcePP(surrogate=Surrogate(kl_coef=0.1))


def test_reinforce_pp_loss_by_hand():
    # ratio 1: token_mean loss = -(1.2 - 1.6 + 0.5) / 3 = -0.1/3
    lp = torch.zeros(2, 2, requires_grad=True)
    adv = torch.tensor([[1.2, -1.6], [0.5, 9.0]])
    out = ReinforcePP().surrogate.loss(lp, None, None, adv, torch.tensor([[1, 1], [1, 0]]))
    assert out.loss.item() == pytest.approx(-0.1 / 3)


def test_reinforce_pp_validates():
    with pytest.raises(ValueError, match="kl_estimator"):
        ReinforcePP(kl_estimator="k5")
    with pytest.raises(ValueError, match="baseline"):
        ReinforcePP(baseline="mean")


# --------------------------------------------------------------------------- hypervolume gain scaling

COMPS = [RewardComponentConfig(name="a", plugin="p", weight=1.0),
         RewardComponentConfig(name="b", plugin="p", weight=0.5)]


def _hypervolume(hv_scale):
    w = build_weighting(WeightingConfig(kind="hypervolume"), COMPS)
    w.hv_scale = hv_scale
    return w


@pytest.mark.parametrize("per_component", [False, True])
def test_hypervolume_gain_scales_rloo_advantages(per_component):
    # RLOO does not use scalarize's advantages, so it applies the weighting's advantage_scale itself
    base, _ = RLOO(per_component=per_component).advantages(RV, GROUPS, _hypervolume(1.0))
    scaled, m = RLOO(per_component=per_component).advantages(RV, GROUPS, _hypervolume(1.5))
    # the simplex starts uniform: the weights are the recipe's (1, 0.5), so the hand values above hold at 1.0
    close(base, [-1.0, -0.5, 1.5, 0.0, -2.0, 2.0] if per_component else [-0.5, -0.5, 1.0, 0.0, -2.0, 2.0])
    close(scaled, 1.5 * base)
    assert _hypervolume(1.5).advantage_scale == 1.5 and m["weights/hv_scale"] == 1.5
    assert m["adv/std"] == pytest.approx(1.5 * RLOO(per_component=per_component).advantages(
        RV, GROUPS, _hypervolume(1.0))[1]["adv/std"], rel=1e-6)


def test_hypervolume_gain_scales_reinforce_pp_token_advantages():
    # the scale multiplies the whitened advantages (whitening would undo a scale applied to the scores before it)
    obj = ReinforcePP(eps=0.0)
    scores, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]])
    w = _hypervolume(1.5)
    hv1 = build_weighting(WeightingConfig(kind="hypervolume"),
                          [RewardComponentConfig(name="a", plugin="p", weight=2.0)])
    hv1.hv_scale = 1.5
    scores_hv, _ = obj.sequence_scores(RV1, G1, hv1)
    close(scores_hv, [2.0, 6.0, 4.0, 0.0])  # the scores are not scaled (test_sequence_scores_none_and_group)
    plain = obj.token_advantages(scores, torch.zeros(2, 3), None, mask)
    scaled = obj.token_advantages(scores, torch.zeros(2, 3), None, mask, scale=w.advantage_scale)
    r = 1 / math.sqrt(2)
    close(plain, [[r, r, 0.0], [-2 * r, 0.0, 0.0]])  # test_token_advantages_without_kl's hand values
    close(scaled, 1.5 * plain)
    close(scaled, [[1.5 * r, 1.5 * r, 0.0], [-3 * r, 0.0, 0.0]])
    # scaling the scores instead would be whitened away
    close(obj.token_advantages(1.5 * scores, torch.zeros(2, 3), None, mask), plain)


# --------------------------------------------------------------------------- TRL oracle (RLOO advantages)

G = 4  # generations per prompt
VOCAB = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(47)}}
# 3 groups of 4: NaN components, one all-NaN row, and a group whose weighted reward is constant
TRL_REWARDS = torch.tensor(
    [
        [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0],
        [2.0, NAN], [0.5, 1.0], [3.0, 0.0], [NAN, NAN],
        [1.0, 1.0], [1.0, 1.0], [0.0, 3.0], [1.5, 0.0],
    ]
)


@pytest.fixture(scope="module")
def trl_rloo(tmp_path_factory):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        )
    )
    rewards = {"values": TRL_REWARDS}

    def reward_func(j):
        def f(completions, **kw):
            return [None if math.isnan(v) else v for v in rewards["values"][:, j].tolist()]

        f.__name__ = f"r{j}"
        return f

    args = trl.RLOOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl_rloo")), num_generations=G, per_device_train_batch_size=3 * G,
        max_completion_length=4, report_to="none", use_cpu=True, save_strategy="no", reward_weights=[1.0, 0.5],
        beta=0.0, normalize_advantages=False,
    )
    trainer = trl.RLOOTrainer(
        model=model, reward_funcs=[reward_func(0), reward_func(1)], args=args,
        train_dataset=Dataset.from_dict({"prompt": ["w1 w2"] * 12}), processing_class=hf_tok,
    )
    trainer.model.train()
    return trainer, rewards


def _trl_rloo_advantages(trainer, rewards, values):
    B = values.shape[0]
    rewards["values"] = values
    trainer._generate = lambda prompts: ([[3, 4]] * B, [[5, 6, 1]] * B, ["w2 w3"] * B)
    out = trainer._generate_and_score_completions([{"prompt": "w1 w2"}] * B)
    return out["advantages"], trainer._metrics["train"]


def test_trl_oracle_rloo_advantages(trl_rloo):
    trainer, rewards = trl_rloo
    trl_adv, trl_metrics = _trl_rloo_advantages(trainer, rewards, TRL_REWARDS)
    rv = RewardVector(("a", "b"), ("reward", "reward"), TRL_REWARDS)
    ours, m = RLOO().advantages(rv, torch.arange(12) // G, _weighting())
    torch.testing.assert_close(ours, trl_adv, atol=1e-6, rtol=0)
    # by hand, group 1: weighted [2, 1, 3, NaN] -> 2 - 2, 1 - 2.5, 3 - 1.5, 0; group 2 constant -> 0
    close(ours[4:], [0.0, -1.5, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert trl_metrics["frac_reward_zero_std"][-1] == pytest.approx(m["adv/zero_std_groups"])
    assert trl_metrics["reward"][-1] == pytest.approx(m["reward/mean"], abs=1e-6)


def test_trl_oracle_rloo_random(trl_rloo):
    trainer, rewards = trl_rloo
    values = torch.randn(12, 2, generator=torch.Generator().manual_seed(3))
    values[1, 0] = NAN
    trl_adv, _ = _trl_rloo_advantages(trainer, rewards, values)
    ours, _ = RLOO().advantages(RewardVector(("a", "b"), ("reward", "reward"), values), torch.arange(12) // G,
                                _weighting())
    torch.testing.assert_close(ours, trl_adv, atol=1e-5, rtol=0)
