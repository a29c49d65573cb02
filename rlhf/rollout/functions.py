"""Rollout functions: the only callers of the rollout engines, built by name from ``rollout.kind``.

    rollout_fn = build_rollout_fn(recipe, engines)              # recipe.rollout.kind: single_turn | agent
    batch = rollout_fn(rows, settings)                          # RolloutBatch for the rows' prompts
    more = rollout_fn.continue_ids(prefixes, settings)          # continue token-id prefixes (MRT progress)

A rollout function turns prompt rows (each a dict with ``prompt`` and the dataset's other columns) into
trajectories: token ids kept as the engine produced them, masks, per-token policy versions, and the rows' columns
carried along as ``extras`` for the reward plugins. Training rollouts, evaluation, CGPO and MRT's progress
estimates all go through one. ``single_turn`` is one completion per sample; ``agent`` runs multi-turn episodes
against an environment (rlhf/rollout/agent.py): its turns are the reward vector's steps (``turns``).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from rlhf.rollout.base import row_columns
from rlhf.types import RolloutBatch, SamplingSettings


class RolloutFn(Protocol):
    tokenizer: Any  # the engines' tokenizer (decoding, locating steps)
    pad_token_id: int

    def __call__(self, rows: list[dict], settings: SamplingSettings) -> RolloutBatch:
        """``settings.n`` trajectories per row (1 when greedy), grouped by row in row order."""

    def continue_ids(self, prefixes: list[list[int]], settings: SamplingSettings) -> RolloutBatch:
        """Continue token-id prefixes (a prompt plus part of a completion); completions hold only the new text."""

    def turns(self, rollout: RolloutBatch) -> tuple[list[list[tuple[int, int]]], Any, Any] | None:
        """Multi-turn rollouts: (character spans of each row's turns, step_ends (B, S), step_keys (B, S)), the
        steps of the reward vector; None: steps come from the recipe's segmenter (process rewards)."""

    def metrics(self, rollout: RolloutBatch) -> dict[str, float]:
        """What this function logs about a batch it produced (agent: turns, tool calls, end reasons)."""


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

    def turns(self, rollout: RolloutBatch) -> None:
        return None

    def metrics(self, rollout: RolloutBatch) -> dict[str, float]:
        return {}


def _agent(recipe: Any, engines: Any) -> RolloutFn:
    from rlhf.rollout.agent import AgentRollout

    return AgentRollout(engines, recipe.rollout.agent, recipe.data.chat_template, recipe.data.max_prompt_tokens)


ROLLOUT_FNS: dict[str, Callable[[Any, Any], RolloutFn]] = {
    "single_turn": lambda recipe, engines: SingleTurn(engines),
    "agent": _agent,
}


def build_rollout_fn(recipe: Any, engines: Any) -> RolloutFn:
    """The rollout function named by ``recipe.rollout.kind`` over ``engines``."""
    kind = recipe.rollout.kind
    try:
        factory = ROLLOUT_FNS[kind]
    except KeyError:
        raise ValueError(f"rollout.kind: unknown rollout function {kind!r}; known: {sorted(ROLLOUT_FNS)}") from None
    return factory(recipe, engines)
