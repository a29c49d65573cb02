"""`rlhf plot` draws a PNG from metrics.jsonl; missing or empty runs give a clear error."""

from __future__ import annotations

import json

import pytest

from rlhf.cli import main

pytest.importorskip("matplotlib")


def test_plot_writes_png(tmp_path, capsys):
    lines = [{"step": 0, "phase": "eval", "eval/correct": 0.1}]
    lines += [{"step": s, "phase": "rl", "reward/correct/mean": s / 10, "reward/length/mean": -0.1, "kl": 0.01 * s,
               "loss/policy": 0.1, "time/generate": 0.5, "time/train": 0.3} for s in range(1, 11)]
    lines += [{"step": 10, "phase": "eval", "eval/correct": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plot_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    assert "no metrics here" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "phase": "sft", "loss/sft": 1.0}))
    assert main(["plot", str(tmp_path)]) == 1
    assert "no training steps yet" in capsys.readouterr().err


def test_agent_runs_get_an_episodes_panel(tmp_path, monkeypatch):
    lines = [{"step": s, "phase": "rl", "reward/solved/mean": s / 10, "agent/turns_mean": 4 - s / 10,
              "agent/end/done": s / 10, "agent/end/max_turns": 1 - s / 10, "agent/episodes_with_tool_call": 0.0,
              "time/generate": 0.5} for s in range(1, 11)]
    lines += [{"step": 10, "phase": "eval", "eval/solved": 0.9, "eval/agent/turns_mean": 3.1}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    drawn = _drawn_panel(monkeypatch, tmp_path, "_agent_panel")
    assert drawn["title"] == "agent episodes"
    assert {"turns per episode", "held-out turns", "ended: done", "ended: max_turns"} <= set(drawn["labels"])
    assert "episodes with a tool call" not in drawn["labels"]  # never non-zero: left out


def test_async_runs_get_a_pipeline_panel(tmp_path, monkeypatch):
    lines = [{"step": s, "phase": "rl", "reward/correct/mean": s / 10, "async/queue_depth": 1.0,
              "busy/engines": 0.6, "busy/rewards": 0.3, "busy/trainers": 0.9, "async/staleness_mean": 1.0,
              "async/token_staleness_mean": 0.6, "async/mixed_version_share": 0.4, "time/generate": 0.5}
             for s in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    drawn = _drawn_panel(monkeypatch, tmp_path, "_async_panel")
    assert drawn["title"] == "async pipeline"
    assert {"engines busy", "trainers busy", "staleness (versions)", "staleness per token",
            "samples a sync split"} <= set(drawn["labels"])


def _drawn_panel(monkeypatch, run_dir, panel: str) -> dict:
    """Plot the run with one panel spied on: its title and the labels of every line on its axes."""
    from rlhf import plots

    drawn = {}
    real = getattr(plots, panel)

    def spy(ax, train, evals, window):
        real(ax, train, evals, window)
        drawn["title"] = ax.get_title()
        drawn["labels"] = [line.get_label() for a in ax.figure.axes for line in a.get_lines()]

    monkeypatch.setattr(plots, panel, spy)
    plots.plot_run(str(run_dir))
    return drawn
