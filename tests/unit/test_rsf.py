"""RSF, rejection-sampling fine-tuning (rlhf/objectives/rsf.py): which rows it keeps (top_k, min_reward, ties, NaN,
each prompt scored by its own preference), that its update is exactly SFT on the kept rows (a hand-computed
gradient, and the trainer's step against ``sft_loss``), its capabilities and its recipe checks.

Run: pytest tests/unit/test_rsf.py -q
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf.config.load import validate_dict
from rlhf.config.objectives import RSFConfig
from rlhf.config.schema import WeightingConfig
from rlhf.config.registry import Capabilities, build_objective, capabilities, kinds_where
from rlhf.objectives import RSF, PolicyGradientObjective
from rlhf.objectives.common import position_ids_from_mask
from rlhf.objectives.rsf import rsf_select
from rlhf.objectives.sft import sft_loss
from rlhf.runtime.estimators import RewardAdvantages
from rlhf.train import steps
from rlhf.train.settings import StepSettings
from rlhf.types import ExperienceBatch, RewardVector
from rlhf.weighting import build_weighting
from test_length_grouping import _Recording  # a sibling module: a backend that records gradients

NAN = math.nan


def _weighting(weights=(1.0, 1.0)):
    """The runtime's static weighting (``build_weighting``) over components correct and brief."""
    components = [SimpleNamespace(name=n, kind="reward", weight=w) for n, w in zip(("correct", "brief"), weights)]
    return build_weighting(WeightingConfig(kind="static", normalize="component_then_sum"), components)


# --------------------------------------------------------------------------- selection


def test_select_keeps_the_top_k_of_each_group():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, -1.0, 1.0, 0.0])  # (B,) two groups of 4
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert rsf_select(scores, groups).tolist() == [False, True, False, False, True, False, False, False]
    assert rsf_select(scores, groups, top_k=2).tolist() == [False, True, True, False, True, False, True, False]


def test_select_threshold_nan_and_ties():
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = torch.tensor([0.2, NAN, 0.4, NAN, NAN, -0.5])  # (B,)
    # NaN never kept; min_reward drops group 1 entirely (its only scored row is below it)
    assert rsf_select(scores, groups, min_reward=0.0).tolist() == [False, False, True, False, False, False]
    assert rsf_select(scores, groups, top_k=3, min_reward=0.3).tolist() == [False, False, True, False, False, False]
    assert rsf_select(scores, groups).tolist() == [False, False, True, False, False, True]  # no threshold: the best
    tied = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    lengths = torch.tensor([5, 2, 3, 4, 4, 1])
    assert rsf_select(tied, groups).tolist() == [True, False, False, True, False, False]  # first
    assert rsf_select(tied, groups, ties="shortest", lengths=lengths).tolist() == [
        False, True, False, False, False, True]
    assert rsf_select(tied, groups, top_k=2, ties="shortest", lengths=lengths).tolist() == [
        False, True, True, True, False, True]  # equal length 4: the lower row first
    with pytest.raises(ValueError, match="objective.ties: shortest needs"):
        rsf_select(tied, groups, ties="shortest")
    with pytest.raises(ValueError, match="objective.top_k"):
        rsf_select(tied, groups, top_k=0)


