"""Rollout functions: the only callers of the rollout engines, built by name from ``rollout.kind``.

    rollout_fn = build_rollout_fn(recipe.rollout, engines)      # "single_turn"
    batch = rollout_fn(rows, settings)                          # RolloutBatch for the rows' prompts
    more = rollout_fn.continue_ids(prefixes, settings)          # continue token-id prefixes (MRT progress)

A rollout function turns prompt rows (each a dict with ``prompt`` and the dataset's other columns) into
trajectories: token ids kept as the engine produced them, masks, per-token policy versions, and the rows' columns
carried along as ``extras`` for the reward plugins. Training rollouts, evaluation, CGPO and MRT's progress
estimates all go through one. ``single_turn`` is one completion per sample; a multi-turn ``agent`` function
(environments, tools) slots in here under its own ``rollout.kind``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from rlhf.types import RolloutBatch, SamplingSettings


class RolloutFn(Protocol):
    tokenizer: Any  # the engines' tokenizer (decoding, locating steps)
    pad_token_id: int

    def __call__(self, rows: list[dict], settings: SamplingSettings) -> RolloutBatch:
        """``settings.n`` trajectories per row (1 when greedy), grouped by row in row order."""

    def continue_ids(self, prefixes: list[list[int]], settings: SamplingSettings) -> RolloutBatch:
        """Continue token-id prefixes (a prompt plus part of a completion); completions hold only the new text."""


class SingleTurn:
    """One completion per sample from the engines (a RolloutGroup of Ray actors, or one engine in-process)."""

    def __init__(self, engines: Any, skip_columns: Sequence[str] = ("prompt", "completion"),
                 skip_private: bool = False) -> None:
        self.engines = engines
        self.skip_columns = tuple(skip_columns)
        self.skip_private = skip_private  # leave out "_"-prefixed columns (caches kept on the rows)
        self.tokenizer = engines.tokenizer
        self.pad_token_id = int(engines.pad_token_id)

    def __call__(self, rows: list[dict], settings: SamplingSettings) -> RolloutBatch:
        batch = self.engines.generate([row["prompt"] for row in rows], settings)
        batch.extras = row_columns(rows, batch.batch_size // len(rows), self.skip_columns, self.skip_private)
        return batch

    def continue_ids(self, prefixes: list[list[int]], settings: SamplingSettings) -> RolloutBatch:
        return self.engines.generate_ids(prefixes, settings)


def row_columns(rows: list[dict], per_row: int, skip: Sequence[str], skip_private: bool = False
                ) -> dict[str, list[Any]]:
    """The rows' dataset columns (all but ``skip``, and ``_``-prefixed ones with ``skip_private``), each repeated
    for the ``per_row`` samples of its row (rows of a group are adjacent)."""
    keys = [k for k in rows[0] if k not in skip and not (skip_private and k.startswith("_"))]
    return {k: [row.get(k) for row in rows for _ in range(per_row)] for k in keys}


ROLLOUT_FNS: dict[str, Callable[..., RolloutFn]] = {"single_turn": SingleTurn}


def build_rollout_fn(cfg: Any, engines: Any) -> RolloutFn:
    """The rollout function named by ``cfg.kind`` (the recipe's ``rollout`` section) over ``engines``."""
    try:
        factory = ROLLOUT_FNS[cfg.kind]
    except KeyError:
        raise ValueError(f"rollout.kind: unknown rollout function {cfg.kind!r}; known: {sorted(ROLLOUT_FNS)}") from None
    return factory(engines)
