"""GiGPO: Group-in-Group Policy Optimization for LLM agents (Feng et al. 2025), per-turn credit on agent episodes.

The G episodes of one prompt are multi-turn trajectories; their turns are the steps of the reward vector
(``rlhf.advantages.turns``: turn rewards r_{i,t}, discounted returns R_{i,t}, step groups). The advantage of every
token of turn t of episode i is

    A_{i,t} = A^E_i + omega * A^S_{i,t}

    A^E_i     episode level: the group-normalised episode return sum_t r_{i,t}, through the weighting
              (``weighting.scalarize`` of ``episode_vector(rv)``: process components count with the sum of their
              turn scores, the other components with their value), so sum_then_normalize / component_then_sum
              and the weighting's advantage scale apply as under GRPO; with no process component it IS GRPO's A_i
    A^S_{i,t} step level: R_{i,t} (discount gamma) normalised within its anchor group, the turns of the group's
              episodes taken from the same environment state (step_groups "anchor", GiGPO eq. 7-8), or within
              all valid turns of the group (step_groups "group": turn-level returns with a group baseline);
              multiplied by the weighting's advantage scale as A^E is

A^E is put on every completion token (as GRPO does; a row without turns keeps its episode advantage), A^S on the
tokens of its turn (``turn_token_values``: a turn's tokens and the observation tokens before it, which the loss
mask drops). With omega = 0 the advantages equal GRPO's on every token. Loss: the one clipped surrogate
(``rlhf.objectives.common.Surrogate``).

Pure torch; the step groups need ``rv.step_keys`` (state ids from the agent rollout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor

from rlhf.advantages.group import advantage_metrics
from rlhf.advantages.turns import (
    anchor_metrics,
    anchor_normalize,
    discounted_returns,
    episode_vector,
    group_step_normalize,
    turn_rewards,
    turn_token_values,
)
from rlhf.objectives.common import Surrogate
from rlhf.types import RewardVector

STEP_GROUPS = ("anchor", "group")


@dataclass
class GiGPO:
    surrogate: Surrogate = field(default_factory=Surrogate)
    scale_std: bool = True
    eps: float = 1e-6
    omega: float = 1.0  # weight of the step-level advantage
    gamma: float = 0.95  # discount of the turn returns
    step_groups: Literal["anchor", "group"] = "anchor"

    name: ClassVar[str] = "gigpo"

    def __post_init__(self) -> None:
        if self.step_groups not in STEP_GROUPS:
            raise ValueError(f"GiGPO: step_groups={self.step_groups!r}; expected one of {STEP_GROUPS}")

    @classmethod
    def from_config(cls, cfg: Any) -> "GiGPO":
        """From a ``GiGPOConfig`` (kind="gigpo")."""
        return cls(surrogate=Surrogate.from_config(cfg), scale_std=cfg.scale_std, eps=cfg.eps, omega=cfg.omega,
                   gamma=cfg.gamma, step_groups=cfg.step_groups)

    @property
    def needs_reference(self) -> bool:
        """Its update reads reference logprobs (the KL loss term)."""
        return self.surrogate.needs_reference

    # ------------------------------------------------------------------ advantages

    def advantages(
        self, rv: RewardVector, group_ids: Tensor, weighting: Any, width: int | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """(B, C) token advantages A^E_i + omega * A^S_{i,t} (module docstring), C = ``width``, and metrics: the
        weighting's, adv/* of the episode advantage, adv/episode_abs_mean, adv/step_abs_mean (|omega * A^S| over
        valid turns), gigpo/anchor_coverage and gigpo/anchor_groups (when the turns have state ids),
        gigpo/turns_mean."""
        if rv.step_ends is None or rv.step_ends.shape[1] == 0:
            raise ValueError("GiGPO needs the turns of agent episodes (the reward vector has no step_ends): set "
                             "rollout.kind: agent")
        if width is None:
            raise ValueError("GiGPO.advantages: token advantages need the completion width (width=C)")
        if rv.bonus is not None:
            raise ValueError("GiGPO does not use a dense step bonus (process.progress); disable it")
        if self.step_groups == "anchor" and rv.step_keys is None:
            raise ValueError("GiGPO step_groups: anchor needs the turns' state ids (rv.step_keys), which the agent "
                             "rollout records; use step_groups: group without them")
        weights = weighting.weights  # {name: weight}
        rewards, valid = turn_rewards(rv, weights)  # (B, S), (B, S)
        episodes = episode_vector(rv)
        episode_adv, metrics = weighting.scalarize(episodes, group_ids, self.scale_std, self.eps)  # (B,)
        for name, mean in rv.means().items():  # the process components' outcome values, logged as under GRPO
            if name in rv.process_names:
                metrics[f"reward/{name}/mean"] = mean
                metrics[f"reward/{name}/weighted"] = weights[name] * mean
        returns = discounted_returns(rewards, valid, self.gamma)  # (B, S)
        if self.step_groups == "anchor":
            step_adv = anchor_normalize(returns, valid, rv.step_keys, group_ids, self.scale_std, self.eps)  # (B, S)
        else:
            step_adv = group_step_normalize(returns, valid, group_ids, self.scale_std, self.eps)  # (B, S)
        step_part = self.omega * weighting.advantage_scale * step_adv  # (B, S)
        advantages = episode_adv.unsqueeze(1) + turn_token_values(step_part, rv.step_ends, width)  # (B, C)
        metrics.update(advantage_metrics(weighting.weighted_sum(episodes), episode_adv, group_ids))
        metrics["adv/episode_abs_mean"] = float(episode_adv.abs().mean())
        metrics["adv/step_abs_mean"] = float(step_part[valid].abs().mean()) if bool(valid.any()) else 0.0
        if rv.step_keys is not None:  # how many turns share a state (also logged under step_groups: group)
            metrics.update(anchor_metrics(valid, rv.step_keys, group_ids))
        metrics["gigpo/turns_mean"] = float(valid.sum(dim=1).float().mean())
        return advantages, metrics
