"""The objective registry: each objective kind -> its recipe section, how its objective is built, the runtime
stage that trains it, what it needs from the runtime (its capabilities) and the checks it makes on the recipe.

    spec = spec_of(recipe.objective.kind)
    caps = capabilities(recipe.objective)      # Capabilities: stage, data, needs_reference, token_level, ...
    objective = build_objective(recipe.objective)

The runtime and the recipe's cross-checks ask capabilities; objective kind strings appear only here (and in each
section's ``kind`` literal, ``rlhf.config.objectives``). A new objective is one entry here: its config, its
objective class (floor 1), the name of the stage that trains it and its capabilities.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from rlhf import objectives as obj
from rlhf.config import objectives as cfgs

STAGES = ("policy_gradient", "online_pairs", "cgpo", "preference", "prm", "rm")  # runtime stages (rlhf.runtime.stages)
# what the rows are: prompts to generate from, preference pairs, step-labelled solutions, pairs with per-head labels
# (a reward model's heads: checked labels and margins), pairs with per-head labels (a multi-head policy's heads)
DATA = ("prompts", "pairs", "step_labels", "rm_pairs", "head_pairs")


@dataclass(frozen=True)
class Capabilities:
    """What an objective needs from the runtime; the runtime reads these, never the objective's kind."""

    stage: str  # the runtime stage that trains it (one of STAGES)
    data: str  # what its rows are (one of DATA)
    needs_reference: bool  # the frozen reference model is loaded (a KL term or penalty, DPO-family pairs)
    grouped: bool = False  # its baseline is group-relative: rollout.group_size >= 2
    epochs: int = 1  # passes of the update over each rollout batch
    mini_batches: int = 1  # optimizer steps per epoch on a rollout batch (rows split over ranks x this)
    dynamic_weighting: bool = False  # weighting.kind hypervolume / gradient can drive it
    conditioning: bool = False  # per-sample weights (conditioning: preference-conditioned prompts) reach its signal
    step_level: bool = False  # uses step rewards and MRT's progress bonus token by token
    token_level: bool = False  # its advantages are finished on the trainer, after logprobs (REINFORCE++)
    critic: bool = False  # trains a value model beside the policy (PPO)
    reward_margins: bool = False  # the reward components score every pair once, as a margin (MODPO)
    mask_truncated: bool = False  # truncated completions get no loss (DAPO overlong filtering)
    sampling_rounds: int | None = None  # DAPO dynamic sampling: generate() rounds per step at most; None = off
    # its advantages select rows (1 kept, 0 dropped) that are fine-tuned on by NLL: the runtime marks the kept rows
    # as NLL rows of the surrogate and takes the others out of the loss mask (RSF)
    selected_rows: bool = False
    # what `rlhf sweep` varies: "rewards" (one weight per reward component), "preference_and_rewards" (MODPO: the
    # preference weight first), None (no sweep: CGPO weighs within tasks, DPO and PRM have no components)
    sweep_weights: str | None = None
    # the trained model is a reward model: a sequence-classification model with these named scalar outputs (the
    # warm-up still trains the causal LM it starts from); () = the policy, a causal LM
    score_heads: tuple[str, ...] = ()
    # the trained policy is a multi-head causal LM with these named LM heads on one trunk (rlhf/models/multihead.py;
    # MAH-DPO): its pair updates read per-head logps (B, K) and per-head labels; () = a single-head causal LM
    policy_heads: tuple[str, ...] = ()

    @property
    def rollouts(self) -> bool:
        """It generates with the rollout engines every step (and so needs reward components)."""
        return self.data == "prompts"


def _no_check(recipe: Any) -> None:
    """No checks beyond the ones every objective with these capabilities gets."""


@dataclass(frozen=True)
class ObjectiveSpec:
    kind: str
    config: type  # its recipe section (rlhf.config.objectives)
    build: Callable[[Any], Any]  # section -> the objective (rlhf.objectives)
    capabilities: Callable[[Any], Capabilities]  # section -> what it needs
    check: Callable[[Any], None] = field(default=_no_check)  # whole-recipe checks of its own (raise ValueError)
    # capabilities that do not depend on the section's values (copied into Capabilities)
    dynamic_weighting: bool = False
    conditioning: bool = False
    step_level: bool = False
    sweep_weights: str | None = None


