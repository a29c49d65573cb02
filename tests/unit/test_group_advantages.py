"""Group-relative advantages (rlhf.advantages.group) against values worked out by hand.

Run: pytest tests/unit/test_group_advantages.py -q
"""

import math

import pytest
import torch

from rlhf.advantages.group import group_normalize, group_stats

NAN = float("nan")


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


def test_unbiased_std_one_group():
    # [1, 2, 3]: mean 2, deviations [-1, 0, 1], unbiased var (1 + 0 + 1) / 2 = 1 -> std 1
    # (the biased std would be sqrt(2/3) = 0.8165 and give [-1.2247, 0, 1.2247])
    adv = group_normalize(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 0]), scale_std=True, eps=0.0)
    close(adv, [-1.0, 0.0, 1.0])


def test_eps_is_added_to_std():
    # std 1, eps 1 -> divide by 2
    adv = group_normalize(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 0]), scale_std=True, eps=1.0)
    close(adv, [-0.5, 0.0, 0.5])


def test_non_contiguous_groups():
    # group 7: [1, 2, 3] -> [-1, 0, 1]; group 3: [10, 14, 18] mean 14, var (16 + 0 + 16) / 2 = 16 -> std 4
    x = torch.tensor([1.0, 10.0, 2.0, 14.0, 3.0, 18.0])
    g = torch.tensor([7, 3, 7, 3, 7, 3])
    close(group_normalize(x, g, scale_std=True, eps=0.0), [-1.0, -1.0, 0.0, 0.0, 1.0, 1.0])
    close(group_normalize(x, g, scale_std=False, eps=0.0), [-1.0, -4.0, 0.0, 0.0, 1.0, 4.0])


def test_nan_is_ignored_and_gets_zero():
    # applicable [1, 3, 2]: mean 2, std 1; the NaN row gets 0 and does not move the group statistics
    x = torch.tensor([1.0, NAN, 3.0, 2.0])
    adv = group_normalize(x, torch.zeros(4, dtype=torch.long), scale_std=True, eps=0.0)
    assert not torch.isnan(adv).any()
    close(adv, [-1.0, 0.0, 1.0, 0.0])


def test_single_applicable_and_all_nan_groups_are_zero():
    x = torch.tensor([5.0, NAN, NAN, NAN, 1.0, 3.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    # group 0: one applicable entry -> centred value 0; group 1: nothing applicable -> 0;
    # group 2: [1, 3] mean 2, unbiased std sqrt(2) -> -+1/sqrt(2)
    adv = group_normalize(x, g, scale_std=True, eps=0.0)
    r = 1 / math.sqrt(2)
    close(adv, [0.0, 0.0, 0.0, 0.0, -r, r])


def test_constant_group_gives_zeros_not_nan():
    adv = group_normalize(torch.tensor([0.7, 0.7, 0.7, 1.0, 0.0]), torch.tensor([0, 0, 0, 1, 1]), True, 1e-6)
    r = 1 / math.sqrt(2)
    close(adv, [0.0, 0.0, 0.0, 0.5 / (r + 1e-6), -0.5 / (r + 1e-6)])


def test_two_dim_is_per_column():
    # column 0: [1, 2, 3] -> [-1, 0, 1]; column 1: [0, NaN, 4]: mean 2, std sqrt(8) -> [-1/sqrt2, 0, 1/sqrt2]
    x = torch.tensor([[1.0, 0.0], [2.0, NAN], [3.0, 4.0]])
    adv = group_normalize(x, torch.tensor([0, 0, 0]), scale_std=True, eps=0.0)
    r = 1 / math.sqrt(2)
    close(adv, [[-1.0, -r], [0.0, 0.0], [1.0, r]])
    for k in range(2):
        torch.testing.assert_close(adv[:, k], group_normalize(x[:, k], torch.tensor([0, 0, 0]), True, 0.0))


def test_group_stats_values():
    stats = group_stats(torch.tensor([1.0, 10.0, 2.0, NAN, 3.0, 18.0]), torch.tensor([7, 3, 7, 3, 7, 3]))
    # groups sorted by label: 3 -> index 0, 7 -> index 1
    close(stats.mean, [14.0, 2.0])
    close(stats.std, [math.sqrt(32.0), 1.0])  # [10, 18]: var (16 + 16) / 1 = 32
    close(stats.count, [2.0, 3.0])
    assert stats.inverse.tolist() == [1, 0, 1, 0, 1, 0]


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        group_normalize(torch.zeros(3), torch.zeros(4, dtype=torch.long))
