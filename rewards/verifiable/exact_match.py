"""Built-in reward ``exact_match``: the stripped completion equals the `answer` column.

Recipe use::

    rewards:
      - {name: exact, plugin: exact_match, args: {case_sensitive: false}}
"""

from __future__ import annotations

from typing import Any

from rewards.api import reward


@reward("exact_match")
def exact_match(
    prompts: list[str],
    completions: list[str],
    *,
    answer: list[Any],
    normalize_whitespace: bool = False,
    case_sensitive: bool = True,
) -> list[float | None]:
    """1.0 if the stripped completion equals the stripped `answer` column, else 0.0 (None answer -> not applicable).

    Args: normalize_whitespace (collapse runs of whitespace to one space), case_sensitive.
    """
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer):
        if gold is None:
            scores.append(None)
            continue
        same = _normalize(completion, normalize_whitespace, case_sensitive) == _normalize(
            str(gold), normalize_whitespace, case_sensitive
        )
        scores.append(1.0 if same else 0.0)
    return scores


def _normalize(text: str, normalize_whitespace: bool, case_sensitive: bool) -> str:
    text = " ".join(text.split()) if normalize_whitespace else text.strip()
    return text if case_sensitive else text.casefold()