# --------------------------------------------------------------------------- per-kind checks


def _check_cgpo(recipe: Any) -> None:
    """Each task's rewards name reward components and its judges name constraint components (errors name the
    key). A component without `kind:` takes its plugin's kind (the plugin is looked up, not built). Task rewards
    use the components' fixed recipe weights: weight schedules and constraints would be ignored, so they are
    refused."""
    cfg, components = recipe.objective, recipe.rewards
    by_name = {c.name: c for c in components}
    for task_name, task in cfg.tasks.items():
        for key, names, want in (("rewards", task.rewards, ("reward", "process")),
                                 ("judges", task.judges, ("constraint",))):
            for i, name in enumerate(names):
                where = f"objective.tasks.{task_name}.{key}.{i}"
                if name not in by_name:
                    raise ValueError(f"{where}: {name!r} is not a reward component; components are {list(by_name)}")
                kind = _component_kind(by_name[name], where)
                if kind not in want:
                    hint = ("a judge is a constraint component (plugin registered with @judge, or kind: "
                            "constraint)") if key == "judges" else "list constraint components under judges"
                    raise ValueError(f"{where}: component {name!r} has kind {kind!r}; {hint}")
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"objective.tasks.{task_name}.{key}: duplicate names {dup}")
    w = recipe.weighting
    if w.schedules or w.constraints:
        raise ValueError("objective cgpo: each task sums its components with their fixed `weight`s; "
                         "weighting.schedules and weighting.constraints do not apply to it (remove them)")


def _component_kind(component: Any, where: str) -> str:
    if component.kind is not None:
        return component.kind
    from rewards.api import RewardPluginError, resolve_plugin

    try:
        return resolve_plugin(component.plugin).kind
    except RewardPluginError as exc:
        raise ValueError(f"{where}: cannot tell the kind of component {component.name!r}: {exc}") from exc


def _check_ppo(recipe: Any) -> None:
    ranks = recipe.objective.critic.num_ranks or recipe.train.num_ranks
    n_seq = recipe.rollout.prompts_per_step * recipe.rollout.group_size
    if n_seq % (ranks * recipe.objective.mini_batches):
        raise ValueError(f"{n_seq} sequences per step must be divisible by objective.critic.num_ranks * "
                         f"objective.mini_batches = {ranks * recipe.objective.mini_batches}")


def _check_gigpo(recipe: Any) -> None:
    if recipe.rollout.kind != "agent":
        raise ValueError("objective gigpo needs rollout.kind: agent (its step groups are the turns of agent episodes)")


def _check_rsf(recipe: Any) -> None:
    k, g = recipe.objective.top_k, recipe.rollout.group_size
    if k >= g:
        raise ValueError(f"objective.top_k={k} keeps every sample of a group of rollout.group_size={g}: nothing is "
                         "rejected (set objective.top_k below rollout.group_size)")


def _check_batch_over_ranks(recipe: Any) -> None:
    if recipe.objective.batch_size % recipe.train.num_ranks:
        raise ValueError(f"objective.batch_size {recipe.objective.batch_size} must be divisible by "
                         f"train.num_ranks {recipe.train.num_ranks}")


def _check_pairs(recipe: Any) -> None:
    if recipe.data.source not in ("jsonl", "parquet"):
        raise ValueError(f"objective {recipe.objective.kind} reads preference pairs from a local file: set "
                         "data.source to jsonl or parquet and data.train_path")
    _check_batch_over_ranks(recipe)


def _check_modpo(recipe: Any) -> None:
    _check_pairs(recipe)
    if not recipe.rewards:
        raise ValueError("objective modpo needs reward components for the other objectives (rewards:)")
    total = recipe.objective.preference_weight + sum(c.weight for c in recipe.rewards)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"objective modpo: preference_weight + the rewards' weights must sum to 1 (a point "
                         f"on the simplex), got {total:.6g}")


