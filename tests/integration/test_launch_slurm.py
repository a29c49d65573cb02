"""`rlhf launch slurm` against a real Slurm: munged, slurmctld and slurmd for one node (this machine, 2 CPUs)
started from a temporary directory for this module (Debian's slurm-wlm and munge; scripts/install_slurm.sh installs
them when sbatch is missing), then a tiny GRPO recipe submitted with sbatch: the job starts a Ray head with srun,
trains, stops Ray and exits 0, and the run's summary.json and metrics exist. The daemons are stopped afterwards.

RLHF_SLOW_TESTS=1 adds the preemption path: `scancel --batch --signal=TERM` mid-run -> the script forwards TERM to
`rlhf train`, which checkpoints and exits 143; `rlhf launch slurm ... --resume` finishes the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_launch_ray import BIN, ROOT, TINY, free_ports  # a sibling module of this directory

SBIN = "/usr/sbin"
pytestmark = pytest.mark.slow

SLURM_CONF = """\
ClusterName=rlhftest
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
NodeName={host} CPUs=2 RealMemory=1024 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _installed() -> str | None:
    """None when Slurm and munge are usable, else why not (after trying scripts/install_slurm.sh)."""
    needed = ("sbatch", "scontrol", "scancel", "slurmctld", "slurmd", "munged", "mungekey")
    path = f"{os.environ['PATH']}:{SBIN}"
    if all(shutil.which(x, path=path) for x in needed):
        return None
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_slurm.sh")], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        return f"Slurm is not installed and scripts/install_slurm.sh failed: {proc.stderr.strip()[-500:]}"
    return None


