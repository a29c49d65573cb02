"""Registers the built-in reward plugins by importing their modules (``rewards.api`` does this lazily).

Built-ins: math_answer, exact_match, regex_format, length_penalty, overlong_penalty, code_tests (sandboxed
unit tests of model-written code); model-based rewards: reward_model (a sequence-classification reward model,
e.g. one trained with objective rm; one head per component) and llm_score (a generative RM: a judge model's
verdict as a number); judges (constraints): forbidden_pattern, required_pattern, max_length, and llm_judge (a
model served by a rollout engine gives the verdict); process (step-level) rewards: arithmetic_steps (a
rule-based step checker), prm (a process reward model scoring each step); agent environments' rewards:
env_reward (episode) and env_turn_reward (per turn, a process reward) (see ``rlhf rewards list``).
"""

from rewards import remote  # noqa: F401  (the client of `rlhf serve-rewards`)
from rewards.models import llm_judge  # noqa: F401  (imports torch only in setup())
from rewards.models import llm_score  # noqa: F401  (imports torch only in setup())
from rewards.models import prm  # noqa: F401  (imports torch only in setup())
from rewards.models import reward_model  # noqa: F401  (imports torch only in setup())
from rewards.verifiable import (  # noqa: F401
    arithmetic_steps,
    code_tests,
    environment,
    exact_match,
    judges,
    length_penalty,
    math_answer,
    overlong,
    regex_format,
)