def _check_mah_dpo(recipe: Any) -> None:
    _check_pairs(recipe)
    t = recipe.train
    if recipe.model.lora is not None and recipe.model.lora.enabled:
        raise ValueError("objective mah_dpo trains full LM heads on the trunk; model.lora is not supported with it "
                         "(set model.lora.enabled: false)")
    if t.backend == "deepspeed" and t.zero_stage == 3:
        raise ValueError("objective mah_dpo: train.zero_stage 3 is not supported yet (the heads are built after "
                         "the partitioned load); use zero_stage 0-2 or train.backend: torch")


# --------------------------------------------------------------------------- the registry


def _policy_gradient(cfg: Any, *, token_level: bool = False, critic: bool = False, grouped: bool = True,
                     mask_truncated: bool = False, sampling_rounds: int | None = None,
                     selected_rows: bool = False) -> Capabilities:
    """Capabilities of a policy-gradient objective (the shared section: kl_coef, mini_batches)."""
    return Capabilities(stage="policy_gradient", data="prompts", needs_reference=cfg.kl_coef > 0, grouped=grouped,
                        epochs=cfg.epochs, mini_batches=cfg.mini_batches, token_level=token_level, critic=critic,
                        mask_truncated=mask_truncated, sampling_rounds=sampling_rounds, selected_rows=selected_rows)


REGISTRY: dict[str, ObjectiveSpec] = {spec.kind: spec for spec in (
    ObjectiveSpec("grpo", cfgs.GRPOConfig, obj.GRPO.from_config,
                  lambda c: _policy_gradient(c, mask_truncated=c.mask_truncated,
                                             sampling_rounds=c.max_sampling_rounds if c.dynamic_sampling else None),
                  dynamic_weighting=True, conditioning=True, step_level=True, sweep_weights="rewards"),
    ObjectiveSpec("gigpo", cfgs.GiGPOConfig, obj.GiGPO.from_config, _policy_gradient, check=_check_gigpo,
                  sweep_weights="rewards"),
    ObjectiveSpec("rloo", cfgs.RLOOConfig, obj.RLOO.from_config, _policy_gradient, dynamic_weighting=True,
                  conditioning=True, sweep_weights="rewards"),
    ObjectiveSpec("reinforce_pp", cfgs.ReinforcePPConfig, obj.ReinforcePP.from_config,
                  lambda c: _policy_gradient(c, token_level=True, grouped=c.baseline == "group"),
                  dynamic_weighting=True, conditioning=True, sweep_weights="rewards"),
    ObjectiveSpec("rsf", cfgs.RSFConfig, obj.RSF.from_config, lambda c: _policy_gradient(c, selected_rows=True),
                  check=_check_rsf, conditioning=True, sweep_weights="rewards"),
    ObjectiveSpec("ppo", cfgs.PPOConfig, obj.PPO.from_config,
                  lambda c: _policy_gradient(c, critic=True, grouped=False), check=_check_ppo,
                  step_level=True, sweep_weights="rewards"),
    ObjectiveSpec("cgpo", cfgs.CGPOConfig, obj.CGPO.from_config,
                  lambda c: Capabilities(
                      stage="cgpo", data="prompts", grouped=True, epochs=c.epochs, mini_batches=c.mini_batches,
                      needs_reference=c.kl_coef > 0 or (not c.reference_free and any(
                          t.optimizer == "codpo" for t in c.tasks.values()))),
                  check=_check_cgpo),
    ObjectiveSpec("online_dpo", cfgs.OnlineDPOConfig, obj.DPO.from_config,
                  lambda c: Capabilities(stage="online_pairs", data="prompts", grouped=True,
                                         needs_reference=not c.reference_free),
                  sweep_weights="rewards"),
    ObjectiveSpec("dpo", cfgs.DPOConfig, obj.DPO.from_config,
                  lambda c: Capabilities(stage="preference", data="pairs", needs_reference=not c.reference_free),
                  check=_check_pairs),
    ObjectiveSpec("modpo", cfgs.MODPOConfig, obj.MODPO.from_config,
                  lambda c: Capabilities(stage="preference", data="pairs", needs_reference=True,
                                         reward_margins=True),
                  check=_check_modpo, sweep_weights="preference_and_rewards"),
    ObjectiveSpec("mah_dpo", cfgs.MAHDPOConfig, obj.MAHDPO.from_config,
                  lambda c: Capabilities(stage="preference", data="head_pairs", needs_reference=True,
                                         policy_heads=tuple(c.heads)),
                  check=_check_mah_dpo),
    ObjectiveSpec("prm", cfgs.PRMObjectiveConfig, obj.PRM.from_config,
                  lambda c: Capabilities(stage="prm", data="step_labels", needs_reference=False),
                  check=_check_batch_over_ranks),
    ObjectiveSpec("rm", cfgs.RMConfig, obj.RewardModelObjective.from_config,
                  lambda c: Capabilities(stage="rm", data="rm_pairs", needs_reference=False,
                                         score_heads=tuple(c.heads)),
                  check=_check_pairs),
)}


