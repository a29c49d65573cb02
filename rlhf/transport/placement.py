"""Where actors go: Ray resource requests for training ranks and rollout engines.

On a GPU cluster every training rank and every engine asks for one GPU and the ranks are packed into one
placement group (so rank 0's rendezvous address is reachable and ranks share nodes where possible). With
rollout.placement=colocated, training rank i and engine i each ask for half of bundle i's GPU in one shared
placement group, so they land on the same GPU (the engine sleeps while training runs). On CPU the requests are
fractional CPUs: the phases run one after another, so actors share the cores by time.

Across nodes (ray.placement_strategy): PACK (the default) keeps the training ranks on as few nodes as possible;
SPREAD and STRICT_SPREAD spread their placement group over the nodes (STRICT_SPREAD: one rank per node) and the
engines with Ray's SPREAD scheduling (no placement group: an engine restarted after its node died goes wherever
there is room). `actor_node()` tells an actor where it runs, for the run's placement record.
"""

from __future__ import annotations

import os
from typing import Any


def has_gpus() -> bool:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) >= 1


_COLOCATED: dict[tuple[str, int], Any] = {}  # (Ray job, GPUs) -> the placement group both groups share


def require_gpus_for(placement: str) -> None:
    if placement == "colocated" and not has_gpus():
        raise ValueError("rollout.placement: colocated shares GPUs between training ranks and engines; this Ray "
                         "cluster has none (on CPU use placement: split: the phases already share the cores)")


PLACEMENT_TIMEOUT_S = 300  # a placement group not placed by then fails the run with what the cluster has


class PlacementError(RuntimeError):
    """The cluster cannot hold the run's actors as the recipe places them (too few nodes, missing resources)."""


