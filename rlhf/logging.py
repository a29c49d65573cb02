"""Metrics sinks and console output: the run's trackers (rlhf/trackers.py: `metrics.jsonl` always, TensorBoard,
W&B, MLflow as ``run.trackers`` lists them) and a rich progress bar.

    log = MetricsLogger(out_dir, trackers=("jsonl", "wandb"), run=recipe.run, config=recipe_dict)
    log.start_phase("grpo", total=steps)
    log.log(step, {"reward/correct/mean": 0.4, ...})   # to every tracker (one JSON line per step, ...)
    log.close(summary)                                  # the summary to the trackers, then their runs end
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from rlhf.config.schema import RunConfig
from rlhf.trackers import build_trackers, exit_status


class MetricsLogger:
    """Fans each metrics record out to the trackers and drives the progress bar.

    ``trackers`` are names (jsonl is always added, first); ``tensorboard=True`` adds tensorboard (the deprecated
    run.tensorboard); ``run`` holds the trackers' options (run.wandb, run.mlflow, run.name); ``config`` (the resolved
    recipe) is logged once at the start; ``append`` continues a resumed run's metrics.jsonl and tracker runs."""

    def __init__(
        self,
        out_dir: str,
        *,
        trackers: Sequence[str] = ("jsonl",),
        run: RunConfig | None = None,
        config: dict[str, Any] | None = None,
        tensorboard: bool = False,
        progress: bool = True,
        headline: tuple[str, ...] = (),
        append: bool = False,
    ) -> None:
        os.makedirs(out_dir, exist_ok=True)
        names = ["jsonl"] + [t for t in trackers if t != "jsonl"]
        if tensorboard and "tensorboard" not in names:
            names.append("tensorboard")
        self._closed = False
        self._progress: Progress | None = None
        self._task = None
        self.trackers = build_trackers(names, out_dir, run=run, resume=append)
        self.path = os.path.join(out_dir, "metrics.jsonl")
        if config is not None:
            try:
                for tracker in self.trackers:
                    tracker.log_config(config)
            except BaseException:
                self.close(status="failed")  # the runs already started end; the error goes on
                raise
        self.console = Console(stderr=False)
        if not self.console.is_terminal:  # logs and CI: wide enough that the bar and the numbers both fit
            self.console = Console(stderr=False, width=140)
        self.headline = headline
        if progress:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()

    def start_phase(self, description: str, total: int, completed: int = 0) -> None:
        """A new progress bar below the previous one (which stays on screen, finished)."""
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=total, completed=completed, status="")

    def log(self, step: int, metrics: dict[str, Any], phase: str = "rl") -> None:
        for tracker in list(self.trackers):
            self._guarded(tracker, lambda t=tracker: t.log(step, metrics, phase))
        if self._progress is not None and self._task is not None and phase != "eval":
            shown = [f"{k.split('/')[-2] if k.count('/') >= 2 else k}={metrics[k]:.2f}" for k in self.headline
                     if isinstance(metrics.get(k), (int, float))]
            self._progress.update(self._task, completed=step, status=" ".join(shown))

    def print(self, *args: Any) -> None:
        self.console.print(*args)

    def _guarded(self, tracker: Any, call: Any) -> None:
        """jsonl (what summaries, plots and --resume read) must work: its errors propagate. Another tracker that
        fails (a server down, an upload refused) is dropped with a warning: the run, its checkpoints and
        metrics.jsonl go on."""
        if tracker.name == "jsonl":
            call()
            return
        try:
            call()
        except Exception as e:  # noqa: BLE001  (reported, and the tracker is turned off)
            self.trackers.remove(tracker)
            self.console.print(f"[yellow]warning: tracker {tracker.name} failed ({type(e).__name__}: {e}); it is "
                               "turned off for the rest of the run (metrics.jsonl keeps every metric)[/yellow]")
            try:
                tracker.close("failed")
            except Exception as close_error:  # noqa: BLE001  (the tracker is already off; say so and go on)
                self.console.print(f"[yellow]warning: closing tracker {tracker.name} failed too "
                                   f"({type(close_error).__name__}: {close_error})[/yellow]")

    def close(self, summary: dict[str, Any] | None = None, status: str | None = None) -> None:
        """Stop the progress bar, give the trackers the run's summary (when there is one) and end their runs with
        `status` (finished / failed / killed; None: finished, or failed while an exception is in flight). A second
        call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        status = status or exit_status(summary)
        for tracker in list(self.trackers):  # every tracker is closed, even after another one failed
            if summary is not None:
                self._guarded(tracker, lambda t=tracker: t.log_summary(summary))
            if tracker in self.trackers:  # not already closed as failed
                self._guarded(tracker, lambda t=tracker: t.close(status))


def summary_table(title: str, rows: list[tuple[str, ...]], columns: tuple[str, ...]) -> Table:
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        table.add_row(*r)
    return table
