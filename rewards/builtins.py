"""Registers the built-in reward plugins by importing their modules (``rewards.api`` does this lazily).

Built-ins: math_answer, exact_match, regex_format, length_penalty, overlong_penalty (see ``rlhf rewards list``).
"""

from rewards.verifiable import exact_match, length_penalty, math_answer, overlong, regex_format  # noqa: F401
