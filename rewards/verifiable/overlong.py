"""Built-in reward ``overlong_penalty``: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13).

With L_max = ``max_tokens`` and L_cache = ``cache_tokens``, a completion of |y| tokens gets

    0                                  if |y| <= L_max - L_cache
    ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
    -1                                 if |y| > L_max

Recipe use (max_tokens is usually rollout.max_new_tokens)::

    rewards:
      - {name: overlong, plugin: overlong_penalty, args: {max_tokens: 1024, cache_tokens: 256}}
"""

from __future__ import annotations

from rewards.api import reward


@reward("overlong_penalty")
def overlong_penalty(
    prompts: list[str], completions: list[str], *, max_tokens: int, cache_tokens: int, num_tokens: list[int]
) -> list[float]:
    """DAPO soft overlong punishment: a linear penalty over the last cache_tokens before max_tokens, -1 past it."""
    if not (isinstance(max_tokens, int) and isinstance(cache_tokens, int) and 0 < cache_tokens <= max_tokens):
        raise ValueError(
            f"overlong_penalty: need integers 0 < cache_tokens <= max_tokens, got {cache_tokens!r}, {max_tokens!r}"
        )
    start = max_tokens - cache_tokens
    out = []
    for n in num_tokens:
        if n > max_tokens:
            out.append(-1.0)
        elif n > start:
            out.append((start - n) / cache_tokens)
        else:
            out.append(0.0)
    return out
