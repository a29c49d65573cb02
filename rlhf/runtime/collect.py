"""What an on-policy stage's ``produce`` is made of: prompts -> rollout function -> scorer -> reward vector.

    collector = Collector(prompts, rollout_fn, scorer, sampling, rounds=caps.sampling_rounds, weighting=weighting,
                          prompts_per_step=recipe.rollout.prompts_per_step, conditioner=conditioner)
    batch = collector.collect(step)       # Collected: rows, rollout, reward vector, scorer context, metrics, times
    batch = collector.score(collector.generate(step))   # the same in two halves (one round only: ``splits``)

With a preference conditioner (rlhf/data/conditioning.py) each round's rows get their drawn weight vectors written
into the prompts before the rollout, and the scored reward vector gets them back as its per-sample weights.

With ``rounds`` set (DAPO's dynamic sampling) groups whose scalar reward has zero variance carry no signal: they
are dropped and more prompts are generated, up to ``rounds`` rounds; if still short, dropped groups fill the
batch (their advantages are 0) so the batch keeps its size. ``rounds=None``: one round, every group kept. Also
here: the sampling settings of training and evaluation rollouts, and the rollout metrics every on-policy step logs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from rlhf.data.conditioning import NoConditioning
from rlhf.types import RewardVector, RolloutBatch, SamplingSettings


@dataclass
class Generated:
    """The first half of a one-round collection: the conditioned prompt rows and their rollout, not scored yet."""

    step: int
    rows: list[dict]  # (G,)
    rollout: RolloutBatch  # (B,)
    t_generate: float


@dataclass
class Collected:
    rows: list[dict]  # (G,) the prompt rows, in group order
    rollout: RolloutBatch  # (B,) rows grouped by prompt
    rewards: RewardVector  # (B, K)
    context: dict[str, Any] = field(default_factory=dict)  # what the scorer adds (CGPO: the baselines' vector)
    metrics: dict[str, float] = field(default_factory=dict)
    t_generate: float = 0.0
    t_score: float = 0.0


class Scorer(Protocol):
    def __call__(self, rows: list[dict], rollout: RolloutBatch) -> tuple[RewardVector, dict[str, float],
                                                                        dict[str, Any]]:
        """(reward vector (B, K), metrics, context) of a rollout of the given prompt rows."""


class RewardScorer:
    """Every reward component on every sample (the reward group). Steps: a multi-turn rollout's turns (its rollout
    function says where they are, with each turn's state id), else the recipe's segmenter's steps of process
    components, located on the rollout's token ids with the rollout function's tokenizer."""

    def __init__(self, rewards: Any, rollout_fn: Any) -> None:
        self.rewards, self.rollout_fn = rewards, rollout_fn

    def __call__(self, rows: list[dict], rollout: RolloutBatch) -> tuple[RewardVector, dict[str, float], dict]:
        return (*score_rollout(self.rewards, self.rollout_fn, rollout), {})


def score_rollout(rewards: Any, rollout_fn: Any, rollout: RolloutBatch) -> tuple[RewardVector, dict[str, float]]:
    """The reward vector of a rollout, with its steps: turns (agent) or the segmenter's steps (process rewards)."""
    from rlhf.advantages.process import StepLocator
    from rlhf.scoring.group import rollout_columns

    columns = rollout_columns(rollout)
    turns = rollout_fn.turns(rollout)
    if turns is None:
        locate = StepLocator(rollout_fn.tokenizer, rollout.completion_ids, rollout.completion_mask)
        return rewards.score(rollout.prompts, rollout.completions, columns, locate=locate)
    spans, step_ends, step_keys = turns
    rv, metrics = rewards.score(rollout.prompts, rollout.completions, columns, step_spans=spans)
    rv.step_ends, rv.step_keys = step_ends, step_keys  # (B, S) each: turns are the steps
    return rv, metrics


