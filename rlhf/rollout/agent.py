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

The batch layout and the columns reward plugins can read (``env_rewards``, ``env_turn_rewards``, ``end_reason``,
``state_keys``, ...) are in rlhf/rollout/episode.py, with the Episode state.

Failures: a malformed tool call, an unknown tool, bad arguments, a tool that raises or times out -> an error
observation (counted; the episode goes on); a step() or score() that raises or times out -> the episode ends
(reason error; counted; its environment rewards are missing, so components reading them are NaN); a reset() that
fails, or a return value of the wrong type -> a clear error naming the environment, the method and the episode.
"""

from __future__ import annotations

import dataclasses
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import torch

from rlhf.agents.env import (AgentEnvError, EnvCaller, as_rewards, as_step, bind_call, resolve_environment,
                             takes_response, tool_names, tool_specs)
from rlhf.agents.parsers import build_parser
from rlhf.agents.tools import SandboxError
from rlhf.rollout.base import eos_ids
from rlhf.rollout.episode import (AGENT_COLUMNS, END_REASONS, Episode, chat_delimiters, describe, episode_metrics,
                                  episodes_batch, reset_columns, state_key, tool_text)
from rlhf.types import RolloutBatch, SamplingSettings


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
                                    f"{describe(result, cfg.call_timeout_s)}") from result.error

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
        return episodes_batch(rows, n, episodes, self.pad_token_id, self.skip_columns)

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
                                  f"{describe(result, self.cfg.call_timeout_s)}", stacklevel=3)
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
        return episode_metrics(rollout)

    # ------------------------------------------------------------------ one episode

    def _start(self, index: int, row: dict) -> Episode:
        from rlhf.data.collate import prompt_token_ids

        env_kwargs = self.cfg.env_args
        made = self.caller(self.env_cls, **env_kwargs)
        if made.error is not None or made.timed_out:
            raise AgentEnvError(f"environment {self.env_name!r}: constructing episode {index} failed: "
                                f"{describe(made, self.cfg.call_timeout_s)}") from made.error
        env = made.value
        columns = reset_columns(self.env_cls, row, self.env_name)
        caller = EnvCaller(self.cfg.call_timeout_s)
        reset = caller(env.reset, **columns)
        if reset.error is not None or reset.timed_out:
            raise AgentEnvError(f"environment {self.env_name!r}: reset() of episode {index} (row with prompt "
                                f"{str(row.get('prompt'))[:60]!r}) failed: "
                                f"{describe(reset, self.cfg.call_timeout_s)}") from reset.error
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
        ep.keys.append(state_key(ep.state))
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
                results.append(tool_text(result.value))
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
        ep.error = f"{method} of episode {ep.index}: {describe(result, self.cfg.call_timeout_s)}"
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
                ep.error = ep.error or f"close() of episode {ep.index}: {describe(result, self.cfg.call_timeout_s)}"
        ep.caller.close()

    # ------------------------------------------------------------------ the batch

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["AGENT_COLUMNS", "AgentRollout", "END_REASONS", "Episode", "chat_delimiters"]
