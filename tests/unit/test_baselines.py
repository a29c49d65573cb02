"""RLOO and REINFORCE++ estimators (rlhf.advantages.baselines) against values worked out by hand.

Run: pytest tests/unit/test_baselines.py -q
"""

import math

import pytest
import torch

from rlhf.advantages.baselines import (
    global_normalize,
    kl_penalty,
    reinforce_pp_baseline,
    reinforce_pp_returns,
    rloo,
    token_rewards_with_kl,
)
from rlhf.advantages.group import group_stats

NAN = float("nan")


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


# --------------------------------------------------------------------------- RLOO

# group 7: [1, 2, 3, 6]      A_i = r_i - mean(others): 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3
# group 3: [4, NaN, 0, 2]    applicable [4, 0, 2]: 4 - 1, NaN -> 0, 0 - 3, 2 - 2
# group 9: [5, NaN]          one applicable sample -> 0, NaN -> 0
RLOO_X = torch.tensor([1.0, 2.0, 3.0, 6.0, 4.0, NAN, 0.0, 2.0, 5.0, NAN])
RLOO_G = torch.tensor([7, 7, 7, 7, 3, 3, 3, 3, 9, 9])
RLOO_A = [-8 / 3, -4 / 3, 0.0, 4.0, 3.0, 0.0, -3.0, 0.0, 0.0, 0.0]


def test_rloo_by_hand_with_nan():
    close(rloo(RLOO_X, RLOO_G), RLOO_A)


def test_rloo_is_k_over_k_minus_1_times_centred():
    # group 7: k = 4, mean 3: 4/3 * [-2, -1, 0, 3] = [-8/3, -4/3, 0, 4]; group 3: k = 3, mean 2: 3/2 * [2, -2, 0]
    close(rloo(RLOO_X[:4], RLOO_G[:4]), [4 / 3 * d for d in (-2.0, -1.0, 0.0, 3.0)])
    x = torch.randn(12, generator=torch.Generator().manual_seed(0))
    g = torch.arange(12) // 4
    stats = group_stats(x, g)
    k = stats.count[stats.inverse]
    close(rloo(x, g), k / (k - 1) * (x - stats.mean[stats.inverse]))


def test_rloo_columns_independent():
    # column 1, group 7: [0, 0, 1, 1] -> 0 - 2/3, 0 - 2/3, 1 - 1/3, 1 - 1/3; groups 3 and 9 all equal -> 0
    col1 = torch.tensor([0.0, 0.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 1.0, 2.0])
    out = rloo(torch.stack([RLOO_X, col1], dim=1), RLOO_G)  # (B, 2)
    close(out[:, 0], RLOO_A)
    close(out[:, 1], [-2 / 3, -2 / 3, 2 / 3, 2 / 3, 0, 0, 0, 0, -1.0, 1.0])


def test_rloo_differs_from_plain_centring():
    # guards against returning r - mean: group 7 would give [-2, -1, 0, 3]
    assert rloo(RLOO_X, RLOO_G)[0].item() == pytest.approx(-8 / 3)


# --------------------------------------------------------------------------- returns

TOK_R = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.0, 4.0, 99.0, 7.0]])  # row 1: 99 and 7 sit on padding
TOK_M = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_returns_gamma_1():
    # row 0: 1+2+3, 2+3, 3; row 1: 0+4, 4 (padding rewards ignored)
    close(reinforce_pp_returns(TOK_R, TOK_M, gamma=1.0), [[6.0, 5.0, 3.0, 0.0], [4.0, 4.0, 0.0, 0.0]])


def test_returns_gamma_half():
    # row 0: G2 = 3, G1 = 2 + 0.5 * 3 = 3.5, G0 = 1 + 0.5 * 3.5 = 2.75; row 1: G1 = 4, G0 = 0 + 0.5 * 4 = 2
    close(reinforce_pp_returns(TOK_R, TOK_M, gamma=0.5), [[2.75, 3.5, 3.0, 0.0], [2.0, 4.0, 0.0, 0.0]])


# --------------------------------------------------------------------------- KL-shaped token rewards

# log_ratio = logp - ref: row 0 [0.5, -0.5, 1.0] all on; row 1 [1.0, pad, pad]; row 2 empty mask
LOG_RATIO = torch.tensor([[0.5, -0.5, 1.0], [1.0, 9.0, NAN], [3.0, 3.0, 3.0]])
REF = torch.full((3, 3), -1.0)
LOGP = REF + LOG_RATIO
KL_MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
SEQ_R = torch.tensor([1.0, -2.0, 5.0])


