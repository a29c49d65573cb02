"""An agent episode's state and what is built from it: the RolloutBatch of a step's episodes, their metrics, the
chat template's delimiters around observations, and small helpers of the agent rollout (rlhf/rollout/agent.py).

    batch = episodes_batch(rows, n, episodes, pad_token_id, skip_columns)   # the batch layout below
    metrics = episode_metrics(batch)                                         # agent/* metrics

The batch's completion is everything after the prompt (model turns and observations); ``segments`` are the model
turns' token spans; per-row columns the reward plugins can read: ``env_rewards`` (episode: per key the sum of its
turn rewards, then score()'s values), ``env_turn_rewards`` (per turn), ``final_response``, ``num_turns``,
``tool_calls``, ``end_reason`` (done | max_turns | max_tokens | error), ``turn_spans`` (character spans of the model
turns in the completion text) and ``state_keys`` (an id of the observation each turn was taken from: GiGPO's
anchor states); ``_``-prefixed columns carry the counts behind the metrics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from rlhf.agents.env import AgentEnvError
from rlhf.rollout.base import row_columns
from rlhf.types import RolloutBatch

END_REASONS = ("done", "max_turns", "max_tokens", "error")
AGENT_COLUMNS = ("env_rewards", "env_turn_rewards", "final_response", "num_turns", "tool_calls", "end_reason",
                 "turn_spans", "state_keys")


@dataclass
class Episode:
    """One episode while it runs: its environment, the ids after the prompt (model turns and observations, with the
    model's logprobs and versions), the turns' spans and state ids, rewards, why it ended, and its counts."""

    index: int  # row-major: row * n + sample
    row: dict
    env: Any
    prompt: str  # the row's prompt (the first observation when the row has none): reward plugins' `prompts`
    prompt_ids: list[int]
    caller: Any = None  # the episode's EnvCaller (its own event loop for async environments)
    ids: list[int] = field(default_factory=list)  # everything after the prompt
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    model: list[int] = field(default_factory=list)  # 1 on tokens the policy generated
    text: str = ""  # the decoded completion, piece by piece
    turns: list[tuple[int, int]] = field(default_factory=list)  # model turns' token spans [start, end)
    turn_chars: list[tuple[int, int]] = field(default_factory=list)  # their character spans in `text`
    keys: list[int] = field(default_factory=list)  # state id each turn was taken from
    state: str = ""  # the last observation's text (the state of the next turn)
    turn_rewards: list[dict[str, float]] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)  # the environment's texts, as appended
    score: dict[str, float] = field(default_factory=dict)
    response: str = ""  # the last model turn's text
    end: str | None = None
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0
    parse_errors: int = 0
    env_errors: int = 0
    env_seconds: float = 0.0
    error: str = ""  # why the environment ended the episode (end == "error")
    stopped: bool = False  # the last turn ended on EOS or a stop string (not cut by a token budget)
    abandoned: bool = False  # a call timed out and may still run: the environment is not called again


def episodes_batch(rows: list[dict], n: int, episodes: list[Episode], pad_token_id: int,
                   skip_columns: Sequence[str]) -> RolloutBatch:
    """The episodes of ``rows`` (``n`` each, row-major) as one RolloutBatch (the module docstring's layout)."""
    from rlhf.data.collate import left_pad

    prompt_ids, prompt_mask = left_pad([ep.prompt_ids for ep in episodes], pad_token_id)  # (B, P)
    width = max(1, max(len(ep.ids) for ep in episodes))  # C

    def right(values: Sequence[Sequence[float]], fill: float, dtype: torch.dtype) -> torch.Tensor:
        out = torch.full((len(values), width), fill, dtype=dtype)  # (B, C)
        for b, v in enumerate(values):
            if len(v):
                out[b, : len(v)] = torch.tensor(list(v), dtype=dtype)
        return out

    lengths = [len(ep.ids) for ep in episodes]
    n_turns = max(1, max(len(ep.turns) for ep in episodes))
    segments = torch.full((len(episodes), n_turns, 2), -1, dtype=torch.long)  # (B, N, 2)
    for b, ep in enumerate(episodes):
        if ep.turns:
            segments[b, : len(ep.turns)] = torch.tensor(ep.turns, dtype=torch.long)
    extras = row_columns(rows, n, skip_columns)
    clash = [c for c in AGENT_COLUMNS if c in extras]
    if clash:
        raise AgentEnvError(f"dataset column {clash[0]!r} clashes with a column the agent rollout adds; rename it")
    extras.update({
        "env_rewards": [episode_rewards(ep) for ep in episodes],
        "env_turn_rewards": [list(ep.turn_rewards) for ep in episodes],
        "final_response": [ep.response for ep in episodes],
        "num_turns": [len(ep.turns) for ep in episodes],
        "tool_calls": [ep.tool_calls for ep in episodes],
        "end_reason": [ep.end for ep in episodes],
        "turn_spans": [list(ep.turn_chars) for ep in episodes],
        "state_keys": [list(ep.keys) for ep in episodes],
        "_tool_errors": [ep.tool_errors for ep in episodes],
        "_tool_timeouts": [ep.tool_timeouts for ep in episodes],
        "_parse_errors": [ep.parse_errors for ep in episodes],
        "_env_errors": [ep.env_errors for ep in episodes],
        "_env_seconds": [ep.env_seconds for ep in episodes],
    })
    return RolloutBatch(
        prompts=[ep.prompt for ep in episodes],
        completions=[ep.text for ep in episodes],
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=right([ep.ids for ep in episodes], pad_token_id, torch.long),
        completion_mask=right([[1] * k for k in lengths], 0, torch.long),
        logprobs=right([ep.logprobs for ep in episodes], 0.0, torch.float32),
        group_ids=torch.arange(len(rows)).repeat_interleave(n),
        # not cut by a token budget: the last turn ended on EOS or a stop string, and no budget ended it
        finished=torch.tensor([ep.stopped and ep.end in ("done", "max_turns") for ep in episodes],
                              dtype=torch.bool),
        loss_mask=right([ep.model for ep in episodes], 0, torch.long),
        versions=right([ep.versions for ep in episodes], -1, torch.long),
        segments=segments,
        extras=extras,
    )


def episode_metrics(rollout: RolloutBatch) -> dict[str, float]:
    """Episode statistics of a batch built by ``episodes_batch``."""
    x = rollout.extras
    n = max(1, rollout.batch_size)
    turns = sum(x["num_turns"])
    out = {
        "agent/turns_mean": turns / n,
        "agent/tool_calls_per_turn": sum(x["tool_calls"]) / max(1, turns),
        "agent/episodes_with_tool_call": sum(c > 0 for c in x["tool_calls"]) / n,
        "agent/tool_errors": float(sum(x["_tool_errors"])),
        "agent/tool_timeouts": float(sum(x["_tool_timeouts"])),
        "agent/parse_errors": float(sum(x["_parse_errors"])),
        "agent/env_errors": float(sum(x["_env_errors"])),
        "agent/env_seconds": float(sum(x["_env_seconds"])),
        "agent/model_token_fraction": float(rollout.loss_mask.sum()) / max(1, int(rollout.completion_mask.sum())),
    }
    for reason in END_REASONS:
        out[f"agent/end/{reason}"] = sum(r == reason for r in x["end_reason"]) / n
    return out


def chat_delimiters(tokenizer: Any) -> tuple[str, str, str]:
    """The text a chat template writes after an assistant turn: around a tool message (prefix, suffix; the suffix
    ends with the next assistant turn's header), and, with no message between, up to the next assistant turn's
    header (again). Found by rendering with sentinels."""
    said, seen = "\x00ASSISTANT\x00", "\x00TOOL\x00"
    base = [{"role": "user", "content": "u"}, {"role": "assistant", "content": said}]
    try:
        text = tokenizer.apply_chat_template(base + [{"role": "tool", "content": seen}], tokenize=False,
                                             add_generation_prompt=True)
        again = tokenizer.apply_chat_template(base, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template without a tool role
        raise AgentEnvError(f"rollout.agent.observation_format: chat: the tokenizer's chat template cannot render a "
                            f"tool message ({type(exc).__name__}: {exc}); use observation_format: plain") from exc
    if said not in text or seen not in text or said not in again:
        raise AgentEnvError("rollout.agent.observation_format: chat: the chat template drops message contents; use "
                            "observation_format: plain")
    prefix, suffix = text.split(said, 1)[1].split(seen, 1)
    return prefix, suffix, again.split(said, 1)[1]


def reset_columns(cls: type, row: dict, env_name: str) -> dict:
    """The row's columns reset() takes: all public ones with **kwargs, else the ones it names (missing -> error)."""
    import inspect

    public = {k: v for k, v in row.items() if not k.startswith("_")}
    params = list(inspect.signature(cls.reset).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return public
    names = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    missing = [p.name for p in params if p.default is p.empty and p.name not in public
               and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if missing:
        raise AgentEnvError(f"environment {env_name!r}: reset() needs the column {missing[0]!r}, which the dataset "
                            f"rows do not have (columns: {sorted(public)})")
    return {k: public[k] for k in names if k in public}


def episode_rewards(ep: Episode) -> dict[str, float]:
    """Per key, the sum of the turn rewards; score()'s values replace them (an error: nothing)."""
    if ep.end == "error":
        return {}
    out: dict[str, float] = {}
    for rewards in ep.turn_rewards:
        for k, v in rewards.items():
            out[k] = out.get(k, 0.0) + v
    out.update(ep.score)
    return out


def tool_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    except (TypeError, ValueError):
        return str(value)


def state_key(state: str) -> int:
    """A 62-bit id of a state's text (GiGPO anchor states: equal texts, equal ids)."""
    return int.from_bytes(hashlib.blake2b(state.encode("utf-8"), digest_size=8).digest(), "big") >> 2


def describe(result: Any, timeout_s: float) -> str:
    if result.timed_out:
        return f"no answer within rollout.agent.call_timeout_s={timeout_s:g} s"
    return f"{type(result.error).__name__}: {result.error}"
