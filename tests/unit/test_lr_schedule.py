"""Learning-rate schedule of the RL stage, by hand."""

from __future__ import annotations

import math

import pytest

from rlhf.config.load import validate_dict
from rlhf.runtime.controller import lr_at


def _recipe(**train):
    return validate_dict({
        "run": {"steps": 10}, "model": {"tiny": {}}, "rewards": [{"name": "r", "plugin": "exact_match"}],
        "rollout": {"prompts_per_step": 2, "group_size": 2},
        "train": {"lr": 1.0, **train},
    }, "test")


def test_constant_with_warmup():
    r = _recipe(lr_warmup_steps=4)
    assert [lr_at(r, s) for s in (1, 2, 4, 5, 10)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_linear_and_cosine_decay():
    lin = _recipe(lr_schedule="linear", lr_warmup_steps=2, min_lr_ratio=0.1)
    assert lr_at(lin, 2) == 1.0
    assert lr_at(lin, 6) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the 8 decay steps
    assert lr_at(lin, 10) == pytest.approx(0.1)
    cos = _recipe(lr_schedule="cosine")
    assert lr_at(cos, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(cos, 10) == pytest.approx(0.0)
