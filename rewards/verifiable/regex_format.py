"""Built-in reward ``regex_format``: does the whole completion match a format regex?

Recipe use (``(?s)`` lets ``.`` cross newlines)::

    rewards:
      - name: format
        plugin: regex_format
        args: {pattern: "(?s)<think>.*</think>\\s*<answer>.*</answer>", require_finished: true}
"""

from __future__ import annotations

import re

from rewards.api import reward


@reward("regex_format")
class RegexFormat:
    """1.0 if re.fullmatch(pattern, completion) (stripped unless strip: false), else 0.0.

    Args: pattern (required), strip (default true), require_finished (default false: when true, a completion cut
    off by the token limit instead of ending with EOS scores 0.0; uses the runtime's `finished` column).
    """

    def __init__(self, pattern: str, strip: bool = True, require_finished: bool = False) -> None:
        if not isinstance(pattern, str):
            raise TypeError(f"regex_format: pattern must be a string, got {type(pattern).__name__}")
        try:
            self.regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"regex_format: invalid pattern {pattern!r}: {exc}") from exc
        self.strip = strip
        self.require_finished = require_finished

    def __call__(
        self, prompts: list[str], completions: list[str], *, finished: list[bool] | None = None
    ) -> list[float]:
        if self.require_finished and finished is None:
            raise ValueError("regex_format: require_finished is set but the batch has no 'finished' column")
        scores: list[float] = []
        for i, completion in enumerate(completions):
            text = completion.strip() if self.strip else completion
            ok = self.regex.fullmatch(text) is not None
            if self.require_finished and not finished[i]:
                ok = False
            scores.append(1.0 if ok else 0.0)
        return scores
