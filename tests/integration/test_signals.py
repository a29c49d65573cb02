"""SIGTERM during training (preemption, a Slurm time limit): the step finishes, a checkpoint is written, the
process exits with 143 and a message, and --resume continues from that step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

RECIPE = {
    "run": {"steps": 40, "progress": False},
    "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                       "max_position_embeddings": 32}},
    "data": {"synthetic": {"n_train": 32, "n_eval": 4, "max_operand": 9}, "max_prompt_tokens": 8},
    "rewards": [{"name": "correct", "plugin": "exact_match"}],
    "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 3},
    "objective": {"kind": "grpo"},
    "train": {"backend": "torch", "num_ranks": 1, "lr": 1e-3},
    "eval": {"max_samples": 4},
    "ray": {"num_cpus": 2},
}


def _steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if '"phase": "rl"' in x]


def test_sigterm_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "run": {**RECIPE["run"], "output_dir": str(out)}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "rlhf.cli", "train", str(recipe)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(_steps(out)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "--resume" in err
    stopped_at = _steps(out)[-1]
    assert 2 <= stopped_at < 40
    assert (out / "checkpoints" / "latest").read_text() == f"step_{stopped_at:06d}"

    resumed = subprocess.run(cmd + ["--resume", "run.steps=" + str(stopped_at + 2)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _steps(out) == list(range(1, stopped_at + 3))
