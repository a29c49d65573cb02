"""The memory planner (``rlhf plan``): will a recipe fit on its GPUs, and if not, which key to change first.

    plan = plan_recipe(recipe, nodes=1, gpus_per_node=None, gpu_gib=80)   # PlanError naming model.path
    print(render(plan)); plan.fits; plan.verdict
    plan_warnings(recipe)   # lines for `rlhf validate` when a GPU recipe does not fit on 80 GiB GPUs

The architecture comes from model.tiny, a local config.json or a table of well-known hub models (no download):
rlhf/plan/architectures.py. The per-GPU figures and their formulas: rlhf/plan/memory.py; the tables, the verdict
and the remedies: rlhf/plan/report.py. Floor 6: reads rlhf.config (and nothing that starts a process).
"""

from __future__ import annotations

from typing import Any

from rlhf.plan.architectures import KNOWN, Architecture, PlanError, resolve_architecture
from rlhf.plan.report import Plan, Setup, make_plan, render, setup_of

DEFAULT_GPU_GIB = 80.0


def plan_recipe(recipe: Any, nodes: int = 1, gpus_per_node: int | None = None,
                gpu_gib: float = DEFAULT_GPU_GIB) -> Plan:
    """The memory plan of a validated recipe on `nodes` x `gpus_per_node` GPUs of `gpu_gib` GiB (default: as
    many GPUs as the recipe asks for: training ranks, critic ranks and, when split, engines x TP)."""
    if nodes < 1 or (gpus_per_node is not None and gpus_per_node < 1) or gpu_gib <= 0:
        raise PlanError("--nodes and --gpus-per-node must be >= 1 and --gpu-memory > 0")
    return make_plan(setup_of(recipe), nodes, gpus_per_node, gpu_gib)


def plan_warnings(recipe: Any) -> list[str]:
    """Warning lines, with the figures, when a recipe that targets GPUs (a model.path model: a hub id or a local
    directory) does not fit on default GPUs (80 GiB, as many as it asks for); [] for model.tiny recipes (CPU
    demos), for recipes that fit, and where the architecture is unknown (`rlhf plan` says why)."""
    if recipe.model.tiny is not None:
        return []
    try:
        plan = plan_recipe(recipe)
    except PlanError as e:  # an architecture the planner does not know: validation does not depend on it
        return [f"memory plan: not available ({e})"]
    if plan.fits:
        return []
    lines = [f"memory plan ({DEFAULT_GPU_GIB:g} GiB GPUs; see `rlhf plan`): {plan.verdict}"]
    for table in plan.tables:
        parts = ", ".join(f"{what} {value / 2**30:.1f}" for what, value, _ in table.rows if value)
        lines.append(f"  {table.title}: {table.peak / 2**30:.1f} GiB = {parts}")
    return lines


__all__ = ["DEFAULT_GPU_GIB", "KNOWN", "Architecture", "Plan", "PlanError", "Setup", "make_plan", "plan_recipe",
           "plan_warnings", "render", "resolve_architecture", "setup_of"]
