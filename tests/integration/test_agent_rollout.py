"""The agent rollout function on a real tiny model and the `hf` engine: token-exact multi-turn trajectories, masks,
logprob parity with the trainer's code, no gradient on observations, the reward vector's turns, and every bad
input of an environment or a tool (each counted in the episode, or a clear error naming environment and episode).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from rlhf.agents import AgentEnvError, Step, environment
from rlhf.config.schema import AgentConfig, TinyModelConfig
from rlhf.types import SamplingSettings

DATA = Path(__file__).resolve().parents[2] / "data"


def _rows(name: str, n: int) -> list[dict]:
    with open(DATA / f"agent_{name}_train.jsonl") as f:
        return [json.loads(line) for line in f][:n]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from rlhf.models.tiny import materialize_tiny
    from rlhf.rollout.hf import HFEngine

    corpus = [r["prompt"] + r["completion"] for r in _rows("calculator", 300) + _rows("game", 300)]
    cfg = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          max_position_embeddings=128)
    path = materialize_tiny(cfg, corpus, str(tmp_path_factory.mktemp("agent") / "model"), seed=0)
    return HFEngine(path)


class Recording:
    """The real engine, with every generate_ids call's output kept (to compare the trajectories against)."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.tokenizer, self.pad_token_id = engine.tokenizer, engine.pad_token_id

    def generate_ids(self, prefixes, settings):
        out = self.engine.generate_ids(prefixes, settings)
        self.calls.append((prefixes, out))
        return out


def _rollout(engine, **agent):
    from rlhf.rollout.agent import AgentRollout

    cfg = AgentConfig(**{"describe_tools": False, "observation_format": "plain", **agent})
    return AgentRollout(engine, cfg, max_prompt_tokens=32)


def _game(engine, **kw):
    return _rollout(engine, **{"env": "guess_number", "tool_parser": "none", "stop": ["\n"], "max_turns": 4,
                               "max_tokens": 60, **kw})


def test_turns_are_the_engines_sampled_ids_and_only_they_are_trained(engine):
    spy = Recording(engine)
    fn = _game(spy)
    batch = fn(_rows("game", 3), SamplingSettings(n=2, max_new_tokens=12, seed=3))
    assert batch.batch_size == 6 and batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    n_turns = batch.extras["num_turns"]
    assert len(spy.calls) == max(n_turns)
    for t, (prefixes, out) in enumerate(spy.calls):  # call t continues the episodes still live at turn t, in order
        live = [b for b in range(6) if n_turns[b] > t]
        assert len(prefixes) == len(live)
        for k, b in enumerate(live):
            s, e = batch.segments[b, t].tolist()
            prompt = batch.prompt_ids[b][batch.prompt_mask[b].bool()].tolist()
            assert prefixes[k] == prompt + batch.completion_ids[b, :s].tolist()  # the history, never re-tokenised
            sampled = out.completion_ids[k][out.completion_mask[k].bool()].tolist()
            assert batch.completion_ids[b, s:e].tolist() == sampled[: e - s]  # as sampled (cut only by the budget)
            assert batch.logprobs[b, s:e].tolist() == out.logprobs[k, : e - s].tolist()
    for b in range(6):
        ids = batch.completion_ids[b]
        turns = [(s, e) for s, e in batch.segments[b].tolist() if s >= 0]
        assert len(turns) == batch.extras["num_turns"][b]
        in_turn = torch.zeros_like(batch.loss_mask)
        for s, e in turns:
            in_turn[b, s:e] = 1
        assert torch.equal(batch.loss_mask[b], in_turn[b])  # 1 exactly on the model's tokens
        obs = (batch.completion_mask[b] == 1) & (batch.loss_mask[b] == 0)
        assert (batch.versions[b][obs] == -1).all() and (batch.logprobs[b][obs] == 0).all()
        if obs.any():  # observations are the environment's text, encoded once
            text = engine.tokenizer.decode(ids[obs].tolist(), skip_special_tokens=True)
            assert "<obs>" in text and "</obs>" in text


def test_trainer_logprobs_equal_the_engines_on_model_tokens(engine):
    from rlhf.objectives.common import completion_logprobs

    batch = _game(engine)(_rows("game", 4), SamplingSettings(n=2, max_new_tokens=12, seed=5))
    lp = completion_logprobs(engine.model, batch.input_ids(), batch.attention_mask(), batch.prompt_ids.shape[1])
    model = batch.loss_mask.bool()
    assert int(model.sum()) > 20 and int((batch.completion_mask.bool() & ~model).sum()) > 0
    assert torch.allclose(lp[model], batch.logprobs[model], atol=1e-5)