def test_each_prompt_is_scored_by_its_own_preference():
    # two prompts, the same three answers: right and long (1, -0.5), wrong and short (0, 0), right and short (1, -0.25)
    values = torch.tensor([[1.0, -0.5], [0.0, 0.0], [1.0, -0.25]] * 2)  # (B, K)
    v = torch.tensor([[1.0, 0.0]] * 3 + [[0.1, 0.9]] * 3)  # (B, K) prompt 0 wants correct, prompt 1 brevity
    rv = RewardVector(("correct", "brief"), ("reward", "reward"), values, sample_weights=v)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv, metrics = RSF().advantages(rv, groups, _weighting(), lengths=torch.tensor([3, 1, 2, 3, 1, 2]))
    # prompt 0: scores 1, 0, 1 -> the first 1 (row 0); prompt 1: 0.1 - 0.45, 0, 0.1 - 0.225 -> row 4 (wrong, short)
    assert adv.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    adv, _ = RSF(ties="shortest").advantages(rv, groups, _weighting(), lengths=torch.tensor([3, 1, 2, 3, 1, 2]))
    assert adv.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # prompt 0's tie goes to the shorter right answer
    assert metrics["rsf/kept_frac"] == pytest.approx(2 / 6)
    assert metrics["rsf/groups_kept_frac"] == 1.0
    scores = [1.0, 0.0, 1.0, 0.1 - 0.45, 0.0, 0.1 - 0.225]
    assert metrics["rsf/score/all"] == pytest.approx(sum(scores) / 6)
    assert metrics["rsf/score/kept"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["rsf/kept/correct"] == pytest.approx(0.5) and metrics["rsf/kept/brief"] == pytest.approx(-0.25)
    assert metrics["rsf/length/all"] == pytest.approx(2.0) and metrics["rsf/length/kept"] == pytest.approx(2.0)
    assert metrics["reward/correct/mean"] == pytest.approx(4 / 6)  # the weighting's metrics, over all samples
    assert metrics["weights/sample/brief/max"] == pytest.approx(0.9)


def test_without_conditioning_the_recipe_weights_score():
    values = torch.tensor([[1.0, -0.5], [0.0, 0.0], [NAN, NAN], [0.0, -1.0]])  # (B, K)
    rv = RewardVector(("correct", "brief"), ("reward", "reward"), values)
    groups = torch.tensor([0, 0, 1, 1])
    adv, m = RSF().advantages(rv, groups, _weighting((1.0, 1.0)))
    assert adv.tolist() == [1.0, 0.0, 0.0, 1.0]  # 0.5 > 0; the all-NaN row is never kept
    adv, m = RSF(min_reward=0.0).advantages(rv, groups, _weighting((1.0, 3.0)))
    assert adv.tolist() == [0.0, 1.0, 0.0, 0.0]  # 1 - 1.5 < 0; group 1 keeps nothing (-3 < 0)
    assert m["rsf/groups_kept_frac"] == 0.5 and "rsf/length/all" not in m


# --------------------------------------------------------------------------- the update is SFT on the kept rows


def test_gradient_is_the_kept_rows_token_mean_nll_by_hand():
    """Free logits theta (B, C, V): d/dtheta of -1/N_kept sum_kept log softmax(theta)[o] is (softmax - onehot) /
    N_kept on the kept tokens and 0 elsewhere."""
    torch.manual_seed(0)
    B, C, V = 4, 3, 5
    theta = torch.randn(B, C, V, requires_grad=True)
    targets = torch.randint(0, V, (B, C))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.float32)  # (B, C)
    kept = torch.tensor([False, True, True, False])  # (B,)
    logprobs = torch.log_softmax(theta, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, C)
    loss_mask = mask * kept.unsqueeze(1)  # (B, C) what the runtime trains with
    out = RSF().surrogate.loss(logprobs, None, None, kept.float(), loss_mask, nll_rows=kept)
    out.loss.backward()
    n_kept = 1 + 2
    expected = torch.zeros(B, C, V)
    for b in range(B):
        for t in range(C):
            if kept[b] and mask[b, t]:
                p = torch.softmax(theta[b, t].detach(), -1)
                expected[b, t] = (p - torch.nn.functional.one_hot(targets[b, t], V).float()) / n_kept
    torch.testing.assert_close(theta.grad, expected, rtol=0, atol=1e-6)
    lp = logprobs.detach()
    assert float(out.loss.detach()) == pytest.approx(-(lp[1, 0] + lp[2, 0] + lp[2, 1]).item() / n_kept, rel=1e-6)




def _rollout_batch() -> tuple[ExperienceBatch, RewardVector, torch.Tensor]:
    """6 rows (2 prompts x 3 samples), prompts left-padded to P = 4, completions right-padded to C = 5."""
    g = torch.Generator().manual_seed(3)
    P, C = 4, 5
    prompt_lens, completion_lens = [4, 4, 4, 2, 2, 2], [5, 2, 3, 1, 4, 2]
    ids = torch.randint(3, 40, (6, P + C), generator=g)
    mask = torch.zeros(6, P + C, dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        mask[b, P - p : P + c] = 1
    exp = ExperienceBatch(input_ids=ids * mask, attention_mask=mask, loss_mask=mask[:, P:].float(),
                          advantages=torch.zeros(6), prompt_len=P)
    values = torch.tensor([[1.0, -1.0], [0.0, -0.25], [1.0, -0.5], [0.0, 0.0], [1.0, -0.75], [0.0, -0.25]])
    v = torch.tensor([[0.5, 0.5]] * 3 + [[0.2, 0.8]] * 3)  # (B, K)
    rv = RewardVector(("correct", "brief"), ("reward", "reward"), values, sample_weights=v)
    return exp, rv, torch.tensor([0, 0, 0, 1, 1, 1])


def _tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=32, use_cache=False))


