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
    adv, pairs, metrics, terms = task_signals(cfg, {"r1": 2.0, "j1": 1.0}, rv, baseline, ["a", "b", "c"], group_ids,
                                              mask)
    assert terms.nll.tolist() == [False, False, False, True, False, False]
    assert terms.group.tolist() == [0, 0, -1, 1, -1, -1]

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


def test_stratified_mini_batches_and_per_step_scales_by_hand():
    """12 rows, 2 ranks x 2 mini-batches: rows sorted by normalisation group are dealt round-robin over the 4
    (rank, mini-batch) slots; each step's task factors are its own tokens / the task's tokens in it."""
    from rlhf.runtime.cgpo import RowTerms, scale_terms, stratified_mini_batches

    group = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, -1, -1, -1])
    terms = RowTerms(base=torch.arange(1.0, 13.0), group=group, nll=group == 1)
    order, mini = stratified_mini_batches(terms, world_size=2, mini_batches=2)
    # sorted by group: rows 9, 10, 11 (-1), 0..5 (task 0), 6, 7, 8 (task 1); slot s takes sorted positions s, s+4,
    # s+8; slots are (rank 0, m 0), (rank 0, m 1), (rank 1, m 0), (rank 1, m 1)
    assert order.tolist() == [9, 1, 5, 10, 2, 6, 11, 3, 7, 0, 4, 8]
    assert mini.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    assert sorted(order.tolist()) == list(range(12))

    lengths = torch.tensor([2, 1, 3, 2, 2, 1, 1, 2, 3, 1, 2, 2])  # counted tokens per row
    mask = (torch.arange(3).unsqueeze(0) < lengths.unsqueeze(1)).float()  # (12, 3)
    adv = scale_terms(terms.select(order), mask[order], mini, "token_mean")
    by_row = dict(zip(order.tolist(), adv.tolist()))
    # step 0 = rows 9, 1, 5, 11, 3, 7: 1+1+1+2+2+2 = 9 tokens; task 0 (rows 1, 5, 3) has 4 -> x 9/4; task 1 (row 7)
    # has 2 -> x 9/2; rows without a term stay 0
    assert by_row[3] == pytest.approx(4 * 9 / 4) and by_row[1] == pytest.approx(2 * 9 / 4)
    assert by_row[7] == pytest.approx(8 * 9 / 2) and by_row[9] == 0.0 and by_row[11] == 0.0
    # step 1 = rows 10, 2, 6, 0, 4, 8: 13 tokens; task 0 (rows 2, 0, 4) has 7 -> x 13/7; task 1 (6, 8) has 4
    assert by_row[4] == pytest.approx(5 * 13 / 7) and by_row[8] == pytest.approx(9 * 13 / 4)
    assert by_row[6] == pytest.approx(7 * 13 / 4)
    # one step over the whole batch: 22 tokens, task 0 has 11, task 1 has 6
    whole = scale_terms(terms, mask, torch.zeros(12, dtype=torch.long), "token_mean")
    assert whole[0] == pytest.approx(1 * 22 / 11) and whole[6] == pytest.approx(7 * 22 / 6)
    with pytest.raises(ValueError, match="12 rows cannot be split into 2 ranks x 4 mini-batches"):
        stratified_mini_batches(terms, 2, 4)
