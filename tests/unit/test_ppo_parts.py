"""PPO parts (rlhf.objectives.ppo): the clipped value loss by hand, the KL controllers, and PPO's policy loss:
the shared clipped surrogate (``rlhf.objectives.common.Surrogate``) built from its section, checked by hand.

Run: pytest tests/unit/test_ppo_parts.py -q

TRL 1.16 ships no PPO trainer, so the value loss is checked against numbers worked out by hand below.
"""

import pytest
import torch

from rlhf.config.registry import build_objective, capabilities
from rlhf.config.schema import CriticConfig, PPOConfig
from rlhf.objectives import Surrogate
from rlhf.objectives.ppo import PPO, AdaptiveKLController, FixedKLController, value_loss


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               atol=tol, rtol=0)


# --------------------------------------------------------------------------- value loss

# B=1, C=3 (last token is padding), S=2 streams
VALUES = [[[1.0, 0.0], [0.5, -1.0], [9.0, 9.0]]]
OLD = [[[0.5, 0.1], [0.0, -1.0], [0.0, 0.0]]]
RETURNS = [[[2.0, 0.0], [0.0, -0.5], [0.0, 0.0]]]
MASK = torch.tensor([[1, 1, 0]])
# clip 0.2, per (token, stream):
#   (0,0): V=1 old=.5 -> Vc=.7 ; (V-R)^2 = 1,    (Vc-R)^2 = 1.69  -> 1.69 (clipped branch wins)
#   (0,1): V=0 old=.1 -> Vc=0  ; 0,              0                -> 0
#   (1,0): V=.5 old=0 -> Vc=.2 ; .25,            .04              -> .25  (unclipped wins)
#   (1,1): V=-1 old=-1-> Vc=-1 ; .25,            .25              -> .25
# loss = 0.5 * (1.69 + 0 + .25 + .25) / 4 = 0.27375
# explained variance: R = [2, 0, 0, -.5] -> Var 0.921875 ; R - V = [1, 0, -.5, .5] -> Var 0.3125


def test_value_loss_clipped_by_hand():
    values = torch.tensor(VALUES, requires_grad=True)
    out = value_loss(values, torch.tensor(OLD), torch.tensor(RETURNS), MASK, clip=0.2)
    close(out.loss, 0.27375)
    close(out.metrics["loss/value"], 0.27375)
    close(out.metrics["value/clip_frac"], 0.25)
    close(out.metrics["value/mean"], 0.125)
    close(out.metrics["value/explained_variance"], 1 - 0.3125 / 0.921875)
    out.loss.backward()
    # d/dV of 0.5 * x / 4: the clipped branch (0,0) has no gradient; (1,0): (V-R)/4 = .125; (1,1): (-1+.5)/4
    close(values.grad, [[[0.0, 0.0], [0.125, -0.125], [0.0, 0.0]]])


def test_value_loss_unclipped_and_normalizer():
    values = torch.tensor(VALUES)
    out = value_loss(values, None, torch.tensor(RETURNS), MASK, clip=None)
    close(out.loss, 0.5 * (1 + 0 + 0.25 + 0.25) / 4)
    close(out.metrics["value/clip_frac"], 0.0)
    # a token normalizer replaces this batch's 2 unmasked tokens: sum / (normalizer * S)
    out = value_loss(values, torch.tensor(OLD), torch.tensor(RETURNS), MASK, clip=0.2, token_normalizer=4)
    close(out.loss, 0.5 * 2.19 / (4 * 2))
    with pytest.raises(ValueError, match="old_values"):
        value_loss(values, None, torch.tensor(RETURNS), MASK, clip=0.2)


def test_ppo_value_loss_uses_the_critic_clip():
    values = torch.tensor(VALUES)
    clipped = PPO.from_config(PPOConfig()).value_loss(values, torch.tensor(OLD), torch.tensor(RETURNS), MASK)
    close(clipped.loss, 0.27375)  # the default critic.value_clip 0.2, by hand above
    plain = PPO.from_config(PPOConfig(critic=CriticConfig(value_clip=None)))
    assert plain.value_clip is None
    close(plain.value_loss(values, None, torch.tensor(RETURNS), MASK).loss, 0.5 * (1 + 0 + 0.25 + 0.25) / 4)


def test_value_loss_ignores_nan_on_padding_and_constant_returns():
    values = torch.tensor(VALUES)
    values[0, 2] = float("nan")
    returns = torch.zeros(1, 3, 2)
    out = value_loss(values, torch.tensor(OLD), returns, MASK, clip=0.2)
    assert torch.isfinite(out.loss)
    assert out.metrics["value/explained_variance"] != out.metrics["value/explained_variance"]  # NaN: Var(R) = 0