def test_observation_tokens_get_no_gradient(engine):
    from rlhf.objectives.common import Surrogate, completion_logprobs

    batch = _game(engine)(_rows("game", 2), SamplingSettings(n=2, max_new_tokens=12, seed=7))
    engine.model.requires_grad_(True)
    try:
        lp = completion_logprobs(engine.model, batch.input_ids(), batch.attention_mask(), batch.prompt_ids.shape[1])
        lp.retain_grad()
        advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
        Surrogate().loss(lp, None, None, advantages, batch.loss_mask.float()).loss.backward()
    finally:
        engine.model.requires_grad_(False)
        engine.model.zero_grad(set_to_none=True)
    observation = batch.completion_mask.bool() & ~batch.loss_mask.bool()
    assert observation.any() and (lp.grad[observation] == 0).all()
    assert (lp.grad[batch.loss_mask.bool()] != 0).any()


def test_turns_become_the_reward_vectors_steps(engine):
    from rlhf.config.schema import RewardComponentConfig
    from rlhf.runtime.collect import score_rollout
    from rlhf.scoring.group import RewardGroup

    fn = _game(engine)
    batch = fn(_rows("game", 2), SamplingSettings(n=2, max_new_tokens=12, seed=11))
    group = RewardGroup([RewardComponentConfig(name="solved", plugin="env_reward", args={"key": "solved"}),
                         RewardComponentConfig(name="hit", plugin="env_turn_reward", kind="process", outcome="sum",
                                               args={"key": "success"})], use_ray=False)
    rv, metrics = score_rollout(group, fn, batch)
    n_turns = batch.extras["num_turns"]
    for b in range(4):
        ends = rv.step_ends[b][rv.step_ends[b] >= 0]
        assert ends.tolist() == [e - 1 for s, e in batch.segments[b].tolist()[: n_turns[b]]]
        assert (rv.step_keys[b][: n_turns[b]] >= 0).all() and (rv.step_keys[b][n_turns[b]:] == -1).all()
        turn_hits = [t.get("success", 0.0) for t in batch.extras["env_turn_rewards"][b]]
        assert rv.steps[b, : n_turns[b], 0].tolist() == turn_hits
        assert rv.values[b, 0].item() == batch.extras["env_rewards"][b]["solved"]
    assert len(set(rv.step_keys[:, 0].tolist())) == 1  # every game starts from the same text "guess 1-16": one state
    assert set(batch.extras["end_reason"]) <= {"done", "max_turns", "max_tokens", "error"}
    assert "agent/turns_mean" in fn.metrics(batch)


# --------------------------------------------------------------------------- bad input


@environment("test_agent_step_raises")
class StepRaises:
    def reset(self, **row):
        return None

    def step(self, action: str):
        raise RuntimeError("the simulator crashed")


@environment("test_agent_step_hangs")
class StepHangs:
    def reset(self, **row):
        return None

    def step(self, action: str):
        time.sleep(30)


@environment("test_agent_step_wrong_type")
class StepWrongType:
    def reset(self, **row):
        return None

    def step(self, action: str):
        return "higher"


@environment("test_agent_reset_raises")
class ResetRaises:
    def reset(self, **row):
        raise KeyError("target")

    def step(self, action: str):
        return Step("x", {}, False)


@environment("test_agent_tools")
class Tools:
    def reset(self, **row):
        return None

    def add(self, a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def boom(self) -> str:
        """Always fails."""
        raise ValueError("no such file")

    def slow(self) -> str:
        """Never answers in time."""
        time.sleep(30)
        return "late"


def test_a_step_that_raises_or_hangs_ends_the_episode_and_is_counted(engine):
    rows = _rows("game", 2)
    with pytest.warns(UserWarning, match="test_agent_step_raises.*simulator crashed"):
        batch = _rollout(engine, env="test_agent_step_raises", tool_parser="none", stop=["\n"])(
            rows, SamplingSettings(n=2, max_new_tokens=6, seed=1))
    assert batch.extras["end_reason"] == ["error"] * 4 and batch.extras["env_rewards"] == [{}] * 4
    fn = _rollout(engine, env="test_agent_step_hangs", tool_parser="none", stop=["\n"], call_timeout_s=0.3)
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="call_timeout_s=0.3"):
        batch = fn(rows, SamplingSettings(n=1, max_new_tokens=6, seed=1))
    assert time.perf_counter() - start < 10 and batch.extras["end_reason"] == ["error"] * 2
    assert fn.metrics(batch)["agent/env_errors"] == 2.0 and fn.metrics(batch)["agent/end/error"] == 1.0


