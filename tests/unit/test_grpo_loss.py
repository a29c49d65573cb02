"""GRPO's loss (the shared clipped surrogate, ``rlhf.objectives.common.Surrogate``) and advantages: hand-computed
values, then TRL's GRPOTrainer as an oracle on identical tensors, then ``completion_logprobs`` on tiny random HF
models with left-padded prompts.

Run: pytest tests/unit/test_grpo_loss.py -q

The TRL oracle builds a real ``trl.GRPOTrainer`` around a tiny random Llama (CPU, no hub access) and calls its
own methods: ``_generate_and_score_completions`` with ``_generate`` replaced by fixed token ids and reward
functions that return fixed numbers (for advantages), and ``_compute_loss`` with
``_get_per_token_logps_and_entropies`` replaced by fixed log-probabilities (for the loss).
"""

import math
from types import SimpleNamespace

import pytest
import torch

from rlhf.config.registry import build_objective, capabilities
from rlhf.config.schema import GRPOConfig, PPOConfig, ReinforcePPConfig, RewardComponentConfig, WeightingConfig
from rlhf.objectives import GRPO, PolicyGradientObjective, Surrogate, completion_logprobs
from rlhf.types import RewardVector
from rlhf.weighting import build_weighting

NAN = float("nan")


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


# --------------------------------------------------------------------------- construction


def test_build_from_config():
    cfg = GRPOConfig(kl_coef=0.04, clip_eps=0.1, clip_eps_high=0.3, loss_agg="seq_mean", scale_std=False, eps=1e-4)
    obj = build_objective(cfg)
    assert isinstance(obj, GRPO) and isinstance(obj, PolicyGradientObjective)
    assert (obj.name, obj.needs_reference, obj.scale_std, obj.eps) == ("grpo", True, False, 1e-4)
    assert obj.surrogate == Surrogate(clip_eps=0.1, clip_eps_high=0.3, kl_coef=0.04, loss_agg="seq_mean")
    assert (obj.surrogate.clip_eps, obj.surrogate.eps_high, obj.surrogate.loss_agg) == (0.1, 0.3, "seq_mean")
    # trained by the on-policy (policy-gradient) stage, with the reference loaded for the KL term
    caps = capabilities(cfg)
    assert (caps.stage, caps.data, caps.needs_reference, caps.rollouts) == ("policy_gradient", "prompts", True, True)
    plain = build_objective(GRPOConfig())
    assert plain.needs_reference is False and plain.surrogate.eps_high == 0.2
    assert plain.surrogate == Surrogate() and capabilities(GRPOConfig()).needs_reference is False
    with pytest.raises(ValueError, match="nope"):
        build_objective(SimpleNamespace(kind="nope"))


def test_surrogate_validates_loss_agg():
    with pytest.raises(ValueError, match="loss_agg"):
        Surrogate(loss_agg="sum")
    with pytest.raises(ValueError, match="loss_agg"):
        GRPOConfig(loss_agg="sum")


# --------------------------------------------------------------------------- loss by hand

# seq 0 (A = +1) ratios [1.5, 1.25, 0.5]; seq 1 (A = -2) ratios [0.5, 1.5, 1.0], its last token masked out
RATIOS = torch.tensor([[1.5, 1.25, 0.5], [0.5, 1.5, 1.0]])
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
# clip range [0.8, 1.28] (clip_eps 0.2, clip_eps_high 0.28). Per-token -min(rA, clip(r)A):
#   seq 0: r=1.5  -> min(1.5, 1.28) = 1.28  -> -1.28  (clipped high)
#          r=1.25 -> inside the asymmetric range (a symmetric 0.2 clip would cut it) -> -1.25
#          r=0.5  -> min(0.5, 0.8)  = 0.5   -> -0.5   (A > 0: the low side does not clip)
#   seq 1: r=0.5  -> min(-1, -1.6)  = -1.6  -> 1.6    (clipped low)
#          r=1.5  -> min(-3, -2.56) = -3    -> 3.0
# token_mean: (-1.28 - 1.25 - 0.5 + 1.6 + 3) / 5 = 0.314
# seq_mean:   ((-3.03 / 3) + (4.6 / 2)) / 2 = (-1.01 + 2.3) / 2 = 0.645


