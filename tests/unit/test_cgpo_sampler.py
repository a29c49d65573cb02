"""TaskSampler: per-task counts by share (largest remainder), task-grouped batches, exact resume, clear errors."""

from __future__ import annotations

import pytest

from rlhf.data.sampler import TaskSampler, _largest_remainder


def _rows() -> list[dict]:
    return [{"prompt": f"a{i}", "task": "a"} for i in range(7)] + [{"prompt": f"b{i}", "task": "b"} for i in range(3)]


def test_largest_remainder():
    assert _largest_remainder(5, [1, 1]) == [3, 2]  # tie -> the earlier task
    assert _largest_remainder(10, [0.7, 0.3]) == [7, 3]
    assert _largest_remainder(4, [1, 1, 1]) == [2, 1, 1]


def test_counts_by_rows_or_shares_and_grouped_batches():
    s = TaskSampler(_rows(), 10, seed=0, tasks=["a", "b"])
    assert s.counts == {"a": 7, "b": 3}  # default share: fraction of the rows
    s = TaskSampler(_rows(), 4, seed=0, tasks=["b", "a"], shares={"a": 1.0, "b": 1.0})
    rows, tasks = s.next_batch_with_tasks()
    assert tasks == ["b", "b", "a", "a"] and [r["task"] for r in rows] == tasks


def test_resume_is_exact():
    a = TaskSampler(_rows(), 4, seed=3, tasks=["a", "b"], shares={"a": 1, "b": 1})
    for _ in range(3):
        a.next_batch()
    b = TaskSampler(_rows(), 4, seed=3, tasks=["a", "b"], shares={"a": 1, "b": 1})
    b.load_state_dict(a.state_dict())
    assert [b.next_batch() for _ in range(4)] == [a.next_batch() for _ in range(4)]
    with pytest.raises(ValueError, match="the checkpoint's tasks"):
        b.load_state_dict({"tasks": {"a": {"epoch": 0, "position": 0}}})


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"row 7 has task='b', which is not a task"):
        TaskSampler(_rows(), 4, seed=0, tasks=["a"])
    rows = _rows()
    rows[2].pop("task")
    with pytest.raises(ValueError, match=r"row 2 has no 'task' column.*objective.default_task"):
        TaskSampler(rows, 4, seed=0, tasks=["a", "b"])
    assert TaskSampler(rows, 4, seed=0, tasks=["a", "b"], default_task="a").counts == {"a": 3, "b": 1}
    with pytest.raises(ValueError, match="task 'b' gets 0 of 2 prompts"):
        TaskSampler(_rows(), 2, seed=0, tasks=["a", "b"], shares={"a": 10.0, "b": 1.0})
    with pytest.raises(ValueError, match="task 'c' has no training rows"):
        TaskSampler(_rows(), 4, seed=0, tasks=["a", "b", "c"])


def test_one_task_matches_prompt_sampler():
    """A single-task CGPO run sees the prompts a GRPO run with the same seed sees (bench: same data order)."""
    from rlhf.data.sampler import PromptSampler

    rows = [{"prompt": f"p{i}"} for i in range(9)]
    a = TaskSampler(rows, 4, seed=5, tasks=["all"], default_task="all")
    b = PromptSampler(rows, 4, seed=5)
    assert [a.next_batch() for _ in range(5)] == [b.next_batch() for _ in range(5)]
