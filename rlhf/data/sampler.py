"""Seeded, resumable prompt batches: every batch is full, the order reshuffles each epoch.

    sampler = PromptSampler(train_rows, batch_size=16, seed=0)
    batch = sampler.next_batch()           # list of 16 row dicts
    state = sampler.state_dict()           # {"epoch": e, "position": p} -> checkpoint
    sampler.load_state_dict(state)         # the next batch is exactly the one an uninterrupted run would get

Epoch ``e`` visits the rows in the order of ``random.Random(seed + e).shuffle``. A batch that reaches the end of
an epoch is completed from the start of the next one, so no row is skipped and every batch has ``batch_size``
rows (a row may repeat within a batch only when ``batch_size`` exceeds the number of rows).

``TaskSampler`` stratifies batches by a task column (CGPO): a fixed number of prompts per task, each task with
its own ``PromptSampler``.
"""

from __future__ import annotations

import random
from typing import Iterator


class PromptSampler:
    def __init__(self, rows: list[dict], batch_size: int, seed: int):
        if not rows:
            raise ValueError("PromptSampler: no rows to sample from")
        if batch_size < 1:
            raise ValueError(f"PromptSampler: batch_size must be >= 1, got {batch_size}")
        self.rows = list(rows)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0  # index into the current epoch's order of the next row to hand out
        self._order_epoch: int | None = None
        self._order: list[int] = []

    def __len__(self) -> int:
        """Full batches per epoch (rounded down)."""
        return len(self.rows) // self.batch_size

    def _epoch_order(self) -> list[int]:
        if self._order_epoch != self.epoch:
            self._order = list(range(len(self.rows)))
            random.Random(self.seed + self.epoch).shuffle(self._order)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self) -> list[dict]:
        batch: list[dict] = []
        while len(batch) < self.batch_size:
            order = self._epoch_order()
            take = order[self.position : self.position + self.batch_size - len(batch)]
            batch.extend(self.rows[i] for i in take)
            self.position += len(take)
            if self.position >= len(order):
                self.epoch += 1
                self.position = 0
        return batch

    def __iter__(self) -> Iterator[list[dict]]:
        return self

    def __next__(self) -> list[dict]:
        return self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"epoch", "position"} - set(state)
        if missing:
            raise KeyError(f"PromptSampler.load_state_dict: missing keys {sorted(missing)} in {state}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < len(self.rows):
            raise ValueError(
                f"PromptSampler.load_state_dict: state {state} does not fit {len(self.rows)} rows "
                "(was the dataset changed since the checkpoint?)"
            )
        self.epoch, self.position = epoch, position


class TaskSampler:
    """Task-stratified prompt batches (CGPO): every batch holds a fixed number of prompts of each task.

        sampler = TaskSampler(rows, batch_size=16, seed=0, tasks=["math", "chat"], task_column="task")
        rows, tasks = sampler.next_batch_with_tasks()   # rows grouped by task, in the order of `tasks`
        state = sampler.state_dict()                    # {"tasks": {task: PromptSampler state}} -> checkpoint

    Each task's rows get their own ``PromptSampler`` (seeded ``seed + 100_003 * position`` of the task), so each
    task is visited epoch by epoch independently; with one task the batches are exactly PromptSampler's. Per batch, task t gets round(batch_size * share_t) prompts (largest
    remainder, ties to the earlier task); a task's share is its entry in ``shares`` (relative, need not sum to 1)
    or, when absent, its fraction of the rows. A row without ``task_column`` belongs to ``default_task`` (an error
    when that is None).
    """

    def __init__(self, rows: list[dict], batch_size: int, seed: int, tasks: list[str], task_column: str = "task",
                 shares: dict[str, float | None] | None = None, default_task: str | None = None) -> None:
        if not rows:
            raise ValueError("TaskSampler: no rows to sample from")
        if not tasks:
            raise ValueError("TaskSampler: no tasks")
        self.tasks, self.task_column, self.default_task = list(tasks), task_column, default_task
        by_task: dict[str, list[dict]] = {t: [] for t in self.tasks}
        for i, row in enumerate(rows):
            task = self.task_of(row, i)
            if task not in by_task:
                raise ValueError(f"TaskSampler: row {i} has {task_column}={task!r}, which is not a task of "
                                 f"objective.tasks ({self.tasks})")
            by_task[task].append(row)
        empty = [t for t, r in by_task.items() if not r]
        if empty:
            raise ValueError(f"TaskSampler: task {empty[0]!r} has no training rows (column {task_column!r})")
        shares = shares or {}
        weights = [shares.get(t) or len(by_task[t]) / len(rows) for t in self.tasks]
        self.counts = dict(zip(self.tasks, _largest_remainder(batch_size, weights)))
        starved = [t for t, n in self.counts.items() if n == 0]
        if starved:
            raise ValueError(f"TaskSampler: task {starved[0]!r} gets 0 of {batch_size} prompts per step; raise "
                             f"rollout.prompts_per_step or the task's share (counts {self.counts})")
        self.samplers = {t: PromptSampler(by_task[t], self.counts[t], seed + 100_003 * k)
                         for k, t in enumerate(self.tasks)}

    def task_of(self, row: dict, index: int | None = None) -> str:
        task = row.get(self.task_column)
        if task is None:
            if self.default_task is None:
                where = f"row {index}" if index is not None else "a row"
                raise ValueError(f"TaskSampler: {where} has no {self.task_column!r} column; add it to the data or "
                                 "set objective.default_task")
            return self.default_task
        return str(task)

    def next_batch_with_tasks(self) -> tuple[list[dict], list[str]]:
        rows: list[dict] = []
        tasks: list[str] = []
        for t in self.tasks:
            part = self.samplers[t].next_batch()
            rows.extend(part)
            tasks.extend([t] * len(part))
        return rows, tasks

    def next_batch(self) -> list[dict]:
        return self.next_batch_with_tasks()[0]

    def state_dict(self) -> dict[str, dict[str, dict[str, int]]]:
        return {"tasks": {t: s.state_dict() for t, s in self.samplers.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("tasks")
        if not isinstance(saved, dict) or set(saved) != set(self.samplers):
            raise ValueError(f"TaskSampler.load_state_dict: the checkpoint's tasks "
                             f"{sorted(saved) if isinstance(saved, dict) else saved!r} != the recipe's "
                             f"{sorted(self.samplers)}")
        for t, s in self.samplers.items():
            s.load_state_dict(saved[t])


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Integers summing to ``total`` in proportion to ``weights`` (Hamilton's method; ties to the earlier)."""
    norm = sum(weights)
    quotas = [total * w / norm for w in weights]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts
