"""The CGPO stage's per-task signals by hand: CRPG against a baseline row, CRRAFT against the group mean, CODPO
pairs in global row indices, the task_scale factors that make each task's term its own mean, and metrics."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.config.schema import CGPOConfig
from rlhf.runtime.cgpo import task_signals
from rlhf.types import RewardVector

NAN = float("nan")


def test_task_signals_by_hand():
    cfg = CGPOConfig(tasks={
        "a": {"optimizer": "crpg", "rewards": ["r1"], "judges": ["j1"], "baseline_column": "answer"},
        "b": {"optimizer": "crraft", "rewards": ["r1"], "judges": ["j1"], "weight": 0.5},
        "c": {"optimizer": "codpo", "rewards": ["r1"], "judges": ["j1"]},
    })
    rv = RewardVector(("r1", "j1"), ("reward", "constraint"), torch.tensor(
        [[2.0, 1.0], [0.0, 1.0], [1.0, 1.0], [3.0, 1.0], [5.0, 0.0], [1.0, 1.0]]))
    baseline = RewardVector(rv.names, rv.kinds, torch.tensor([[1.0, NAN], [NAN, NAN], [NAN, NAN]]))
    group_ids = torch.tensor([0, 0, 1, 1, 2, 2])
    lengths = [2, 2, 1, 3, 2, 2]  # 12 tokens in all
    mask = torch.tensor([[1.0] * n + [0.0] * (3 - n) for n in lengths])  # (6, 3)
    adv, pairs, metrics = task_signals(cfg, {"r1": 2.0, "j1": 1.0}, rv, baseline, ["a", "b", "c"], group_ids, mask)

    # task a: r = 2 * r1 = (4, 0), baseline 2 * 1 = 2 -> calibrated (sig(2), sig(-2)); group-normalised
    # (unbiased std of two values = |diff| / sqrt 2) -> +-1/sqrt(2); x task_scale 12 / 4 tokens = 3
    assert adv[:2].tolist() == pytest.approx([3 / math.sqrt(2), -3 / math.sqrt(2)], rel=1e-4)
    # task b: r = (2, 6), group-mean baseline 4: row 3 is best and satisfies -> weight 0.5 x 12 / 3 tokens
    assert adv[2:4].tolist() == pytest.approx([0.0, 2.0])
    # task c: row 4 has the higher reward but violates j1: chosen 5, rejected 4; no policy-gradient signal
    assert pairs == [(5, 4)] and adv[4:].tolist() == [0.0, 0.0]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert metrics["cgpo/a/calibrated_reward"] == pytest.approx((sig(2) + sig(-2)) / 2)
    assert metrics["cgpo/a/baseline_reward"] == pytest.approx(2.0)
    assert metrics["cgpo/c/violation_rate/j1"] == 0.5 and metrics["cgpo/c/violation_rate"] == 0.5
    assert metrics["cgpo/b/selected"] == 1.0 and metrics["cgpo/c/pairs"] == 1.0
    assert metrics["cgpo/c/reward/r1"] == 3.0 and metrics["cgpo/a/samples"] == 2.0
    # task c: r = (10, 2), group mean 6: the chosen (satisfying) row has the LOWER calibrated reward
    assert metrics["cgpo/c/pair_calibrated_gap"] == pytest.approx(sig(-4) - sig(4))
