"""GRPO: Group Relative Policy Optimization (DeepSeekMath, Shao et al. 2024, eq. 3 and eq. 4).

Advantages: the group-relative advantage A_i of each sample (``rlhf.advantages.group``, through the weighting),
or with step rewards a token-level advantage (below). Loss: the one clipped surrogate with the k3 KL term
(``rlhf.objectives.common.Surrogate``: clip / clip-higher, ``kl_ratio_correction``, the token_mean / seq_mean /
dr_grpo aggregations).

Pure torch; the model forward lives in ``rlhf.objectives.common.completion_logprobs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from rlhf.advantages.group import advantage_metrics
from rlhf.advantages.process import process_advantages, sequence_part, step_token_advantages
from rlhf.objectives.common import Surrogate
from rlhf.types import RewardVector


@dataclass
class GRPO:
    surrogate: Surrogate = field(default_factory=Surrogate)
    scale_std: bool = True
    eps: float = 1e-6

    name: ClassVar[str] = "grpo"

    @classmethod
    def from_config(cls, cfg: Any) -> "GRPO":
        return cls(surrogate=Surrogate.from_config(cfg), scale_std=cfg.scale_std, eps=cfg.eps)

    @property
    def needs_reference(self) -> bool:
        """Its update reads reference logprobs (the KL loss term)."""
        return self.surrogate.needs_reference

    # ------------------------------------------------------------------ advantages

    def advantages(
        self, rv: RewardVector, group_ids: Tensor, weighting: Any, width: int | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """(B,) group-relative advantages from the reward vector, and metrics (weighting's + adv/*).

        With step rewards (``rv.has_steps``) they are (B, C) token advantages, C = ``width``: the outcome
        components' group-relative advantage on every token plus each process component's step-level advantage
        (``rlhf.advantages.process``: steps normalised within the group, summed over the steps still to come),
        weighted by the component's weight, plus the step bonus (MRT progress) summed the same way.
        """
        if not rv.has_steps:
            advantages, metrics = weighting.scalarize(rv, group_ids, self.scale_std, self.eps)  # (B,)
            reward = weighting.weighted_sum(rv)  # (B,) raw scalar reward, NaN where no component applies
            return advantages, {**metrics, **advantage_metrics(reward, advantages, group_ids)}
        if width is None:
            raise ValueError("GRPO.advantages: step rewards need the completion width (width=C)")
        outcome, metrics = weighting.scalarize(sequence_part(rv), group_ids, self.scale_std, self.eps)  # (B,)
        for name, mean in rv.means().items():  # the process components' outcome values, as logged without steps
            if name in rv.process_names:
                metrics[f"reward/{name}/mean"] = mean
                metrics[f"reward/{name}/weighted"] = weighting.weights[name] * mean
        weights = [weighting.weights[n] for n in rv.process_names]
        steps = process_advantages(rv.steps, rv.step_ends, group_ids, weights, width, self.scale_std, self.eps)
        if rv.bonus is not None:  # a dense bonus (MRT progress) is credited to the tokens before it, unnormalised
            steps = steps + step_token_advantages(rv.bonus, rv.step_ends, width)  # (B, C)
        advantages = outcome.unsqueeze(1) + steps  # (B, C)
        reward = weighting.weighted_sum(rv)  # (B,)
        metrics.update(advantage_metrics(reward, outcome, group_ids))
        metrics["adv/step_abs_mean"] = float(steps.abs().mean())
        return advantages, metrics
