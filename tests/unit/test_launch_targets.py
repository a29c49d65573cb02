"""`rlhf launch`: recipes are validated before any target runs (errors name the file and key, exit 2, nothing is
submitted), --dry-run prints what would be submitted for local / ray / slurm, flags are checked by name, and the
sbatch script's SIGTERM trap forwards TERM to `rlhf train` and waits for it (bash, with the cluster commands
replaced by small scripts on PATH; the real Slurm run is tests/integration/test_launch_slurm.py)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launch import TARGETS, slurm
from launch.common import make_job
from rlhf.cli import _parser, main
from rlhf.config import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes" / "grpo_tiny_cpu.yaml")


def test_help_and_usage_list_launch(capsys):
    import rlhf.cli

    assert "rlhf launch local|ray|slurm|k8s RECIPE" in rlhf.cli.__doc__
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "launch" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["launch", "slurm", "--help"])
    out = capsys.readouterr().out
    assert "--gpus-per-node" in out and "--dry-run" in out and "--signal-grace" in out


@pytest.mark.parametrize("target", TARGETS)
def test_invalid_recipe_is_refused_before_launch(capsys, tmp_path, target):
    out_dir = tmp_path / "slurm-files"
    argv = ["launch", target, RECIPE, "train.lrr=1e-4"]
    if target == "slurm":
        argv += ["--output-dir", str(out_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "grpo_tiny_cpu.yaml" in err and "train.lrr" in err and "'lr'" in err
    assert not out_dir.exists()


def test_unknown_reward_plugin_is_refused_like_validate(capsys):
    assert main(["launch", "ray", RECIPE, "--address", "http://127.0.0.1:1", "rewards.0.plugin=no_such_plugin"]) == 2
    err = capsys.readouterr().err
    assert "grpo_tiny_cpu.yaml: rewards.0" in err and "no_such_plugin" in err


def test_local_dry_run_prints_the_train_command(capsys):
    assert main(["launch", "local", RECIPE, "run.steps=3", "--dry-run", "--resume"]) == 0
    assert capsys.readouterr().out.strip() == f"rlhf train {RECIPE} run.steps=3 --resume"


def test_local_runs_rlhf_train_in_process(capsys, tmp_path):
    """--resume into an empty directory: `rlhf train`'s own error and exit status, before any model is built."""
    assert main(["launch", "local", RECIPE, f"run.output_dir={tmp_path / 'run'}", "--resume"]) == 1
    assert "--resume: no checkpoint under" in capsys.readouterr().err


def test_ray_dry_run_shows_submission_and_recipe(capsys):
    assert main(["launch", "ray", RECIPE, "--address", "http://head:8265", "--submission-id", "job-1",
                 "run.steps=5", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "ray job submit --address http://head:8265 --submission-id job-1" in out
    assert "-- rlhf train .rlhf_launch/job-1.yaml ray.address=auto" in out
    assert '"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"' in out
    recipe = yaml.safe_load(out.split(".rlhf_launch/job-1.yaml (in the working dir)\n", 1)[1])
    assert recipe["run"]["steps"] == 5
    assert "is relative" in err


@pytest.mark.parametrize("argv, message", [
    ([], "--address: give the Ray cluster's dashboard address"),
    (["--address", "http://h:8265", "--working-dir", "/no/such/dir"], "--working-dir /no/such/dir: not a directory"),
])
def test_ray_flags_are_checked(capsys, monkeypatch, argv, message):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["launch", "ray", RECIPE, "--dry-run", *argv]) == 1
    assert message in capsys.readouterr().err


def test_ray_without_a_job_server_fails_clearly(capsys, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["launch", "ray", RECIPE, "--address", f"http://127.0.0.1:{port}", "--working-dir",
                 str(tmp_path)]) == 1
    assert "no Ray job server answers there" in capsys.readouterr().err
    assert not (tmp_path / ".rlhf_launch").exists()  # nothing written before the server answered


def _script(*argv: str) -> str:
    args = _parser().parse_args(["launch", "slurm", RECIPE, *argv])
    job = make_job(RECIPE, args.overrides, load_recipe(RECIPE, args.overrides), resume=args.resume)
    return slurm.render(job, args, "/shared/r.yaml", "/shared/logs")


def test_slurm_script_shape():
    script = _script("--nodes", "4", "--gpus-per-node", "8", "--cpus-per-task", "32", "--mem", "500G", "--time",
                     "2-00:00:00", "--partition", "gpu", "--account", "ml", "--extra-sbatch=--qos=high",
                     "--setup", "source /opt/venv/bin/activate", "--signal-grace", "600", "--resume")
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=32",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --mem=500G", "#SBATCH --time=2-00:00:00",
                 "#SBATCH --partition=gpu", "#SBATCH --account=ml", "#SBATCH --qos=high",
                 "#SBATCH --signal=B:TERM@600", "#SBATCH --output=/shared/logs/%x-%j.out",
                 "source /opt/venv/bin/activate", "RECIPE=/shared/r.yaml",
                 'nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))',
                 "trap forward_term TERM", "trap stop_ray EXIT",
                 'rlhf train "$RECIPE" ray.address=auto --resume &'):
        assert line in script, line
    assert script.index("ray start --head") < script.index('for node in "${nodes[@]:1}"')
    assert "--num-gpus=\"$GPUS\"" in script and "GPUS=8" in script and "NUM_NODES=4" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_slurm_dry_run_and_defaults(capsys):
    assert main(["launch", "slurm", RECIPE, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=2" in out  # the recipe's ray.num_cpus
    assert "#SBATCH --gpus-per-node" not in out and "#SBATCH --job-name=grpo_tiny_cpu" in out
    assert "(the resolved recipe)" in out


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "0"], "--nodes 0: must be >= 1"),
    (["--extra-sbatch", "qos=high"], "--extra-sbatch 'qos=high'"),
    (["--cpus-per-task", "0"], "--cpus-per-task 0"),
])
def test_slurm_flags_are_checked(capsys, argv, message):
    assert main(["launch", "slurm", RECIPE, "--dry-run", *argv]) == 1
    assert message in capsys.readouterr().err


