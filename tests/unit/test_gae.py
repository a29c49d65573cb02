"""GAE, token rewards and whitening (rlhf.advantages.gae): hand computations, then a direct eq. 16 oracle.

Run: pytest tests/unit/test_gae.py -q

TRL 1.16 ships no PPO trainer (and no GAE function) and OpenRLHF is not installed, so the oracle is a literal
transcription of Schulman et al. 2016 eq. 16 written here: A_t = sum_l (gamma lam)^l delta_{t+l} over each row's
unmasked tokens, no recursion.
"""

import math

import pytest
import torch

from rlhf.advantages.gae import gae, token_rewards, whiten

NAN = float("nan")


def close(a, b, tol=1e-6):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


# Ragged batch, 2 streams: row 0 has 3 tokens, row 1 has 2 (garbage on its padding), row 2 has none.
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
REWARDS = torch.tensor(
    [
        [[0.0, -0.1], [0.0, -0.2], [1.0, 0.3]],
        [[0.0, 0.5], [2.0, -0.5], [5.0, 7.0]],  # padding reward ignored
        [[3.0, 3.0], [NAN, 1.0], [1.0, 1.0]],  # empty row
    ]
)
VALUES = torch.tensor(
    [
        [[0.5, 0.0], [0.2, 0.1], [0.4, -0.1]],
        [[1.0, 0.2], [0.5, 0.3], [NAN, 100.0]],  # padding value ignored (even NaN)
        [[NAN, 1.0], [2.0, 2.0], [NAN, NAN]],
    ]
)


def test_gae_gamma1_lam1_is_monte_carlo():
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    # returns = sum of future rewards on the row's own tokens; advantages = returns - V
    close(ret[0], [[1.0, 0.0], [1.0, 0.1], [1.0, 0.3]])
    close(ret[1], [[2.0, 0.0], [2.0, -0.5], [0.0, 0.0]])
    close(adv[0], [[0.5, 0.0], [0.8, 0.0], [0.6, 0.4]])
    close(adv[1], [[1.0, -0.2], [1.5, -0.8], [0.0, 0.0]])
    close(adv[2], torch.zeros(3, 2))
    close(ret[2], torch.zeros(3, 2))


def test_gae_gamma09_lam08_by_hand():
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)  # gamma * lam = 0.72
    # row 0, stream 0: d2 = 1 - 0.4 = 0.6; d1 = 0.9*0.4 - 0.2 = 0.16; d0 = 0.9*0.2 - 0.5 = -0.32
    #   A2 = 0.6; A1 = 0.16 + 0.72*0.6 = 0.592; A0 = -0.32 + 0.72*0.592 = 0.10624
    # row 0, stream 1: d2 = 0.3 + 0.1 = 0.4; d1 = -0.2 - 0.09 - 0.1 = -0.39; d0 = -0.1 + 0.09 - 0 = -0.01
    #   A2 = 0.4; A1 = -0.39 + 0.288 = -0.102; A0 = -0.01 - 0.07344 = -0.08344
    close(adv[0], [[0.10624, -0.08344], [0.592, -0.102], [0.6, 0.4]])
    close(ret[0], [[0.60624, -0.08344], [0.792, -0.002], [1.0, 0.3]])
    # row 1, stream 0: d1 = 2 - 0.5 = 1.5; d0 = 0.45 - 1 = -0.55; A0 = -0.55 + 0.72*1.5 = 0.53
    # row 1, stream 1: d1 = -0.5 - 0.3 = -0.8; d0 = 0.5 + 0.27 - 0.2 = 0.57; A0 = 0.57 - 0.576 = -0.006
    close(adv[1], [[0.53, -0.006], [1.5, -0.8], [0.0, 0.0]])
    close(ret[1], [[1.53, 0.194], [2.0, -0.5], [0.0, 0.0]])
    close(adv[2], torch.zeros(3, 2))
    close(ret[2], torch.zeros(3, 2))
    assert not torch.isnan(adv).any() and not torch.isnan(ret).any()


def test_gae_streams_are_independent_and_linear():
    adv, _ = gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)
    adv0, _ = gae(REWARDS[..., :1], VALUES[..., :1], MASK, gamma=0.9, lam=0.8)
    close(adv[..., :1], adv0)
    # GAE is linear in (r, V): the weighted sum of stream advantages = GAE of the weighted reward and value
    w = torch.tensor([0.7, 1.0])
    r = torch.nan_to_num(REWARDS[:2]) * MASK[:2, :, None]
    v = torch.nan_to_num(VALUES[:2]) * MASK[:2, :, None]
    combined, _ = gae((r * w).sum(-1, keepdim=True), (v * w).sum(-1, keepdim=True), MASK[:2], 0.9, 0.8)
    close((adv[:2] * w).sum(-1), combined[..., 0], tol=1e-5)


