"""Experiment trackers (rlhf/trackers.py, ``run.trackers``): a real short logging session into W&B (offline) and an
MLflow file store, read back with each tool's own reader (``wandb leet inspect --json`` on the run's .wandb log;
``MlflowClient``), a --resume that continues the same runs, names MLflow accepts, and the recipe errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config.schema import RunConfig
from rlhf.logging import MetricsLogger
from rlhf.trackers import TrackerError, _MlflowNames, flatten, require_trackers

NEEDS_EXTRA = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None or importlib.util.find_spec("mlflow") is None,
    reason="the [trackers] extra (wandb, mlflow-skinny): scripts/test.sh installs it")
CONFIG = {"run": {"name": "t", "steps": 2}, "rewards": [{"name": "correct", "args": {"pattern": "x" * 7000}}],
          "data": {"ops": ["+", "-"]}}


@pytest.fixture
def tracker_env(monkeypatch, tmp_path):
    """W&B's own settings and caches in the test's directory; no key, no network (the trackers run offline)."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    for var in ("WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of a W&B run's .wandb transaction log, as wandb's own reader prints them."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def wandb_history(records: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]


def wandb_merged(records: list[dict], kind: str) -> dict:
    """The run's config or summary: its updates in order (the run record carries the config given to init)."""
    merged: dict = {}
    for r in records:
        if r["type"] == "run" and kind == "config":
            merged.update(r["run"].get("config", {}).get("update", {}))
        elif r["type"] == kind:
            merged.update(r[kind].get("update", {}))
    return merged