def test_slurm_without_sbatch_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["launch", "slurm", RECIPE, "--output-dir", str(tmp_path / "out")]) == 1
    assert "`sbatch` is not on PATH" in capsys.readouterr().err


SHIMS = {
    "scontrol": 'echo "$(hostname)"',  # `scontrol show hostnames`: the one node
    "srun": 'while [ $# -gt 0 ]; do case "$1" in -w) shift 2;; -*) shift;; *) break;; esac; done\nexec "$@"',
    "ray": 'echo $$ >> "$MARK.ray"\n[ -n "${RAY_FAILS:-}" ] && { echo "ray: cannot start"; exit 1; }\nexec sleep 300',
    "python": '[ -n "${RAY_FAILS:-}" ] && exec sleep 30\nexit 0',  # python -m launch.ray_nodes: "up" at once
    "rlhf": 'echo "$@" > "$MARK.args"\n[ -n "${EXIT_AT_ONCE:-}" ] && exit "$EXIT_AT_ONCE"\n'
            'trap \'echo got TERM >> "$MARK"; sleep 0.5; exit 143\' TERM\ntouch "$MARK.started"\n'
            "while true; do sleep 0.1; done",
}


def _run_script(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in SHIMS.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    script = tmp_path / "job.sbatch"
    script.write_text(_script())
    mark = tmp_path / "mark"
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_ID": "7",
                "MARK": str(mark), **env}
    proc = subprocess.Popen(["bash", str(script)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    return proc, mark


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="bash job script")
def test_sbatch_script_forwards_sigterm_and_waits(tmp_path):
    proc, mark = _run_script(tmp_path)
    deadline = time.time() + 30
    while not Path(f"{mark}.started").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)  # what `#SBATCH --signal=B:TERM@...` / `scancel --batch -s TERM` do
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    assert mark.read_text() == "got TERM\n"  # rlhf train got the signal, once
    assert "forwarding it to rlhf train" in out and "rlhf train exited with status 143" in out
    assert "stopping Ray" in out
    assert Path(f"{mark}.args").read_text().split() == ["train", "/shared/r.yaml", "ray.address=auto"]
    ray_pid = int(Path(f"{mark}.ray").read_text())
    assert not _alive(ray_pid)


@pytest.mark.skipif(sys.platform != "linux", reason="bash job script")
def test_sbatch_script_exits_with_train_status(tmp_path):
    proc, _ = _run_script(tmp_path, EXIT_AT_ONCE="3")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3, out
    assert "rlhf train exited with status 3" in out and "stopping Ray" in out


@pytest.mark.skipif(sys.platform != "linux", reason="bash job script")
def test_sbatch_script_gives_up_when_the_ray_head_dies(tmp_path):
    proc, mark = _run_script(tmp_path, RAY_FAILS="1")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert "ray: cannot start" in out and "the Ray head exited during start-up" in out
    assert not Path(f"{mark}.args").exists()  # rlhf train never started
