"""Experiment trackers (``run.trackers``): where a run's metrics, its resolved recipe and its final summary go.

    trackers = build_trackers(("jsonl", "wandb"), out_dir, run=recipe.run, resume=False)
    tracker.log_config(recipe.model_dump(mode="json"))          # once, at the start
    tracker.log(step, {"reward/correct/mean": 0.4}, phase="rl")  # every logged step
    tracker.log_summary(summary); tracker.close("finished")      # at the end

``rlhf.logging.MetricsLogger`` builds them by name and fans out to them. One class per tracker:

- ``jsonl``: OUT/metrics.jsonl, one line per call. Always written: the summary, the plots and --resume read it.
- ``tensorboard``: OUT/tensorboard/ events, tags ``<phase>/<key>``.
- ``wandb``: Weights & Biases, offline by default (OUT/wandb/offline-run-*; ``wandb sync`` uploads it later). Config
  = the recipe (nested); OUT/recipe.resolved.yaml, summary.json and curves.png are saved as run files.
- ``mlflow``: MLflow, by default a file store OUT/mlruns (no server). Params = the recipe flattened to dotted keys
  (``rewards.0.plugin``; values cut to MLflow's 6000 characters, the whole recipe is the recipe.resolved.yaml
  artifact), summary.json and curves.png are artifacts, the summary's numbers metrics ``final/...``.

Names. wandb and mlflow get the metric keys as they are (``reward/correct/mean``, ``eval/accuracy``), except the
SFT warm-up's (phase ``sft``), which get ``sft/`` in front: its steps restart at 1 before the main phase's and it
shares keys with it (``grad_norm``, ``time/step``). W&B's own step may only grow, and the warm-up, the evaluations
and the main phase each count steps from their own start, so every phase is plotted against its own step metric
``step/<phase>`` (a hidden W&B metric). MLflow allows only alphanumerics, ``_ - . : /`` and spaces in a name, and
no name that reads as another path (``a//b``, ``./a``); anything else becomes ``_``.

Resume. The wandb run id and the mlflow run id are kept in OUT/trackers.json; ``--resume`` continues those runs
(W&B ``resume="allow"`` with the same id; MLflow sets the run RUNNING again, logs params that are new, and records
resumable recipe changes as tags ``resume.<key>``). Steps redone after a crash (those after the last checkpoint) are
logged again: metrics.jsonl drops the old lines, W&B and MLflow keep both.

wandb and mlflow are imported only when listed; a missing package is a TrackerError naming the extra to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, get_args
from urllib.parse import urlparse

from rlhf.config.schema import RunConfig

TRACKERS: tuple[str, ...] = get_args(get_args(RunConfig.model_fields["trackers"].annotation)[0])  # the schema's names
IDS_FILE = "trackers.json"
PREFIXED_PHASES = ("sft",)  # the warm-up: logged to wandb / mlflow under sft/
STATUSES = ("finished", "failed", "killed")
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "trackers"),
             "mlflow": ("mlflow", "trackers")}  # tracker -> (module it needs, the project's extra that brings it)
_MLFLOW_MAX_KEY, _MLFLOW_MAX_VALUE = 250, 6000


class TrackerError(RuntimeError):
    """A tracker cannot work as the recipe asks (package missing, bad URI, start failed); the message says what to
    change."""


class Tracker(Protocol):
    """What MetricsLogger fans out to. ``status`` is one of STATUSES."""

    name: str

    def log(self, step: int, metrics: dict[str, Any], phase: str = "rl") -> None: ...
    def log_config(self, config: dict[str, Any]) -> None: ...
    def log_summary(self, summary: dict[str, Any]) -> None: ...
    def close(self, status: str = "finished") -> None: ...


# --------------------------------------------------------------------------- helpers


def require_trackers(names: Sequence[str]) -> None:
    """Raise a TrackerError naming run.trackers when a name is unknown or its package is not installed."""
    for name in names:
        if name not in TRACKERS:
            raise TrackerError(f"run.trackers: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        module, extra = _PACKAGES.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            raise TrackerError(f"run.trackers: {name} needs `pip install {module}` (or the project's [{extra}] "
                               f"extra: pip install -e '.[{extra}]'), or take {name} out of run.trackers")


def tracker_key(phase: str, key: str) -> str:
    """The name wandb and mlflow get for a metric key logged in `phase` (the warm-up's get its phase in front, once:
    loss/sft -> sft/loss/sft, sft/tokens stays)."""
    return f"{phase}/{key}" if phase in PREFIXED_PHASES and not key.startswith(f"{phase}/") else key


def numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numeric values (NaN = not applicable this step, bools and text are left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flatten(tree: Any, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and lists that hold dicts or lists) to one level: {"rewards": [{"name": "a"}]} ->
    {"rewards.0.name": "a"}; lists of plain values stay lists."""
    if isinstance(tree, dict) and tree:
        return {k2: v2 for k, v in tree.items() for k2, v2 in flatten(v, sep, f"{prefix}{k}{sep}").items()}
    if isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        return {k2: v2 for i, v in enumerate(tree) for k2, v2 in flatten(v, sep, f"{prefix}{i}{sep}").items()}
    return {prefix[: -len(sep)]: tree} if prefix else {}


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _clip(text: str, n: int, mark: str = " ...[cut]") -> str:
    return text if len(text) <= n else text[: n - len(mark)] + mark


