"""Metrics sinks: one JSON line per step (NaN -> null), TensorBoard events when enabled."""

from __future__ import annotations

import json
import math

from rlhf.logging import MetricsLogger


def test_jsonl_and_tensorboard(tmp_path):
    log = MetricsLogger(str(tmp_path), tensorboard=True, progress=True, headline=("reward/a/mean",))
    log.start_phase("grpo", 2)
    log.log(1, {"reward/a/mean": 0.5, "kl": math.nan})
    log.log(2, {"reward/a/mean": 0.75, "kl": 0.1})
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert lines[0]["kl"] is None and lines[1]["reward/a/mean"] == 0.75
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_append_mode_keeps_history(tmp_path):
    MetricsLogger(str(tmp_path), progress=False).log(1, {"x": 1.0})
    log = MetricsLogger(str(tmp_path), progress=False, append=True)
    log.log(2, {"x": 2.0})
    log.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