def spec_of(kind: str) -> ObjectiveSpec:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown objective kind {kind!r}; known: {sorted(REGISTRY)}") from None


def capabilities(cfg: Any) -> Capabilities:
    """What the objective of a recipe's `objective:` section needs from the runtime."""
    spec = spec_of(cfg.kind)
    return dataclasses.replace(spec.capabilities(cfg), dynamic_weighting=spec.dynamic_weighting,
                               conditioning=spec.conditioning, step_level=spec.step_level,
                               sweep_weights=spec.sweep_weights)


def build_objective(cfg: Any) -> Any:
    """The objective of a recipe's `objective:` section (GRPO, DPO, ...; ``rlhf.objectives``)."""
    return spec_of(cfg.kind).build(cfg)


def kinds_where(flag: str) -> list[str]:
    """Objective kinds whose spec sets ``flag`` (dynamic_weighting, conditioning, step_level, sweep_weights): for
    messages."""
    return [kind for kind, spec in REGISTRY.items() if getattr(spec, flag)]


def check_objective(recipe: Any) -> None:
    """The objective against the rest of the recipe: what its capabilities need, then its own checks (raise
    ValueError naming the key)."""
    kind, caps = recipe.objective.kind, capabilities(recipe.objective)
    r = recipe.rollout
    if caps.rollouts:
        if not recipe.rewards:
            raise ValueError(f"objective {kind} needs at least one entry in rewards")
        if caps.grouped and r.group_size < 2:
            raise ValueError(f"objective {kind} needs rollout.group_size >= 2 (its baseline is group-relative)")
        n_seq = r.prompts_per_step * r.group_size
        shards = recipe.train.num_ranks * caps.mini_batches
        if n_seq % shards:
            raise ValueError(
                f"rollout.prompts_per_step * rollout.group_size = {n_seq} sequences per step must be divisible "
                f"by train.num_ranks * objective.mini_batches = {shards}"
            )
    spec_of(kind).check(recipe)


def check_weighting(recipe: Any) -> None:
    """weighting.kind hypervolume / gradient only where the objective's capabilities allow it."""
    kind, w = recipe.objective.kind, recipe.weighting
    if w.kind != "static" and not capabilities(recipe.objective).dynamic_weighting:
        raise ValueError(f"weighting.kind={w.kind} works with {_listed(kinds_where('dynamic_weighting'))}, "
                         f"not {kind}")


def check_progress(recipe: Any) -> None:
    """process.progress (MRT) only for objectives with step-level advantages."""
    kind = recipe.objective.kind
    if recipe.process.progress.enabled and not capabilities(recipe.objective).step_level:
        raise ValueError(f"process.progress works with {_listed(kinds_where('step_level'))} (step-level "
                         f"advantages), not {kind}")


def _listed(kinds: list[str]) -> str:
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]


__all__ = ["Capabilities", "ObjectiveSpec", "REGISTRY", "build_objective", "capabilities", "check_objective",
           "check_progress", "check_weighting", "kinds_where", "spec_of"]
