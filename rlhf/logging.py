"""Metrics sinks and console output: `metrics.jsonl` always, TensorBoard when enabled, a rich progress bar.

    log = MetricsLogger(out_dir, tensorboard=False, progress=True, total=steps)
    log.log(step, {"reward/correct/mean": 0.4, ...})   # one JSON line per step
    log.close()
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


class MetricsLogger:
    def __init__(
        self,
        out_dir: str,
        *,
        tensorboard: bool = False,
        progress: bool = True,
        headline: tuple[str, ...] = (),
        append: bool = False,
    ) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._file = open(self.path, "a" if append else "w")
        self.console = Console(stderr=False)
        if not self.console.is_terminal:  # logs and CI: wide enough that the bar and the numbers both fit
            self.console = Console(stderr=False, width=140)
        self.headline = headline
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))
        self._progress: Progress | None = None
        self._task = None
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
        record = {"step": step, "phase": phase, "time": time.time(), **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{phase}/{k}", v, step)
        if self._progress is not None and self._task is not None and phase != "eval":
            shown = [f"{k.split('/')[-2] if k.count('/') >= 2 else k}={metrics[k]:.2f}" for k in self.headline
                     if isinstance(metrics.get(k), (int, float))]
            self._progress.update(self._task, completed=step, status=" ".join(shown))

    def print(self, *args: Any) -> None:
        self.console.print(*args)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
        self._file.close()


def summary_table(title: str, rows: list[tuple[str, ...]], columns: tuple[str, ...]) -> Table:
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        table.add_row(*r)
    return table