def _eq16_oracle(rewards, values, mask, gamma, lam):
    """Direct eq. 16 per row and stream: A_t = sum_l (gamma lam)^l delta_{t+l} over the unmasked tokens."""
    B, C, S = rewards.shape
    adv = torch.zeros(B, C, S, dtype=torch.float64)
    for b in range(B):
        idx = [t for t in range(C) if mask[b, t]]
        for s in range(S):
            r = [float(rewards[b, t, s]) for t in idx]
            v = [float(values[b, t, s]) for t in idx] + [0.0]  # V after the last token = 0
            delta = [r[i] + gamma * v[i + 1] - v[i] for i in range(len(idx))]
            for i, t in enumerate(idx):
                adv[b, t, s] = sum((gamma * lam) ** l * delta[i + l] for l in range(len(idx) - i))
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8), (0.99, 0.95), (1.0, 0.0)])
def test_gae_matches_eq16_oracle(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, C, S = 5, 7, 3
    rewards = torch.randn(B, C, S, generator=g, dtype=torch.float64)
    values = torch.randn(B, C, S, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 0, 1, 5])
    mask = (torch.arange(C)[None] < lengths[:, None]).long()
    adv, ret = gae(rewards, values, mask, gamma, lam)
    expected = _eq16_oracle(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(ret, (expected + values) * mask[..., None], atol=1e-10, rtol=0)


def test_gae_hole_links_the_tokens_around_it():
    rewards = torch.tensor([[[0.2], [9.0], [1.0]]])
    values = torch.tensor([[[0.5], [9.0], [0.3]]])
    adv, ret = gae(rewards, values, torch.tensor([[1, 0, 1]]), 0.9, 0.8)
    ref_adv, ref_ret = gae(rewards[:, [0, 2]], values[:, [0, 2]], torch.tensor([[1, 1]]), 0.9, 0.8)
    close(adv[:, [0, 2]], ref_adv)
    close(ret[:, [0, 2]], ref_ret)
    assert adv[0, 1, 0] == 0 and ret[0, 1, 0] == 0


def test_gae_detaches_and_rejects_bad_shapes():
    values = VALUES.clone().nan_to_num().requires_grad_(True)
    adv, ret = gae(REWARDS, values, MASK, 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="mask"):
        gae(REWARDS, VALUES, MASK[:, :2], 1.0, 1.0)
    with pytest.raises(ValueError, match="rewards and values"):
        gae(REWARDS, VALUES[..., :1], MASK, 1.0, 1.0)


# --------------------------------------------------------------------------- token rewards


def test_token_rewards_placement_and_kl_stream():
    seq = torch.tensor([[1.0, NAN], [2.0, -3.0], [4.0, 5.0]])  # (B=3, S=2)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    out = token_rewards(seq, mask)
    assert out.shape == (3, 4, 2)
    expected = torch.zeros(3, 4, 2)
    expected[0, 2] = torch.tensor([1.0, 0.0])  # NaN -> 0, on the last unmasked token (index 2)
    expected[1, 0] = torch.tensor([2.0, -3.0])
    close(out, expected)  # the empty row holds nothing

    kl = torch.tensor([[-0.1, -0.2, -0.3, -9.0], [-0.4, -9.0, -9.0, -9.0], [-9.0, -9.0, -9.0, -9.0]])
    out = token_rewards(seq, mask, kl)
    assert out.shape == (3, 4, 3)
    close(out[..., :2], expected)
    close(out[..., 2], [[-0.1, -0.2, -0.3, 0.0], [-0.4, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


def test_token_rewards_into_gae_gives_reward_to_go():
    seq = torch.tensor([[1.0], [2.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    kl = torch.full((2, 3), -0.1)
    r = token_rewards(seq, mask, kl)  # (2, 3, 2)
    _, ret = gae(r, torch.zeros_like(r), mask, 1.0, 1.0)
    close(ret[..., 0], [[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]])
    close(ret[..., 1], [[-0.3, -0.2, -0.1], [-0.2, -0.1, 0.0]])


# --------------------------------------------------------------------------- whitening


def test_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # unmasked 1, 2, 3, 4: mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    s = math.sqrt(1.25 + 1e-8)
    close(whiten(x, mask), [[-1.5 / s, -0.5 / s, 0.5 / s], [1.5 / s, 0.0, 0.0]])
    close(whiten(x, mask, shift_mean=False), [[-1.5 / s + 2.5, -0.5 / s + 2.5, 0.5 / s + 2.5], [1.5 / s + 2.5, 0, 0]])
    close(whiten(x, torch.zeros_like(mask)), torch.zeros(2, 3))


def test_whiten_per_stream_and_global_reduce():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, 2, generator=g)
    mask = (torch.rand(4, 5, generator=g) > 0.3).long()
    out = whiten(x, mask)
    for s in range(2):
        close(out[..., s], whiten(x[..., s], mask), tol=1e-6)
        on = mask != 0
        assert abs(float(out[..., s][on].mean())) < 1e-5
        assert abs(float(out[..., s][on].var(correction=0)) - 1) < 1e-4

    # two "ranks" holding halves, summed moments = one whitening of the whole batch
    full = whiten(x[..., 0], mask)
    halves = [(x[:2, :, 0], mask[:2]), (x[2:, :, 0], mask[2:])]
    captured = []
    for xi, mi in halves:
        whiten(xi, mi, reduce=lambda m: captured.append(m) or m)
    total = captured[0] + captured[1]
    sharded = torch.cat([whiten(xi, mi, reduce=lambda m: total) for xi, mi in halves])
    close(sharded, full, tol=1e-6)
