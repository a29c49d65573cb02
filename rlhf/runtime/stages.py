"""Stages built from the recipe: the objective's capabilities name the stage (rlhf/config/registry.py), and each
stage is assembled from components, never by subclassing another stage.

    stage = build_stage(StageInputs(recipe, trainers, objective, caps, start_dir, train_rows, eval_rows, actors,
                                    conditioner))

    policy_gradient  GRPO, RLOO, RSF, REINFORCE++, PPO: the on-policy stage (rlhf/runtime/rl.py) with a policy-gradient
                     update; its advantage estimator is the objective's (group-relative, leave-one-out, token-level
                     sequence scores) or, with a critic, PPO's GAE (rlhf/runtime/estimators.py)
    online_pairs     online DPO: the on-policy stage with a best-vs-worst pair update (rlhf/runtime/online_dpo.py)
    cgpo             CGPO: the on-policy stage with task-stratified prompts, baseline scoring and per-task
                     constrained updates (rlhf/runtime/cgpo.py)
    preference       DPO, IPO, cDPO, MODPO on fixed pairs (rlhf/runtime/preference.py)
    prm              PRM training on step-labelled rows (rlhf/runtime/supervised.py, rows: rlhf/runtime/prm.py)
    rm               reward-model training on preference pairs, one Bradley-Terry loss per head (supervised.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rlhf.runtime.pipeline import Stage
from rlhf.runtime.rl import RLStage


@dataclass
class StageInputs:
    recipe: Any
    trainers: Any  # the policy's TrainGroup, built and (with a reference) ready
    objective: Any  # rlhf.objectives.*, built by the registry
    caps: Any  # rlhf.config.registry.Capabilities
    start_dir: str  # the policy's weights now (engines and a critic start from them)
    train_rows: list[dict]
    eval_rows: list[dict]
    actors: list[Any]  # every actor group the stage starts is appended (shut down at the end of the run)
    conditioner: Any  # rlhf.data.conditioning: the preference conditioner (NoConditioning when off)
    resume_from: Any = None  # the checkpoint directory of a resumed run


@dataclass
class OnPolicyParts:
    """What every on-policy stage is built on."""

    engines: Any  # RolloutGroup
    rollout_fn: Any  # RolloutFn over the engines
    rewards: Any  # RewardGroup
    weighting: Any
    sync: Any  # SyncCoordinator


def build_stage(inputs: StageInputs) -> Stage:
    """The stage that trains the recipe's objective, as its capabilities name it."""
    try:
        builder = STAGE_BUILDERS[inputs.caps.stage]
    except KeyError:
        raise ValueError(f"no stage named {inputs.caps.stage!r}; stages: {sorted(STAGE_BUILDERS)}") from None
    return builder(inputs)


# --------------------------------------------------------------------------- on-policy stages


def _on_policy_parts(i: StageInputs) -> OnPolicyParts:
    from rlhf.advantages.process import Segmenter
    from rlhf.rollout.functions import build_rollout_fn
    from rlhf.rollout.group import RolloutGroup
    from rlhf.runtime.sync import SyncCoordinator, resolve_weight_sync
    from rlhf.scoring.group import RewardGroup
    from rlhf.transport.placement import has_gpus
    from rlhf.weighting import build_weighting

    r = i.recipe
    engines = RolloutGroup(r, i.start_dir)
    i.actors.append(engines)
    rewards = RewardGroup(r.rewards, segmenter=Segmenter.from_config(r.process))
    i.actors.append(rewards)
    weighting = build_weighting(r.weighting, r.rewards, total_steps=r.run.steps)
    gpus = has_gpus()
    sync = SyncCoordinator(i.trainers, engines, resolve_weight_sync(r, gpus), r.rollout.sync_timeout_s, gpus,
                           keep_copy=r.pipeline.asynchronous)
    return OnPolicyParts(engines, build_rollout_fn(r, engines), rewards, weighting, sync)


def _assemble(i: StageInputs, parts: OnPolicyParts, prompts: Any, update: Any, scorer: Any,
              summary: dict[str, str] | None = None,
              breakdown: Callable[[list[dict], Any], dict[str, float]] | None = None) -> RLStage:
    from rlhf.runtime.collect import Collector, eval_sampling, training_sampling
    from rlhf.runtime.evaluate import evaluate_at_vectors, evaluate_generated

    r = i.recipe
    conditioner = i.conditioner
    collector = Collector(prompts, parts.rollout_fn, scorer, lambda step, round_: training_sampling(r, step, round_),
                          rounds=i.caps.sampling_rounds, weighting=parts.weighting,
                          prompts_per_step=r.rollout.prompts_per_step, conditioner=conditioner)
    eval_rows = i.eval_rows[: r.eval.max_samples]

    def evaluator() -> dict[str, float]:
        if conditioner.eval_vectors:  # a preference-conditioned policy: scored at each eval vector
            return evaluate_at_vectors(parts.rollout_fn, parts.rewards, eval_rows, eval_sampling(r), conditioner,
                                       r.eval.accuracy_component)
        return evaluate_generated(parts.rollout_fn, parts.rewards, eval_rows, eval_sampling(r),
                                  r.eval.accuracy_component, breakdown)

    return RLStage(collector=collector, weighting=parts.weighting, update=update, sync=parts.sync,
                   engines=parts.engines, evaluator=evaluator,
                   summary=summary or {c.name: f"reward/{c.name}/mean" for c in r.rewards},
                   progress=_progress(r, parts) if r.process.progress.enabled else None)


