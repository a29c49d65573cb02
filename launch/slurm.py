"""`rlhf launch slurm RECIPE --nodes N --gpus-per-node G [...]`: an sbatch job that starts Ray, then trains.

The rendered sbatch script (printed by --dry-run) starts a Ray head on the job's first node and a Ray worker on
every other node (`srun --nodes=1 --ntasks=1 -w NODE ray start ... --block &`), waits until N nodes are alive
(python -m launch.ray_nodes, --ray-timeout), runs `rlhf train RECIPE ray.address=auto` with
RAY_ADDRESS=HEAD_IP:PORT on the first node, and stops Ray when it ends (an EXIT trap). The job's exit status is
`rlhf train`'s.

Preemption and time limits: `#SBATCH --signal=B:TERM@GRACE` makes Slurm send SIGTERM to the batch shell GRACE
seconds (--signal-grace) before the time limit; the script's TERM trap forwards it to `rlhf train`, which finishes
its step, writes a checkpoint and exits 143, and waits for it. `scancel --batch --signal=TERM JOB` does the same by
hand. Continue with `rlhf launch slurm RECIPE ... --resume`.

Files: the resolved recipe is snapshotted at submission (a queued job is not affected by later edits) next to the
script and the job's log, in --output-dir (default slurm/NAME). The job runs in the directory you launch from
(`#SBATCH --chdir`), so a relative run.output_dir is relative to it, and in the environment you submit from
(sbatch's default --export=ALL): activate the venv first, or add --setup 'source /path/venv/bin/activate'.
"""

from __future__ import annotations

import os
import shlex
import time
from typing import Any

from launch.common import (
    Job,
    LaunchError,
    print_section,
    require_executable,
    run_tool,
    shell_join,
    train_command,
    write_file,
)

HELP = "submit an sbatch job: a Ray head + workers across the nodes, then `rlhf train`"
DESCRIPTION = __doc__

# The job's body; @@NAME@@ are filled in by render(). The --setup lines run before `set -u` (module and venv
# scripts are not always nounset-safe). `set -e` is left out on purpose: the script must reach its cleanup and
# report `rlhf train`'s exit status.
BODY = r"""@@SETUP@@
set -uo pipefail
RECIPE=@@RECIPE@@
RAY_PORT=@@RAY_PORT@@
NUM_NODES=@@NODES@@
CPUS=@@CPUS@@
GPUS=@@GPUS@@
RAY_ARGS=(@@RAY_ARGS@@)

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 --overlap -w "$head" hostname --ip-address | awk '{print $1}')
ray_address="$head_ip:$RAY_PORT"
echo "rlhf-launch: job $SLURM_JOB_ID on ${#nodes[@]} node(s): ${nodes[*]}; Ray head $head ($ray_address)"

ray_pids=()
train_pid=
stop_ray() {
  if [ "${#ray_pids[@]}" -gt 0 ]; then
    echo "rlhf-launch: stopping Ray"
    kill -TERM "${ray_pids[@]}" 2>/dev/null
    wait "${ray_pids[@]}" 2>/dev/null
  fi
}
forward_term() {
  if [ -z "$train_pid" ]; then
    echo "rlhf-launch: SIGTERM before training started: exiting"
    exit 143
  fi
  echo "rlhf-launch: SIGTERM: forwarding it to rlhf train (pid $train_pid), which checkpoints and exits"
  kill -TERM "$train_pid" 2>/dev/null
}
trap stop_ray EXIT
trap forward_term TERM

srun --nodes=1 --ntasks=1 --overlap --cpus-per-task="$CPUS" -w "$head" \
  ray start --head --node-ip-address="$head_ip" --port="$RAY_PORT" --num-cpus="$CPUS" --num-gpus="$GPUS" \
  --include-dashboard=false --disable-usage-stats "${RAY_ARGS[@]}" --block &
ray_pids+=($!)
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 --overlap --cpus-per-task="$CPUS" -w "$node" \
    ray start --address="$ray_address" --num-cpus="$CPUS" --num-gpus="$GPUS" --disable-usage-stats "${RAY_ARGS[@]}" \
    --block &
  ray_pids+=($!)
done
# wait for every node to join; give up at once if the head's `ray start` exits (its error is printed above)
timeout @@RAY_TIMEOUT@@ python -m launch.ray_nodes --address "$ray_address" --nodes "$NUM_NODES" \
  --timeout @@RAY_TIMEOUT@@ &
nodes_pid=$!
while kill -0 "$nodes_pid" 2>/dev/null; do
  if ! kill -0 "${ray_pids[0]}" 2>/dev/null; then
    echo "rlhf-launch: the Ray head exited during start-up; see its output above"
    kill "$nodes_pid" 2>/dev/null
    exit 1
  fi
  sleep 2
done
wait "$nodes_pid" || { echo "rlhf-launch: Ray did not come up with $NUM_NODES node(s) in @@RAY_TIMEOUT@@ s"; exit 1; }

# ray.address=auto reads RAY_ADDRESS: the recipe stays the same from job to job (so --resume accepts it)
export RAY_ADDRESS="$ray_address"
@@TRAIN@@ &
train_pid=$!
wait "$train_pid"
rc=$?
while kill -0 "$train_pid" 2>/dev/null; do  # `wait` returns early when the TERM trap runs: wait for the exit
  wait "$train_pid"
  rc=$?
done
echo "rlhf-launch: rlhf train exited with status $rc"
exit "$rc"
"""


