"""CGPO's components (Xu et al. 2024) for the on-policy stage (rlhf/runtime/rl.py): task-stratified prompts ->
generate -> score (with baselines: ``BaselineScorer``) -> per-task constrained signals -> update (``CGPOUpdate``)
-> sync, per step.

One step:

1. ``TaskSampler`` draws each task's share of ``rollout.prompts_per_step`` prompts (``objective.tasks.T.share``).
2. The rollout function generates ``group_size`` samples per prompt.
3. The reward group scores every component for every sample, and in the same call the baseline response of each
   prompt whose task sets ``baseline_column`` (the dataset's reference answer), as extra (prompt, baseline) rows.
4. Per task (``rlhf.objectives.cgpo``): the task reward r = sum of its components' weight x value; the baseline
   reward r(s, a_bar) is the baseline row's r, or when the task has no baseline column, the mean r of the prompt's
   samples; calibrated reward R = sigmoid(r - r(s, a_bar)); a sample satisfies when all the task's judges do.
   - crpg: violators get R = 0, then group-relative advantages;
   - crraft: the best satisfying sample(s) per prompt get advantage c (an NLL step), the rest 0;
   - codpo: per prompt, (best satisfying, violating or worst) pair.
5. Combining the tasks' updates: crpg and crraft tasks share the policy-gradient update over the batch (rows of
   codpo tasks ride along with advantage 0): one optimizer step, or with ``mini_batches`` M > 1 M steps per epoch
   on stratified mini-batches (each holds every task, and every task's CRRAFT selection, in the batch's
   proportions). Within each step, each task's advantages are multiplied by weight_t x task_scale (the step's
   tokens / the task's counted tokens in it), so every step minimises sum_t weight_t x L_t, with L_t the task's own
   token-mean loss on that step's rows (CRPG surrogate, or CRRAFT advantage x NLL on its selected rows, computed as
   the NLL itself so it stays exact after the policy has moved), independent of how many prompts it got. The k3
   KL term (``kl_coef``) applies to every row. Then codpo tasks' pairs take a SECOND
   optimizer step (``trainers.train_online_pairs``): sum_t weight_t x the task's mean CODPO loss, with the task's
   own beta (``codpo_pair_info``). Both steps use the same rollouts; then the engines are synced once.
6. Metrics: ``cgpo/{task}/violation_rate/{judge}``, ``cgpo/{task}/violation_rate`` (any judge),
   ``cgpo/{task}/reward/{component}``, ``cgpo/{task}/calibrated_reward``, ``cgpo/{task}/samples``, optimiser counts,
   ``reward/{component}/mean`` over the batch, the rollout metrics, and the codpo step's as ``codpo/...``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlhf.objectives.cgpo import (
    calibrated_reward,
    codpo_pair_info,
    codpo_pairs,
    crpg_advantages,
    crraft_select,
    group_mean_baseline,
    satisfied_mask,
    task_reward,
    task_scale,
)
from rlhf.runtime.pipeline import Experience, NoState
from rlhf.runtime.rl import Prepared, interleaved_pairs
from rlhf.types import ExperienceBatch, RewardVector, RolloutBatch


class BaselineScorer:
    """Scores the samples and, in the same call, one baseline row per prompt whose task has a baseline column
    (the dataset's reference answer); the baselines' vector (G, K) goes into the context as ``baseline`` (NaN rows
    for prompts without one; None when no task has a baseline column)."""

    def __init__(self, rewards: Any, cfg: Any, task_of: Callable[[dict], str], tokenizer: Any) -> None:
        self.rewards, self.cfg, self.task_of, self.tokenizer = rewards, cfg, task_of, tokenizer

    def __call__(self, rows: list[dict], rollout: RolloutBatch) -> tuple[RewardVector, dict[str, float],
                                                                        dict[str, Any]]:
        from rlhf.scoring.group import rollout_columns

        columns = rollout_columns(rollout)  # (B,) per column
        prompts, completions = list(rollout.prompts), list(rollout.completions)
        base_groups: list[int] = []
        for g, row in enumerate(rows):
            task = self.task_of(row)
            col = self.cfg.tasks[task].baseline_column
            if col is None:
                continue
            text = row.get(col)
            if not isinstance(text, str):
                raise ValueError(f"objective.tasks.{task}.baseline_column: prompt {row['prompt'][:60]!r} has "
                                 f"{col}={text!r}; a baseline response must be a string")
            base_groups.append(g)
            prompts.append(row["prompt"])
            completions.append(text)
            for key, values in columns.items():
                if key == "finished":
                    values.append(True)
                elif key == "num_tokens":
                    values.append(len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1)  # + EOS
                else:
                    values.append(row.get(key))
        rv_all, metrics = self.rewards.score(prompts, completions, columns)
        B = rollout.batch_size
        rv = RewardVector(rv_all.names, rv_all.kinds, rv_all.values[:B])
        if not any(t.baseline_column for t in self.cfg.tasks.values()):
            return rv, metrics, {"baseline": None}
        base = torch.full((len(rows), len(rv_all.names)), math.nan)  # (G, K); NaN: the prompt has no baseline
        if base_groups:
            base[torch.tensor(base_groups)] = rv_all.values[B:]
        return rv, metrics, {"baseline": RewardVector(rv_all.names, rv_all.kinds, base)}


class CGPOUpdate(NoState):
    """Per-task signals (``task_signals``) -> the policy-gradient step of the CRPG / CRRAFT rows (stratified
    mini-batches when objective.mini_batches > 1) and the pair step of the CODPO pairs."""

    def __init__(self, cfg: Any, weights: dict[str, float], trainers: Any, task_of: Callable[[dict], str],
                 rollout_logprobs: bool) -> None:
        self.cfg, self.weights, self.trainers, self.task_of = cfg, weights, trainers, task_of
        self.rollout_logprobs = rollout_logprobs
        self.policy_gradient = any(t.optimizer in ("crpg", "crraft") for t in cfg.tasks.values())
        self.codpo = any(t.optimizer == "codpo" for t in cfg.tasks.values())

    def prepare(self, exp: Experience) -> Prepared:
        rollout, rv = exp.rollout, exp.rewards
        tasks = [self.task_of(row) for row in exp.rows]  # (G,)
        loss_mask = rollout.loss_mask.float()  # (B, C)
        advantages, pairs, metrics, terms = task_signals(self.cfg, self.weights, rv, exp.context["baseline"], tasks,
                                                         rollout.group_ids, loss_mask)
        metrics.update(_component_metrics(rv))
        batch = None
        if self.policy_gradient:
            batch = ExperienceBatch.from_rollout(
                rollout, advantages, loss_mask, nll_rows=terms.nll,
                rollout_logprobs=rollout.logprobs if self.rollout_logprobs else None)
            if self.cfg.mini_batches > 1:  # every optimizer step gets each task in its share, normalised there
                order, mini = stratified_mini_batches(terms, self.trainers.world_size, self.cfg.mini_batches)
                batch = batch.select(order)
                batch.advantages = scale_terms(terms.select(order), batch.loss_mask, mini, self.cfg.loss_agg)
        used = pairs[: len(pairs) - len(pairs) % self.trainers.world_size]  # whole pairs on every rank
        if self.codpo:
            metrics["codpo/pairs"] = float(len(used))
        pair_batch = None
        if used:
            pair_batch = interleaved_pairs(rollout, used)
            pair_tasks = [tasks[int(rollout.group_ids[chosen])] for chosen, _ in used]
            pair_batch.pair_info = codpo_pair_info(pair_tasks, self.cfg).repeat_interleave(2, dim=0)  # (2P, 2)
        return Prepared(metrics, batch, pair_batch)

    def train(self, prepared: Prepared) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if prepared.batch is not None:
            metrics.update(self.trainers.train_rl(prepared.batch))
        if prepared.pairs is not None:
            metrics.update({f"codpo/{k}": v for k, v in self.trainers.train_online_pairs(prepared.pairs).items()})
        return metrics


def task_breakdown(tasks_in_order: list[str], task_of: Callable[[dict], str]
                   ) -> Callable[[list[dict], RewardVector], dict[str, float]]:
    """Held-out evaluation per task: every component's mean over the task's rows as ``TASK/NAME``."""

    def breakdown(rows: list[dict], rv: RewardVector) -> dict[str, float]:
        tasks = [task_of(r) for r in rows]
        out: dict[str, float] = {}
        for task in tasks_in_order:
            idx = [i for i, t in enumerate(tasks) if t == task]
            if idx:
                out.update({f"{task}/{k}": v for k, v in rv.select(idx).means().items()})
        return out

    return breakdown


def task_signals(cfg: Any, weights: dict[str, float], rv: RewardVector, baseline_rv: RewardVector | None,
                 tasks: list[str], group_ids: torch.Tensor, completion_mask: torch.Tensor
                 ) -> tuple[torch.Tensor, list[tuple[int, int]], dict[str, float]]:
    """Per task: reward -> calibrated reward -> its optimiser's signal (see the module docstring).

    cfg: the CGPOConfig; weights: component name -> weight; rv (B, K) the samples' vector; baseline_rv (G, K) the
    prompts' baseline rows (NaN rows where none) or None; tasks (G,) task of each prompt; group_ids (B,) prompt of
    each sample; completion_mask (B, C) the tokens the trainer counts. Returns (B,) advantages for the
    policy-gradient step (normalised over the whole batch: one optimizer step), CODPO pairs as (chosen, rejected)
    global row indices, per-task metrics, and the rows' terms before normalisation (for several mini-batches).
    """
    B = rv.batch_size
    row_task = [tasks[int(g)] for g in group_ids]  # (B,) task of each sample
    terms = RowTerms(base=torch.zeros(B), group=torch.full((B,), -1, dtype=torch.long),
                     nll=torch.zeros(B, dtype=torch.bool))
    pairs: list[tuple[int, int]] = []
    metrics: dict[str, float] = {}
    for task, tcfg in cfg.tasks.items():
        idx = torch.tensor([i for i in range(B) if row_task[i] == task], dtype=torch.long)  # (B_t,)
        in_task = torch.zeros(B, dtype=torch.bool)
        in_task[idx] = True
        values = rv.values[idx]  # (B_t, K)
        reward = task_reward(values[:, [rv.index(n) for n in tcfg.rewards]],
                             torch.tensor([weights[n] for n in tcfg.rewards]))  # (B_t,)
        groups = group_ids[idx]  # (B_t,)
        if tcfg.baseline_column is not None:
            base_values = baseline_rv.values[groups][:, [rv.index(n) for n in tcfg.rewards]]  # (B_t, K_t)
            baseline = task_reward(base_values, torch.tensor([weights[n] for n in tcfg.rewards]))  # (B_t,)
        else:
            baseline = group_mean_baseline(reward, groups)  # (B_t,)
        calibrated = calibrated_reward(reward, baseline)  # (B_t,)
        judges = values[:, [rv.index(n) for n in tcfg.judges]]  # (B_t, J_t)
        ok = satisfied_mask(judges)  # (B_t,)

        p = f"cgpo/{task}"
        metrics[f"{p}/samples"] = float(len(idx))
        metrics[f"{p}/violation_rate"] = float((~ok).float().mean())
        metrics[f"{p}/calibrated_reward"] = _nanmean(calibrated)
        metrics[f"{p}/baseline_reward"] = _nanmean(baseline)
        for j, name in enumerate(tcfg.judges):
            col = judges[:, j]
            applicable = col[~torch.isnan(col)]
            metrics[f"{p}/violation_rate/{name}"] = (
                float((applicable == 0).float().mean()) if applicable.numel() else math.nan)
        for name in rv.names:
            metrics[f"{p}/reward/{name}"] = _nanmean(values[:, rv.index(name)])

        if tcfg.optimizer == "crpg":
            adv = crpg_advantages(calibrated, ok, groups, cfg.scale_std, cfg.eps)  # (B_t,)
            terms.base[idx] = adv * tcfg.weight
            terms.group[idx] = int(terms.group.max()) + 1  # normalised over the task's rows
            metrics[f"{p}/adv_abs_mean"] = float(adv.abs().mean())
        elif tcfg.optimizer == "crraft":
            chosen = crraft_select(calibrated, ok, groups, tcfg.top_k, tcfg.threshold)  # (B_t,)
            rows = idx[chosen]
            terms.base[rows] = tcfg.weight
            terms.group[rows] = int(terms.group.max()) + 1  # normalised over the task's selected rows
            terms.nll[rows] = True
            metrics[f"{p}/selected"] = float(chosen.sum())
        else:
            local = codpo_pairs(calibrated, ok, groups)  # (chosen, rejected) rows of this task
            pairs.extend((int(idx[c]), int(idx[r])) for c, r in local)
            metrics[f"{p}/pairs"] = float(len(local))
            if local:
                chosen_rows, rejected_rows = (list(x) for x in zip(*local))
                metrics[f"{p}/pair_calibrated_gap"] = float(
                    (calibrated[chosen_rows] - calibrated[rejected_rows]).mean())
    advantages = scale_terms(terms, completion_mask, torch.zeros(B, dtype=torch.long), cfg.loss_agg)
    return advantages, pairs, metrics, terms


@dataclass
class RowTerms:
    """What each row contributes to the policy-gradient step before the per-task normalisation: base (B,)
    advantage x task weight; group (B,) long: rows normalised together (a crpg task's rows, a crraft task's
    selected rows), -1 for rows without a term; nll (B,) bool: CRRAFT rows (advantage x NLL, not the surrogate)."""

    base: torch.Tensor
    group: torch.Tensor
    nll: torch.Tensor

    def select(self, index: torch.Tensor) -> "RowTerms":
        return RowTerms(self.base[index], self.group[index], self.nll[index])


def scale_terms(terms: RowTerms, completion_mask: torch.Tensor, mini_batch: torch.Tensor, loss_agg: str
                ) -> torch.Tensor:
    """(B,) advantages: each row's base x task_scale within its optimizer step's mini-batch (mini_batch (B,): the
    step each row is trained in), so every step minimises sum_t weight_t x (task t's own mean term on that step's
    rows), as one whole-batch step does with mini_batches = 1."""
    advantages = torch.zeros_like(terms.base)  # (B,)
    for m in mini_batch.unique().tolist():
        in_m = mini_batch == m  # (B,)
        for g in terms.group[in_m & (terms.group >= 0)].unique().tolist():
            rows = in_m & (terms.group == g)  # (B,)
            advantages[rows] = terms.base[rows] * task_scale(completion_mask[in_m], rows[in_m], loss_agg)
    return advantages


def stratified_mini_batches(terms: RowTerms, world_size: int, mini_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order (B,), mini-batch of each row in that order (B,)) for `mini_batches` optimizer steps on `world_size`
    ranks. The trainer gives rank r rows [r k, (r + 1) k) (k = B / world_size) and steps through them in slices of
    k / mini_batches, so slot s = r * mini_batches + m holds rows [s n, (s + 1) n), n = B / slots. Rows sorted by
    normalisation group are dealt round-robin over the slots: every step sees each task (and each task's CRRAFT
    selection) in the same proportion as the whole batch."""
    B = terms.base.numel()
    slots = world_size * mini_batches
    if B % slots:
        raise ValueError(f"CGPO: {B} rows cannot be split into {world_size} ranks x {mini_batches} mini-batches")
    by_group = torch.argsort(terms.group, stable=True)  # (B,)
    order = torch.cat([by_group[s::slots] for s in range(slots)])  # (B,)
    slot = torch.arange(slots).repeat_interleave(B // slots)  # (B,) slot of each position
    return order, slot % mini_batches


def _component_metrics(rv: RewardVector) -> dict[str, float]:
    """Batch means of every component (`reward/NAME/mean`) and judges' violation rates."""
    out: dict[str, float] = {}
    for j, (name, kind) in enumerate(zip(rv.names, rv.kinds)):
        col = rv.values[:, j]
        applicable = col[~torch.isnan(col)]
        out[f"reward/{name}/mean"] = float(applicable.mean()) if applicable.numel() else math.nan
        if kind == "constraint":
            out[f"constraint/{name}/violation_rate"] = (
                float((applicable == 0).float().mean()) if applicable.numel() else math.nan)
    return out


def _nanmean(x: torch.Tensor) -> float:
    ok = ~torch.isnan(x)
    return float(x[ok].mean()) if bool(ok.any()) else math.nan


def check_baselines(rows: list[dict], sampler: Any, cfg: Any) -> None:
    """Every training row of a task with a baseline column has that column as a string (checked before step 1)."""
    for i, row in enumerate(rows):
        task = sampler.task_of(row, i)
        col = cfg.tasks[task].baseline_column
        if col is not None and not isinstance(row.get(col), str):
            raise ValueError(f"objective.tasks.{task}.baseline_column={col!r}: training row {i} (prompt "
                             f"{str(row.get('prompt'))[:60]!r}) has {col}={row.get(col)!r}; every row of the task "
                             "needs a baseline response string")


__all__ = ["BaselineScorer", "CGPOUpdate", "task_breakdown", "task_signals"]
