"""A real `rlhf train` run (RLOO on the torch backend, 2 warm-up + 2 RL steps on a tiny model) with
``run.trackers: [jsonl, wandb, mlflow]``: each component's reward curve, the recipe and the summary are read back from
the W&B offline log and the MLflow file store and match metrics.jsonl; then `--resume` to step 3 continues the same
W&B and MLflow runs."""

from __future__ import annotations

import json

import pytest

from rlhf.config.load import validate_dict

pytest.importorskip("wandb", reason="the [trackers] extra (scripts/test.sh installs it)")
pytest.importorskip("mlflow", reason="the [trackers] extra (scripts/test.sh installs it)")

from tests.unit.test_trackers import (  # noqa: E402,F401  (tracker_env: a fixture)
    mlflow_run, tracker_env, wandb_history, wandb_merged, wandb_records)


def _recipe(out, steps: int = 2):
    return validate_dict({
        "run": {"name": "trk", "output_dir": str(out), "steps": steps, "progress": False,
                "trackers": ["jsonl", "wandb", "mlflow"], "wandb": {"project": "rlhf-tests"}},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"synthetic": {"n_train": 32, "n_eval": 8, "max_operand": 9}, "max_prompt_tokens": 8},
        "warmup": {"steps": 2, "batch_size": 8, "lr": 1e-3},
        "rewards": [{"name": "correct", "plugin": "exact_match"},
                    {"name": "length", "plugin": "length_penalty", "args": {"target": 2}}],
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
        "objective": {"kind": "rloo", "kl_coef": 0.05},
        "train": {"lr": 1e-2, "backend": "torch", "num_ranks": 1},
        "eval": {"max_samples": 4},
    }, "test")


@pytest.mark.slow  # 82 s + 23 s Ray start, measured on 2 cores at load ~25; the only test of the controller's wiring
def test_train_logs_reward_components_to_wandb_and_mlflow(ray_session, tmp_path, tracker_env):
    from rlhf.runtime.controller import run

    out = tmp_path / "run"
    summary = run(_recipe(out))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if r["phase"] == "rl"]
    keys = ("reward/correct/mean", "reward/length/mean")
    expected = {k: [(r["step"], r[k]) for r in rl] for k in keys}
    assert [s for s, _ in expected["reward/correct/mean"]] == [1, 2]

    client, mrun = mlflow_run(out)
    assert mrun.info.status == "FINISHED"
    for k in keys:
        got = [(m.step, m.value) for m in client.get_metric_history(mrun.info.run_id, k)]
        assert got == expected[k], k  # the same doubles as metrics.jsonl
    assert [m.step for m in client.get_metric_history(mrun.info.run_id, "sft/loss/sft")] == [1, 2]
    assert mrun.data.params["objective.kind"] == "rloo" and mrun.data.params["rewards.1.name"] == "length"
    assert mrun.data.metrics["final/steps"] == summary["steps"] == 2
    assert {"recipe.resolved.yaml", "summary.json"} <= {a.path for a in client.list_artifacts(mrun.info.run_id)}

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    wb = wandb_records(run_dir)
    rows = [r for r in wandb_history(wb) if "step/rl" in r]
    for k in keys:
        assert [(r["step/rl"], r[k]) for r in rows] == expected[k], k
    (started,) = [r["run"] for r in wb if r["type"] == "run"]
    assert started["project"] == "rlhf-tests" and started["display_name"] == "trk"
    assert wandb_merged(wb, "config")["objective"]["kind"] == "rloo"
    final = wandb_merged(wb, "summary")
    assert final["final/eval_after/correct"] == summary["eval_after"]["correct"] and final["final/steps"] == 2

    # --resume (run.steps is a resumable change) continues both runs: no new MLflow run, the W&B id again
    ids = json.loads((out / "trackers.json").read_text())
    run(_recipe(out, steps=3), resume=True)
    assert json.loads((out / "trackers.json").read_text()) == ids
    client, mrun = mlflow_run(out)
    assert [m.step for m in client.get_metric_history(mrun.info.run_id, "reward/correct/mean")] == [1, 2, 3]
    assert mrun.info.status == "FINISHED" and mrun.data.tags["resume.run.steps"] == "3"
    assert len(client.search_runs([mrun.info.experiment_id])) == 1
    second = sorted((out / "wandb").glob("offline-run-*"))[-1]
    assert second != run_dir and second.name.endswith(ids["wandb"]["id"])
    assert [r["step/rl"] for r in wandb_history(wandb_records(second)) if "step/rl" in r] == [3]
