"""PPO parts (rlhf.objectives.ppo): the clipped value loss by hand, the KL controllers, PPO.loss = GRPO.loss.

Run: pytest tests/unit/test_ppo_parts.py -q

TRL 1.16 ships no PPO trainer, so the value loss is checked against numbers worked out by hand below.
"""

from types import SimpleNamespace

import pytest
import torch

from rlhf.objectives.grpo import GRPO
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
def test_ppo_loss_equals_grpo_loss_on_token_advantages(loss_agg, kl_coef):
    logprobs, old, ref, adv, mask = _policy_tensors()
    ppo = PPO(clip_eps=0.2, clip_eps_high=0.28, kl_coef=kl_coef, loss_agg=loss_agg)
    grpo = GRPO(clip_eps=0.2, clip_eps_high=0.28, kl_coef=kl_coef, loss_agg=loss_agg)
    out = ppo.loss(logprobs, old, ref, adv, mask, token_normalizer=7.0)
    expected = grpo.loss(logprobs, old, ref, adv, mask, token_normalizer=7.0)
    close(out.loss, expected.loss, tol=1e-7)
    assert out.metrics == expected.metrics
    assert 0 < out.metrics["clip_frac"] < 1  # the clip is engaged on some tokens

    # and by hand for token_mean without KL: -min(rho A, clip(rho) A) averaged over the 11 tokens
    if loss_agg == "token_mean" and kl_coef == 0:
        rho = torch.exp(logprobs.detach() - old)
        per_token = -torch.min(rho * adv, rho.clamp(0.8, 1.28) * adv)
        close(ppo.loss(logprobs, old, None, adv, mask).loss, (per_token * mask).sum() / 11, tol=1e-6)


def test_ppo_from_config_and_reference():
    cfg = SimpleNamespace(clip_eps=0.1, clip_eps_high=0.3, loss_agg="seq_mean", kl_coef=0.05, kl_mode="loss")
    ppo = PPO.from_config(cfg)
    assert (ppo.clip_eps, ppo.clip_eps_high, ppo.loss_agg, ppo.kl_coef) == (0.1, 0.3, "seq_mean", 0.05)
    assert ppo.needs_reference and ppo.name == "ppo" and ppo.on_policy
    cfg.kl_mode = "reward"
    ppo = PPO.from_config(cfg)
    assert ppo.kl_coef == 0.0 and not ppo.needs_reference
    with pytest.raises(ValueError, match="loss_agg"):
        PPO(loss_agg="sum")
