"""`rlhf launch ray RECIPE --address http://HEAD:8265 [--working-dir D] [--no-wait]`: a Ray job on a running cluster.

Submits `rlhf train` as a Ray job (ray.job_submission.JobSubmissionClient, i.e. `ray job submit`) to the cluster
whose dashboard is at --address (default $RAY_ADDRESS). The resolved recipe travels in the job's working dir
(runtime_env.working_dir): it is written to D/.rlhf_launch/SUBMISSION_ID.yaml, or, without --working-dir, into a
fresh temporary directory that holds only it. The working dir is uploaded, so put your own reward modules there.
The job's driver runs on the head node with that directory as its current directory and connects to the cluster
(ray.address=auto); every node needs this package installed (e.g. the image built from docker/Dockerfile).

Where outputs go: an absolute run.output_dir is used as is (on the head node; make it shared storage for
checkpoints). A relative one lands inside the job's unpacked working dir on the head node
(/tmp/ray/session_*/runtime_resources/working_dir_files/...), which Ray deletes eventually: use an absolute one.

By default the launcher prints the job id, streams the job's logs until it ends and exits with the job's exit
status (Ctrl-C stops following, not the job). --no-wait prints the id and the commands to follow it, and exits.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from launch.common import Job, LaunchError, output_dir_note, print_section, shell_join, train_command, warn, write_file

HELP = "submit `rlhf train` as a Ray job to a running cluster (ray job submit)"
DESCRIPTION = __doc__
RECIPE_DIR = ".rlhf_launch"
PASSED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "RLHF_WORKER_LOGS")


@dataclass(frozen=True)
class Submission:
    """Everything handed to JobSubmissionClient.submit_job."""

    address: str
    submission_id: str
    working_dir: str | None  # None: a temporary directory made at submission
    recipe_file: str  # relative to the working dir
    entrypoint: str
    env_vars: dict[str, str]

    def runtime_env(self, working_dir: str) -> dict[str, Any]:
        return {"working_dir": working_dir, "env_vars": dict(self.env_vars)}

    def cli_equivalent(self) -> str:
        """The same submission as a `ray job submit` command line."""
        env = json.dumps(self.runtime_env(self.working_dir or "<temporary dir with the recipe>"))
        return (f"ray job submit --address {self.address} --submission-id {self.submission_id} "
                f"--runtime-env-json {shell_join([env])} -- {self.entrypoint}")


def add_arguments(parser: Any) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="the cluster's dashboard (job server) address, e.g. http://HEAD:8265 "
                        "(default: $RAY_ADDRESS)")
    parser.add_argument("--working-dir", default=None, help="directory uploaded as the job's working dir "
                        "(your reward modules, data); the recipe is written into D/.rlhf_launch/ "
                        "(default: a temporary directory with only the recipe)")
    parser.add_argument("--submission-id", default=None, help="the job's id (default: rlhf-NAME-TIME-RANDOM)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and exit; do not follow the logs")


def plan(job: Job, args: Any) -> Submission:
    """The submission for `job`, checked: an address, and a working dir that exists."""
    if not args.address:
        raise LaunchError("--address: give the Ray cluster's dashboard address, e.g. --address http://HEAD:8265 "
                          "(or set $RAY_ADDRESS)")
    if args.working_dir is not None and not os.path.isdir(args.working_dir):
        raise LaunchError(f"--working-dir {args.working_dir}: not a directory")
    sid = args.submission_id or f"rlhf-{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    recipe_file = f"{RECIPE_DIR}/{sid}.yaml"
    # the driver (rlhf/runtime/controller.py) calls ray.init(runtime_env={"env_vars": ...}) itself; Ray refuses a
    # driver runtime env that sets keys the job's sets too, unless told to merge them
    env = {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1", **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
    entrypoint = shell_join(train_command(recipe_file, job, "ray.address=auto"))
    return Submission(address=args.address, submission_id=sid, working_dir=args.working_dir,
                      recipe_file=recipe_file, entrypoint=entrypoint, env_vars=env)


def launch(job: Job, args: Any) -> int:
    sub = plan(job, args)
    warn(output_dir_note(job, "the job's working dir on the head node (temporary)"))
    if job.dry_run:
        print_section("ray job submission (JobSubmissionClient.submit_job; the same as this command)",
                      sub.cli_equivalent())
        print_section(f"{sub.recipe_file} (in the working dir)", job.resolved_yaml)
        return 0
    client = _client(sub.address)
    job_id = submit(client, sub, job.resolved_yaml)
    print(f"submitted Ray job {job_id} to {sub.address}")
    if args.no_wait:
        print(f"follow it:  ray job logs --address {sub.address} --follow {job_id}\n"
              f"its status: ray job status --address {sub.address} {job_id}\n"
              f"stop it:    ray job stop --address {sub.address} {job_id}")
        return 0
    return follow(client, sub.address, job_id)


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError as e:
        raise LaunchError(f"--address {address}: no Ray job server answers there ({e}); give the dashboard "
                          "address (http://HEAD:8265) of a head started with the dashboard (needs ray[default])") \
            from None


def submit(client: Any, sub: Submission, recipe_yaml: str) -> str:
    """Write the recipe into the working dir and submit; the job id. A temporary working dir is removed after
    the upload (Ray keeps its own copy)."""
    working_dir = sub.working_dir or tempfile.mkdtemp(prefix="rlhf-launch-")
    try:
        write_file(os.path.join(working_dir, sub.recipe_file), recipe_yaml)
        try:
            return client.submit_job(entrypoint=sub.entrypoint, submission_id=sub.submission_id,
                                     runtime_env=sub.runtime_env(working_dir),
                                     metadata={"launcher": "rlhf launch ray"})
        except RuntimeError as e:  # the job server's HTTP error, e.g. "No available agent to submit job"
            raise LaunchError(f"the Ray job server at {sub.address} refused the job: {e}") from e
    finally:
        if sub.working_dir is None:
            shutil.rmtree(working_dir)


def follow(client: Any, address: str, job_id: str) -> int:
    """Stream the job's logs until it ends; its exit status (the driver's, else 0 / 1 by the job's status)."""
    import asyncio

    try:
        asyncio.run(_stream_logs(client, job_id))
        info = _wait_terminal(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (ray job stop --address {address} {job_id})",
              file=sys.stderr)
        return 130
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    print(f"Ray job {job_id}: {status}" + (f" ({info.message})" if info.message else ""), file=sys.stderr)
    if status == "SUCCEEDED":
        return 0
    return info.driver_exit_code if info.driver_exit_code not in (None, 0) else 1


async def _stream_logs(client: Any, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def _wait_terminal(client: Any, job_id: str, poll_s: float = 1.0) -> Any:
    """The job's info once its status is final (the log stream may close a moment before it is)."""
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)
