"""Wait until a Ray cluster has N alive nodes; used by the sbatch script that `rlhf launch slurm` renders.

    python -m launch.ray_nodes --address HEAD_IP:6379 --nodes 4 --timeout 300

Exits 0 once `ray.nodes()` shows at least N alive nodes, or 1 with the count it saw when the timeout passes (a
worker that failed to start: see its srun output in the job's log).
"""

from __future__ import annotations

import argparse
import sys
import time


def alive_nodes(address: str, deadline: float) -> int:
    """Connect (retrying while the head is still starting), then count alive nodes."""
    import logging

    import ray

    while not ray.is_initialized():
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except ConnectionError:
            if time.time() > deadline:
                raise
            time.sleep(2)
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def wait_for_nodes(address: str, nodes: int, timeout_s: float, poll_s: float = 2.0) -> int:
    """The number of alive nodes once it reaches `nodes`, or at the timeout."""
    deadline = time.time() + timeout_s
    seen = alive_nodes(address, deadline)
    while seen < nodes and time.time() < deadline:
        time.sleep(poll_s)
        seen = alive_nodes(address, deadline)
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.ray_nodes", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", required=True, help="the Ray head's GCS address, HOST:PORT")
    p.add_argument("--nodes", type=int, required=True, help="alive nodes to wait for")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    args = p.parse_args(argv)
    try:
        seen = wait_for_nodes(args.address, args.nodes, args.timeout)
    except ConnectionError as e:
        print(f"ray_nodes: no Ray head at {args.address} after {args.timeout:.0f} s: {e}", file=sys.stderr)
        return 1
    if seen < args.nodes:
        print(f"ray_nodes: only {seen} of {args.nodes} Ray nodes alive after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    print(f"ray_nodes: {seen} Ray node(s) alive at {args.address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
