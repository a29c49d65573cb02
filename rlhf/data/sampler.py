"""Seeded, resumable prompt batches: every batch is full, the order reshuffles each epoch.

    sampler = PromptSampler(train_rows, batch_size=16, seed=0)
    batch = sampler.next_batch()           # list of 16 row dicts
    state = sampler.state_dict()           # {"epoch": e, "position": p} -> checkpoint
    sampler.load_state_dict(state)         # the next batch is exactly the one an uninterrupted run would get

Epoch ``e`` visits the rows in the order of ``random.Random(seed + e).shuffle``. A batch that reaches the end of
an epoch is completed from the start of the next one, so no row is skipped and every batch has ``batch_size``
rows (a row may repeat within a batch only when ``batch_size`` exceeds the number of rows).
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