@pytest.mark.parametrize("micro", [6, 2])
def test_the_trainers_step_equals_sft_on_the_kept_rows(micro):
    exp, rv, groups = _rollout_batch()
    objective = build_objective(RSFConfig(top_k=1))
    estimator = RewardAdvantages(objective, _weighting(), trainers=None, token_level=False, gradient_samples=0,
                                 selected_rows=True)
    metrics = estimator.prepare(exp, rv, groups, step=1)
    # prompt 0 (0.5, 0.5): 0, -0.125, 0.25 -> row 2; prompt 1 (0.2, 0.8): 0, -0.4, -0.2 -> row 3
    assert exp.nll_rows.tolist() == [False, False, True, True, False, False]
    assert exp.loss_mask.sum(1).tolist() == [0, 0, 3, 1, 0, 0]  # the other rows left the loss
    assert metrics["rsf/kept_frac"] == pytest.approx(2 / 6) and metrics["rsf/length/all"] == pytest.approx(17 / 6)

    model = _tiny_model()
    policy = copy.deepcopy(model)
    ctx = steps.StepContext(_Recording(policy), policy, None, torch.device("cpu"), 0, 1,
                            StepSettings(temperature=1.0, micro_batch_size=micro, max_new_tokens=5))
    out = steps.policy_gradient_update(ctx, exp, objective)

    # SFT on rows 2 and 3: targets are their completion tokens (token t predicted from t - 1)
    sft = copy.deepcopy(model)
    rows = torch.tensor([2, 3])
    ids, attn = exp.input_ids[rows], exp.attention_mask[rows]  # (2, P + C)
    targets = torch.zeros_like(ids, dtype=torch.float32)
    targets[:, exp.prompt_len :] = attn[:, exp.prompt_len :].float()  # (2, P + C)
    logits = sft(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits
    loss = sft_loss(logits, ids, targets)
    loss.backward()
    assert out["loss/total"] == pytest.approx(float(loss.detach()), rel=1e-5)
    grads = {n: p.grad for n, p in sft.named_parameters() if p.grad is not None}
    got = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert grads.keys() == got.keys() and len(grads) > 5
    for n in grads:
        torch.testing.assert_close(got[n], grads[n], rtol=1e-4, atol=1e-6, msg=n)


# --------------------------------------------------------------------------- registry and recipe checks


def test_capabilities_need_no_reference_by_default():
    caps = capabilities(RSFConfig())
    assert caps == Capabilities(stage="policy_gradient", data="prompts", needs_reference=False, grouped=True,
                                conditioning=True, selected_rows=True, sweep_weights="rewards")
    assert capabilities(RSFConfig(kl_coef=0.05)).needs_reference is True
    assert build_objective(RSFConfig(kl_coef=0.05)).needs_reference is True
    assert "rsf" in kinds_where("conditioning") and "rsf" not in kinds_where("dynamic_weighting")
    obj = build_objective(RSFConfig(top_k=2, min_reward=0.5, ties="shortest"))
    assert isinstance(obj, RSF) and isinstance(obj, PolicyGradientObjective)
    assert (obj.top_k, obj.min_reward, obj.ties, obj.needs_reference) == (2, 0.5, "shortest", False)


def test_section_refuses_what_does_not_apply():
    full = RSFConfig(top_k=2).model_dump(mode="json")  # resume and sweep re-validate full dumps (clip_eps: 0.2)
    assert RSFConfig.model_validate(full).top_k == 2
    with pytest.raises(ValueError, match="objective.clip_eps: rsf trains the NLL"):
        RSFConfig(clip_eps=0.3)
    with pytest.raises(ValueError, match="objective.clip_eps_high"):
        RSFConfig(clip_eps_high=0.3)
    with pytest.raises(ValueError, match="objective.loss_agg='seq_mean'"):
        RSFConfig(loss_agg="seq_mean")
    with pytest.raises(ValueError, match="ties"):
        RSFConfig(ties="longest")


def _recipe(**objective):
    return {
        "run": {"output_dir": "/tmp/rsf-unused", "steps": 1},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4}},
        "data": {"synthetic": {"n_train": 16, "n_eval": 4, "max_operand": 9}},
        "rewards": [{"name": "correct", "plugin": "math_answer"},
                    {"name": "brief", "plugin": "length_penalty", "args": {"target": 1, "coef": 0.25}}],
        "rollout": {"prompts_per_step": 4, "group_size": 4},
        "objective": {"kind": "rsf", **objective},
        "train": {"backend": "torch", "num_ranks": 1},
    }


def test_recipe_with_and_without_conditioning():
    assert validate_dict(_recipe(top_k=2), "test").objective.kind == "rsf"
    cond = {"enabled": True, "components": ["correct", "brief"], "template": "<{correct:.1f} {brief:.1f}> {prompt}"}
    recipe = validate_dict({**_recipe(), "conditioning": cond}, "test")
    assert recipe.conditioning.enabled and recipe.objective.kind == "rsf"
    with pytest.raises(ValueError, match="objective.top_k=4 keeps every sample"):
        validate_dict(_recipe(top_k=4), "test")
    with pytest.raises(ValueError, match="weighting.kind"):
        validate_dict({**_recipe(), "weighting": {"kind": "gradient"}}, "test")