def mlflow_run(out: Path):
    from mlflow.tracking import MlflowClient

    ids = json.loads((out / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(ids["tracking_uri"])
    return client, client.get_run(ids["run_id"])


def _session(out: Path, run: RunConfig, config: dict, steps: range, append: bool = False, summary: dict | None = None):
    (out / "recipe.resolved.yaml").parent.mkdir(parents=True, exist_ok=True)
    (out / "recipe.resolved.yaml").write_text("run:\n  steps: 2\n")
    log = MetricsLogger(str(out), trackers=run.tracker_names, run=run, config=config, progress=False, append=append)
    if not append:
        log.log(1, {"loss/sft": 2.5, "grad_norm": 9.0}, phase="sft")  # the warm-up: its steps restart at 1
        log.log(0, {"eval/accuracy": 0.125}, phase="eval")
    for s in steps:
        log.log(s, {"reward/correct/mean": 0.25 * s, "reward/my len!/mean": -0.5 * s, "grad_norm": float(s),
                    "adv/std": float("nan"), "note": "text"}, phase="rl")
    log.log(steps[-1], {"eval/accuracy": 0.5}, phase="eval")
    log.close(summary)


@NEEDS_EXTRA
def test_wandb_offline_and_mlflow_file_store_are_written_and_read_back(tmp_path, tracker_env):
    out = tmp_path / "run"
    run = RunConfig(name="t", trackers=["wandb", "mlflow"], wandb={"tags": ["unit"], "group": "g"})
    summary = {"steps": 2, "components": {"correct": {"first": 0.25, "last": 0.5}}, "checkpoint": "/ckpt"}
    _session(out, run, CONFIG, range(1, 3), summary=summary)

    # metrics.jsonl is written whatever the list says
    rl = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rl] == ["sft", "eval", "rl", "rl", "eval"] and rl[2]["adv/std"] is None

    # MLflow: metric histories per key and step, params (the recipe flattened, long values cut), artifacts, status
    client, mrun = mlflow_run(out)
    assert mrun.info.status == "FINISHED" and mrun.info.run_name == "t"
    history = lambda key: [(m.step, m.value) for m in client.get_metric_history(mrun.info.run_id, key)]  # noqa: E731
    assert history("reward/correct/mean") == [(1, 0.25), (2, 0.5)]
    assert history("reward/my len_/mean") == [(1, -0.5), (2, -1.0)]  # '!' is not allowed in an MLflow name
    assert history("sft/loss/sft") == [(1, 2.5)] and history("sft/grad_norm") == [(1, 9.0)]
    assert history("grad_norm") == [(1, 1.0), (2, 2.0)] and history("eval/accuracy") == [(0, 0.125), (2, 0.5)]
    assert history("final/components/correct/last") == [(2, 0.5)]
    assert "adv/std" not in mrun.data.metrics and "note" not in mrun.data.metrics  # NaN and text are left out
    params = mrun.data.params
    assert params["run.steps"] == "2" and params["rewards.0.name"] == "correct" and params["data.ops"] == '["+", "-"]'
    assert len(params["rewards.0.args.pattern"]) == 6000 and params["rewards.0.args.pattern"].endswith("[cut]")
    assert {a.path for a in client.list_artifacts(mrun.info.run_id)} == {"recipe.resolved.yaml", "summary.json"}

    # W&B offline: the .wandb log holds the config, every row against its phase's step metric, files, the summary
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = wandb_records(run_dir)
    (started,) = [r["run"] for r in records if r["type"] == "run"]
    assert started["project"] == "rlhf" and started["tags"] == ["unit"] and started["run_group"] == "g"
    config = wandb_merged(records, "config")
    assert config["run"] == {"name": "t", "steps": 2} and config["rewards"][0]["name"] == "correct"
    rows = wandb_history(records)
    rl_rows = [r for r in rows if "step/rl" in r]
    assert [(r["step/rl"], r["reward/correct/mean"], r["reward/my len!/mean"]) for r in rl_rows] == [
        (1, 0.25, -0.5), (2, 0.5, -1.0)]
    assert all("adv/std" not in r and "note" not in r for r in rows)
    assert [(r["step/sft"], r["sft/loss/sft"]) for r in rows if "step/sft" in r] == [(1, 2.5)]
    assert [(r["step/eval"], r["eval/accuracy"]) for r in rows if "step/eval" in r] == [(0, 0.125), (2, 0.5)]
    axes = {r["metric"]["name"]: r["metric"].get("step_metric") for r in records if r["type"] == "metric"}
    assert axes["reward/correct/mean"] == "step/rl" and axes["sft/grad_norm"] == "step/sft"
    files = {f["path"] for r in records if r["type"] == "files" for f in r["files"]["files"]}
    assert "recipe.resolved.yaml" in files and (run_dir / "files" / "recipe.resolved.yaml").is_file()
    final = wandb_merged(records, "summary")
    assert final["final/components/correct/last"] == 0.5 and final["final/checkpoint"] == "/ckpt"
    (exit_record,) = [r["exit"] for r in records if r["type"] == "exit"]
    assert exit_record.get("exit_code", 0) == 0


@NEEDS_EXTRA
def test_resume_continues_the_same_wandb_and_mlflow_runs(tmp_path, tracker_env):
    out = tmp_path / "run"
    run = RunConfig(name="t", trackers=["jsonl", "wandb", "mlflow"])
    _session(out, run, CONFIG, range(1, 3))
    ids = json.loads((out / "trackers.json").read_text())

    longer = {**CONFIG, "run": {"name": "t", "steps": 4}}  # run.steps is a resumable change
    _session(out, run, longer, range(3, 5), append=True)
    assert json.loads((out / "trackers.json").read_text()) == ids  # the same runs, not new ones

    client, mrun = mlflow_run(out)
    assert mrun.info.run_id == ids["mlflow"]["run_id"] and mrun.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(mrun.info.run_id, "reward/correct/mean")] == [1, 2, 3, 4]
    assert mrun.data.params["run.steps"] == "2" and mrun.data.tags["resume.run.steps"] == "4"  # params are immutable
    assert len(client.search_runs([mrun.info.experiment_id])) == 1

    # W&B offline writes one directory per process; both carry the run id, so `wandb sync` resumes one run
    dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and all(ids["wandb"]["id"] in d.name for d in dirs)  # "-1" added within one second
    second = wandb_records(dirs[1])
    (started,) = [r["run"] for r in second if r["type"] == "run"]
    assert started["run_id"] == ids["wandb"]["id"]
    assert [r["step/rl"] for r in wandb_history(second) if "step/rl" in r] == [3, 4]

    # a fresh run (no --resume) into the same directory starts new tracker runs
    _session(out, run, CONFIG, range(1, 2))
    fresh = json.loads((out / "trackers.json").read_text())
    assert fresh["mlflow"]["run_id"] != ids["mlflow"]["run_id"] and fresh["wandb"]["id"] != ids["wandb"]["id"]


@NEEDS_EXTRA
def test_an_error_in_flight_ends_the_runs_as_failed(tmp_path, tracker_env):
    out = tmp_path / "run"
    run = RunConfig(name="t", trackers=["mlflow"])
    log = MetricsLogger(str(out), trackers=run.tracker_names, run=run, progress=False)
    with pytest.raises(ValueError, match="boom"):
        try:
            log.log(1, {"reward/correct/mean": 1.0})
            raise ValueError("boom")
        finally:
            log.close()
    log.close()  # a second close does nothing
    assert mlflow_run(out)[1].info.status == "FAILED"