def add_arguments(parser: Any) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="nodes (one Ray node each; default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0)")
    parser.add_argument("--cpus-per-task", type=int, default=None,
                        help="CPUs per node for Ray (default: the recipe's ray.num_cpus, else 8)")
    parser.add_argument("--mem", default=None, help="memory per node, e.g. 64G (sbatch --mem)")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--time", default=None, help="time limit, e.g. 1-00:00:00 (sbatch --time)")
    parser.add_argument("--account", default=None)
    parser.add_argument("--job-name", default=None, help="default: the recipe's run.name")
    parser.add_argument("--output-dir", default=None,
                        help="where the sbatch script, the recipe snapshot and the job's log go (default slurm/NAME)")
    parser.add_argument("--extra-sbatch", action="append", default=[], metavar="OPTION",
                        help="another #SBATCH line, e.g. --extra-sbatch=--qos=high (repeatable)")
    parser.add_argument("--setup", action="append", default=[], metavar="CMD",
                        help="a shell line run first in the job, e.g. --setup 'source .venv/bin/activate' "
                        "(repeatable)")
    parser.add_argument("--ray-port", type=int, default=6379, help="the Ray head's port (default 6379)")
    parser.add_argument("--ray-args", default="", metavar="ARGS",
                        help="more `ray start` flags for every node, e.g. --ray-args='--object-store-memory=1e10'")
    parser.add_argument("--ray-timeout", type=int, default=300,
                        help="seconds to wait for all Ray nodes to join (default 300)")
    parser.add_argument("--signal-grace", type=int, default=300,
                        help="SIGTERM this many seconds before the time limit, to checkpoint (default 300)")


def check(args: Any) -> None:
    """Refuse flags that cannot make a working job, naming the flag."""
    for flag, value, low in (("--nodes", args.nodes, 1), ("--gpus-per-node", args.gpus_per_node, 0),
                             ("--ray-port", args.ray_port, 1), ("--ray-timeout", args.ray_timeout, 1),
                             ("--signal-grace", args.signal_grace, 0)):
        if value < low:
            raise LaunchError(f"{flag} {value}: must be >= {low}")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        raise LaunchError(f"--cpus-per-task {args.cpus_per_task}: must be >= 1")
    for opt in args.extra_sbatch:
        if not opt.startswith("-") or "\n" in opt:
            raise LaunchError(f"--extra-sbatch {opt!r}: give one sbatch option, e.g. --extra-sbatch=--qos=high")


def header(job: Job, args: Any, cpus: int, out_dir: str) -> list[str]:
    """The #SBATCH lines."""
    name = args.job_name or job.name
    opts = [f"--job-name={name}", f"--nodes={args.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus}",
            f"--output={out_dir}/%x-%j.out", f"--chdir={os.getcwd()}", f"--signal=B:TERM@{args.signal_grace}"]
    if args.gpus_per_node:
        opts.append(f"--gpus-per-node={args.gpus_per_node}")
    for flag, value in (("mem", args.mem), ("partition", args.partition), ("time", args.time),
                        ("account", args.account)):
        if value:
            opts.append(f"--{flag}={value}")
    return [f"#SBATCH {o}" for o in [*opts, *args.extra_sbatch]]


def render(job: Job, args: Any, recipe_file: str, out_dir: str) -> str:
    """The sbatch script for `job`, with the recipe snapshot at `recipe_file`."""
    cpus = args.cpus_per_task or job.recipe.ray.num_cpus or 8
    train = train_command("$RECIPE", job, "ray.address=auto")
    values = {
        "SETUP": "\n".join(args.setup),
        "RECIPE": shell_join([recipe_file]),
        "RAY_PORT": str(args.ray_port),
        "NODES": str(args.nodes),
        "CPUS": str(cpus),
        "GPUS": str(args.gpus_per_node),
        "RAY_TIMEOUT": str(args.ray_timeout),
        "RAY_ARGS": shell_join(shlex.split(args.ray_args)),
        "TRAIN": " ".join('"$RECIPE"' if c == "$RECIPE" else shell_join([c]) for c in train),
    }
    body = BODY
    for key, value in values.items():
        body = body.replace(f"@@{key}@@", value)
    intro = [
        "#!/bin/bash",
        f"# Rendered by `rlhf launch slurm` on {time.strftime('%Y-%m-%d %H:%M:%S')} for {job.recipe_path}:",
        f"# {args.nodes} node(s) x {args.gpus_per_node} GPU(s); Ray head on the first node, then `rlhf train`.",
        "# SIGTERM (time limit, preemption, `scancel --batch --signal=TERM`) is forwarded to rlhf train: it checkpoints.",
    ]
    return "\n".join([*intro, *header(job, args, cpus, out_dir), "", body])


def launch(job: Job, args: Any) -> int:
    check(args)
    out_dir = os.path.abspath(args.output_dir or os.path.join("slurm", job.name))
    stem = f"{args.job_name or job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    recipe_file = os.path.join(out_dir, f"{stem}.recipe.yaml")
    script = render(job, args, recipe_file, out_dir)
    if job.dry_run:
        print_section(f"sbatch script (would be {os.path.join(out_dir, stem + '.sbatch')})", script)
        print_section(f"{recipe_file} (the resolved recipe)", job.resolved_yaml)
        return 0
    sbatch = require_executable("sbatch", "submit the job to Slurm")
    write_file(recipe_file, job.resolved_yaml)
    script_file = write_file(os.path.join(out_dir, f"{stem}.sbatch"), script, 0o755)
    job_id = run_tool([sbatch, "--parsable", script_file]).strip().split(";")[0]
    print(f"submitted Slurm job {job_id}")
    print(f"script: {script_file}")
    print(f"log:    {os.path.join(out_dir, f'{args.job_name or job.name}-{job_id}.out')}")
    print(f"stop it with a checkpoint: scancel --batch --signal=TERM {job_id}")
    return 0