class SlurmCluster:
    """munged + slurmctld + slurmd in the foreground, as children of the test process, all state under `dir`."""

    def __init__(self, dir: Path):
        self.dir = dir
        self.host = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.scratch: list[str] = []
        ctld_port, slurmd_port = free_ports(2)
        self.conf = dir / "slurm.conf"
        self.conf.write_text(SLURM_CONF.format(host=self.host, ctld_port=ctld_port, slurmd_port=slurmd_port, dir=dir))
        (dir / "state").mkdir()
        (dir / "spool").mkdir()
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{BIN}:{os.environ['PATH']}:{SBIN}"}

    def start(self) -> None:
        d = self.dir
        subprocess.run(["mungekey", "--create", f"--keyfile={d}/munge.key"], env=self.env, check=True,
                       capture_output=True)
        self._spawn(["munged", "-F", "--force", f"--socket={d}/munge.sock", f"--key-file={d}/munge.key",
                     f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"])
        self._wait(lambda: (d / "munge.sock").exists(), "munged socket", d / "munged.log")
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn(["slurmd", "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, "the Slurm node to be idle", d / "slurmctld.log")

    def _spawn(self, cmd: list[str]) -> None:
        log = open(self.dir / f"{cmd[0]}.out", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait(self, ready, what: str, log: Path, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.procs:
                assert p.poll() is None, f"{p.args[0]} exited: " + (self.dir / f"{p.args[0]}.out").read_text()[-2000:]
            if ready():
                return
            time.sleep(0.5)
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise AssertionError(f"timed out waiting for {what}:\n{tail}")

    def _node_idle(self) -> bool:
        out = self.scontrol("show", "node", self.host, check=False)
        return bool(re.search(r"State=IDLE", out))

    def scontrol(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise AssertionError(f"scontrol {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def job_state(self, job_id: str) -> tuple[str, str]:
        """(JobState, ExitCode) from `scontrol show job` (no slurmdbd here, so no sacct)."""
        out = self.scontrol("show", "job", job_id)
        return re.search(r"JobState=(\S+)", out).group(1), re.search(r" ExitCode=(\S+)", out).group(1)

    def wait_job(self, job_id: str, timeout: float) -> tuple[str, str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state, code = self.job_state(job_id)
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return state, code
            time.sleep(1)
        raise AssertionError(f"Slurm job {job_id} still {state} after {timeout:.0f} s")

    def scratch_dir(self, prefix: str) -> str:
        """A short /tmp directory (Ray's socket paths must stay under 107 characters), removed by stop()."""
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.scratch.append(path)
        return path

    def cancel_all(self, timeout: float = 60) -> None:
        """scancel every job of this (private) cluster and wait until none is left."""
        squeue = lambda: subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True,
                                        text=True, timeout=30).stdout.split()
        jobs = squeue()
        if jobs:
            subprocess.run(["scancel", "--full", *jobs], env=self.env, capture_output=True, timeout=30)
        deadline = time.time() + timeout
        while squeue() and time.time() < deadline:
            time.sleep(1)

    def stop(self) -> None:
        if all(p.poll() is None for p in self.procs):
            self.cancel_all()
        for p in reversed(self.procs):  # slurmd, slurmctld, munged
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        for path in [*self.scratch, str(self.dir)]:
            shutil.rmtree(path, ignore_errors=True)  # Ray may still be removing its own files in there


@pytest.fixture(scope="module")
def slurm():
    why = _installed()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="rlhf-slurm-", dir="/tmp")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _launch(slurm: SlurmCluster, tmp_path: Path, out: Path, *extra: str) -> str:
    gcs, agent, client = free_ports(3)
    ray_tmp = slurm.scratch_dir("rlhf-ray-")  # not /tmp/ray: leave other Ray users' files alone
    cmd = [f"{BIN}/rlhf", "launch", "slurm", str(ROOT / "recipes" / "grpo_tiny_cpu.yaml"), "--nodes", "1",
           "--cpus-per-task", "2", "--output-dir", str(tmp_path / "slurm"), "--ray-port", str(gcs),
           f"--ray-args=--dashboard-agent-listen-port={agent} --ray-client-server-port={client} --temp-dir={ray_tmp}",
           f"run.output_dir={out}", *TINY, *extra]
    env = {**slurm.env, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_raylet_start_wait_time_s": "120"}  # a loaded 2-core machine: the raylet's wait for its agents
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"submitted Slurm job (\d+)", proc.stdout).group(1)
    assert f"-{job_id}.out" in proc.stdout
    return job_id


def _log(tmp_path: Path, job_id: str) -> str:
    logs = list((tmp_path / "slurm").glob(f"*-{job_id}.out"))
    return logs[0].read_text() if logs else "(no log)"


def _rl_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if '"phase": "rl"' in x]


@pytest.mark.extended  # ~40 s; the sbatch script itself is checked by the dry-run tests of this file
def test_sbatch_job_starts_ray_and_trains(slurm, tmp_path):
    out = tmp_path / "run"
    job_id = _launch(slurm, tmp_path, out)
    state, code = slurm.wait_job(job_id, timeout=400)
    log = _log(tmp_path, job_id)
    assert (state, code) == ("COMPLETED", "0:0"), log[-4000:]
    assert "Ray node(s) alive" in log and "rlhf train exited with status 0" in log and "stopping Ray" in log
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert _rl_steps(out) == [1, 2]


@pytest.mark.skipif(os.environ.get("RLHF_SLOW_TESTS") != "1", reason="slow: set RLHF_SLOW_TESTS=1")
def test_scancel_term_checkpoints_then_resume(slurm, tmp_path):
    out = tmp_path / "run"
    job_id = _launch(slurm, tmp_path, out, "run.steps=40")
    deadline = time.time() + 300
    while len(_rl_steps(out)) < 2 and time.time() < deadline:
        assert slurm.job_state(job_id)[0] in ("PENDING", "RUNNING", "CONFIGURING"), _log(tmp_path, job_id)[-4000:]
        time.sleep(0.5)
    subprocess.run(["scancel", "--batch", "--signal=TERM", job_id], env=slurm.env, check=True, timeout=30)
    state, code = slurm.wait_job(job_id, timeout=300)
    log = _log(tmp_path, job_id)
    assert "forwarding it to rlhf train" in log and "rlhf train exited with status 143" in log, log[-4000:]
    assert state == "FAILED" and code == "143:0", (state, code)
    stopped_at = _rl_steps(out)[-1]
    assert (out / "checkpoints" / "latest").read_text() == f"step_{stopped_at:06d}"

    job_id = _launch(slurm, tmp_path, out, f"run.steps={stopped_at + 1}", "--resume")
    state, code = slurm.wait_job(job_id, timeout=400)
    assert (state, code) == ("COMPLETED", "0:0"), _log(tmp_path, job_id)[-4000:]
    assert _rl_steps(out) == list(range(1, stopped_at + 2))
