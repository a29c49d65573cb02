"""The ``agent`` rollout function: multi-turn episodes against an environment, token-exact.

    rollout_fn = AgentRollout(engines, recipe.rollout.agent, chat_template="auto", max_prompt_tokens=64)
    batch = rollout_fn(rows, settings)          # settings.n episodes per row, grouped by row

Per row, ``n`` episodes, each with its own environment instance (rlhf/agents/env.py):

    reset(**row) -> first observation (None: the row's prompt)  ->  prompt ids (chat template, tools described)
    per turn, all live episodes in one engine call (generate_ids: each continues from its own ids):
        the engine's sampled ids are appended as they are (never re-tokenised; loss_mask 1, the engine's logprobs)
        tool calls in the turn's text (the recipe's tool parser) -> the environment's tools, each with a timeout;
        else step(text) when the environment has one; else the episode is done (its last turn is the answer)
        the observation is encoded once (chat: a tool message between the template's role delimiters; plain:
        rollout.agent.observation_template) and appended as ids (loss_mask 0, version -1)
    until done, max_turns, or the episode's token budget (max_tokens after the prompt); then score(response)

The batch's completion is everything after the prompt (model turns and observations); ``segments`` are the model
turns' token spans; per-row columns the reward plugins can read: ``env_rewards`` (episode: per key the sum of its
turn rewards, then score()'s values), ``env_turn_rewards`` (per turn), ``final_response``, ``num_turns``,
``tool_calls``, ``end_reason`` (done | max_turns | max_tokens | error), ``turn_spans`` (character spans of the model
turns in the completion text) and ``state_keys`` (an id of the observation each turn was taken from: GiGPO's
anchor states).

Failures: a malformed tool call, an unknown tool, bad arguments, a tool that raises or times out -> an error
observation (counted; the episode goes on); a step() or score() that raises or times out -> the episode ends
(reason error; counted; its environment rewards are missing, so components reading them are NaN); a reset() that
fails, or a return value of the wrong type -> a clear error naming the environment, the method and the episode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from rlhf.agents.env import (AgentEnvError, EnvCaller, as_rewards, as_step, resolve_environment, takes_response,
                             tool_names, tool_specs)
from rlhf.agents.parsers import build_parser
from rlhf.agents.tools import SandboxError
from rlhf.rollout.base import eos_ids, row_columns
from rlhf.types import RolloutBatch, SamplingSettings

END_REASONS = ("done", "max_turns", "max_tokens", "error")
AGENT_COLUMNS = ("env_rewards", "env_turn_rewards", "final_response", "num_turns", "tool_calls", "end_reason",
                 "turn_spans", "state_keys")


@dataclass
class Episode:
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


class AgentRollout:
    """``rollout.kind: agent`` (module docstring)."""

    def __init__(self, engines: Any, cfg: Any, chat_template: str = "auto", max_prompt_tokens: int = 128,
                 skip_columns: Sequence[str] = ("prompt", "completion")) -> None:
        self.engines, self.cfg = engines, cfg
        self.tokenizer = engines.tokenizer
        self.pad_token_id = int(engines.pad_token_id)
        self.env_cls = resolve_environment(cfg.env)
        self.env_name = cfg.env
        self.parser = build_parser(cfg.tool_parser)
        self.tools = tool_names(self.env_cls)
        self.specs = tool_specs(self.env_cls)
        self.has_step = callable(getattr(self.env_cls, "step", None))
        self.has_score = callable(getattr(self.env_cls, "score", None))
        self.has_close = callable(getattr(self.env_cls, "close", None))
        if not self.tools and not self.has_step:
            raise AgentEnvError(f"environment {self.env_name!r} has neither tools (public methods) nor step(action):"
                                " the model's turns would have nothing to act on")
        self.caller = EnvCaller(cfg.call_timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="agent-env")
        self.eos = eos_ids(self.tokenizer, None)
        self.max_prompt_tokens, self.skip_columns = max_prompt_tokens, tuple(skip_columns)
        has_template = bool(getattr(self.tokenizer, "chat_template", None)) and chat_template == "auto"
        fmt = cfg.observation_format
        if fmt == "chat" and not has_template:
            raise AgentEnvError("rollout.agent.observation_format: chat needs a tokenizer with a chat template "
                                "(and data.chat_template: auto); use plain")
        self.chat = fmt == "chat" or (fmt == "auto" and has_template)
        self.obs_delimiters = chat_delimiters(self.tokenizer) if self.chat else None
        setup = getattr(self.env_cls, "setup", None)
        if callable(setup):
            result = self.caller(setup)
            if result.error is not None or result.timed_out:
                raise AgentEnvError(f"environment {self.env_name!r}: setup() failed: "
                                    f"{_describe(result, cfg.call_timeout_s)}") from result.error

    # ------------------------------------------------------------------ the RolloutFn protocol

    def __call__(self, rows: list[dict], settings: SamplingSettings) -> RolloutBatch:
        n = 1 if settings.greedy else settings.n
        episodes: list[Episode] = []
        try:
            for i, row in enumerate(rows):
                episodes += [self._start(i * n + k, row) for k in range(n)]
            self._run_turns(episodes, settings)
        except BaseException:
            self._close_all(episodes)  # the error propagates; environments still get their close()
            raise
        list(self.pool.map(self._finish, episodes))
        failed = [ep for ep in episodes if ep.error]
        if failed:  # counted in agent/env_errors; said once per call, with the first cause
            warnings.warn(f"environment {self.env_name!r}: {len(failed)}/{len(episodes)} episodes ended by an "
                          f"environment error, first: {failed[0].error}", stacklevel=2)
        return self._batch(rows, n, episodes)

    def _run_turns(self, episodes: list[Episode], settings: SamplingSettings) -> None:
        """Every live episode takes a turn, in one engine call per turn, then the environments answer."""
        stops = tuple(dict.fromkeys((*settings.stop, *self.parser.stop, *self.cfg.stop)))
        for turn in range(self.cfg.max_turns):
            live = [ep for ep in episodes if ep.end is None]
            if not live:
                break
            budget = max(self.cfg.max_tokens - len(ep.ids) for ep in live)
            turn_settings = dataclasses.replace(
                settings, n=1, stop=stops, max_new_tokens=max(1, min(settings.max_new_tokens, budget)),
                seed=None if settings.seed is None else settings.seed + 7919 * turn)
            out = self.engines.generate_ids([ep.prompt_ids + ep.ids for ep in live], turn_settings)
            for b, ep in enumerate(live):
                self._add_turn(ep, out, b)
            last = turn == self.cfg.max_turns - 1
            list(self.pool.map(lambda ep: self._act(ep, last), [ep for ep in live if ep.end is None]))

    def _close_all(self, episodes: list[Episode]) -> None:
        for ep in episodes:
            if self.has_close and not ep.abandoned:
                result = ep.caller(ep.env.close)
                if result.error is not None or result.timed_out:
                    warnings.warn(f"environment {self.env_name!r}: close() of episode {ep.index} failed: "
                                  f"{_describe(result, self.cfg.call_timeout_s)}", stacklevel=3)
            ep.caller.close()

    def continue_ids(self, prefixes: list[list[int]], settings: SamplingSettings) -> RolloutBatch:
        return self.engines.generate_ids(prefixes, settings)

    def turns(self, rollout: RolloutBatch) -> tuple[list[list[tuple[int, int]]], torch.Tensor, torch.Tensor]:
        """(character spans of each row's model turns, step_ends (B, S), step_keys (B, S)): the turns are the
        reward vector's steps."""
        spans = [list(map(tuple, s)) for s in rollout.extras["turn_spans"]]
        seg = rollout.segments  # (B, N, 2)
        ends = torch.where(seg[..., 1] > seg[..., 0], seg[..., 1] - 1, torch.full_like(seg[..., 1], -1))  # (B, N)
        keys = torch.full(ends.shape, -1, dtype=torch.long)  # (B, N)
        for b, row_keys in enumerate(rollout.extras["state_keys"]):
            keys[b, : len(row_keys)] = torch.tensor(row_keys, dtype=torch.long)
        return spans, ends, keys

    def metrics(self, rollout: RolloutBatch) -> dict[str, float]:
        """Episode statistics of a batch this function produced."""
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

    # ------------------------------------------------------------------ one episode

    def _start(self, index: int, row: dict) -> Episode:
        from rlhf.data.collate import prompt_token_ids

        env_kwargs = self.cfg.env_args
        made = self.caller(self.env_cls, **env_kwargs)
        if made.error is not None or made.timed_out:
            raise AgentEnvError(f"environment {self.env_name!r}: constructing episode {index} failed: "
                                f"{_describe(made, self.cfg.call_timeout_s)}") from made.error
        env = made.value
        columns = _reset_columns(self.env_cls, row, self.env_name)
        caller = EnvCaller(self.cfg.call_timeout_s)
        reset = caller(env.reset, **columns)
        if reset.error is not None or reset.timed_out:
            raise AgentEnvError(f"environment {self.env_name!r}: reset() of episode {index} (row with prompt "
                                f"{str(row.get('prompt'))[:60]!r}) failed: "
                                f"{_describe(reset, self.cfg.call_timeout_s)}") from reset.error
        first = reset.value if reset.value is not None else row.get("prompt")
        if not isinstance(first, str):
            raise AgentEnvError(f"environment {self.env_name!r}: reset() of episode {index} returned "
                                f"{type(reset.value).__name__}; expected the first observation (str) or None with "
                                "a 'prompt' column in the row")
        text = self._prompt_text(first)
        ids = prompt_token_ids(self.tokenizer, text)
        if len(ids) > self.max_prompt_tokens:
            raise AgentEnvError(f"environment {self.env_name!r}: episode {index}'s prompt is {len(ids)} tokens, over "
                                f"data.max_prompt_tokens={self.max_prompt_tokens} (prompt {first[:60]!r}); raise "
                                "the limit or shorten the first observation")
        return Episode(index, row, env, row.get("prompt", first), ids, caller, state=first)

    def _prompt_text(self, first: str) -> str:
        describe = self.cfg.describe_tools and self.specs and self.cfg.tool_parser != "none"
        if self.chat:
            kwargs = {"tools": self.specs} if describe else {}
            return self.tokenizer.apply_chat_template([{"role": "user", "content": first}], tokenize=False,
                                                      add_generation_prompt=True, **kwargs)
        return (self.parser.render_tools(self.specs) + "\n" + first) if describe else first

    def _add_turn(self, ep: Episode, out: RolloutBatch, b: int) -> None:
        """Append the engine's sampled ids of one turn, as they are."""
        k = int(out.completion_mask[b].sum())
        room = self.cfg.max_tokens - len(ep.ids)
        ids = out.completion_ids[b, :k].tolist()[:room]
        lps = out.logprobs[b, :k].tolist()[:room]
        versions = out.versions[b, :k].tolist()[:room]
        stopped = bool(ids) and len(ids) == k and (ids[-1] in self.eos or bool(out.finished[b]))
        if not ids:  # no room left (or nothing generated): no turn
            ep.end = "max_tokens"
            return
        piece = self.tokenizer.decode(ids, skip_special_tokens=True)
        ep.keys.append(_key(ep.state))
        ep.turns.append((len(ep.ids), len(ep.ids) + len(ids)))
        ep.turn_chars.append((len(ep.text), len(ep.text) + len(piece)))
        ep.ids += ids
        ep.logprobs += lps
        ep.versions += versions
        ep.model += [1] * len(ids)
        ep.text += piece
        ep.response = piece
        ep.turn_rewards.append({})
        ep.stopped = stopped
        if len(ids) < k or (len(ep.ids) >= self.cfg.max_tokens and not stopped):
            ep.end = "max_tokens"

    def _act(self, ep: Episode, last: bool) -> None:
        """The environment's answer to the episode's last turn: tools, step, or done."""
        parsed = self.parser.parse(ep.response)
        observation: str | None = None
        if parsed.calls or parsed.errors:
            observation = self._run_tools(ep, parsed)
            if ep.end is not None:  # a tool timed out: the environment is abandoned
                return
        elif self.has_step:
            result = ep.caller(ep.env.step, ep.response)
            ep.env_seconds += result.seconds
            if result.error is not None or result.timed_out:
                self._env_failed(ep, "step()", result)
                return
            step = as_step(result.value, self.env_name, ep.index)
            ep.turn_rewards[-1] = step.rewards
            observation = step.observation
            if step.done:
                ep.end = "done"
                return
        else:  # a turn without a tool call is the answer, unless a token budget cut it short
            ep.end = "done" if ep.stopped else "max_tokens"
            return
        if last:
            ep.end = "max_turns"
            return
        if observation is not None:
            self._observe(ep, observation)
        elif self.chat:  # no observation: the template still opens the next assistant turn
            self._append(ep, self._after_eos(ep, self.obs_delimiters[2]), None)
        if ep.end is None and len(ep.ids) >= self.cfg.max_tokens:
            ep.end = "max_tokens"  # no room for another turn

    def _run_tools(self, ep: Episode, parsed: Any) -> str:
        results = [f"error: {message}" for message in parsed.errors]
        ep.parse_errors += len(parsed.errors)
        for call in parsed.calls:
            ep.tool_calls += 1
            from rlhf.agents.env import bind_call

            problem = bind_call(self.env_cls, call.name, tuple(call.args), dict(call.kwargs))
            if problem is not None:
                ep.tool_errors += 1
                results.append(f"error: {problem}")
                continue
            result = ep.caller(getattr(ep.env, call.name), *call.args, **call.kwargs)
            ep.env_seconds += result.seconds
            if result.timed_out:  # the call may still be running: the environment is not called again
                ep.tool_timeouts += 1
                self._env_failed(ep, f"tool {call.name!r}", result)
                return ""
            elif isinstance(result.error, SandboxError):  # the sandbox cannot run here: no observation hides it
                raise AgentEnvError(f"environment {self.env_name!r}, episode {ep.index}: tool {call.name!r}: "
                                    f"{result.error}") from result.error
            elif result.error is not None:
                ep.tool_errors += 1
                results.append(f"error: {type(result.error).__name__}: {str(result.error)[:200]}")
            else:
                results.append(_tool_text(result.value))
        return "\n".join(results)

    def _observe(self, ep: Episode, observation: str) -> None:
        """Encode the observation once and append it (masked out of the loss), if it fits the budget."""
        if self.chat:
            prefix, suffix, _ = self.obs_delimiters
            text = self._after_eos(ep, prefix) + observation + suffix
        else:
            text = self.cfg.observation_template.format(observation=observation)
        self._append(ep, text, observation)

    def _after_eos(self, ep: Episode, text: str) -> str:
        """The template's text after a model turn, without the end-of-turn token the model already sampled."""
        if ep.stopped and ep.ids:
            said = self.tokenizer.decode([ep.ids[-1]], skip_special_tokens=False)
            if said and text.startswith(said):
                return text[len(said):]
        return text

    def _append(self, ep: Episode, text: str, observation: str | None) -> None:
        """Append environment text as ids (loss_mask 0, version -1); an episode it would overflow ends."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ep.ids) + len(ids) >= self.cfg.max_tokens:
            ep.end = "max_tokens"
            return
        ep.ids += ids
        ep.logprobs += [0.0] * len(ids)
        ep.versions += [-1] * len(ids)
        ep.model += [0] * len(ids)
        ep.text += self.tokenizer.decode(ids, skip_special_tokens=True)
        if observation is not None:
            ep.state = observation
            ep.observations.append(observation)

    def _env_failed(self, ep: Episode, method: str, result: Any) -> None:
        ep.env_errors += 1
        ep.end = "error"
        ep.score = {}
        ep.turn_rewards[-1] = {}
        ep.error = f"{method} of episode {ep.index}: {_describe(result, self.cfg.call_timeout_s)}"
        ep.abandoned = ep.abandoned or result.timed_out

    def _finish(self, ep: Episode) -> None:
        """score(response) and close() at the episode's end (not on an abandoned environment)."""
        if ep.end is None:
            ep.end = "max_turns"
        if self.has_score and ep.end != "error":
            args = (ep.response,) if takes_response(self.env_cls) else ()
            result = ep.caller(ep.env.score, *args)
            ep.env_seconds += result.seconds
            if result.error is not None or result.timed_out:
                self._env_failed(ep, "score()", result)
            else:
                ep.score = as_rewards(result.value, self.env_name, "score", ep.index)
        if self.has_close and not ep.abandoned:
            result = ep.caller(ep.env.close)
            if result.error is not None or result.timed_out:
                ep.env_errors += 1
                ep.error = ep.error or f"close() of episode {ep.index}: {_describe(result, self.cfg.call_timeout_s)}"
        ep.caller.close()

    # ------------------------------------------------------------------ the batch

    def _batch(self, rows: list[dict], n: int, episodes: list[Episode]) -> RolloutBatch:
        from rlhf.data.collate import left_pad

        prompt_ids, prompt_mask = left_pad([ep.prompt_ids for ep in episodes], self.pad_token_id)  # (B, P)
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
        extras = row_columns(rows, n, self.skip_columns)
        clash = [c for c in AGENT_COLUMNS if c in extras]
        if clash:
            raise AgentEnvError(f"dataset column {clash[0]!r} clashes with a column the agent rollout adds; rename it")
        extras.update({
            "env_rewards": [_episode_rewards(ep) for ep in episodes],
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
            completion_ids=right([ep.ids for ep in episodes], self.pad_token_id, torch.long),
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

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- helpers


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


def _reset_columns(cls: type, row: dict, env_name: str) -> dict:
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


def _episode_rewards(ep: Episode) -> dict[str, float]:
    """Per key, the sum of the turn rewards; score()'s values replace them (an error: nothing)."""
    if ep.end == "error":
        return {}
    out: dict[str, float] = {}
    for rewards in ep.turn_rewards:
        for k, v in rewards.items():
            out[k] = out.get(k, 0.0) + v
    out.update(ep.score)
    return out


def _tool_text(value: Any) -> str:
    import json

    if isinstance(value, str):
        return value
    try:
        return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    except (TypeError, ValueError):
        return str(value)


def _key(state: str) -> int:
    """A 62-bit id of a state's text (GiGPO anchor states: equal texts, equal ids)."""
    return int.from_bytes(hashlib.blake2b(state.encode("utf-8"), digest_size=8).digest(), "big") >> 2


def _describe(result: Any, timeout_s: float) -> str:
    if result.timed_out:
        return f"no answer within rollout.agent.call_timeout_s={timeout_s:g} s"
    return f"{type(result.error).__name__}: {result.error}"


__all__ = ["AGENT_COLUMNS", "AgentRollout", "END_REASONS", "chat_delimiters"]