def test_kl_estimators_by_hand():
    lr = torch.tensor([0.5, -0.5, 1.0])
    close(kl_penalty(lr, torch.zeros(3), "k1"), [0.5, -0.5, 1.0])
    close(kl_penalty(lr, torch.zeros(3), "k2"), [0.125, 0.125, 0.5])
    # k3 = exp(-x) - 1 + x: exp(-0.5) = 0.606531, exp(0.5) = 1.648721, exp(-1) = 0.367879
    close(kl_penalty(lr, torch.zeros(3), "k3"), [0.106531, 0.148721, 0.367879])
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(lr, torch.zeros(3), "k4")


@pytest.mark.parametrize(
    "estimator, expected",
    [
        # -0.1 * KL on every unmasked token; the reward on the last unmasked token; the empty row gets nothing
        ("k1", [[-0.05, 0.05, -0.1 + 1.0], [-0.1 - 2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        ("k2", [[-0.0125, -0.0125, -0.05 + 1.0], [-0.05 - 2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        ("k3", [[-0.0106531, -0.0148721, -0.0367879 + 1.0], [-0.0367879 - 2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    ],
)
def test_token_rewards_kl_and_last_token(estimator, expected):
    out = token_rewards_with_kl(SEQ_R, LOGP, REF, KL_MASK, kl_coef=0.1, kl_estimator=estimator)
    close(out, expected)


def test_token_rewards_without_kl_and_with_a_hole():
    # no reference needed at kl_coef 0; the last UNMASKED token is index 2 in row 0 even with a hole at 1
    mask = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]])
    out = token_rewards_with_kl(torch.tensor([3.0, -1.0]), torch.zeros(2, 4), None, mask, kl_coef=0.0)
    close(out, [[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    with pytest.raises(ValueError, match="ref_logprobs"):
        token_rewards_with_kl(torch.tensor([3.0, -1.0]), torch.zeros(2, 4), None, mask, kl_coef=0.1)


# --------------------------------------------------------------------------- global normalisation


def test_global_normalize_ignores_padding():
    # unmasked tokens {1, 3, 1, 3}: mean 2, POPULATION var 1 -> std 1 -> [-1, 1, -1, 1]
    # (an unbiased std sqrt(4/3) would give +-0.866; counting the padding would move the mean)
    adv = torch.tensor([[1.0, 3.0, 1.0, 1e6], [3.0, NAN, 7.0, 7.0], [5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    close(global_normalize(adv, mask, eps=0.0), [[-1.0, 1.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0] * 4])
    # eps is added to the std: divide by 1 + 1
    close(global_normalize(adv, mask, eps=1.0), [[-0.5, 0.5, -0.5, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0] * 4])


def test_global_normalize_reduce_hook_equals_whole_batch():
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(6, 5, generator=g) * 3 + 1  # (B, C)
    lengths = torch.tensor([5, 2, 4, 1, 3, 5])
    mask = (torch.arange(5) < lengths.unsqueeze(1)).long()  # (B, C) ragged
    whole = global_normalize(adv, mask, eps=1e-6)

    # fake all-reduce over two "ranks": first record rank b's statistics, then add them to rank a's and back
    a, b = slice(0, 3), slice(3, 6)
    sent = {}
    global_normalize(adv[b], mask[b], reduce=lambda t: sent.setdefault("b", t.clone()))
    global_normalize(adv[a], mask[a], reduce=lambda t: sent.setdefault("a", t.clone()))
    calls = []

    def summed(other):
        def reduce(t):
            calls.append(tuple(t.shape))
            return t + other

        return reduce

    out_a = global_normalize(adv[a], mask[a], eps=1e-6, reduce=summed(sent["b"]))
    out_b = global_normalize(adv[b], mask[b], eps=1e-6, reduce=summed(sent["a"]))
    torch.testing.assert_close(torch.cat([out_a, out_b]), whole, atol=1e-6, rtol=0)
    assert calls == [(3,), (3,)]  # one (count, sum, sumsq) reduction per call
    # without the hook each half is whitened on its own statistics, which differs
    alone = torch.cat([global_normalize(adv[a], mask[a]), global_normalize(adv[b], mask[b])])
    assert (alone - whole).abs().max() > 1e-2


# --------------------------------------------------------------------------- REINFORCE++-baseline


def test_reinforce_pp_baseline_group_mean_no_std():
    # group 0: applicable [1, 3, 2], mean 2 -> [-1, 1, NaN -> 0, 0]; group 1: [10, 20], mean 15 -> [-5, 5]
    # (dividing by group 1's std 7.07 would give -+0.707)
    x = torch.tensor([1.0, 3.0, NAN, 2.0, 10.0, 20.0])
    close(reinforce_pp_baseline(x, torch.tensor([0, 0, 0, 0, 1, 1])), [-1.0, 1.0, 0.0, 0.0, -5.0, 5.0])
    assert not math.isnan(float(reinforce_pp_baseline(x, torch.zeros(6, dtype=torch.long)).sum()))
