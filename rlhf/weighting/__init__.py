"""Weighting: turns a RewardVector into what an objective needs (a per-sample advantage), built by name.

    from rlhf.weighting import build_weighting
    weighting = build_weighting(recipe.weighting, recipe.rewards, total_steps=recipe.run.steps)
    weighting.begin_step(step)                  # schedules
    weighting.observe(rv)                       # constraints' multipliers, hypervolume-guided weights
    advantages, metrics = weighting.scalarize(rv, group_ids, scale_std=True, eps=1e-6)

Every weighting is stateful-by-contract (``state_dict`` / ``load_state_dict``) so dynamic weights, Lagrange
multipliers or buffers resume exactly. Imports only torch and the standard library.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from torch import Tensor

from rlhf.types import RewardVector
from rlhf.weighting.dynamic import DynamicWeighting
from rlhf.weighting.static import StaticWeighting

@runtime_checkable
class Weighting(Protocol):
    """Reward vector (B, K) -> advantages (B,) plus metrics; checkpointable."""

    def scalarize(
        self, rv: RewardVector, group_ids: Tensor, scale_std: bool = True, eps: float = 1e-6
    ) -> tuple[Tensor, dict[str, float]]: ...

    def weighted_sum(self, rv: RewardVector) -> Tensor: ...

    @property
    def advantage_scale(self) -> float:
        """A factor on the advantages of the step (hypervolume gain); estimators that bypass ``scalarize``
        apply it themselves."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# every kind is the same class: static weights plus optional schedules and constraints, or a dynamic rule
WEIGHTINGS: dict[str, Callable[..., DynamicWeighting]] = {
    "static": DynamicWeighting.from_config,
    "hypervolume": DynamicWeighting.from_config,
    "gradient": DynamicWeighting.from_config,
}


def build_weighting(cfg: Any, components: Sequence[Any],
                    total_steps: int | None = None) -> DynamicWeighting:
    """Build the weighting named by ``cfg.kind`` (a ``WeightingConfig``) for the recipe's reward components
    (``RewardComponentConfig`` list; schedules default to running over ``total_steps``)."""
    try:
        factory = WEIGHTINGS[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown weighting kind {cfg.kind!r}; known: {sorted(WEIGHTINGS)}") from None
    return factory(cfg, components, total_steps)


__all__ = ["Weighting", "StaticWeighting", "DynamicWeighting", "WEIGHTINGS", "build_weighting"]
