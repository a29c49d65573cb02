"""Reward plugins for the reward server tests, referenced as 'tests.integration._reward_server_plugins:NAME'.

Not registered by name (no decorators): importing this module has no side effects.
"""

from __future__ import annotations

import time


def explode(prompts, completions):
    """Raises on the completion 'boom' (a plugin bug the server must report with its component and sample)."""
    for c in completions:
        if c == "boom":
            raise ValueError(f"cannot score {c!r}")
    return [1.0 for _ in completions]


def unusable(prompts, completions):
    """Returns a string for the completion 'bad': an unusable value (null + an error count), not an exception."""
    return ["oops" if c == "bad" else 0.5 for c in completions]


def slow(prompts, completions, *, delay=0.5):
    """Sleeps `delay` seconds, then scores 0.0."""
    time.sleep(delay)
    return [0.0 for _ in completions]


class SetupCounter:
    """A class plugin that counts its setup() calls: the server builds each component once."""

    setups = 0

    def __init__(self, bonus: float = 0.0) -> None:
        self.bonus = bonus

    def setup(self) -> None:
        type(self).setups += 1

    def __call__(self, prompts, completions):
        return [float(len(c)) + self.bonus for c in completions]
