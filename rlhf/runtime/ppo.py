"""The PPO stage: the on-policy loop plus a critic worker group, GAE and a KL controller.

Per step, after generation and scoring (rlhf/runtime/onpolicy.py):

    old, ref logprobs (policy ranks)  ->  values (critic ranks, S heads)
    token rewards: each reward stream at the last token (+ -beta * (old - ref) on every token, kl_mode: reward);
                   process components' step rewards at each step's last token instead (dense)
    GAE per stream -> advantages (B, C, S), returns (B, C, S)
    advantage = sum_s w_s A_s (w = the weighting's weights; 1 for the KL stream), whitened
    policy update (PPO-clip) -> critic update (clipped value loss) -> KL controller update

With `critic.vector`, S = one stream per reward component (+1 for the KL stream): a value head each, so the
component weights can change without retraining the critic. Otherwise S = 1: the weighted scalar reward plus
the KL penalty, as in InstructGPT-style PPO.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rlhf.advantages.process import dense_step_rewards, sequence_part
from rlhf.runtime.onpolicy import OnPolicyStage
from rlhf.types import ExperienceBatch, RewardVector


class PPOStage(OnPolicyStage):
    def __init__(self, recipe, trainers, objective, start_dir: str, train_rows, eval_rows, actors: list[Any],
                 resume_from: Any = None) -> None:
        from rlhf.objectives.ppo import AdaptiveKLController, FixedKLController
        from rlhf.train.group import TrainGroup

        super().__init__(recipe, trainers, objective, start_dir, train_rows, eval_rows, actors, resume_from)
        cfg = self.cfg = recipe.objective
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
        self.estimator = self

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kl_ctl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kl_ctl.load_state_dict(state["kl_ctl"])

    def save_checkpoint(self, staged_dir: str) -> None:
        self.critic.save_checkpoint(os.path.join(staged_dir, "critic"))

    # ------------------------------------------------------------------ the estimator hooks of rl_step

    def prepare(self, exp: ExperienceBatch, rv: RewardVector, group_ids: torch.Tensor) -> dict[str, float]:
        """Fill exp with old/ref logprobs, values, (B, C) advantages and (B, C, S) returns."""
        from rlhf.advantages.gae import gae, token_rewards, whiten

        cfg = self.cfg
        mask = exp.completion_mask  # (B, C)
        exp.old_logprobs = self.trainers.logprobs(exp)  # (B, C)
        ref = self.trainers.logprobs(exp, reference=True) if self.cfg.kl_coef > 0 else None  # (B, C)
        exp.ref_logprobs = ref if cfg.kl_mode == "loss" else None
        exp.values = self.critic.values(exp)  # (B, C, S)

        _, metrics = self.weighting.scalarize(rv, group_ids)  # per-component reward metrics
        outcome = sequence_part(rv) if rv.has_steps else rv  # step rewards go in densely, not as outcome too
        if cfg.critic.vector:
            seq = torch.nan_to_num(outcome.values, nan=0.0)  # (B, K)
            weights = self._weights(rv)
        else:
            seq = torch.nan_to_num(self.weighting.weighted_sum(outcome), nan=0.0).unsqueeze(1)  # (B, 1)
            weights = [1.0]
        kl = None if ref is None else (exp.old_logprobs - ref) * mask  # (B, C) k1 per token
        penalty = -self.kl_ctl.value * kl if (self.kl_in_reward and kl is not None) else None
        rewards = token_rewards(seq, mask, penalty)  # (B, C, S')
        if rv.has_steps:
            rewards = rewards + self._step_rewards(rv, rewards.shape)  # (B, C, S') each step's reward at its end
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
        if kl is not None:
            metrics["kl"] = float(kl.sum() / n)
            metrics["kl_coef"] = self.kl_ctl.value
        for j, name in enumerate(self.streams):
            metrics[f"adv/{name}/mean"] = float((advantages[..., j] * mask).sum() / n)
        return metrics

    def after_update(self, exp: ExperienceBatch) -> dict[str, float]:
        """Critic update towards the GAE returns."""
        return {k if k.startswith("critic/") else f"critic/{k}": v for k, v in self.critic.train_critic(exp).items()}

    def step(self, step: int) -> dict[str, float]:
        metrics = super().step(step)
        if self.kl_in_reward:  # the KL controller follows the KL measured in prepare()
            r = self.recipe.rollout
            self.kl_ctl.update(metrics["kl"], n_steps=r.prompts_per_step * r.group_size)
        return metrics

    def _step_rewards(self, rv: RewardVector, shape: torch.Size) -> torch.Tensor:
        """(B, C, S') dense process rewards: per component on its own stream (vector critic), or weighted into
        stream 0 (scalar critic)."""
        width = shape[1]
        out = torch.zeros(shape)
        if self.cfg.critic.vector:
            for k, name in enumerate(rv.process_names):
                out[..., rv.index(name)] = dense_step_rewards(rv.steps[..., k : k + 1], rv.step_ends, [1.0], width)
        else:
            weights = [self.weighting.weights[n] for n in rv.process_names]
            out[..., 0] = dense_step_rewards(rv.steps, rv.step_ends, weights, width)
        if rv.bonus is not None:  # MRT progress: on the success component's stream (vector critic) or stream 0
            stream = rv.index(self.recipe.process.progress.component) if self.cfg.critic.vector else 0
            out[..., stream] += dense_step_rewards(rv.bonus.unsqueeze(-1), rv.step_ends, [1.0], width)
        return out

    def _weights(self, rv: RewardVector) -> list[float]:
        weights = self.weighting.state_dict().get("weights", {})
        return [float(weights[n]) for n in rv.names]
