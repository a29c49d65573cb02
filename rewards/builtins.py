"""Registers the built-in reward plugins by importing their modules (``rewards.api`` does this lazily).

Built-ins: math_answer, exact_match, regex_format, length_penalty, overlong_penalty, code_tests (sandboxed
unit tests of model-written code) (see ``rlhf rewards list``).
"""

from rewards import remote  # noqa: F401  (the client of `rlhf serve-rewards`)
from rewards.verifiable import (  # noqa: F401
    code_tests,
    exact_match,
    length_penalty,
    math_answer,
    overlong,
    regex_format,
)