# --------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_two_updates_by_hand():
    ctl = AdaptiveKLController(init=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)  # e = clip(9/6 - 1) = clip(0.5) = 0.2 -> 0.1 * (1 + 0.2 * 0.0256)
    close(ctl.value, 0.100512, tol=1e-12)
    ctl.update(current_kl=5.4, n_steps=512)  # e = 0.9 - 1 = -0.1 -> 0.100512 * (1 - 0.1 * 0.0512)
    close(ctl.value, 0.09999737856, tol=1e-12)

    state = ctl.state_dict()
    other = AdaptiveKLController(init=1.0, target=6.0, horizon=10000)
    other.load_state_dict(state)
    assert other.value == ctl.value
    ctl.update(current_kl=0.0, n_steps=10000)  # e = clip(-1) = -0.2 -> x 0.8
    close(ctl.value, 0.09999737856 * 0.8, tol=1e-12)
    with pytest.raises(ValueError):
        AdaptiveKLController(init=0.1, target=0.0, horizon=10)


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 512)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


# --------------------------------------------------------------------------- policy loss


def _policy_tensors():
    g = torch.Generator().manual_seed(3)
    logprobs = (torch.randn(3, 5, generator=g) * 0.3 - 1.0).requires_grad_(True)
    old = logprobs.detach() + torch.randn(3, 5, generator=g) * 0.3  # ratios well outside 1 +- 0.2
    ref = logprobs.detach() + torch.randn(3, 5, generator=g) * 0.1
    adv = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    return logprobs, old, ref, adv, mask


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean", "dr_grpo"])
@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_ppo_loss_is_the_shared_surrogate_on_token_advantages(loss_agg, kl_coef):
    logprobs, old, ref, adv, mask = _policy_tensors()
    cfg = PPOConfig(clip_eps=0.2, clip_eps_high=0.28, kl_coef=kl_coef, kl_mode="loss", loss_agg=loss_agg)
    ppo = PPO.from_config(cfg)
    # the same surrogate as GRPO's / RLOO's, from the same section fields
    assert ppo.surrogate == Surrogate(clip_eps=0.2, clip_eps_high=0.28, kl_coef=kl_coef, loss_agg=loss_agg)
    assert build_objective(cfg) == ppo
    out = ppo.surrogate.loss(logprobs, old, ref, adv, mask, token_normalizer=7.0)
    assert 0 < out.metrics["clip_frac"] < 1  # the clip is engaged on some tokens

    # by hand: -min(rho A, clip(rho, 0.8, 1.28) A) + kl_coef * k3 per token, aggregated by loss_agg
    lp = logprobs.detach()
    rho = torch.exp(lp - old)
    policy = -torch.min(rho * adv, rho.clamp(0.8, 1.28) * adv)
    per_token = policy + kl_coef * (torch.exp(ref - lp) - (ref - lp) - 1)
    m = mask.float()
    if loss_agg == "seq_mean":  # the normalizer does not apply: mean over each sequence, then over the 3
        expected = ((per_token * m).sum(1) / m.sum(1)).mean()
    else:  # token_mean and dr_grpo: the token sum over the given normalizer
        expected = (per_token * m).sum() / 7.0
    close(out.loss, expected, tol=1e-6)
    close(out.metrics["loss/total"], expected, tol=1e-6)
    clip_out = ((rho < 0.8) & (adv < 0)) | ((rho > 1.28) & (adv > 0))
    close(out.metrics["clip_frac"], (clip_out.float() * m).sum() / 11)

    # and without a normalizer: token_mean over the 11 tokens, dr_grpo over the padded B * C = 15
    if kl_coef == 0 and loss_agg != "seq_mean":
        denom = 11 if loss_agg == "token_mean" else 15
        close(ppo.surrogate.loss(logprobs, old, None, adv, mask).loss, (policy * m).sum() / denom, tol=1e-6)


def test_ppo_from_config_and_reference():
    cfg = PPOConfig(clip_eps=0.1, clip_eps_high=0.3, loss_agg="seq_mean", kl_coef=0.05, kl_mode="loss")
    ppo = PPO.from_config(cfg)
    s = ppo.surrogate
    assert (s.clip_eps, s.clip_eps_high, s.loss_agg, s.kl_coef) == (0.1, 0.3, "seq_mean", 0.05)
    assert ppo.needs_reference and ppo.name == "ppo" and ppo.value_clip == 0.2
    # trained by the on-policy stage with a critic beside the policy
    caps = capabilities(cfg)
    assert (caps.stage, caps.critic, caps.needs_reference, caps.grouped) == ("policy_gradient", True, True, False)
    cfg = PPOConfig(clip_eps=0.1, clip_eps_high=0.3, loss_agg="seq_mean", kl_coef=0.05, kl_mode="reward")
    ppo = PPO.from_config(cfg)
    # the KL sits in the reward: no loss term, but the runtime still loads the reference for the penalty
    assert ppo.surrogate.kl_coef == 0.0 and not ppo.needs_reference
    assert capabilities(cfg).needs_reference is True
    assert capabilities(PPOConfig(kl_coef=0.0)).needs_reference is False
    with pytest.raises(ValueError, match="loss_agg"):
        PPO(surrogate=Surrogate(loss_agg="sum"))
    with pytest.raises(ValueError, match="loss_agg"):
        PPOConfig(loss_agg="sum")
