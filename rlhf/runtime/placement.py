"""Where actors go: Ray resource requests for training ranks and rollout engines.

On a GPU cluster every training rank and every engine asks for one GPU and the ranks are packed into one
placement group (so rank 0's rendezvous address is reachable and ranks share nodes where possible). On CPU the
requests are fractional CPUs: the phases run one after another, so actors share the cores by time.
"""

from __future__ import annotations

from typing import Any


def has_gpus() -> bool:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) >= 1


def train_bundles(num_ranks: int) -> list[dict[str, Any]]:
    """Ray `.options(...)` per training rank."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if has_gpus():
        bundles = [{"GPU": 1, "CPU": 1} for _ in range(num_ranks)]
        per_actor = {"num_gpus": 1, "num_cpus": 1}
    else:
        bundles = [{"CPU": 0.01} for _ in range(num_ranks)]
        per_actor = {"num_cpus": 0.01}
    pg = placement_group(bundles, strategy="PACK")
    ray.get(pg.ready(), timeout=300)
    return [
        {**per_actor, "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r)}
        for r in range(num_ranks)
    ]


def rollout_options(gpus_per_engine: int = 1) -> dict[str, Any]:
    """Ray `.options(...)` per rollout engine (vllm with tensor parallelism takes several GPUs)."""
    return {"num_gpus": gpus_per_engine, "num_cpus": 1} if has_gpus() else {"num_cpus": 0.01}