def test_contract_violations_are_clear_errors(engine):
    rows = _rows("game", 1)
    with pytest.raises(AgentEnvError, match="test_agent_step_wrong_type.*episode 0.*step\\(\\) returned str"):
        _rollout(engine, env="test_agent_step_wrong_type", tool_parser="none")(rows, SamplingSettings(n=1, seed=1))
    with pytest.raises(AgentEnvError, match="test_agent_reset_raises.*reset\\(\\) of episode 0.*KeyError"):
        _rollout(engine, env="test_agent_reset_raises", tool_parser="none")(rows, SamplingSettings(n=1, seed=1))
    with pytest.raises(AgentEnvError, match="no environment of that name; did you mean 'calculator'"):
        _rollout(engine, env="calculater")
    long_row = [{**rows[0], "prompt": "1" * 40}]
    with pytest.raises(AgentEnvError, match="episode 0's prompt is 4[0-9] tokens, over data.max_prompt_tokens=32"):
        _game(engine)(long_row, SamplingSettings(n=1, seed=1))


def test_bad_tool_calls_become_error_observations(engine):
    from rlhf.agents.env import EnvCaller
    from rlhf.rollout.agent import Episode

    fn = _rollout(engine, env="test_agent_tools", tool_parser="call", call_timeout_s=0.3)
    env = Tools()
    cases = {
        "<call>add(2, 3)</call>": ("5", 0),
        "<call>add(2, </call>": ("error: ", 0),  # malformed: a parse error
        "<call>mul(2, 3)</call>": ("error: unknown tool 'mul'; tools: add, boom, slow", 1),
        "<call>add(2)</call>": ("error: bad arguments for add", 1),
        "<call>add('2', 3)</call>": ("error: bad arguments for add: a must be integer", 1),
        "<call>boom()</call>": ("error: ValueError: no such file", 1),
    }
    for text, (observation, tool_errors) in cases.items():
        ep = Episode(0, {}, env, "p", [1], EnvCaller(0.3), response=text, turn_rewards=[{}], stopped=True)
        fn._act(ep, last=False)
        assert ep.end is None and ep.ids and ep.model == [0] * len(ep.ids), text  # goes on; nothing trained
        assert ep.observations[-1].startswith(observation), (text, ep.observations)
        assert ep.tool_errors == tool_errors, text
    ep = Episode(0, {}, env, "p", [1], EnvCaller(0.3), response="the answer is 5", turn_rewards=[{}], stopped=True)
    fn._act(ep, last=False)
    assert ep.end == "done" and ep.ids == []  # no tool call: the answer
    ep = Episode(0, {}, env, "p", [1], EnvCaller(0.3), response="the answer is 5", turn_rewards=[{}], stopped=False)
    fn._act(ep, last=False)
    assert ep.end == "max_tokens"  # an answer cut short by the turn's token budget is not "done"
    # a tool that hangs: the call may still be running, so the environment is abandoned and the episode ends
    ep = Episode(0, {}, env, "p", [1], EnvCaller(0.3), response="<call>slow()</call>", turn_rewards=[{}],
                 stopped=True)
    fn._act(ep, last=False)
    assert ep.end == "error" and ep.abandoned and ep.tool_timeouts == 1 and "timed out" not in ep.error
    assert "call_timeout_s=0.3" in ep.error and ep.ids == []


@environment("test_agent_async")
class AsyncOnOneLoop:
    """Async methods; what reset ties to the event loop must still work in step and score."""

    async def reset(self, **row):
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.ready = self.loop.create_future()
        self.loop.call_soon(self.ready.set_result, "ok")
        return None

    async def step(self, action: str) -> Step:
        import asyncio

        same = asyncio.get_running_loop() is self.loop and await self.ready == "ok"
        return Step("x", {"same_loop": float(same)}, done=True)

    def close(self):
        raise OSError("the simulator is already gone")


def test_async_environments_keep_one_loop_per_episode_and_close_failures_are_counted(engine):
    fn = _rollout(engine, env="test_agent_async", tool_parser="none", stop=["\n"])
    with pytest.warns(UserWarning, match="close\\(\\) of episode .*OSError: the simulator is already gone"):
        batch = fn(_rows("game", 2), SamplingSettings(n=2, max_new_tokens=6, seed=4))
    assert [t[0] for t in batch.extras["env_turn_rewards"]] == [{"same_loop": 1.0}] * 4
    assert batch.extras["end_reason"] == ["done"] * 4 and fn.metrics(batch)["agent/env_errors"] == 4.0


def test_budgets_end_episodes(engine):
    fn = _game(engine, max_tokens=8)
    batch = fn(_rows("game", 2), SamplingSettings(n=2, max_new_tokens=12, seed=2))
    assert int(batch.completion_mask.sum(dim=1).max()) <= 8
    assert set(batch.extras["end_reason"]) <= {"max_tokens", "done"}
    batch = _game(engine, max_turns=1)(_rows("game", 2), SamplingSettings(n=2, max_new_tokens=6, seed=2))
    assert batch.extras["num_turns"] == [1] * 4
    assert set(batch.extras["end_reason"]) <= {"max_turns", "done", "max_tokens"}
