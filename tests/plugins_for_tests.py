"""Reward plugins used by the reward API and reward worker tests (referenced as 'tests.plugins_for_tests:NAME').

Importing this module registers the ``testplug_*`` names; nothing else happens at import.
"""

from __future__ import annotations

import time

from rewards.api import judge, reward


@reward("testplug_length")
def char_length(prompts, completions):
    """Completion length in characters."""
    return [float(len(c)) for c in completions]


@reward("testplug_needs_answer")
def needs_answer(prompts, completions, *, answer):
    """1.0 when the completion equals the answer column."""
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]


@reward("testplug_optional_column")
def optional_column(prompts, completions, *, weight=2.0, finished=None):
    """`weight` when finished (or when no finished column), else 0.0."""
    if finished is None:
        return [weight] * len(completions)
    return [weight if f else 0.0 for f in finished]


SEEN_KWARGS: list[dict] = []


@reward("testplug_takes_all")
def takes_all(prompts, completions, **kwargs):
    """Records the keyword arguments it receives; returns 0.0."""
    SEEN_KWARGS.append(dict(kwargs))
    return [0.0] * len(completions)


def undecorated(prompts, completions, *, bonus=0.0):
    """Not registered: reachable only as module:attr or through an entry point."""
    return [1.0 + bonus for _ in completions]


@judge("testplug_is_short")
def is_short(prompts, completions, *, limit=3):
    """Satisfied when the completion has at most `limit` characters."""
    return [len(c) <= limit for c in completions]


@judge("testplug_bad_judge")
def bad_judge(prompts, completions):
    """Returns 0.5 for the second sample: not a valid judge verdict."""
    return [1.0 if i != 1 else 0.5 for i in range(len(completions))]


def wrong_length(prompts, completions):
    return [1.0] * (len(completions) - 1)


def wrong_type(prompts, completions):
    return [1.0, "high"] + [0.0] * (len(completions) - 2)


def returns_nan(prompts, completions):
    return [1.0, 2.0, float("nan")] + [0.0] * (len(completions) - 3)


def not_a_list(prompts, completions):
    return {"score": 1.0}


def none_for_odd(prompts, completions):
    """None (not applicable) for odd samples."""
    return [None if i % 2 else 1.0 for i in range(len(completions))]


def raises(prompts, completions):
    raise ZeroDivisionError("boom from plugin")


def on_main_thread(prompts, completions):
    """1.0 when called on the process's main thread (where signal-based timeouts work), else 0.0."""
    import threading

    return [float(threading.current_thread() is threading.main_thread())] * len(completions)


def swallows_everything(prompts, completions, *, seconds=30.0):
    """A plugin whose broad `except Exception` must not swallow the reward worker's timeout."""
    try:
        time.sleep(seconds)
    except Exception:
        pass
    return [1.0] * len(completions)


def sleepy(prompts, completions, *, seconds=5.0):
    """Sleeps `seconds`, then returns 1.0 for every sample."""
    time.sleep(seconds)
    return [1.0] * len(completions)


class CountingScorer:
    """A class scorer: returns offset + how many times setup() ran in this process (should be 1)."""

    instances = 0

    def __init__(self, offset: float = 0.0):
        self.offset = offset
        self.setup_calls = 0
        CountingScorer.instances += 1

    def setup(self):
        self.setup_calls += 1

    def __call__(self, prompts, completions, *, answer=None):
        return [self.offset + self.setup_calls for _ in completions]


class FailingSetup:
    def setup(self):
        raise RuntimeError("weights not found at /nowhere")

    def __call__(self, prompts, completions):
        return [0.0] * len(completions)


def one_positional(prompts):
    return [0.0] * len(prompts)