def test_jsonl_is_always_written_and_tensorboard_alias(tmp_path):
    assert RunConfig().tracker_names == ("jsonl",)
    assert RunConfig(trackers=["wandb"]).tracker_names == ("jsonl", "wandb")
    assert RunConfig(trackers=["mlflow", "jsonl"], tensorboard=True).tracker_names == ("jsonl", "mlflow", "tensorboard")
    log = MetricsLogger(str(tmp_path), trackers=(), progress=False)
    log.log(3, {"x": 1.0})
    log.close()
    assert [t.name for t in log.trackers] == ["jsonl"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["step"] == 3


def test_unknown_or_repeated_tracker_is_a_recipe_error_naming_run_trackers():
    from rlhf.config.load import RecipeError, validate_dict

    base = {"model": {"tiny": {}}, "rewards": [{"name": "r", "plugin": "exact_match"}]}
    with pytest.raises(RecipeError, match=r"run\.trackers.*'jsonl', 'tensorboard', 'wandb' or 'mlflow'"):
        validate_dict({**base, "run": {"trackers": ["jsonl", "wandbb"]}}, "test")
    with pytest.raises(RecipeError, match=r"run\.trackers: wandb listed more than once"):
        validate_dict({**base, "run": {"trackers": ["wandb", "wandb"]}}, "test")
    with pytest.raises(RecipeError, match=r"run\.wandb\.mode"):
        validate_dict({**base, "run": {"trackers": ["wandb"], "wandb": {"mode": "cloud"}}}, "test")
    recipe = validate_dict({**base, "run": {"trackers": ["wandb", "mlflow"], "wandb": {"project": "p"}}}, "test")
    assert recipe.run.tracker_names == ("jsonl", "wandb", "mlflow") and recipe.run.mlflow.tracking_uri is None
    with pytest.raises(TrackerError, match=r"run\.trackers: unknown tracker 'csv'"):
        require_trackers(["jsonl", "csv"])


def test_a_missing_package_names_the_extra(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TrackerError, match=r"run\.trackers: wandb needs `pip install wandb` \(or the project's "
                                           r"\[trackers\] extra"):
        require_trackers(["jsonl", "mlflow", "wandb"])
    with pytest.raises(TrackerError, match="wandb needs"):
        MetricsLogger(str(tmp_path), trackers=("wandb",), progress=False)


def test_mlflow_names_and_flat_params():
    validation = pytest.importorskip("mlflow.utils.validation")
    names = _MlflowNames()
    assert names("reward/correct/mean") == "reward/correct/mean"
    assert names("reward/a+b/mean") == "reward/a_b/mean"
    assert names("a//b/") == "a/_/b/_" and names("./x") == "_/x" and names("../é") == "_/_"
    assert names("reward/a_b/mean") != names("reward/a+b/mean")  # two keys never share a name
    long = names("k" * 400)
    assert len(long) == 250 and long != names("k" * 401)
    for key in ("reward/a+b/mean", "a//b/", "./x", "../é", "k" * 400, "reward/a_b/mean", "x: y-z.w"):
        validation._validate_metric_name(names(key))  # what MLflow itself checks (raises when not accepted)
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "r": [{"n": "x"}], "e": {}}) == {
        "a.b": 1, "a.c": [1, 2], "r.0.n": "x", "e": {}}
    assert flatten({"s": {"t": 1.5}}, sep="/") == {"s/t": 1.5}


def test_trackers_are_a_resumable_change():
    from rlhf.config.load import validate_dict
    from rlhf.runtime.resume import RESUMABLE_CHANGES, digest

    base = {"model": {"tiny": {}}, "rewards": [{"name": "r", "plugin": "exact_match"}]}
    before = validate_dict(base, "test")
    after = validate_dict({**base, "run": {"trackers": ["wandb", "mlflow"], "tensorboard": True,
                                           "wandb": {"mode": "online"}, "mlflow": {"experiment": "e"}}}, "test")
    assert {"run.trackers", "run.wandb", "run.mlflow", "run.tensorboard"} <= set(RESUMABLE_CHANGES)
    assert digest(before) == digest(after)


def test_a_failing_tracker_is_turned_off_and_the_run_goes_on(tmp_path):
    """A tracker that raises (a server down, an upload refused) warns and is dropped: metrics.jsonl keeps every
    record, closing still finishes, nothing is raised into the training loop (checkpoints stay on schedule)."""
    import json

    from rlhf.logging import MetricsLogger

    class Flaky:
        name = "flaky"

        def __init__(self, fail_in: str) -> None:
            self.fail_in, self.closed = fail_in, None

        def log(self, step, metrics, phase="rl"):
            if self.fail_in == "log" and step == 2:
                raise ConnectionError("server went away")

        def log_config(self, config):
            pass

        def log_summary(self, summary):
            if self.fail_in == "summary":
                raise ConnectionError("upload refused")

        def close(self, status="finished"):
            self.closed = status

    for fail_in in ("log", "summary"):
        out = tmp_path / fail_in
        log = MetricsLogger(str(out), progress=False)
        flaky = Flaky(fail_in)
        log.trackers.append(flaky)
        for step in (1, 2, 3):
            log.log(step, {"loss": float(step)})
        log.close({"steps": 3})
        assert flaky.closed == "failed" and flaky not in log.trackers
        steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3]
