"""The multi-node rehearsal on one machine (issue 24): a Ray cluster of a head and two worker nodes on this host
(tests/integration/multinode.py), `rlhf train` joining it by `ray.address` with `ray.placement_strategy:
STRICT_SPREAD`, so the two DeepSpeed ZeRO-2 ranks land on different nodes (the rendezvous crosses nodes: rank 0's
node IP and a port there) and the engine wherever Ray's SPREAD puts it. Checkpoints go to a path every node sees
(one machine: any local path; on a real cluster a shared file system).

- a run completes there, and OUT/placement.json + summary.json say which node each rank and engine ran on;
- a worker node hosting a training rank is SIGKILLed (raylet and all) after a checkpoint exists: the run fails
  fast with a message naming the lost rank and its node, the checkpoint stays valid, and `--resume` on a fresh
  cluster finishes the run.

Each test prints its wall times (`pytest -s`). Extended: both take ~1.7 min on a quiet 2-core machine (~35 s +
~70 s), ~5 min on a loaded one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from multinode import local_cluster  # a sibling module of this directory

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "grpo_tiny_cpu.yaml"
TINY = ["warmup.steps=2", "warmup.batch_size=8", "eval.max_samples=4", "eval.every=0", "run.progress=false",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
        "data.synthetic.n_train=32", "data.synthetic.n_eval=4", "model.tiny.hidden_size=32",
        "model.tiny.intermediate_size=64", "model.tiny.num_layers=1",
        "train.backend=deepspeed", "train.zero_stage=2", "train.num_ranks=2",
        "ray.placement_strategy=STRICT_SPREAD", "run.save_every=1", "run.keep_checkpoints=2"]
FAIL_FAST_S = 60  # from the node's death to the driver's exit

pytestmark = [pytest.mark.slow, pytest.mark.extended]


def _train(out: Path, address: str, steps: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlhf.cli", "train", str(RECIPE), *extra, f"run.output_dir={out}",
           f"run.steps={steps}", f"ray.address={address}", *TINY]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _latest(out: Path) -> int:
    latest = out / "checkpoints" / "latest"
    return int(latest.read_text().split("_")[-1]) if latest.exists() else 0


def _rl_steps(out: Path) -> list[int]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["phase"] == "rl"]


def _check_spread(placement: dict, cluster_nodes: dict[str, str]) -> list[str]:
    """The ranks ran on two different nodes of this cluster, the engine on one of its nodes; returns the names."""
    ranks = [n["node_id"] for n in placement["trainers"]]
    assert len(set(ranks)) == 2, f"STRICT_SPREAD put both ranks on one node: {placement}"
    engines = [n["node_id"] for n in placement["engines"]]
    assert set(ranks + engines) <= set(cluster_nodes.values()), (placement, cluster_nodes)
    name = {nid: name for name, nid in cluster_nodes.items()}
    return [name[n] for n in ranks] + [name[n] for n in engines]


def test_grpo_runs_with_ranks_on_different_nodes(tmp_path):
    out = tmp_path / "shared" / "run"  # every node sees it (one machine); on a real cluster a shared file system
    t0 = time.monotonic()
    with local_cluster(workers=2) as cluster:
        t_up = time.monotonic()
        rc, err = _finish(_train(out, cluster.address, 4), timeout=600)
        t_run = time.monotonic()
        assert rc == 0, err[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        where = _check_spread(summary["placement"], cluster.nodes)
        assert json.loads((out / "placement.json").read_text())["trainers"] == summary["placement"]["trainers"]
    assert summary["steps"] == 4 and _rl_steps(out) == [1, 2, 3, 4]
    assert (out / "checkpoints" / "latest").read_text() == "step_000004"
    print(f"\nmultinode run: cluster up {t_up - t0:.1f} s, 4 GRPO steps (2 warm-up) {t_run - t_up:.1f} s, total "
          f"{time.monotonic() - t0:.1f} s; rank 0, rank 1, engine on: {', '.join(where)}")


def test_node_loss_fails_fast_and_resume_finishes(tmp_path):
    from safetensors.torch import load_file

    from rlhf.train import checkpoint as ckpt

    steps = 16  # many short steps: the kill lands mid-run
    out = tmp_path / "shared" / "run"
    t0 = time.monotonic()
    with local_cluster(workers=2) as cluster:
        t_up = time.monotonic()
        proc = _train(out, cluster.address, steps)
        try:
            deadline = time.monotonic() + 400
            while _latest(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None and _latest(out) >= 1, "the run never wrote its first checkpoint"
            placement = json.loads((out / "placement.json").read_text())
            head = cluster.nodes["head"]
            ranks = [n["node_id"] for n in placement["trainers"]]
            rank = 1 if ranks[1] != head else 0  # a worker node hosting a training rank (never the head)
            victim = ranks[rank]
            t_kill = time.monotonic()
            cluster.kill(victim)
            failed_rc, err = _finish(proc, timeout=300)
            t_exit = time.monotonic()
        finally:
            if proc.poll() is None:
                proc.kill()
        killed_at = _latest(out)
        assert 1 <= killed_at < steps, f"the run was at step {killed_at} of {steps} when its node was lost"
    t_down = time.monotonic()

    # failed fast, with a message that names the lost rank and its node, and no Python traceback
    assert failed_rc == 1, err[-3000:]
    assert t_exit - t_kill < FAIL_FAST_S, f"the run took {t_exit - t_kill:.0f} s to notice its lost node"
    message = next(line for line in err.splitlines() if line.startswith("error: "))
    assert f"policy rank {rank} (Ray node {victim}" in message and "--resume" in message, message
    assert "Traceback" not in err, err[-3000:]

    # the checkpoint is complete and loadable
    latest = ckpt.latest(str(out))
    state = ckpt.verify(latest)
    assert state["step"] == killed_at
    assert load_file(latest / "model" / "model.safetensors")

    # a fresh cluster (as after a re-queued job) resumes it to the end
    with local_cluster(workers=2) as cluster:
        t_up2 = time.monotonic()
        rc, err = _finish(_train(out, cluster.address, steps, "--resume"), timeout=600)
        t_resumed = time.monotonic()
        assert rc == 0, err[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        where = _check_spread(summary["placement"], cluster.nodes)
    assert summary["steps"] == steps and _rl_steps(out) == list(range(1, steps + 1))
    print(f"\nnode loss: cluster up {t_up - t0:.1f} s; killed the node of rank {rank} after checkpoint step "
          f"{killed_at}; the run exited {t_exit - t_kill:.1f} s later (exit status {failed_rc}); message: {message}\n"
          f"resume: fresh cluster up {t_up2 - t_down:.1f} s, steps {killed_at + 1}-{steps} in "
          f"{t_resumed - t_up2:.1f} s; rank 0, rank 1, engine on: {', '.join(where)}")