def _hand_loss(loss_agg):
    logprobs = torch.log(torch.tensor([[0.3, 0.2, 0.4], [0.1, 0.3, 0.2]])).requires_grad_(True)
    old = logprobs.detach() - torch.log(RATIOS)
    obj = Surrogate(clip_eps=0.2, clip_eps_high=0.28, loss_agg=loss_agg)
    return obj.loss(logprobs, old, None, ADV, MASK), logprobs


def test_token_mean_clipping_by_hand():
    out, logprobs = _hand_loss("token_mean")
    assert out.loss.item() == pytest.approx(0.314, abs=1e-6)
    assert out.metrics["clip_frac"] == pytest.approx(2 / 5)
    assert out.metrics["ratio/mean"] == pytest.approx((1.5 + 1.25 + 0.5 + 0.5 + 1.5) / 5)
    assert "kl" not in out.metrics
    # d/dlogp of -r*A is -r*A on unclipped tokens, 0 on clipped and masked ones; / 5 tokens
    out.loss.backward()
    close(logprobs.grad, [[0.0, -1.25 / 5, -0.5 / 5], [0.0, 3.0 / 5, 0.0]])


def test_seq_mean_differs_on_ragged_mask():
    out, logprobs = _hand_loss("seq_mean")
    assert out.loss.item() == pytest.approx(0.645, abs=1e-6)
    out.loss.backward()
    # each sequence's tokens weigh 1 / (2 * len): seq 0 -> 1/6, seq 1 -> 1/4
    close(logprobs.grad, [[0.0, -1.25 / 6, -0.5 / 6], [0.0, 3.0 / 4, 0.0]])


def test_symmetric_clip_cuts_1_25():
    logprobs = torch.zeros(1, 1)
    out = Surrogate(clip_eps=0.2).loss(logprobs, -torch.log(torch.tensor([[1.25]])), None, torch.tensor([1.0]),
                                  torch.ones(1, 1))
    assert float(out.loss) == pytest.approx(-1.2, abs=1e-6)
    assert out.metrics["clip_frac"] == 1.0


def test_k3_kl_by_hand():
    # ref - logp = log 0.5 -> 0.5 - log 0.5 - 1 = 0.193147; ref - logp = log 2 -> 2 - log 2 - 1 = 0.306853
    # mean k3 = (0.193147 + 0.306853) / 2 = 0.25; A = 0 so the loss is kl_coef * 0.25
    logprobs = torch.log(torch.tensor([[0.4, 0.1]]))
    ref = logprobs + torch.log(torch.tensor([[0.5, 2.0]]))
    out = Surrogate(kl_coef=0.1).loss(logprobs, logprobs, ref, torch.tensor([0.0]), torch.ones(1, 2))
    assert float(out.loss) == pytest.approx(0.025, abs=1e-6)
    assert out.metrics["kl"] == pytest.approx(0.25, abs=1e-6)
    # kl_coef = 0: KL is still reported, but not in the loss
    out0 = Surrogate(kl_coef=0.0).loss(logprobs, logprobs, ref, torch.tensor([0.0]), torch.ones(1, 2))
    assert float(out0.loss) == 0.0 and out0.metrics["kl"] == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        Surrogate(kl_coef=0.1).loss(logprobs, logprobs, None, torch.tensor([0.0]), torch.ones(1, 2))


