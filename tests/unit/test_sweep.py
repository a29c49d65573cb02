"""rlhf sweep's pure parts: weight parsing, the default reference point, the table."""

from __future__ import annotations

import pytest

from rlhf.sweep import default_reference, parse_weights, render


def test_parse_weights_checks_count_and_numbers():
    assert parse_weights(["1,0", "0.5,0.5"], 2) == [[1.0, 0.0], [0.5, 0.5]]
    with pytest.raises(ValueError, match="2 reward"):
        parse_weights(["1,0,0"], 2)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_weights(["a,b"], 2)
    with pytest.raises(ValueError, match="at least one"):
        parse_weights([], 2)


def test_default_reference_sits_below_every_point():
    ref = default_reference([[0.2, -0.5], [0.6, -0.1], [0.4, -0.1]])
    assert ref == pytest.approx([0.2 - 0.04, -0.5 - 0.04])
    assert default_reference([[1.0, 2.0]]) == pytest.approx([0.9, 1.9])


def test_render_marks_the_front():
    result = {"components": ["a", "b"], "reference": [0.0, 0.0], "front": [0, 2], "hypervolume": 0.5,
              "runs": [{"weights": {"a": 1, "b": 0}, "point": [1.0, 0.2]},
                       {"weights": {"a": 1, "b": 1}, "point": [0.5, 0.1]},
                       {"weights": {"a": 0, "b": 1}, "point": [0.2, 0.9]}]}
    table = render(result)
    rows = [line for line in table.splitlines() if line.startswith("| w")]
    assert rows[0].endswith("| yes |") and not rows[1].endswith("| yes |") and rows[2].endswith("| yes |")
    assert "**0.5**" in table
