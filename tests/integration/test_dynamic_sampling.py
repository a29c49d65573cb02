"""The on-policy stage's collector (prompts -> rollout function -> scorer): DAPO dynamic sampling (zero-variance
groups are dropped and refilled from new prompts) and the recipe's sampling settings reaching the engine
(rollout.ignore_eos)."""

from __future__ import annotations

import pytest

from rewards.api import register_plugin
from rlhf.config.load import validate_dict
from rlhf.data import PromptSampler
from rlhf.config.registry import capabilities
from rlhf.rollout.functions import SingleTurn
from rlhf.rollout.hf import HFEngine
from rlhf.runtime.collect import Collector, RewardScorer, training_sampling
from rlhf.scoring.group import RewardGroup
from rlhf.weighting import build_weighting


def _constant_for_plus(prompts, completions):
    """1.0 for every '+' prompt (no signal in its group); completion length parity otherwise."""
    return [1.0 if "+" in p else float(len(c) % 2) for p, c in zip(prompts, completions)]


register_plugin("test_constant_for_plus", "reward", _constant_for_plus)


@pytest.fixture(scope="module")
def parts(arithmetic_model_dir):
    engine = HFEngine(arithmetic_model_dir)
    yield engine


def generate_and_score(recipe, step, sampler, engine, rewards, weighting):
    """One collected batch as the on-policy stage makes it: (rollout, reward vector, metrics)."""
    rollout_fn = SingleTurn(engine)
    collector = Collector(sampler, rollout_fn, RewardScorer(rewards, rollout_fn),
                          lambda step, round_: training_sampling(recipe, step, round_),
                          rounds=capabilities(recipe.objective).sampling_rounds, weighting=weighting,
                          prompts_per_step=recipe.rollout.prompts_per_step)
    c = collector.collect(step)
    assert [r["prompt"] for r in c.rows for _ in range(recipe.rollout.group_size)] == c.rollout.prompts
    return c.rollout, c.rewards, c.metrics


def _setup(dynamic: bool, rounds: int = 4, ignore_eos: bool = False):
    recipe = validate_dict({
        "model": {"tiny": {}},
        "rewards": [{"name": "r", "plugin": "test_constant_for_plus"}],
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 6, "temperature": 1.5,
                    "ignore_eos": ignore_eos},
        "objective": {"kind": "grpo", "dynamic_sampling": dynamic, "max_sampling_rounds": rounds},
        "train": {"num_ranks": 1, "backend": "torch"},
    }, "test")
    rows = [{"prompt": f"{a}{op}{b}=", "answer": "0"} for a in range(10) for op in "+-" for b in range(3)]
    return recipe, PromptSampler(rows, 4, seed=5), RewardGroup(recipe.rewards, use_ray=False)


def test_dynamic_sampling_keeps_only_informative_groups(parts):
    engine = parts
    recipe, sampler, rewards = _setup(dynamic=True, rounds=8)
    weighting = build_weighting(recipe.weighting, recipe.rewards)
    rollout, rv, metrics = generate_and_score(recipe, 1, sampler, engine, rewards, weighting)
    assert rollout.batch_size == 16 and rv.batch_size == 16
    assert sorted(set(rollout.group_ids.tolist())) == [0, 1, 2, 3]
    assert not any("+" in p for p in rollout.prompts), "constant-reward '+' groups must be dropped"
    assert metrics["dynamic_sampling/filled_groups"] == 0
    assert metrics["dynamic_sampling/rounds"] >= 2  # the first 4 prompts are never all informative here
    # rows, texts, extras and rewards stay aligned after selection and concatenation
    assert rv.values[:, 0].tolist() == [float(len(c) % 2) for c in rollout.completions]
    assert rollout.extras["answer"] == ["0"] * 16


def test_dynamic_sampling_fills_when_rounds_run_out(parts):
    engine = parts
    recipe, sampler, rewards = _setup(dynamic=True, rounds=1)
    weighting = build_weighting(recipe.weighting, recipe.rewards)
    rollout, rv, metrics = generate_and_score(recipe, 1, sampler, engine, rewards, weighting)
    assert rollout.batch_size == 16 and metrics["dynamic_sampling/rounds"] == 1
    n_plus = sum("+" in p for p in rollout.prompts) // 4
    assert metrics["dynamic_sampling/filled_groups"] >= n_plus


def test_without_dynamic_sampling_batch_is_as_generated(parts):
    engine = parts
    recipe, sampler, rewards = _setup(dynamic=False)
    weighting = build_weighting(recipe.weighting, recipe.rewards)
    first = sampler.state_dict()
    rollout, rv, metrics = generate_and_score(recipe, 1, sampler, engine, rewards, weighting)
    sampler.load_state_dict(first)
    assert rollout.prompts == [r["prompt"] for r in sampler.next_batch() for _ in range(4)]
    assert "dynamic_sampling/rounds" not in metrics


def test_ignore_eos_makes_every_training_rollout_full_length(parts):
    engine = parts
    lengths = {}
    for ignore in (False, True):
        recipe, sampler, rewards = _setup(dynamic=False, ignore_eos=ignore)
        weighting = build_weighting(recipe.weighting, recipe.rewards)
        rollout, _, _ = generate_and_score(recipe, 1, sampler, engine, rewards, weighting)
        lengths[ignore] = rollout.completion_mask.sum(dim=1).tolist()  # (B,)
    assert lengths[True] == [6] * 16
    assert min(lengths[False]) < 6, "the arithmetic model answers in fewer than 6 tokens and stops at EOS"


def test_hf_training_rollouts_skip_the_logprob_pass_unless_needed(parts):
    """The hf engine's logprobs are the trainer's own, so without TIS the controller does not ask for them (one
    forward pass less per step); with tis_cap it does, and the tokens are the same either way."""
    import torch

    engine = parts
    out = {}
    for tis in (None, 2.0):
        recipe, sampler, rewards = _setup(dynamic=False)
        recipe = recipe.model_copy(update={"rollout": recipe.rollout.model_copy(update={"tis_cap": tis})})
        weighting = build_weighting(recipe.weighting, recipe.rewards)
        out[tis], _, _ = generate_and_score(recipe, 1, sampler, engine, rewards, weighting)
    assert torch.isnan(out[None].logprobs).all()
    on = out[2.0].completion_mask.bool()
    assert torch.isfinite(out[2.0].logprobs).all() and (out[2.0].logprobs[on] < 0).all()
    assert torch.equal(out[None].completion_ids, out[2.0].completion_ids)  # same seed, same samples