def _progress(recipe: Any, parts: OnPolicyParts) -> Callable[[Any, Any, int], dict[str, float]]:
    """MRT's progress bonus for a scored rollout (rlhf/runtime/progress.py)."""
    from rlhf.runtime.progress import estimate_progress
    from rlhf.scoring.group import rollout_columns

    def progress(rollout: Any, rv: Any, step: int) -> dict[str, float]:
        return estimate_progress(recipe, parts.rollout_fn, parts.rewards, rollout, rv, rollout_columns(rollout),
                                 seed=(recipe.run.seed * 1_000_003 + step) * 16 + 15)

    return progress


def policy_gradient_stage(i: StageInputs) -> RLStage:
    from rlhf.config.pipeline import behaviour_logprobs
    from rlhf.data import PromptSampler
    from rlhf.runtime.collect import RewardScorer
    from rlhf.runtime.estimators import CriticAdvantages, RewardAdvantages
    from rlhf.runtime.rl import PolicyGradientUpdate

    r = i.recipe
    parts = _on_policy_parts(i)
    prompts = PromptSampler(i.train_rows, r.rollout.prompts_per_step, r.run.seed)
    if i.caps.critic:
        estimator: Any = CriticAdvantages(r, i.trainers, parts.weighting, i.start_dir, i.actors, i.resume_from)
    else:
        estimator = RewardAdvantages(i.objective, parts.weighting, i.trainers, i.caps.token_level,
                                     r.weighting.gradient.max_samples, i.caps.selected_rows)
    update = PolicyGradientUpdate(i.trainers, estimator, i.caps.mask_truncated, behaviour_logprobs(r))
    return _assemble(i, parts, prompts, update, RewardScorer(parts.rewards, parts.rollout_fn))


def online_pairs_stage(i: StageInputs) -> RLStage:
    from rlhf.data import PromptSampler
    from rlhf.runtime.collect import RewardScorer
    from rlhf.runtime.online_dpo import OnlinePairsUpdate

    r = i.recipe
    parts = _on_policy_parts(i)
    prompts = PromptSampler(i.train_rows, r.rollout.prompts_per_step, r.run.seed)
    update = OnlinePairsUpdate(i.trainers, parts.weighting)
    return _assemble(i, parts, prompts, update, RewardScorer(parts.rewards, parts.rollout_fn))


def cgpo_stage(i: StageInputs) -> RLStage:
    from rlhf.config.pipeline import behaviour_logprobs
    from rlhf.data.sampler import TaskSampler
    from rlhf.runtime.cgpo import BaselineScorer, CGPOUpdate, check_baselines, task_breakdown

    r, cfg = i.recipe, i.recipe.objective
    parts = _on_policy_parts(i)
    prompts = TaskSampler(i.train_rows, r.rollout.prompts_per_step, r.run.seed, list(cfg.tasks), cfg.task_column,
                          {t: c.share for t, c in cfg.tasks.items()}, cfg.default_task)
    check_baselines(i.train_rows, prompts, cfg)
    scorer = BaselineScorer(parts.rewards, cfg, prompts.task_of, parts.rollout_fn.tokenizer)
    update = CGPOUpdate(cfg, {c.name: float(c.weight) for c in r.rewards}, i.trainers, prompts.task_of,
                        behaviour_logprobs(r))
    summary = {c.name: f"reward/{c.name}/mean" for c in r.rewards}
    for task, t in cfg.tasks.items():
        summary.update({f"{task}/violation/{j}": f"cgpo/{task}/violation_rate/{j}" for j in t.judges})
    return _assemble(i, parts, prompts, update, scorer, summary, task_breakdown(list(cfg.tasks), prompts.task_of))


# --------------------------------------------------------------------------- offline stages


def preference_stage(i: StageInputs) -> Stage:
    from rlhf.runtime.preference import PreferenceStage

    return PreferenceStage(i.recipe, i.trainers, i.objective, i.caps, i.train_rows, i.eval_rows, i.actors)


def prm_stage(i: StageInputs) -> Stage:
    from rlhf.runtime.supervised import SupervisedStage, prm_task

    return SupervisedStage(i.recipe, i.trainers, i.train_rows, i.eval_rows, prm_task(i.recipe))


def rm_stage(i: StageInputs) -> Stage:
    from rlhf.runtime.supervised import SupervisedStage, rm_task

    return SupervisedStage(i.recipe, i.trainers, i.train_rows, i.eval_rows, rm_task(i.recipe))


STAGE_BUILDERS: dict[str, Callable[[StageInputs], Stage]] = {
    "policy_gradient": policy_gradient_stage,
    "online_pairs": online_pairs_stage,
    "cgpo": cgpo_stage,
    "preference": preference_stage,
    "prm": prm_stage,
    "rm": rm_stage,
}
