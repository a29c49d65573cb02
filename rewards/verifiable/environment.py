"""Built-in rewards that read what an agent's environment said (``rollout.kind: agent``, rlhf/rollout/agent.py).

    rewards:
      - {name: correct, plugin: env_reward, args: {key: correct}}              # episode: score()["correct"]
      - {name: progress, plugin: env_turn_reward, kind: process, args: {key: success}}   # per turn: Step.rewards

``env_reward``: per episode, the value under ``key`` of the episode's environment rewards (the sum of its turns'
rewards under that key, replaced by ``score()``'s value when score returns the key). An episode whose environment
failed, or that never produced the key, is not applicable (NaN).
``env_turn_reward`` (a process reward: the turns are the steps): per turn, that turn's reward under ``key`` (0 for
a turn whose step gave none); None for an episode that ended with an environment error.
"""

from __future__ import annotations

from typing import Any

from rewards.api import process_reward, reward


@reward("env_reward")
def env_reward(prompts: list[str], completions: list[str], *, env_rewards: list[dict], key: str = "reward",
               **_: Any) -> list[float | None]:
    """The environment's episode reward under `key` (Step rewards summed over turns; score()'s value wins); NaN
    where the episode has none. Arg: key (str, default "reward"). Needs rollout.kind: agent."""
    return [_number(r.get(key), key) if isinstance(r, dict) else None for r in env_rewards]


@process_reward("env_turn_reward")
def env_turn_reward(prompts: list[str], completions: list[str], *, steps: list[list[str]],
                    env_turn_rewards: list[list[dict]], end_reason: list[str], key: str = "reward",
                    **_: Any) -> list[list[float] | None]:
    """Per turn, the environment's reward under `key` from that turn's step (0 where the step gave none); None for
    an episode that ended with an environment error. Arg: key (str, default "reward"). Needs rollout.kind: agent."""
    out: list[list[float] | None] = []
    for turns, reason, texts in zip(env_turn_rewards, end_reason, steps):
        if reason == "error":
            out.append(None)
            continue
        values = [float(_number(t.get(key, 0.0), key)) for t in turns]
        out.append(values[: len(texts)] if texts else values)
    return out


def _number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"environment reward {key!r} is {value!r}; expected a number")
    return float(value)
