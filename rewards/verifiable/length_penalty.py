"""Built-in reward ``length_penalty``: a non-positive reward for completions longer than a target.

Recipe use::

    rewards:
      - {name: brevity, plugin: length_penalty, args: {target: 64, coef: 0.01, max_penalty: 0.5}}
"""

from __future__ import annotations

from rewards.api import reward


@reward("length_penalty")
def length_penalty(
    prompts: list[str],
    completions: list[str],
    *,
    target: int,
    coef: float = 0.1,
    max_penalty: float | None = 1.0,
    num_tokens: list[int] | None = None,
) -> list[float]:
    """-coef * max(0, length - target), clamped at -max_penalty (None: no clamp).

    length is the completion's token count from the runtime's `num_tokens` column, or its character count
    when that column is absent.
    """
    _check_args(target, coef, max_penalty)
    lengths = [int(n) for n in num_tokens] if num_tokens is not None else [len(c) for c in completions]
    scores: list[float] = []
    for length in lengths:
        penalty = coef * max(0, length - target)
        if max_penalty is not None:
            penalty = min(penalty, max_penalty)
        scores.append(-penalty if penalty else 0.0)
    return scores


def _check_args(target: int, coef: float, max_penalty: float | None) -> None:
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"length_penalty: target must be an integer >= 0, got {target!r}")
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or coef < 0:
        raise ValueError(f"length_penalty: coef must be a number >= 0, got {coef!r}")
    if max_penalty is not None and (not isinstance(max_penalty, (int, float)) or max_penalty < 0):
        raise ValueError(f"length_penalty: max_penalty must be a number >= 0 or null, got {max_penalty!r}")
