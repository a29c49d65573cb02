"""`rlhf launch ray` against a real Ray head on this machine: `ray start --head` with the dashboard (the job
server), then a tiny GRPO recipe submitted as a Ray job; the launcher streams its logs and exits with its status,
and the run's summary.json and metrics.jsonl exist. The head is stopped (only its own processes) afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from multinode import own_processes  # a sibling module: only this head's processes are stopped

ROOT = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)
TINY = ["run.steps=2", "warmup.steps=0", "eval.max_samples=4", "train.backend=torch", "train.num_ranks=1",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4", "run.progress=false",
        "data.synthetic.n_train=32", "data.synthetic.n_eval=4", "model.tiny.hidden_size=32",
        "model.tiny.intermediate_size=64", "model.tiny.num_layers=1", "ray.num_cpus=2"]  # the smallest run end to end

# a Ray head of its own with the job server (~1 min); the launcher's script, env and address handling are unit
# tested in tests/unit/test_launch_targets.py
pytestmark = [pytest.mark.slow, pytest.mark.extended]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_raylet_start_wait_time_s": "120"}  # a loaded 2-core machine: the raylet's wait for its agents


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)
    deadline = time.time() + 15
    while own_processes(temp_dir) and time.time() < deadline:
        time.sleep(0.5)
    for pid in own_processes(temp_dir):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with the dashboard on free ports and its own temp dir; yields the job server address."""
    gcs, dashboard, agent, client = free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="rlhf-ray-", dir="/tmp")
    cmd = ["ray", "start", "--head", "--block", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
           "--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent),
           "--ray-client-server-port", str(client), "--temp-dir", temp_dir, "--disable-usage-stats"]
    log = open(Path(temp_dir) / "ray-start.log", "w")
    head = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_job_server(address, head, temp_dir)
        yield address
    finally:
        _stop(head, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)  # Ray may still be removing its own files in there


def _wait_for_job_server(address: str, head: subprocess.Popen, temp_dir: str, timeout: float = 120) -> None:
    """Until the job server answers and a node's dashboard agent has registered (jobs need one)."""
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert head.poll() is None, (Path(temp_dir) / "ray-start.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=5) as r:
                if r.status == 200 and _agent_up(temp_dir):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"the Ray job server at {address} did not come up in {timeout:.0f} s")


def _agent_up(temp_dir: str) -> bool:
    """The node's dashboard agent serves HTTP (the job server hands jobs to it; it logs its address when up)."""
    logs = list(Path(temp_dir).glob("session_*/logs/dashboard_agent.log"))
    return any("Dashboard agent http address" in log.read_text(errors="replace") for log in logs)


def test_ray_job_runs_a_recipe_to_completion(ray_head, tmp_path):
    out = tmp_path / "run"
    cmd = [f"{BIN}/rlhf", "launch", "ray", str(ROOT / "recipes" / "grpo_tiny_cpu.yaml"), "--address", ray_head,
           f"run.output_dir={out}", *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted Ray job rlhf-grpo_tiny_cpu-" in proc.stdout
    assert "SUCCEEDED" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"phase": "rl"' in x]
    assert steps == [1, 2]
    assert (out / "checkpoints" / "latest").read_text() == "step_000002"
