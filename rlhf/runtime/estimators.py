"""Advantage estimators: the component of a policy-gradient stage that turns a scored rollout into the signal the
trainer's update reads, and trains whatever it owns after the update.

    estimator.prepare(batch, rv, group_ids, step) -> metrics      # sets batch.advantages (and old/ref, values)
    estimator.after_update(batch) -> metrics                      # e.g. the critic's update, the KL controller

``RewardAdvantages`` (GRPO, RLOO, REINFORCE++, RSF): the objective's advantages from the reward vector through the
weighting (group-relative, leave-one-out; step-level with step rewards), or, for a token-level objective, its
sequence scores, which the trainer finishes into token advantages once logprobs are known; for an objective that
selects rows (capability ``selected_rows``: RSF), 1 on the kept rows, which become NLL rows, while the other rows
leave the loss mask (so the token-mean normaliser counts the kept tokens only). Gradient-based
weighting first measures the per-component gradients' Gram matrix on the trainers.

``CriticAdvantages`` (PPO): old/reference logprobs and critic values from the training groups, token rewards per
reward stream (KL penalty, step rewards at their last token), GAE per stream, combined by the weights:

    old, ref logprobs (policy ranks)  ->  values (critic ranks, S heads)
    token rewards: each reward stream at the last token (+ -beta * (old - ref) on every token, kl_mode: reward);
                   process components' step rewards at each step's last token instead (dense)
    GAE per stream -> advantages (B, C, S), returns (B, C, S)
    advantage = sum_s w_s A_s (w = the weighting's weights; 1 for the KL stream), whitened
    policy update (PPO-clip) -> critic update (clipped value loss) -> KL controller update

With `critic.vector`, S = one stream per reward component (+1 for the KL stream): a value head each, so the
component weights can change without retraining the critic. Otherwise S = 1: the weighted scalar reward plus the
KL penalty, as in InstructGPT-style PPO.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rlhf.advantages.process import dense_step_rewards, sequence_part
from rlhf.runtime.pipeline import NoState
from rlhf.types import ExperienceBatch, RewardVector


class RewardAdvantages(NoState):
    def __init__(self, objective: Any, weighting: Any, trainers: Any, token_level: bool,
                 gradient_samples: int, selected_rows: bool = False) -> None:
        self.objective, self.weighting, self.trainers = objective, weighting, trainers
        self.token_level, self.gradient_samples = token_level, gradient_samples
        self.selected_rows = selected_rows  # RSF: the advantages select rows, fine-tuned on by NLL

    def prepare(self, batch: ExperienceBatch, rv: RewardVector, group_ids: torch.Tensor,
                step: int) -> dict[str, float]:
        from rlhf.advantages.group import group_normalize

        metrics: dict[str, float] = {}
        if self.weighting.needs_gradients(step):  # gradient-based weighting: per-component gradients' Gram matrix
            per_component = group_normalize(rv.values, group_ids)  # (B, K), NaN -> 0
            gram = self.trainers.component_gram(batch, per_component, self.gradient_samples)  # (K, K)
            metrics.update(self.weighting.gradient_update(gram))
        if self.token_level:  # the trainer turns the sequence scores into token advantages
            batch.advantages, signal = self.objective.sequence_scores(rv, group_ids, self.weighting)  # (B,)
            batch.advantage_scale = self.weighting.advantage_scale
        elif self.selected_rows:  # RSF: only the kept rows count, as NLL rows; the others leave the loss mask
            lengths = batch.loss_mask.sum(dim=1)  # (B,) completion tokens
            batch.advantages, signal = self.objective.advantages(rv, group_ids, self.weighting,
                                                                 batch.loss_mask.shape[1], lengths=lengths)  # (B,)
            kept = batch.advantages > 0  # (B,) bool
            batch.nll_rows = kept
            batch.loss_mask = batch.loss_mask * kept.unsqueeze(1).to(batch.loss_mask.dtype)  # (B, C)
        else:
            width = batch.loss_mask.shape[1]
            batch.advantages, signal = self.objective.advantages(rv, group_ids, self.weighting, width)  # (B,) | (B, C)
        return {**metrics, **signal}

    def after_update(self, batch: ExperienceBatch) -> dict[str, float]:
        return {}


class CriticAdvantages:
    """PPO's estimator: a critic worker group, GAE per reward stream and a KL controller (module docstring)."""

    def __init__(self, recipe: Any, trainers: Any, weighting: Any, start_dir: str, actors: list[Any],
                 resume_from: Any = None) -> None:
        from rlhf.objectives.ppo import AdaptiveKLController, FixedKLController
        from rlhf.train.group import TrainGroup

        self.trainers, self.weighting = trainers, weighting
        cfg = self.cfg = recipe.objective
        self.progress_component = recipe.process.progress.component
        self.samples_per_step = recipe.rollout.prompts_per_step * recipe.rollout.group_size
        self.kl_in_reward = cfg.kl_mode == "reward" and cfg.kl_coef > 0
        names = [c.name for c in recipe.rewards]
        self.streams = names if cfg.critic.vector else ["reward"]
        if cfg.critic.vector and self.kl_in_reward:
            self.streams = self.streams + ["kl"]
        self.critic = TrainGroup(recipe, role="critic", num_ranks=cfg.critic.num_ranks)
        actors.append(self.critic)
        if resume_from is not None:
            self.critic.build(os.path.join(str(resume_from), "critic", "model"), cfg.critic.lr, len(self.streams))
            self.critic.load_optimizer(os.path.join(str(resume_from), "critic"))
        else:
            self.critic.build(cfg.critic.init_from or start_dir, cfg.critic.lr, len(self.streams))
        self.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
                       else FixedKLController(cfg.kl_coef))
        self._kl: float | None = None  # the KL measured in the last prepare()

    def state_dict(self) -> dict[str, Any]:
        return {"kl_ctl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])

    def save_checkpoint(self, staged_dir: str) -> None:
        self.critic.save_checkpoint(os.path.join(staged_dir, "critic"))

    def prepare(self, exp: ExperienceBatch, rv: RewardVector, group_ids: torch.Tensor, step: int) -> dict[str, float]:
        """Fill exp with old/ref logprobs, values, (B, C) advantages and (B, C, S) returns."""
        from rlhf.advantages.gae import gae, token_rewards, whiten

        cfg = self.cfg
        mask = exp.loss_mask  # (B, C)
        exp.old_logprobs = self.trainers.logprobs(exp)  # (B, C)
        ref = self.trainers.logprobs(exp, reference=True) if cfg.kl_coef > 0 else None  # (B, C)
        exp.ref_logprobs = ref if cfg.kl_mode == "loss" else None
        exp.values = self.critic.values(exp)  # (B, C, S)

        _, metrics = self.weighting.scalarize(rv, group_ids)  # per-component reward metrics
        outcome = sequence_part(rv) if rv.has_steps else rv  # step rewards go in densely, not as outcome too
        if cfg.critic.vector:
            seq = torch.nan_to_num(outcome.values, nan=0.0)  # (B, K)
            current = self.weighting.weights  # a copy of the weights; read once
            weights = [float(current[n]) for n in rv.names]
        else:
            seq = torch.nan_to_num(self.weighting.weighted_sum(outcome), nan=0.0).unsqueeze(1)  # (B, 1)
            weights = [1.0]
        kl = None if ref is None else (exp.old_logprobs - ref) * mask  # (B, C) k1 per token
        penalty = -self.kl_ctl.value * kl if (self.kl_in_reward and kl is not None) else None
        rewards = token_rewards(seq, mask, penalty)  # (B, C, S')
        if rv.has_steps:
            rewards = rewards + step_rewards(rv, rewards.shape, cfg.critic.vector, self.weighting.weights,
                                             self.progress_component)  # (B, C, S') each step's reward at its end
        if not cfg.critic.vector:
            rewards = rewards.sum(dim=-1, keepdim=True)  # (B, C, 1): one stream, reward + KL penalty
        elif penalty is not None:
            weights = weights + [1.0]
        advantages, exp.returns = gae(rewards, exp.values, mask, cfg.gamma, cfg.lam)  # (B, C, S) each
        w = torch.tensor(weights, dtype=advantages.dtype)  # (S,)
        combined = (advantages * w).sum(dim=-1)  # (B, C)
        exp.advantages = whiten(combined, mask) if cfg.whiten_advantages else combined * mask

        n = mask.sum().clamp(min=1)
        metrics["adv/mean"] = float((combined * mask).sum() / n)
        metrics["value/mean_before"] = float((exp.values.mean(-1) * mask).sum() / n)
        metrics["returns/mean"] = float((exp.returns.mean(-1) * mask).sum() / n)
        self._kl = None
        if kl is not None:
            metrics["kl"] = self._kl = float(kl.sum() / n)
            metrics["kl_coef"] = self.kl_ctl.value
        for j, name in enumerate(self.streams):
            metrics[f"adv/{name}/mean"] = float((advantages[..., j] * mask).sum() / n)
        return metrics

    def after_update(self, exp: ExperienceBatch) -> dict[str, float]:
        """Critic update towards the GAE returns; the KL controller follows the KL measured in prepare()."""
        metrics = {k if k.startswith("critic/") else f"critic/{k}": v for k, v in self.critic.train_critic(exp).items()}
        if self.kl_in_reward and self._kl is not None:
            self.kl_ctl.update(self._kl, n_steps=self.samples_per_step)
        return metrics


def step_rewards(rv: RewardVector, shape: torch.Size, vector: bool, weights: dict[str, float],
                 progress_component: str | None) -> torch.Tensor:
    """(B, C, S') dense process rewards: per component on its own stream (vector critic), or weighted into stream 0
    (scalar critic); MRT's progress bonus on the success component's stream (vector) or stream 0."""
    width = shape[1]
    out = torch.zeros(shape)
    if vector:
        for k, name in enumerate(rv.process_names):
            out[..., rv.index(name)] = dense_step_rewards(rv.steps[..., k : k + 1], rv.step_ends, [1.0], width)
    else:
        out[..., 0] = dense_step_rewards(rv.steps, rv.step_ends, [weights[n] for n in rv.process_names], width)
    if rv.bonus is not None:
        stream = rv.index(progress_component) if vector else 0
        out[..., stream] += dense_step_rewards(rv.bonus.unsqueeze(-1), rv.step_ends, [1.0], width)
    return out
