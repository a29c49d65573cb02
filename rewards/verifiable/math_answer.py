"""Built-in reward ``math_answer``: is the completion's final answer mathematically equal to the gold answer?

Uses Hugging Face's ``math_verify`` (``parse`` + ``verify``, sympy underneath). Recipe use::

    rewards:
      - {name: correct, plugin: math_answer}        # needs an `answer` column in the dataset

math_verify bounds parsing and comparison time with ``signal.alarm``, which only works in the main thread. When
called from another thread (the in-process reward group, a threaded actor) the signal timeout is switched off
and the reward worker's own per-component ``timeout_s`` is the only bound.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from rewards.api import reward


@reward("math_answer")
def math_answer(
    prompts: list[str],
    completions: list[str],
    *,
    answer: list[Any],
    timeout_s: float | None = 5,
) -> list[float | None]:
    """1.0 if the completion's final answer is mathematically equivalent to the `answer` column, else 0.0.

    Gold answers are read as LaTeX math ("19", "0.5", "\\frac{1}{2}", "x=3", "10^{3}"); the completion's answer
    is extracted by math-verify (\\boxed{...}, "the answer is ...", else the last number or expression), so "19",
    "  19", "19.0" and "The answer is $19$" all match "19", and "1/2" matches "0.5". A sample whose answer is
    None is not applicable (NaN). A gold answer math-verify cannot parse is an error naming the sample.
    Arg: timeout_s (int seconds per parse/compare in the main thread; None disables).
    """
    from math_verify import parse, verify  # imports sympy: keep it out of plugin registration

    timeout = _signal_timeout(timeout_s)
    gold_cache: dict[str, list] = {}
    scores: list[float | None] = []
    for i, (completion, gold) in enumerate(zip(completions, answer)):
        if gold is None:
            scores.append(None)
            continue
        gold_text = _gold_text(gold, i)
        if gold_text not in gold_cache:
            gold_cache[gold_text] = _parse_gold(parse, gold_text, i, timeout)
        predicted = _parse_completion(parse, completion, timeout)
        matched = bool(predicted) and verify(gold_cache[gold_text], predicted, timeout_seconds=timeout)
        scores.append(1.0 if matched else 0.0)
    return scores


def _signal_timeout(timeout_s: float | None) -> int | None:
    """math_verify's signal-based timeout in whole seconds, or None where signals cannot be used."""
    if timeout_s is None or timeout_s <= 0:
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    return max(1, math.ceil(timeout_s))


def _gold_text(gold: Any, index: int) -> str:
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise TypeError(f"math_answer: sample {index}: the answer column holds {gold!r} ({type(gold).__name__}); "
                        f"expected a string or a number")
    return str(gold).strip()


def _parse_gold(parse, gold: str, index: int, timeout: int | None) -> list:
    """Gold answers are short math: parse them as LaTeX ($...$) first, then as plain text."""
    already_delimited = "$" in gold or "\\boxed" in gold or "\\(" in gold or "\\[" in gold
    parsed = [] if already_delimited else parse(f"${gold}$", parsing_timeout=timeout)
    if not _has_math(parsed):
        parsed = parse(gold, parsing_timeout=timeout)
    if not _has_math(parsed):
        raise ValueError(
            f"math_answer: sample {index}: math-verify cannot parse the gold answer {gold!r}; fix the dataset's "
            f"answer column or use exact_match for non-math answers"
        )
    return parsed


def _has_math(parsed: list) -> bool:
    """True when math-verify produced an expression, not only its raw-string fallback."""
    return any(not isinstance(item, str) for item in parsed)


def _parse_completion(parse, completion: str, timeout: int | None) -> list:
    """Extract the completion's answer; a bare expression with no text around it ("\\sqrt{2}") is read as LaTeX."""
    parsed = parse(completion, parsing_timeout=timeout)
    bare = completion.strip()
    if not parsed and bare and not any(ch.isspace() for ch in bare) and "$" not in bare:
        parsed = parse(f"${bare}$", parsing_timeout=timeout)
    return parsed