def test_kl_ratio_correction_from_the_recipe_by_hand():
    # objective.kl_ratio_correction reaches the surrogate the trainer uses
    assert build_objective(GRPOConfig(kl_coef=0.1, kl_ratio_correction=True)).surrogate.kl_ratio_correction is True
    assert build_objective(GRPOConfig(kl_coef=0.1)).surrogate.kl_ratio_correction is False
    surrogate = build_objective(GRPOConfig(kl_coef=0.1, kl_ratio_correction=True)).surrogate
    # one row, two tokens, A = 0 (no policy term); ratios rho = pi / pi_old = [2, 0.5]; ref - logp = [log 0.5, log 2]
    #   k3 = [0.5 - log 0.5 - 1, 2 - log 2 - 1] = [0.193147, 0.306853]
    #   k3 * rho = [0.386294, 0.153426]: mean 0.269860 -> loss = 0.1 * 0.269860 = 0.0269860
    # gradient: d(k3 rho)/dlogp = rho (1 - e^d) + k3 rho = -d rho with d = ref - logp, so
    #   0.1 / 2 * [log 2 * 2, -log 2 * 0.5] = [0.0693147, -0.0173287]   (without the correction: 0.05 (1 - e^d))
    logprobs = torch.log(torch.tensor([[0.4, 0.1]])).requires_grad_(True)
    old = logprobs.detach() - torch.log(torch.tensor([[2.0, 0.5]]))
    ref = logprobs.detach() + torch.log(torch.tensor([[0.5, 2.0]]))
    out = surrogate.loss(logprobs, old, ref, torch.tensor([0.0]), torch.ones(1, 2))
    k3 = torch.tensor([0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1])
    assert float(k3.mean()) == pytest.approx(0.25, abs=1e-7)
    assert float(out.loss.detach()) == pytest.approx(0.1 * float((k3 * torch.tensor([2.0, 0.5])).mean()), abs=1e-7)
    assert float(out.loss.detach()) == pytest.approx(0.0269860, abs=1e-6)
    assert out.metrics["kl"] == pytest.approx(0.269860, abs=1e-6)
    out.loss.backward()
    close(logprobs.grad, [[0.05 * 2 * math.log(2), -0.05 * 0.5 * math.log(2)]], tol=1e-6)
    # the uncorrected surrogate on the same tensors: k3 alone (0.1 * 0.25) and gradient 0.05 * (1 - e^d)
    lp = logprobs.detach().clone().requires_grad_(True)
    plain = Surrogate(kl_coef=0.1).loss(lp, old, ref, torch.tensor([0.0]), torch.ones(1, 2))
    assert float(plain.loss) == pytest.approx(0.025, abs=1e-6)
    plain.loss.backward()
    close(lp.grad, [[0.05 * (1 - 0.5), 0.05 * (1 - 2.0)]], tol=1e-6)


def test_kl_ratio_correction_is_refused_where_the_kl_is_in_the_reward():
    with pytest.raises(ValueError, match="kl_ratio_correction"):
        ReinforcePPConfig(kl_ratio_correction=True)
    with pytest.raises(ValueError, match="kl_ratio_correction"):
        PPOConfig(kl_ratio_correction=True)  # kl_mode defaults to reward
    with pytest.raises(ValueError, match="kl_ratio_correction"):
        PPOConfig(kl_mode="reward", kl_ratio_correction=True)
    # PPO with the KL as a loss term takes it, into the surrogate
    ppo = build_objective(PPOConfig(kl_mode="loss", kl_coef=0.05, kl_ratio_correction=True))
    assert ppo.surrogate.kl_ratio_correction is True and ppo.surrogate.kl_coef == 0.05


def test_padding_garbage_does_not_leak():
    logprobs = torch.tensor([[-1.0, -50.0], [-2.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, 100.0], [-2.0, float("inf")]])  # exp(logp - old) would under/overflow on padding
    ref = torch.tensor([[-1.0, -1000.0], [-2.0, float("nan")]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out = Surrogate(kl_coef=0.5).loss(logprobs, old, ref, torch.tensor([1.0, 3.0]), mask)
    assert out.loss.item() == pytest.approx(-2.0)  # ratio 1 on both real tokens: -(1 + 3) / 2
    out.loss.backward()
    assert torch.isfinite(logprobs.grad).all()
    close(logprobs.grad, [[-0.5, 0.0], [-1.5, 0.0]])


def test_no_old_logprobs_and_token_level_advantages():
    logprobs = torch.randn(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 5.0]])
    out = Surrogate().loss(logprobs, None, None, adv, MASK)
    assert out.loss.item() == pytest.approx(-(1 + 2 + 3 - 1 + 0) / 5)
    assert out.metrics["ratio/mean"] == pytest.approx(1.0)