class _MlflowNames:
    """Metric / param keys to names MLflow accepts, stable for the run; two keys never share a name."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._taken: set[str] = set()

    def __call__(self, key: str) -> str:
        if key in self._names:
            return self._names[key]
        name = re.sub(r"[^\w./\- :]", "_", key, flags=re.ASCII)
        name = "/".join("_" if part in ("", ".", "..") else part for part in name.split("/"))
        if len(name) > _MLFLOW_MAX_KEY or name in self._taken:
            name = name[: _MLFLOW_MAX_KEY - 9] + "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
        self._names[key] = name
        self._taken.add(name)
        return name


def _read_ids(out_dir: str) -> dict[str, Any]:
    path = os.path.join(out_dir, IDS_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise TrackerError(f"{path} (the tracker run ids --resume continues) cannot be read: {e}; delete it to "
                           "start new wandb / mlflow runs") from e


def _write_ids(out_dir: str, name: str, info: dict[str, Any]) -> None:
    data = _read_ids(out_dir)
    data[name] = info
    path = os.path.join(out_dir, IDS_FILE)
    with open(path + ".part", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".part", path)


# --------------------------------------------------------------------------- the trackers


class JsonlTracker:
    """OUT/metrics.jsonl: {"step", "phase", "time", **metrics} per line (NaN and inf as null)."""

    name = "jsonl"

    def __init__(self, out_dir: str, run: RunConfig, resume: bool) -> None:
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._file = open(self.path, "a" if resume else "w")

    def log(self, step: int, metrics: dict[str, Any], phase: str = "rl") -> None:
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, "phase": phase, "time": time.time(), **clean}) + "\n")
        self._file.flush()

    def log_config(self, config: dict[str, Any]) -> None:
        """Nothing: the controller writes OUT/recipe.resolved.yaml."""

    def log_summary(self, summary: dict[str, Any]) -> None:
        """Nothing: the controller writes OUT/summary.json."""

    def close(self, status: str = "finished") -> None:
        self._file.close()


class TensorBoardTracker:
    """OUT/tensorboard/ events: one scalar per numeric metric, tagged ``<phase>/<key>``."""

    name = "tensorboard"

    def __init__(self, out_dir: str, run: RunConfig, resume: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any], phase: str = "rl") -> None:
        for k, v in numbers(metrics).items():
            self._writer.add_scalar(f"{phase}/{k}", v, step)

    def log_config(self, config: dict[str, Any]) -> None:
        """Nothing: TensorBoard has no place for it that reads well; OUT/recipe.resolved.yaml is next to it."""

    def log_summary(self, summary: dict[str, Any]) -> None:
        """Nothing: OUT/summary.json is next to it."""

    def close(self, status: str = "finished") -> None:
        self._writer.close()


class WandbTracker:
    """A W&B run (run.wandb: project, entity, mode, tags, group), its files under OUT/wandb/."""

    name = "wandb"

    def __init__(self, out_dir: str, run: RunConfig, resume: bool) -> None:
        import wandb

        opts = run.wandb
        self._out = out_dir
        self._files = opts.mode != "disabled"
        saved = _read_ids(out_dir).get("wandb", {}) if resume else {}
        try:
            self._run = wandb.init(
                project=opts.project, entity=opts.entity, mode=opts.mode, tags=opts.tags or None, group=opts.group,
                name=run.name, id=saved.get("id"), resume="allow", dir=out_dir, reinit="create_new",
                settings=wandb.Settings(console="off"),  # the console is the progress bar: not worth a copy
            )
        except Exception as e:  # noqa: BLE001  (wandb raises many kinds; name the recipe keys, keep the cause)
            raise TrackerError(f"run.wandb: wandb.init failed ({type(e).__name__}: {e}); mode {opts.mode!r} "
                               "(online needs `wandb login` or WANDB_API_KEY; offline writes OUT/wandb/ only)") from e
        self.run_id = self._run.id
        _write_ids(out_dir, "wandb", {"id": self.run_id, "project": opts.project, "mode": opts.mode})
        self._defined: set[str] = set()

    def _define(self, name: str, **options: Any) -> None:
        if name not in self._defined:
            self._run.define_metric(name, **options)
            self._defined.add(name)

    def log(self, step: int, metrics: dict[str, Any], phase: str = "rl") -> None:
        axis = f"step/{phase}"
        self._define(axis, hidden=True)
        row: dict[str, float] = {}
        for k, v in numbers(metrics).items():
            key = tracker_key(phase, k)
            self._define(key, step_metric=axis)
            row[key] = v
        self._run.log({axis: step, **row})

    def _save(self, path: str | None) -> None:
        if self._files and path and os.path.isfile(path):
            copy = os.path.join(self._run.dir, os.path.basename(path))  # a copy: a symlink would follow later edits
            shutil.copyfile(path, copy)
            self._run.save(copy, base_path=self._run.dir, policy="now")

    def log_config(self, config: dict[str, Any]) -> None:
        self._run.config.update(config, allow_val_change=True)  # a resumed run may change run.steps and the like
        self._save(os.path.join(self._out, "recipe.resolved.yaml"))

    def log_summary(self, summary: dict[str, Any]) -> None:
        self._run.summary.update({f"final/{k}": v for k, v in flatten(summary, sep="/").items() if v is not None})
        self._save(os.path.join(self._out, "summary.json"))
        curves = summary.get("curves")
        self._save(curves if isinstance(curves, str) else None)

    def close(self, status: str = "finished") -> None:
        self._run.finish(exit_code=0 if status == "finished" else 1)


class MlflowTracker:
    """An MLflow run (run.mlflow: tracking_uri, experiment) through MlflowClient (no global mlflow state)."""

    name = "mlflow"

    def __init__(self, out_dir: str, run: RunConfig, resume: bool) -> None:
        opts = run.mlflow
        self._out = out_dir
        self.tracking_uri = opts.tracking_uri or Path(out_dir, "mlruns").absolute().as_uri()
        if urlparse(self.tracking_uri).scheme in ("", "file"):
            # MLflow 3 refuses a file store unless opted in; it still reads and writes it (no server needed)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        self._names, self._params = _MlflowNames(), _MlflowNames()
        saved = _read_ids(out_dir).get("mlflow", {}) if resume else {}
        try:
            self._resumed = self._continue(saved, MlflowException)
            if not self._resumed:
                self.run_id = self._start(opts.experiment, run.name)
        except MlflowException as e:
            raise TrackerError(f"run.mlflow: {self.tracking_uri} (experiment {opts.experiment!r}): {e.message}") from e
        _write_ids(out_dir, "mlflow", {"run_id": self.run_id, "tracking_uri": self.tracking_uri,
                                       "experiment": opts.experiment})

    def _continue(self, saved: dict[str, Any], error: type[Exception]) -> bool:
        """Continue the saved run when it lives in this tracking URI (False: start a new one)."""
        if not saved.get("run_id") or saved.get("tracking_uri") != self.tracking_uri:
            return False
        try:
            self._client.get_run(saved["run_id"])
        except error as e:
            if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":  # deleted since: a new run
                return False
            raise
        self.run_id = saved["run_id"]
        self._client.update_run(self.run_id, status="RUNNING")
        return True

    def _start(self, experiment: str, run_name: str) -> str:
        exp = self._client.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise TrackerError(f"run.mlflow.experiment: {experiment!r} is deleted in {self.tracking_uri}; restore "
                               "it (mlflow experiments restore) or choose another name")
        exp_id = exp.experiment_id if exp is not None else self._client.create_experiment(experiment)
        tags = {"rlhf.output_dir": os.path.abspath(self._out)}
        return self._client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(self._names(k), v, ts, step) for k, v in values.items()]
        for chunk in _chunks(batch, 1000):  # MLflow's limit per batch
            self._client.log_batch(self.run_id, metrics=chunk)

    def log(self, step: int, metrics: dict[str, Any], phase: str = "rl") -> None:
        self._metrics({tracker_key(phase, k): v for k, v in numbers(metrics).items()}, step)

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        flat = {self._params(k): _clip(v if isinstance(v, str) else json.dumps(v), _MLFLOW_MAX_VALUE)
                for k, v in flatten(config).items()}
        # params cannot change: a resumed run logs the new ones and records the (resumable) changes as tags
        before = self._client.get_run(self.run_id).data.params if self._resumed else {}
        params = [Param(k, v) for k, v in flat.items() if k not in before]
        changed = [RunTag(self._params(f"resume.{k}"), v) for k, v in flat.items() if k in before and before[k] != v]
        for chunk in _chunks(params, 100):  # MLflow's limit per batch
            self._client.log_batch(self.run_id, params=chunk)
        for chunk in _chunks(changed, 100):
            self._client.log_batch(self.run_id, tags=chunk)
        self._artifact(os.path.join(self._out, "recipe.resolved.yaml"))

    def _artifact(self, path: str | None) -> None:
        if path and os.path.isfile(path):
            self._client.log_artifact(self.run_id, path)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self._metrics({f"final/{k}": v for k, v in numbers(flatten(summary, sep="/")).items()},
                      int(summary.get("steps") or 0))
        self._client.log_dict(self.run_id, summary, "summary.json")
        curves = summary.get("curves")
        self._artifact(curves if isinstance(curves, str) else None)

    def close(self, status: str = "finished") -> None:
        self._client.set_terminated(self.run_id, status=status.upper())  # FINISHED, FAILED, KILLED


_BUILDERS: dict[str, Callable[[str, RunConfig, bool], Tracker]] = {
    "jsonl": JsonlTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def build_trackers(names: Sequence[str], out_dir: str, *, run: RunConfig | None = None,
                   resume: bool = False) -> list[Tracker]:
    """The trackers `names`, in order (options from `run`: run.wandb, run.mlflow, run.name); ``resume`` appends to
    metrics.jsonl and continues the wandb / mlflow runs whose ids OUT/trackers.json holds."""
    require_trackers(names)
    run = run if run is not None else RunConfig()
    built: list[Tracker] = []
    try:
        for name in names:
            built.append(_BUILDERS[name](out_dir, run, resume))
    except BaseException:
        for tracker in reversed(built):  # the ones already started end as failed; the error goes on
            tracker.close("failed")
        raise
    return built


def exit_status(summary: dict[str, Any] | None = None) -> str:
    """The status to close with: finished with a summary or when no exception is in flight, killed on Ctrl-C."""
    exc = None if summary is not None else sys.exc_info()[1]
    return "finished" if exc is None else "killed" if isinstance(exc, KeyboardInterrupt) else "failed"
