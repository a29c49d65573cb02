"""The rule-based judges (forbidden_pattern, required_pattern, max_length) through the plugin API, and their
argument errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rewards.api import RewardPluginError, build_scorer, resolve_plugin


def _score(plugin: str, args: dict, completions: list[str]) -> list[float]:
    component = SimpleNamespace(name="j", plugin=plugin, kind=None, args=args)
    return build_scorer(component)(["p"] * len(completions), completions, {})


def test_judges_are_constraints():
    for name in ("forbidden_pattern", "required_pattern", "max_length", "llm_judge"):
        assert resolve_plugin(name).kind == "constraint"


def test_forbidden_and_required_pattern():
    texts = ["42", "42 ok", "Bad word", "bad"]
    assert _score("forbidden_pattern", {"pattern": r"\s"}, texts) == [1.0, 0.0, 0.0, 1.0]
    assert _score("forbidden_pattern", {"pattern": "bad", "flags": "i"}, texts) == [1.0, 1.0, 0.0, 0.0]
    assert _score("required_pattern", {"pattern": r"^-?\d+$"}, texts) == [1.0, 0.0, 0.0, 0.0]
    assert _score("required_pattern", {"pattern": "^ok$", "flags": "m"}, ["a\nok", "ok!"]) == [1.0, 0.0]


def test_max_length_chars_and_words():
    texts = ["abcd", "abcde", "one two three"]
    assert _score("max_length", {"max": 4}, texts) == [1.0, 0.0, 0.0]
    assert _score("max_length", {"max": 2, "unit": "words"}, texts) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("plugin, args, message", [
    ("forbidden_pattern", {"pattern": "("}, "invalid pattern"),
    ("forbidden_pattern", {"pattern": "a", "flags": "q"}, "unknown flag 'q'"),
    ("required_pattern", {"pattern": ""}, "non-empty string"),
    ("max_length", {"max": -1}, "integer >= 0"),
    ("max_length", {"max": 3, "unit": "lines"}, "'chars' or 'words'"),
])
def test_bad_args_name_the_plugin(plugin, args, message):
    with pytest.raises(RewardPluginError, match=message) as info:
        _score(plugin, args, ["x"])
    assert plugin in str(info.value)