def colocated_options(index: int, num_gpus: int, strategy: str = "PACK") -> dict[str, Any]:
    """Ray `.options(...)` for the training rank or engine `index` of a colocated run: half of GPU `index`."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    require_gpus_for("colocated")
    key = (ray.get_runtime_context().get_job_id(), num_gpus)
    if key not in _COLOCATED:
        _COLOCATED[key] = _placement_group([{"GPU": 1, "CPU": 2} for _ in range(num_gpus)], strategy,
                                           "the colocated training ranks and engines")
    pg_strategy = PlacementGroupSchedulingStrategy(_COLOCATED[key], placement_group_bundle_index=index)
    return {"num_gpus": 0.5, "num_cpus": 1, "scheduling_strategy": pg_strategy}


def train_bundles(num_ranks: int, colocated: bool = False, strategy: str = "PACK") -> list[dict[str, Any]]:
    """Ray `.options(...)` per training rank: one placement group, its bundles laid out by `strategy`
    (ray.placement_strategy: PACK, SPREAD or STRICT_SPREAD)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if colocated:
        return [colocated_options(r, num_ranks, strategy) for r in range(num_ranks)]
    if has_gpus():
        bundles = [{"GPU": 1, "CPU": 1} for _ in range(num_ranks)]
        per_actor = {"num_gpus": 1, "num_cpus": 1}
    else:
        bundles = [{"CPU": 0.01} for _ in range(num_ranks)]
        per_actor = {"num_cpus": 0.01}
    pg = _placement_group(bundles, strategy, f"the {num_ranks} training ranks")
    return [
        {**per_actor, "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r)}
        for r in range(num_ranks)
    ]


def _placement_group(bundles: list[dict[str, float]], strategy: str, what: str) -> Any:
    """A placement group, once Ray has placed it; a PlacementError saying what the cluster lacks otherwise."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if strategy == "STRICT_SPREAD" and len(bundles) > len(nodes):
        raise PlacementError(f"ray.placement_strategy: STRICT_SPREAD puts each of {what} on a node of its own: "
                             f"{len(bundles)} nodes needed, this Ray cluster has {len(nodes)} alive; add nodes, or "
                             "use SPREAD (best effort) or PACK")
    pg = placement_group(bundles, strategy=strategy)
    try:
        ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        free = {k: round(v, 2) for k, v in ray.available_resources().items() if not k.startswith("node:")}
        raise PlacementError(f"{what} ({len(bundles)} x {bundles[0]}, strategy {strategy}) found no room in "
                             f"{PLACEMENT_TIMEOUT_S} s; the cluster's {len(nodes)} alive nodes have free {free}: "
                             "add nodes or resources, or lower train.num_ranks") from None
    return pg


def rollout_options(gpus_per_engine: int = 1, strategy: str = "PACK") -> dict[str, Any]:
    """Ray `.options(...)` per rollout engine (vllm with tensor parallelism takes several GPUs); under SPREAD and
    STRICT_SPREAD the engines go to different nodes where Ray can (its SPREAD scheduling, best effort)."""
    options: dict[str, Any] = {"num_gpus": gpus_per_engine, "num_cpus": 1} if has_gpus() else {"num_cpus": 0.01}
    if strategy != "PACK":
        options["scheduling_strategy"] = "SPREAD"
    return options


def actor_gone() -> tuple[type[BaseException], ...]:
    """Ray's errors for a call whose actor process is gone: it died, or its node did (RayActorError), or Ray's
    memory monitor killed it, which Ray reports as an OutOfMemoryError of the call in flight."""
    import ray

    return (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError)


def actor_node() -> dict[str, str]:
    """Where the calling Ray actor runs: its node's id and IP (OUT/placement.json, the lost-rank message)."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}


def cpu_threads(cores: int, num_engines: int, num_ranks: int, engine_cores: int | None) -> tuple[int, int, int]:
    """Torch threads per engine, per training rank, and the first core after the engines' (vLLM's CPU binding).

    engine_cores None (synchronous: the phases take turns): every engine and every rank spread over all the
    cores. An integer (asynchronous: both run at once): the engines' threads take that many cores, the ranks
    the rest, so neither group slows the other by oversubscription."""
    if engine_cores is None:
        return max(1, cores // num_engines), max(1, cores // num_ranks), cores
    engine_cores = min(max(engine_cores, 1), max(cores - 1, 1))
    return max(1, engine_cores // num_engines), max(1, (cores - engine_cores) // num_ranks), engine_cores


def async_engine_cores(max_staleness: int, engine_cores: int | None, cores: int) -> int | None:
    """The cores the engines take (pipeline.engine_cores, default half) under async; None when synchronous.
    Checked here, on the machine that runs (a recipe may be validated on a login node with other cores)."""
    if not max_staleness:
        return None
    if engine_cores is not None and engine_cores >= cores:
        raise ValueError(f"pipeline.engine_cores: {engine_cores} leaves no core of this machine's {cores} for the "
                         "training ranks; lower it (or leave it unset: half the cores)")
    return engine_cores or max(1, cores // 2)


def cpu_split(recipe: Any, num_ranks: int | None = None) -> tuple[int, int, int]:
    """(threads per engine, threads per training rank, cores the engines bind to) for this machine's cores:
    all cores to each group when synchronous, the engines' share (``pipeline.engine_cores``, default half) and
    the rest to the ranks under ``pipeline.max_staleness`` >= 1. num_ranks: the group's ranks (default
    train.num_ranks; a PPO critic's group passes its own)."""
    cores = os.cpu_count() or 1
    p = recipe.pipeline
    share = async_engine_cores(p.max_staleness, p.engine_cores, cores)
    return cpu_threads(cores, recipe.rollout.num_engines, num_ranks or recipe.train.num_ranks, share)


def peak_memory() -> dict[str, float]:
    """This actor's peak memory so far, GiB: ``rss`` = the peak resident set of its process plus the peaks of its
    child processes (vLLM's engine core, a reward worker's pool), each the kernel's high-water mark (VmHWM), so the
    sum bounds the tree's peak from above; on a GPU also ``gpu`` = torch's peak allocated memory on the current
    device. What `memory/peak_*` metrics report per actor group (the max over the group's actors)."""
    out = {"rss": sum(_vmhwm_kib(pid) for pid in process_tree(os.getpid())) / 2**20}
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/PID/task/*/children; just pid where /proc lacks them)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                continue
    return tree


def _vmhwm_kib(pid: int) -> int:
    """The peak resident set of process `pid` in KiB (VmHWM; 0 if it is gone or /proc does not say)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    if pid == os.getpid():  # no /proc: the process's own peak from getrusage (KiB on Linux)
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return 0


def group_memory(group: str, peaks: list[dict[str, float]]) -> dict[str, float]:
    """{memory/peak_rss_gb/GROUP, memory/peak_gpu_gb/GROUP}: the largest of the actors' `peak_memory()`."""
    keys = sorted(set().union(*peaks)) if peaks else []
    return {f"memory/peak_{k}_gb/{group}": max(p[k] for p in peaks if k in p) for k in keys}