def test_token_normalizer():
    out, _ = _hand_loss("token_mean")
    obj = Surrogate(clip_eps=0.2, clip_eps_high=0.28)
    logprobs = torch.log(torch.tensor([[0.3, 0.2, 0.4], [0.1, 0.3, 0.2]]))
    scaled = obj.loss(logprobs, logprobs - torch.log(RATIOS), None, ADV, MASK, token_normalizer=20.0)
    assert float(scaled.loss) == pytest.approx(0.314 * 5 / 20, abs=1e-6)


# --------------------------------------------------------------------------- advantages through GRPO


def _weighting(normalize, weights=(1.0, 0.5)):
    comps = [RewardComponentConfig(name=n, plugin="p", weight=w) for n, w in zip(("a", "b"), weights)]
    return build_weighting(WeightingConfig(normalize=normalize), comps)


def test_grpo_advantages_metrics():
    # group 0: sums [1, 0.5] -> [+1/sqrt2, -1/sqrt2]; group 1: sums [1.5, 1.5] constant -> zeros
    rv = RewardVector(("a", "b"), ("reward", "reward"), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]))
    adv, m = GRPO(eps=1e-6).advantages(rv, torch.tensor([0, 0, 1, 1]), _weighting("sum_then_normalize"))
    r = 1 / math.sqrt(2)
    close(adv, [r, -r, 0.0, 0.0])
    assert m["adv/zero_std_groups"] == pytest.approx(0.5)
    assert m["adv/mean"] == pytest.approx(0.0, abs=1e-6)
    assert m["adv/std"] == pytest.approx(math.sqrt((0.5 + 0.5) / 4), abs=1e-5)
    assert m["reward/mean"] == pytest.approx((1 + 0.5 + 1.5 + 1.5) / 4)
    assert m["reward/a/mean"] == pytest.approx(0.75) and m["weights/b"] == 0.5


# --------------------------------------------------------------------------- TRL oracle

G = 4  # generations per prompt in the TRL oracle
VOCAB = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(47)}}


def _tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    args = trl.GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")), num_generations=G, per_device_train_batch_size=2 * G,
        max_completion_length=4, report_to="none", use_cpu=True, save_strategy="no", reward_weights=[1.0, 0.5],
    )
    def zero_a(completions, **kw):
        return [0.0] * len(completions)

    def zero_b(completions, **kw):
        return [0.0] * len(completions)

    trainer = trl.GRPOTrainer(
        model=_tiny_llama(), reward_funcs=[zero_a, zero_b], args=args,
        train_dataset=Dataset.from_dict({"prompt": ["w1 w2"] * 8}), processing_class=hf_tok,
    )
    trainer.model.train()
    return trainer


def _trl_advantages(trainer, rewards, aggregation, scale_rewards):
    """Run TRL's own _generate_and_score_completions with fixed rewards; return its advantages and metrics."""
    B = rewards.shape[0]

    def reward_func(j):
        def f(completions, **kw):
            return [None if math.isnan(v) else v for v in rewards[:, j].tolist()]

        f.__name__ = f"r{j}"
        return f

    trainer.reward_funcs = [reward_func(0), reward_func(1)]
    trainer._generate = lambda prompts: ([[3, 4]] * B, [[5, 6, 1]] * B, None, ["w2 w3"] * B, None, None, None, None)
    trainer.multi_objective_aggregation = aggregation
    trainer.scale_rewards = scale_rewards
    out = trainer._generate_and_score_completions([{"prompt": "w1 w2"}] * B)
    return out["advantages"], trainer._metrics["train"]