class Collector:
    def __init__(self, prompts: Any, rollout_fn: Any, scorer: Scorer,
                 sampling: Callable[[int, int], SamplingSettings], rounds: int | None = None, weighting: Any = None,
                 prompts_per_step: int = 0, conditioner: Any = None) -> None:
        self.prompts, self.rollout_fn, self.scorer, self.sampling = prompts, rollout_fn, scorer, sampling
        self.rounds, self.weighting, self.prompts_per_step = rounds, weighting, prompts_per_step
        self.conditioner = conditioner or NoConditioning()  # preference conditioning: per-prompt weights
        if rounds is not None and (weighting is None or prompts_per_step < 1):
            raise ValueError("Collector: dynamic sampling (rounds) needs the weighting and prompts_per_step")

    @property
    def splits(self) -> bool:
        """Whether a step's collection comes in two halves, ``generate`` (engines, prompt position) then ``score``
        (reward workers): one sampling round (dynamic sampling decides on more rounds from the scores)."""
        return self.rounds is None

    def generate(self, step: int, round_: int = 0) -> Generated:
        """The next prompts (conditioned) and their rollout; ``score`` finishes it."""
        rows = self.conditioner.condition(self.prompts.next_batch(), step, round_)
        t0 = time.perf_counter()
        rollout = self.rollout_fn(rows, self.sampling(step, round_))
        return Generated(step, rows, rollout, time.perf_counter() - t0)

    def score(self, g: Generated) -> Collected:
        """The reward vector of a generated batch (per-sample weights attached when conditioned) and its metrics."""
        t0 = time.perf_counter()
        rv, reward_metrics, context = self.scorer(g.rows, g.rollout)
        rv = self.conditioner.attach(rv, g.rollout.extras)  # (B, K) per-sample weights, when conditioned
        t_score = time.perf_counter() - t0
        metrics = {**reward_metrics, **self.rollout_fn.metrics(g.rollout)}
        return Collected(g.rows, g.rollout, rv, context, metrics, g.t_generate, t_score)

    def collect(self, step: int) -> Collected:
        """One training batch of rollouts and their reward vector."""
        if self.splits:
            return self.score(self.generate(step))
        kept: list[Collected] = []
        dropped: list[Collected] = []
        n_kept, metrics = 0, {}
        t_generate = t_score = 0.0
        for round_ in range(self.rounds):
            part = self.score(self.generate(step, round_))
            rows, rollout, rv, context = part.rows, part.rollout, part.rewards, part.context
            t_generate, t_score = t_generate + part.t_generate, t_score + part.t_score
            if round_ == 0:
                metrics.update(part.metrics)
            if context:  # per-round context (e.g. CGPO's baselines) cannot follow groups across rounds
                raise ValueError("dynamic sampling: the scorer adds per-batch context "
                                 f"({sorted(context)}), which cannot be kept across sampling rounds")
            informative = informative_groups(self.weighting.weighted_sum(rv), rollout.group_ids)
            rest = [g for g in range(len(rows)) if g not in informative]
            kept.append(_groups(rows, rollout, rv, informative))
            dropped.append(_groups(rows, rollout, rv, rest))
            n_kept += len(informative)
            if n_kept >= self.prompts_per_step:
                break
        metrics["dynamic_sampling/rounds"] = round_ + 1
        metrics["dynamic_sampling/filled_groups"] = max(0, self.prompts_per_step - n_kept)
        parts = [p for p in kept + dropped if p.rollout.batch_size]
        rollout = RolloutBatch.cat([p.rollout for p in parts], self.rollout_fn.pad_token_id)
        rv = RewardVector.cat([p.rewards for p in parts])
        rows = [row for p in parts for row in p.rows]
        groups = list(range(self.prompts_per_step))  # kept groups first, then the fill
        final = _groups(rows, rollout, rv, groups)
        return Collected(final.rows, final.rollout, final.rewards, {}, metrics, t_generate, t_score)


def _groups(rows: list[dict], rollout: RolloutBatch, rv: RewardVector, groups: list[int]) -> Collected:
    """The given prompt groups (in that order) of a scored rollout."""
    index = [i for g in groups for i in (rollout.group_ids == g).nonzero().flatten().tolist()]
    return Collected([rows[g] for g in groups], rollout.select(index), rv.select(index))  # groups renumbered 0..


def informative_groups(reward: torch.Tensor, group_ids: torch.Tensor) -> list[int]:
    """Groups whose applicable scalar rewards are not all equal."""
    out = []
    for g in group_ids.unique().tolist():
        vals = reward[group_ids == g]
        vals = vals[~torch.isnan(vals)]
        if vals.numel() > 1 and bool((vals != vals[0]).any()):
            out.append(int(g))
    return out


