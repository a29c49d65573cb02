"""Dead actors under asynchronous training (issue 19): a rollout engine and a reward worker SIGKILLed while the
pipeline's producer thread generates and scores ahead of the trainer are restarted, the restarted engine gets the
engines' weight version, and the run finishes every step within its staleness bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STEPS = 14
RECIPE = {
    "run": {"steps": STEPS, "save_every": 0, "progress": False, "seed": 5},
    "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                       "max_position_embeddings": 32}},
    "data": {"synthetic": {"n_train": 32, "n_eval": 4, "max_operand": 9}, "max_prompt_tokens": 8},
    "warmup": {"steps": 0},
    "rewards": [{"name": "correct", "plugin": "exact_match"},
                {"name": "brief", "plugin": "length_penalty", "args": {"target": 1}}],
    "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
    "objective": {"kind": "grpo", "kl_coef": 0.0},
    "train": {"backend": "torch", "num_ranks": 1, "lr": 1e-2},
    "pipeline": {"max_staleness": 1},
    "eval": {"every": 0, "max_samples": 4},
    "ray": {"num_cpus": 2},
}


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the driver's Ray: GCS, raylet, and the raylet's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _actor_pid(driver: int, cls: tuple[str, ...]) -> int | None:
    """The pid of a live actor process of one of these classes in the driver's Ray (Ray titles the process
    `ray::Class.method` or `ray::Class`)."""
    for pid in _descendants(driver):
        try:
            title = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if any(title.startswith(f"ray::{c}") for c in cls):
            return pid
    return None


def _steps(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("phase") == "rl"]


@pytest.mark.extended
def test_engine_and_reward_worker_killed_mid_async_run(tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "async.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "run": {**RECIPE["run"], "output_dir": str(out)}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "train", str(recipe)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed: dict[str, int] = {}
    try:
        deadline = time.time() + 400
        for name, classes, after in (("engine", ("RolloutActor",), 2),
                                     ("reward worker", ("RewardWorker", "PooledRewardWorker"), 6)):
            while len(_steps(out)) < after and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            pid = _actor_pid(proc.pid, classes)
            assert pid is not None, f"no {name} process under the driver"
            os.kill(pid, signal.SIGKILL)
            killed[name] = len(_steps(out))
        assert proc.wait(timeout=max(1.0, deadline - time.time())) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    rows = _steps(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert killed["engine"] < STEPS and killed["reward worker"] < STEPS, killed  # the kills landed mid-run
    assert rows[-1]["events/rollout_restarts"] >= 1, rows[-1]
    assert rows[-1]["events/reward_worker_restarts"] >= 1, rows[-1]
    assert max(r["async/staleness_max"] for r in rows) <= 1.0  # the admission rule held through the restarts
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS
    print(f"\nasync restarts: engine killed after step {killed['engine']}, reward worker after step "
          f"{killed['reward worker']}; events/rollout_restarts {rows[-1]['events/rollout_restarts']:.0f}, "
          f"events/reward_worker_restarts {rows[-1]['events/reward_worker_restarts']:.0f}")