# 3 groups of 4: NaN components, one all-NaN row, and a group whose weighted reward is constant
TRL_REWARDS = torch.tensor(
    [
        [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0],
        [2.0, NAN], [0.5, 1.0], [3.0, 0.0], [NAN, NAN],
        [1.0, 1.0], [1.0, 1.0], [0.0, 3.0], [1.5, 0.0],
    ]
)


@pytest.mark.parametrize("scale_std", [True, False])
def test_trl_oracle_sum_then_normalize(trl_trainer, scale_std):
    scale_rewards = "group" if scale_std else "none"
    trl_adv, trl_metrics = _trl_advantages(trl_trainer, TRL_REWARDS, "sum_then_normalize", scale_rewards)
    rv = RewardVector(("a", "b"), ("reward", "reward"), TRL_REWARDS)
    groups = torch.arange(12) // G
    ours, m = GRPO(scale_std=scale_std, eps=1e-4).advantages(rv, groups, _weighting("sum_then_normalize"))
    torch.testing.assert_close(ours, trl_adv, atol=1e-5, rtol=0)
    assert ours[7] == 0.0  # all-NaN row
    # TRL logs the fraction of samples in zero-std groups; with equal group sizes that is the group fraction
    assert m["adv/zero_std_groups"] == pytest.approx(1 / 3)
    assert trl_metrics["frac_reward_zero_std"][-1] == pytest.approx(m["adv/zero_std_groups"])


def test_trl_oracle_component_then_sum(trl_trainer):
    # TRL's "normalize_then_sum" (GDPO) = our per-component group normalisation + weighted sum, followed by a
    # batch-level renormalisation that we do not apply; apply it to our result to compare.
    trl_adv, _ = _trl_advantages(trl_trainer, TRL_REWARDS, "normalize_then_sum", "group")
    rv = RewardVector(("a", "b"), ("reward", "reward"), TRL_REWARDS)
    ours, _ = _weighting("component_then_sum").scalarize(rv, torch.arange(12) // G, scale_std=True, eps=1e-4)
    scorable = ~torch.isnan(TRL_REWARDS).all(dim=1)
    s = ours[scorable]
    renorm = torch.zeros_like(ours)
    renorm[scorable] = (s - s.mean()) / (s.std() + 1e-4)
    torch.testing.assert_close(renorm, trl_adv, atol=1e-5, rtol=0)


def _loss_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, C = 6, 5
    logprobs = -torch.rand(B, C, generator=g) * 3  # (B, C)
    old = logprobs + 0.4 * torch.randn(B, C, generator=g)  # ratios well outside [0.8, 1.28] for some tokens
    ref = logprobs + 0.5 * torch.randn(B, C, generator=g)
    adv = torch.randn(B, generator=g)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = (torch.arange(C)[None, :] < lengths[:, None]).long()  # (B, C) ragged
    return logprobs, old, ref, adv, mask


def _trl_loss(trainer, loss_type, beta, logprobs, old, ref, adv, mask, num_items_in_batch=None, kl_correction=False):
    B, C = logprobs.shape
    lp = logprobs.clone().requires_grad_(True)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (lp, torch.zeros(B, C), None)
    trainer.loss_type, trainer.beta = loss_type, beta
    trainer.epsilon_low, trainer.epsilon_high = 0.2, 0.28
    trainer.current_gradient_accumulation_steps = 1
    trainer.args.use_bias_correction_kl = kl_correction  # TRL 1.16 defaults to True; plain GRPO eq. 3 is False
    inputs = {
        "prompt_ids": torch.full((B, 2), 3), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.full((B, C), 5), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum() if num_items_in_batch is None else num_items_in_batch,
    }
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), lp.grad, trainer._metrics["train"]