# --------------------------------------------------------------------------- sampling settings


def training_sampling(recipe: Any, step: int, round_: int = 0) -> SamplingSettings:
    """The recipe's sampling settings for a training rollout: seeded per step (and sampling round), rollout
    logprobs asked for only when the trainer uses them (rlhf/config/pipeline.py `behaviour_logprobs`: the engine's
    mismatch (not `hf`, which samples with the trainer's formula), or an off-policy correction)."""
    from rlhf.config.pipeline import behaviour_logprobs

    r = recipe.rollout
    return SamplingSettings(
        n=r.group_size, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
        top_k=r.top_k, stop=tuple(r.stop), seed=(recipe.run.seed * 1_000_003 + step) * 16 + round_,
        ignore_eos=r.ignore_eos, logprobs=behaviour_logprobs(recipe),  # hf, synchronous: not needed
    )


def eval_sampling(recipe: Any) -> SamplingSettings:
    """Held-out evaluation: one greedy completion per prompt, the recipe's length and stop strings."""
    return SamplingSettings(n=1, max_new_tokens=recipe.rollout.max_new_tokens, greedy=True,
                            stop=tuple(recipe.rollout.stop))


def rollout_metrics(rollout: RolloutBatch, payload: Any, timings: dict[str, float],
                    trained_version: int | None = None) -> dict[str, float]:
    """Generation and throughput numbers every on-policy step logs, plus the phase timings, each actor group's
    busy share of the step and, given the version the trainers trained (step - 1), each sample's staleness."""
    n_tokens = int(rollout.completion_mask.sum())
    step = max(timings["time/step"], 1e-9)
    out = {
        "rollout/completion_tokens_mean": n_tokens / rollout.batch_size,
        "rollout/finished_rate": float(rollout.finished.float().mean()),
        "throughput/gen_tokens_per_s": n_tokens / max(timings["time/generate"], 1e-9),
        "throughput/samples_per_s": rollout.batch_size / step,
        "sync/bytes": payload.num_bytes,
        "sync/fast_route": float(payload.transport != "object_store"),  # 0 on a broadcast/IPC run: it fell back
        # share of this step's wall time each actor group worked (async: the batch's production overlapped the
        # previous step, so a share can pass 1 when a group is the bottleneck)
        "busy/engines": timings["time/generate"] / step,
        "busy/rewards": timings.get("time/score", 0.0) / step,
        "busy/trainers": (timings.get("time/advantages", 0.0) + timings.get("time/train", 0.0)
                          + timings.get("time/sync", 0.0)) / step,
        **timings,
    }
    if trained_version is not None:
        out.update(staleness_metrics(rollout.versions, trained_version))
    return out


def staleness_metrics(versions: torch.Tensor, trained_version: int) -> dict[str, float]:
    """Per sample, the versions between the trainer's (``trained_version``) and the oldest that generated one of
    its tokens: mean, max and the share of samples at each staleness (versions (B, C), -1 where not generated);
    and the share of samples whose tokens came from more than one version (a weight update landed mid-sample)."""
    generated = versions >= 0  # (B, C)
    oldest = torch.where(generated, versions, torch.full_like(versions, trained_version)).min(dim=1).values  # (B,)
    newest = torch.where(generated, versions, torch.full_like(versions, -1)).max(dim=1).values  # (B,)
    staleness = (trained_version - oldest).clamp(min=0)  # (B,)
    out = {"async/staleness_mean": float(staleness.float().mean()), "async/staleness_max": float(staleness.max()),
           # pipeline.weight_update: keep -- samples whose tokens came from more than one policy version
           "async/mixed_version_share": float((generated.any(dim=1) & (newest > oldest)).float().mean()),
           # per generated token (keep mode: the tokens sampled after a sync are fresher than their sample's oldest)
           "async/token_staleness_mean": float((trained_version - versions[generated]).clamp(min=0).float().mean())
           if generated.any() else 0.0}
    for k, n in zip(*torch.unique(staleness, return_counts=True)):
        out[f"async/staleness_share/{int(k)}"] = float(n) / staleness.numel()
    return out
