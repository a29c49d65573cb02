"""A Ray cluster of several nodes on this one machine: the multi-node rehearsal's cluster (test_multinode.py), or
one to try a recipe on by hand.

    with local_cluster(workers=2) as cluster:             # a head + 2 worker nodes, 1 CPU each
        # rlhf train RECIPE ray.address=<cluster.address> ray.placement_strategy=STRICT_SPREAD
        cluster.kill(node_id)                              # SIGKILL that node's raylet: its actors die with it

    python tests/integration/multinode.py --workers 2      # prints the address; Ctrl-C stops the cluster

Every node is a raylet of its own (`ray.cluster_utils.Cluster`, Ray's own multi-node test cluster): its own node
id, CPUs, object store and custom resource ``rlhf_node_<name>``, all on this host's IP. (Not 127.0.0.1: a driver
given a loopback address connects to the host's IP instead, where a loopback-bound GCS does not answer.) The
cluster's processes share one temp dir (/tmp/rlhf-cluster-*), so they, and only they, are found and stopped
afterwards; other Ray instances on this machine are left alone. No dashboard, no usage stats, no token auth.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_raylet_start_wait_time_s": "120"}  # a loaded 2-core machine: the raylet's wait for its agents


class LocalCluster:
    """A head and worker nodes started by `local_cluster`; `nodes` maps a name ("head", "worker1", ...) to the
    Ray node id."""

    def __init__(self, cluster: Any, temp_dir: str) -> None:
        self._cluster, self.temp_dir = cluster, temp_dir
        self._by_id: dict[str, Any] = {}
        self.nodes: dict[str, str] = {}

    @property
    def address(self) -> str:
        """The GCS address (HOST:PORT) for `ray.address` / `ray.init(address=...)`."""
        return self._cluster.address

    def add(self, name: str, num_cpus: int) -> str:
        """Start one more node (the head first); returns its node id once it has joined."""
        args = dict(num_cpus=num_cpus, resources={f"rlhf_node_{name}": 1}, temp_dir=self.temp_dir)
        if self._cluster.head_node is None:
            node = self._cluster.add_node(include_dashboard=False, **args)
        else:
            node = self._cluster.add_node(**args)
        self._by_id[node.node_id] = node
        self.nodes[name] = node.node_id
        return node.node_id

    def name_of(self, node_id: str) -> str:
        return next(name for name, nid in self.nodes.items() if nid == node_id)

    def kill(self, node_id: str) -> None:
        """Lose a worker node as a machine is lost: its raylet and agents SIGKILLed, no graceful drain; the actors
        it hosted die with their raylet."""
        if node_id == self._cluster.head_node.node_id:
            raise ValueError("kill: that is the head node (the whole cluster would go); kill a worker node")
        self._cluster.remove_node(self._by_id.pop(node_id), allow_graceful=False)
        self.nodes = {name: nid for name, nid in self.nodes.items() if nid != node_id}

    def shutdown(self) -> None:
        """Stop every node, then SIGKILL whatever process of this cluster is left (found by its temp dir)."""
        try:
            self._cluster.shutdown()
        finally:
            deadline = time.time() + 15
            while own_processes(self.temp_dir) and time.time() < deadline:
                time.sleep(0.5)
            for pid in own_processes(self.temp_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(workers: int = 2, cpus_per_node: int = 1, head_cpus: int = 1) -> Iterator[LocalCluster]:
    """A head (`head_cpus` CPUs) and `workers` worker nodes (`cpus_per_node` each) on this machine; stopped on
    exit. The CPUs are Ray's accounting only: every node shares this machine's cores."""
    from ray.cluster_utils import Cluster

    for key, value in CLUSTER_ENV.items():  # the nodes' processes inherit this environment
        os.environ.setdefault(key, value)
    temp_dir = tempfile.mkdtemp(prefix="rlhf-cluster-", dir="/tmp")  # short: Ray's socket paths live under it
    cluster = LocalCluster(Cluster(shutdown_at_exit=True), temp_dir)
    try:
        cluster.add("head", head_cpus)
        for i in range(1, workers + 1):
            cluster.add(f"worker{i}", cpus_per_node)
        cluster._cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def own_processes(marker: str) -> list[int]:
    """Pids whose command line names `marker` (this cluster's temp dir), this process excluded."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(entry.name))
    return pids


def main() -> None:
    p = argparse.ArgumentParser(description="A multi-node Ray cluster on this machine, until Ctrl-C.")
    p.add_argument("--workers", type=int, default=2, help="worker nodes besides the head (default 2)")
    p.add_argument("--cpus", type=int, default=1, help="Ray CPUs of each node (default 1)")
    args = p.parse_args()
    stop: list[int] = []
    with local_cluster(args.workers, args.cpus, args.cpus) as cluster:
        for sig in (signal.SIGINT, signal.SIGTERM):  # after Ray's own handlers: the context manager stops the nodes
            signal.signal(sig, lambda signum, frame: stop.append(signum))
        print(f"Ray cluster up: ray.address={cluster.address}", flush=True)
        for name, node_id in cluster.nodes.items():
            print(f"  {name:8s} {node_id}", flush=True)
        print("Ctrl-C (or SIGTERM) stops it", flush=True)
        while not stop:
            time.sleep(0.5)


if __name__ == "__main__":
    main()