@pytest.mark.parametrize(
    "loss_type,loss_agg", [("grpo", "seq_mean"), ("bnpo", "token_mean"), ("dapo", "token_mean")]
)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_trl_oracle_loss(trl_trainer, loss_type, loss_agg, beta):
    logprobs, old, ref, adv, mask = _loss_inputs()
    trl_loss, trl_grad, trl_metrics = _trl_loss(trl_trainer, loss_type, beta, logprobs, old, ref, adv, mask)
    lp = logprobs.clone().requires_grad_(True)
    # the surrogate a recipe section builds is the one TRL's loss is compared with
    surrogate = build_objective(GRPOConfig(clip_eps=0.2, clip_eps_high=0.28, kl_coef=beta, loss_agg=loss_agg)).surrogate
    assert surrogate == Surrogate(clip_eps=0.2, clip_eps_high=0.28, kl_coef=beta, loss_agg=loss_agg)
    out = surrogate.loss(lp, old, ref if beta > 0 else None, adv, mask)
    out.loss.backward()
    assert out.metrics["clip_frac"] > 0  # the test exercises clipping
    torch.testing.assert_close(out.loss.detach(), trl_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lp.grad, trl_grad, atol=1e-6, rtol=1e-5)
    assert out.metrics["clip_frac"] == pytest.approx(trl_metrics["clip_ratio/region_mean"][-1], abs=1e-6)
    if beta > 0:
        assert out.metrics["kl"] == pytest.approx(trl_metrics["kl"][-1], abs=1e-6)


def test_trl_oracle_dapo_global_token_count(trl_trainer):
    # DAPO divides by the token count of the whole generation batch; ours takes it as token_normalizer
    logprobs, old, ref, adv, mask = _loss_inputs(seed=1)
    n_global = mask.sum() * 3
    trl_loss, trl_grad, _ = _trl_loss(trl_trainer, "dapo", 0.04, logprobs, old, ref, adv, mask, n_global)
    lp = logprobs.clone().requires_grad_(True)
    out = Surrogate(clip_eps=0.2, clip_eps_high=0.28, kl_coef=0.04).loss(lp, old, ref, adv, mask, float(n_global))
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), trl_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lp.grad, trl_grad, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- completion_logprobs


def _tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=1
    )
    return GPT2LMHeadModel(cfg).eval()


def _alone(model, ids, temperature=1.0):
    """(n - 1,) logprob of tokens 1..n-1 of one unpadded sequence, run by itself."""
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0] / temperature  # (n, V)
    return torch.log_softmax(logits[:-1].float(), -1).gather(-1, ids[1:, None]).squeeze(-1)


