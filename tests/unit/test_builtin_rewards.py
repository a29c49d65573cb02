"""Built-in reward plugins on hand-checked examples: math_answer, exact_match, regex_format, length_penalty.

Run: pytest tests/unit/test_builtin_rewards.py -q
"""

import math
import threading

import pytest

from rewards.api import RewardPluginError, build_scorer
from rlhf.config.schema import RewardComponentConfig


def run(plugin, completions, columns=None, **args):
    scorer = build_scorer(RewardComponentConfig(name="c", plugin=plugin, args=args))
    return scorer(["prompt"] * len(completions), completions, columns or {})


# --------------------------------------------------------------------------- math_answer

MATH_CASES = [
    ("19", "19", 1.0),
    ("  19", "19", 1.0),
    ("19\n", "19", 1.0),
    ("19.0", "19", 1.0),
    ("19", "19.0", 1.0),
    ("1/2", "0.5", 1.0),
    ("0.5", "1/2", 1.0),
    ("The answer is $\\frac{1}{2}$.", "0.5", 1.0),
    ("\\boxed{19}", "19", 1.0),
    ("I first got 20. Final answer: 19", "19", 1.0),
    ("48/2 = 24 in May.\n48+24 = 72 altogether.\n#### 72", "72", 1.0),
    ("1000", "10^{3}", 1.0),
    ("\\sqrt{2}", "\\sqrt{2}", 1.0),
    ("$x = 3$", "x=3", 1.0),
    ("18", "19", 0.0),
    ("10", "10^{3}", 0.0),
    ("nineteen", "19", 0.0),
    ("", "19", 0.0),
]


@pytest.mark.parametrize("completion,answer,expected", MATH_CASES)
def test_math_answer_equivalence(completion, answer, expected):
    assert run("math_answer", [completion], {"answer": [answer]}) == [expected]


def test_math_answer_numeric_gold_and_none():
    values = run("math_answer", ["19", "3", "x"], {"answer": [19, 3.0, None]})
    assert values[:2] == [1.0, 1.0]
    assert math.isnan(values[2])  # None answer: not applicable


def test_math_answer_unparseable_gold_names_sample():
    with pytest.raises(RewardPluginError) as err:
        run("math_answer", ["19", "19"], {"answer": ["19", "@@"]})
    msg = str(err.value)
    assert "plugin 'math_answer'" in msg and "sample 1" in msg and "'@@'" in msg


def test_math_answer_works_off_the_main_thread():
    """math_verify's signal.alarm timeout raises in threads unless switched off; the plugin must switch it off."""
    results: dict = {}

    def target():
        try:
            results["values"] = run("math_answer", ["19", "1/2", "7"], {"answer": ["19.0", "0.5", "8"]})
        except BaseException as exc:  # reported below
            results["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=60)
    assert "error" not in results, results.get("error")
    assert results["values"] == [1.0, 1.0, 0.0]


def test_math_answer_signal_timeout_only_in_main_thread():
    from rewards.verifiable.math_answer import _signal_timeout

    assert _signal_timeout(2.5) == 3
    assert _signal_timeout(None) is None
    seen = {}
    thread = threading.Thread(target=lambda: seen.setdefault("t", _signal_timeout(5)))
    thread.start()
    thread.join()
    assert seen["t"] is None


# --------------------------------------------------------------------------- exact_match


def test_exact_match_strips_and_respects_case():
    answers = {"answer": ["Paris", "Paris", "New York", None]}
    values = run("exact_match", [" Paris\n", "paris", "New  York", "x"], answers)
    assert values[:3] == [1.0, 0.0, 0.0] and math.isnan(values[3])


def test_exact_match_options():
    columns = {"answer": ["Paris", "New York"]}
    assert run("exact_match", ["paris", "new   york"], columns, case_sensitive=False) == [1.0, 0.0]
    assert run("exact_match", ["paris", "new \n york"], columns, case_sensitive=False, normalize_whitespace=True) == [
        1.0,
        1.0,
    ]


# --------------------------------------------------------------------------- regex_format


def test_regex_format_fullmatch_and_strip():
    pattern = r"<answer>\d+</answer>"
    completions = ["<answer>12</answer>", "  <answer>12</answer>\n", "x <answer>12</answer>", "<answer>a</answer>"]
    assert run("regex_format", completions, pattern=pattern) == [1.0, 1.0, 0.0, 0.0]
    assert run("regex_format", completions, pattern=pattern, strip=False) == [1.0, 0.0, 0.0, 0.0]


def test_regex_format_multiline_with_inline_flag():
    text = "<think>a\nb</think>\n<answer>3</answer>"
    assert run("regex_format", [text], pattern=r"<think>.*</think>\s*<answer>.*</answer>") == [0.0]
    assert run("regex_format", [text], pattern=r"(?s)<think>.*</think>\s*<answer>.*</answer>") == [1.0]


def test_regex_format_require_finished():
    completions = ["ok", "ok", "no"]
    finished = {"finished": [True, False, True]}
    assert run("regex_format", completions, finished, pattern="ok") == [1.0, 1.0, 0.0]
    assert run("regex_format", completions, finished, pattern="ok", require_finished=True) == [1.0, 0.0, 0.0]
    with pytest.raises(RewardPluginError, match="require_finished is set but the batch has no 'finished' column"):
        run("regex_format", completions, pattern="ok", require_finished=True)


def test_regex_format_bad_pattern_fails_at_build():
    with pytest.raises(RewardPluginError, match="invalid pattern '\\(unclosed'"):
        build_scorer(RewardComponentConfig(name="fmt", plugin="regex_format", args={"pattern": "(unclosed"}))


# --------------------------------------------------------------------------- length_penalty


def test_length_penalty_on_characters():
    values = run("length_penalty", ["abc", "abcde", "a" * 8, "a" * 100], target=5, coef=0.1)
    assert values[:3] == [0.0, 0.0, pytest.approx(-0.3)]
    assert values[3] == -1.0  # clamped at max_penalty=1.0


def test_length_penalty_prefers_token_counts_and_no_clamp():
    completions = ["short", "short", "short"]
    columns = {"num_tokens": [4, 10, 40]}
    values = run("length_penalty", completions, columns, target=8, coef=0.5, max_penalty=None)
    assert values == [0.0, -1.0, -16.0]


def test_length_penalty_rejects_bad_args():
    with pytest.raises(RewardPluginError, match="target must be an integer >= 0"):
        run("length_penalty", ["x"], target=-1)
    with pytest.raises(RewardPluginError, match="missing required|needs the column 'target'"):
        run("length_penalty", ["x"])


def test_overlong_penalty_dapo_soft_punishment():
    from rewards.api import resolve_plugin

    fn = resolve_plugin("overlong_penalty").obj
    # L_max = 10, L_cache = 4: free up to 6 tokens, linear to -1 at 10, -1 beyond
    got = fn(["p"] * 5, ["c"] * 5, max_tokens=10, cache_tokens=4, num_tokens=[3, 6, 8, 10, 11])
    assert got == [0.0, 0.0, -0.5, -1.0, -1.0]
    import pytest

    with pytest.raises(ValueError, match="0 < cache_tokens <= max_tokens"):
        fn(["p"], ["c"], max_tokens=4, cache_tokens=8, num_tokens=[1])
