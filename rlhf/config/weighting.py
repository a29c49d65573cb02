"""Recipe sections of reward weighting: ``weighting`` (static or dynamic weights, normalisation) and its
``schedules``, ``constraints``, ``hypervolume`` and ``gradient``; the recipe itself is in rlhf/config/schema.py."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from rlhf.config.base import Strict


class ScheduleConfig(Strict):
    """A component's weight over the run: weight x value(step)."""

    kind: Literal["constant", "linear", "cosine", "step"] = Field(
        "linear", description="constant: start; linear / cosine: start to end over steps; step: start x "
        "step_factor ** (step // step_every)")
    start: float = Field(1.0, description="the factor at step 0")
    end: float = Field(1.0, description="linear / cosine: the factor from `steps` on")
    steps: Optional[int] = Field(None, ge=1, description="steps from start to end (default: run.steps)")
    step_every: Optional[int] = Field(None, ge=1, description="kind=step: multiply by step_factor every N steps")
    step_factor: Optional[float] = Field(None, gt=0, description="kind=step: the factor applied every step_every "
                                         "steps")

    @model_validator(mode="after")
    def _step_args(self) -> "ScheduleConfig":
        if (self.kind == "step") != (self.step_every is not None and self.step_factor is not None):
            raise ValueError("schedule: kind=step needs step_every and step_factor, and only kind=step takes them")
        return self


class ConstraintConfig(Strict):
    """Keep a component's batch mean above `min` (or below `max`) with a Lagrange multiplier on its weight."""

    component: str = Field(..., description="the reward component whose batch mean is bounded")
    min: Optional[float] = Field(None, description="lower bound of the component's batch mean (give min or max)")
    max: Optional[float] = Field(None, description="upper bound of the component's batch mean (give min or max)")
    lr: float = Field(0.5, gt=0, description="dual ascent step on the multiplier per unit of violation")
    max_multiplier: float = Field(10.0, gt=0, description="the Lagrange multiplier is clipped to [0, this]")

    @model_validator(mode="after")
    def _one_bound(self) -> "ConstraintConfig":
        if (self.min is None) == (self.max is None):
            raise ValueError(f"constraint on {self.component!r}: give exactly one of min or max")
        return self


class HypervolumeWeightingConfig(Strict):
    """weighting.kind: hypervolume -- weights moved toward the components whose improvement would expand the Pareto
    front of batch-mean reward vectors most (rlhf/weighting/dynamic.py)."""

    reference: Optional[list[float]] = Field(
        None, description="reference point, one value per reward component (default: each component's first "
        "batch mean minus 1)")
    buffer_size: int = Field(32, ge=1, description="non-dominated points kept")
    lr: float = Field(1.0, ge=0, description="mirror-descent step on the weights, per unit of normalised HV slope")
    delta: float = Field(0.05, gt=0, description="probe step for each component's marginal hypervolume")
    gain_scale: float = Field(1.0, ge=0, description="advantages x (1 + gain_scale * relative HV gain of last step)")
    max_scale: float = Field(2.0, ge=1, description="upper bound of the advantage scale (1 + gain_scale * gain)")
    min_weight: float = Field(0.05, ge=0, lt=1, description="floor of each simplex weight")


class GradientWeightingConfig(Strict):
    """weighting.kind: gradient -- weights moved toward the components whose policy gradients help the others
    (their influence on the combined gradient; rlhf/weighting/dynamic.py)."""

    lr: float = Field(1.0, ge=0, description="mirror-descent step on the weights per unit of influence")
    min_weight: float = Field(0.05, ge=0, lt=1, description="floor of each simplex weight")
    every: int = Field(1, ge=1, description="recompute per-component gradients every N steps")
    max_samples: int = Field(64, ge=1, description="sequences per rank used for per-component gradients")


class WeightingConfig(Strict):
    """How the reward vector becomes one advantage: fixed or dynamic weights, normalisation, per-component
    schedules and constraints (rlhf/weighting/)."""

    kind: Literal["static", "hypervolume", "gradient"] = Field(
        "static", description="static weights; hypervolume-guided or gradient-based dynamic weights")
    normalize: Literal["component_then_sum", "sum_then_normalize"] = Field(
        "sum_then_normalize",
        description="component_then_sum: normalise each component within its group, then weight and sum; "
        "sum_then_normalize: weight and sum the raw components, then normalise the sum within the group",
    )
    schedules: dict[str, ScheduleConfig] = Field(default_factory=dict, description="per-component weight schedules")
    constraints: list[ConstraintConfig] = Field(default_factory=list)
    hypervolume: HypervolumeWeightingConfig = Field(default_factory=HypervolumeWeightingConfig)
    gradient: GradientWeightingConfig = Field(default_factory=GradientWeightingConfig)