@pytest.mark.parametrize("build", [_tiny_llama, _tiny_gpt2], ids=["llama_rope", "gpt2_absolute_positions"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_completion_logprobs_left_padded_equals_alone(build, temperature):
    pytest.importorskip("transformers")
    model = build()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 50, (n,), generator=g) for n in (4, 2, 3)]
    completions = [torch.randint(3, 50, (n,), generator=g) for n in (3, 5, 1)]
    P, C = 4, 5
    input_ids = torch.zeros(3, P + C, dtype=torch.long)
    attention_mask = torch.zeros(3, P + C, dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[b, P - len(p) : P], attention_mask[b, P - len(p) : P] = p, 1  # left-padded prompt
        input_ids[b, P : P + len(c)], attention_mask[b, P : P + len(c)] = c, 1  # right-padded completion
    with torch.no_grad():
        lp = completion_logprobs(model, input_ids, attention_mask, prompt_len=P, temperature=temperature)
    assert lp.shape == (3, C)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        expected = _alone(model, torch.cat([p, c]), temperature)[len(p) - 1 :]  # (len(c),)
        torch.testing.assert_close(lp[b, : len(c)], expected, atol=1e-5, rtol=0)


def test_completion_logprobs_has_grad():
    model = _tiny_llama()
    ids = torch.randint(3, 50, (2, 6))
    lp = completion_logprobs(model, ids, torch.ones_like(ids), prompt_len=2)
    lp.sum().backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_trl_oracle_kl_ratio_correction(trl_trainer):
    # TRL's default use_bias_correction_kl=True multiplies k3 by the ratio; ours behind kl_ratio_correction=True
    logprobs, old, ref, adv, mask = _loss_inputs(seed=2)
    trl_loss, trl_grad, trl_metrics = _trl_loss(
        trl_trainer, "bnpo", 0.04, logprobs, old, ref, adv, mask, kl_correction=True
    )
    lp = logprobs.clone().requires_grad_(True)
    # reached from the recipe: objective.kl_ratio_correction
    cfg = GRPOConfig(clip_eps=0.2, clip_eps_high=0.28, kl_coef=0.04, kl_ratio_correction=True)
    surrogate = build_objective(cfg).surrogate
    assert surrogate == Surrogate(clip_eps=0.2, clip_eps_high=0.28, kl_coef=0.04, kl_ratio_correction=True)
    out = surrogate.loss(lp, old, ref, adv, mask)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), trl_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lp.grad, trl_grad, atol=1e-6, rtol=1e-5)
    assert out.metrics["kl"] == pytest.approx(trl_metrics["kl"][-1], abs=1e-6)
    plain = Surrogate(clip_eps=0.2, clip_eps_high=0.28, kl_coef=0.04).loss(logprobs, old, ref, adv, mask)
    assert abs(float(plain.loss) - float(trl_loss)) > 1e-5  # the correction changes the number


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_trl_oracle_dr_grpo(trl_trainer, beta):
    # Dr. GRPO: a constant denominator rows * max_completion_length (the trainer passes rows * max_new_tokens)
    logprobs, old, ref, adv, mask = _loss_inputs(seed=2)
    B, C = logprobs.shape
    trl_trainer.max_completion_length = 8  # longer than the padded C=5: the constant, not the batch, decides
    trl_loss, trl_grad, _ = _trl_loss(trl_trainer, "dr_grpo", beta, logprobs, old, ref, adv, mask)
    lp = logprobs.clone().requires_grad_(True)
    out = Surrogate(clip_eps=0.2, clip_eps_high=0.28, kl_coef=beta, loss_agg="dr_grpo").loss(
        lp, old, ref if beta > 0 else None, adv, mask, float(B * 8)
    )
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), trl_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lp.grad, trl_grad, atol=1e-6, rtol=1e-5)
    # and it is not token_mean: the denominators differ on this ragged batch
    tm = Surrogate(clip_eps=0.2, clip_eps_high=0.28, kl_coef=beta).loss(
        logprobs, old, ref if beta > 0 else None, adv, mask
    )
    assert not torch.isclose(tm.loss, out.loss.detach())


@pytest.mark.parametrize("dtype, temperature", [(torch.float32, 1.0), (torch.float32, 0.7), (torch.bfloat16, 1.3)])
def test_selected_logprobs_equal_log_softmax_gather_values_and_gradients(dtype, temperature):
    """The row-wise autograd Function against torch's own log_softmax + gather, values and gradients."""
    from rlhf.objectives.common import selected_logprobs

    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(3, 5, 11, generator=g)).to(dtype).requires_grad_(True)  # (B, N, V)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    upstream = torch.randn(3, 5, generator=g)
    ours = selected_logprobs(logits, targets, temperature)
    (ours * upstream).sum().backward()
    grad_ours, logits.grad = logits.grad.clone(), None
    ref = torch.log_softmax(logits.float() / temperature, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    (ref * upstream).sum().backward()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad_ours.float(), logits.grad.float(), rtol=1e-5, atol=tol)
    assert grad_ours.dtype == dtype
    # by hand, one entry: d/dx_i = g (1[i = t] - softmax_i) / T
    p = torch.softmax(logits.detach().float()[0, 0] / temperature, -1)
    hand = upstream[0, 0] * (torch.nn.functional.one_hot(targets[0, 0], 11).float() - p) / temperature
    torch.testing.assert_close(grad_ours[0, 0].float(), hand, rtol=0, atol=tol)
