"""Preference conditioning (DPA; rlhf/config/conditioning.py, rlhf/data/conditioning.py, per-sample weights in
rlhf/weighting/static.py): reproducible draws, the rendered template, per-sample weighted rewards and group
advantages by hand (GRPO, RLOO, REINFORCE++), NaN semantics, the weights' logged distribution and recipe errors that
name their key.

Run: pytest tests/unit/test_conditioning.py -q
"""

import math

import pytest
import torch

from rlhf.config.schema import Recipe, RewardComponentConfig, WeightingConfig
from rlhf.data.conditioning import (
    NoConditioning,
    PreferenceConditioner,
    build_conditioner,
    rank_correlation,
    round_on_simplex,
)
from rlhf.objectives import GRPO, RLOO, ReinforcePP
from rlhf.types import RewardVector
from rlhf.weighting import build_weighting

NAN = float("nan")
NAMES = ("correct", "brief", "format")
TEMPLATE = "<pref correct={correct:.2f} brief={brief:.2f}> {prompt}"


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0, equal_nan=True)


def conditioner(**kw):
    args = {"template": TEMPLATE, "seed": 3, **kw}
    return PreferenceConditioner(("correct", "brief"), NAMES, **args)


def weighting(normalize="sum_then_normalize", format_weight=0.5):
    comps = [RewardComponentConfig(name="correct", plugin="p", kind="reward", weight=1.0),
             RewardComponentConfig(name="brief", plugin="p", kind="reward", weight=1.0),
             RewardComponentConfig(name="format", plugin="p", kind="reward", weight=format_weight)]
    return build_weighting(WeightingConfig(normalize=normalize), comps)


# two prompts, three samples each: prompt 0 prefers correctness (0.8, 0.2), prompt 1 brevity (0.2, 0.8); format 0
VALUES = torch.tensor([[1.0, -0.5, 0.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.0]] * 2)  # (6, 3)
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])
EXTRAS = {"preference": [[0.8, 0.2]] * 3 + [[0.2, 0.8]] * 3}


def conditioned_rv(values=VALUES):
    rv = RewardVector(NAMES, ("reward",) * 3, values.clone())
    return conditioner().attach(rv, EXTRAS)


# --------------------------------------------------------------------------- draws and the template


def test_draws_are_reproducible_per_seed_step_and_round():
    a, b = conditioner(), conditioner()
    assert a.draws_for(5, 0, 4) == b.draws_for(5, 0, 4)  # a resumed run draws what the first run drew
    assert a.draws_for(5, 0, 4) != a.draws_for(6, 0, 4)
    assert a.draws_for(5, 0, 4) != a.draws_for(5, 1, 4)
    assert conditioner(seed=4).draws_for(5, 0, 4) != a.draws_for(5, 0, 4)
    for v in a.draws_for(7, 0, 50):
        assert len(v) == 2 and min(v) >= 0 and math.isclose(sum(v), 1.0)
        assert all(abs(x * 100 - round(x * 100)) < 1e-9 for x in v)  # decimals=2: the prompt shows the weights used


def test_dirichlet_alpha_concentrates():
    flat = conditioner(alpha=1.0).draws_for(1, 0, 400)
    peaked = conditioner(alpha=50.0, decimals=None).draws_for(1, 0, 400)
    spread = lambda vs: sum(abs(v[0] - 0.5) for v in vs) / len(vs)  # noqa: E731
    assert spread(peaked) < 0.1 < spread(flat)


def test_fixed_draws_come_from_the_vectors():
    c = conditioner(distribution="fixed", vectors=[[1.0, 0.0], [0.3, 0.7]])
    drawn = c.draws_for(2, 0, 40)
    assert {tuple(v) for v in drawn} == {(1.0, 0.0), (0.3, 0.7)}


def test_round_on_simplex_keeps_the_sum():
    assert round_on_simplex([1 / 3, 1 / 3, 1 / 3], 2) == [0.34, 0.33, 0.33]
    assert round_on_simplex([0.004, 0.996], 2) == [0.0, 1.0]
    assert sum(round_on_simplex([0.123456, 0.876544], 3)) == pytest.approx(1.0)


def test_condition_renders_the_prompt_and_the_column():
    c = conditioner()
    rows = [{"prompt": "12+7=", "answer": "19"}, {"prompt": "3+4=", "answer": "7"}]
    out = c.condition(rows, step=1)
    v0, v1 = c.draws_for(1, 0, 2)
    assert out[0]["prompt"] == f"<pref correct={v0[0]:.2f} brief={v0[1]:.2f}> 12+7="
    assert out[1]["preference"] == v1 and out[1]["answer"] == "7"
    assert "preference" not in rows[0] and rows[0]["prompt"] == "12+7="  # the sampler's rows are not changed
    at = c.render(rows, [0.75, 0.25])
    assert at[0]["prompt"] == "<pref correct=0.75 brief=0.25> 12+7=" and at[1]["preference"] == [0.75, 0.25]
    assert conditioner(template="<pref {weights}> {prompt}").prompt("1+1=", [0.5, 0.5]) == "<pref 0.50 0.50> 1+1="
    with pytest.raises(ValueError, match="conditioning.column"):
        c.render([{"prompt": "x", "preference": 1}], [0.5, 0.5])


def test_disabled_is_the_identity():
    rows = [{"prompt": "1+1="}]
    c = NoConditioning()
    rv = RewardVector(NAMES, ("reward",) * 3, VALUES.clone())
    assert c.condition(rows, 1) is rows and c.attach(rv, {}) is rv and rv.sample_weights is None
    assert c.eval_vectors == [] and c.examples(rows) == []


# --------------------------------------------------------------------------- per-sample weights in the weighting


def test_attach_puts_the_vector_on_conditioned_components():
    rv = conditioned_rv()
    close(rv.sample_weights, [[0.8, 0.2, 1.0]] * 3 + [[0.2, 0.8, 1.0]] * 3)
    sub = rv.select([3, 0])  # select and cat keep the per-sample weights with their rows
    close(sub.sample_weights, [[0.2, 0.8, 1.0], [0.8, 0.2, 1.0]])
    close(RewardVector.cat([sub, rv.select([1])]).sample_weights, [[0.2, 0.8, 1.0], [0.8, 0.2, 1.0],
                                                                   [0.8, 0.2, 1.0]])


def test_weighted_sum_uses_each_samples_weights():
    # group 0: 0.8*1 + 0.2*-0.5 = 0.7, 0, 0.8 - 0.2 = 0.6; group 1: 0.2 - 0.4 = -0.2, 0, 0.2 - 0.8 = -0.6
    close(weighting().weighted_sum(conditioned_rv()), [0.7, 0.0, 0.6, -0.2, 0.0, -0.6])


def test_grpo_group_advantages_by_hand():
    adv, metrics = GRPO(scale_std=False).advantages(conditioned_rv(), GROUPS, weighting())
    # group 0 mean 1.3/3: 0.7 - 0.43333, ...; group 1 mean -0.8/3. The brief empty answer wins in group 1 only.
    close(adv, [0.26667, -0.43333, 0.16667, 0.06667, 0.26667, -0.33333])
    adv_std, _ = GRPO().advantages(conditioned_rv(), GROUPS, weighting())
    s0 = torch.tensor([0.7, 0.0, 0.6]).std()
    close(adv_std[:3], (torch.tensor([0.7, 0.0, 0.6]) - 1.3 / 3) / (s0 + 1e-6))
    # logged: per-component means unchanged, the weights' distribution, weighted means with per-sample weights
    assert metrics["reward/correct/mean"] == pytest.approx(2 / 3)
    assert metrics["reward/brief/mean"] == pytest.approx(-0.5)
    assert metrics["weights/correct"] == 1.0
    assert metrics["weights/sample/correct/mean"] == pytest.approx(0.5)
    assert metrics["weights/sample/correct/min"] == pytest.approx(0.2)
    assert metrics["weights/sample/brief/max"] == pytest.approx(0.8)
    assert metrics["weights/sample/format/mean"] == pytest.approx(0.5)  # base weight 0.5 x factor 1
    # (0.8 + 0 + 0.8 + 0.2 + 0 + 0.2) / 6
    assert metrics["reward/correct/weighted"] == pytest.approx(2.0 / 6)


def test_component_then_sum_weights_each_groups_normalised_components():
    adv, _ = weighting("component_then_sum").scalarize(conditioned_rv(), GROUPS, scale_std=False)
    # per component centred in group: correct [1/3, -2/3, 1/3], brief [0, 0.5, -0.5] (same in both groups)
    close(adv, [0.8 / 3, -1.6 / 3 + 0.1, 0.8 / 3 - 0.1, 0.2 / 3, -0.4 / 3 + 0.4, 0.2 / 3 - 0.4])


def test_rloo_and_reinforce_pp_use_the_prompts_weights():
    adv, _ = RLOO().advantages(conditioned_rv(), GROUPS, weighting())
    # r = [0.7, 0, 0.6 | -0.2, 0, -0.6]; A_i = r_i - mean of the other two
    close(adv, [0.4, -0.65, 0.25, 0.1, 0.4, -0.5])
    per_comp, _ = RLOO(per_component=True).advantages(conditioned_rv(), GROUPS, weighting())
    close(per_comp, adv)  # linear, no NaN: the two agree, per-sample weights included
    scores, _ = ReinforcePP(baseline="group").sequence_scores(conditioned_rv(), GROUPS, weighting())
    close(scores, [0.26667, -0.43333, 0.16667, 0.06667, 0.26667, -0.33333])


def test_nan_semantics_unchanged():
    values = VALUES.clone()
    values[0, 0] = NAN  # correct not applicable: counts 0 -> 0.2 * -0.5
    values[1] = NAN  # every component NaN: NaN sum, advantage 0
    rv = conditioned_rv(values)
    w = weighting()
    close(w.weighted_sum(rv)[:3], [-0.1, NAN, 0.6])
    adv, metrics = GRPO(scale_std=False).advantages(rv, GROUPS, w)
    close(adv[:3], [-0.35, 0.0, 0.35])
    assert metrics["reward/correct/mean"] == pytest.approx(3 / 4)  # NaN rows left out of the mean


def test_without_sample_weights_nothing_changes():
    rv = RewardVector(NAMES, ("reward",) * 3, VALUES.clone())
    w = weighting()
    close(w.weighted_sum(rv), [0.5, 0.0, 0.0] * 2)
    _, metrics = w.scalarize(rv, GROUPS)
    assert not any(k.startswith("weights/sample/") for k in metrics)


def test_rank_correlation():
    assert rank_correlation([0, 0.25, 0.5, 0.75, 1], [1, 2, 3, 5, 8]) == pytest.approx(1.0)
    assert rank_correlation([0, 0.5, 1], [3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([0, 0.5, 1], [1, 1, 2]) == pytest.approx(math.sqrt(3) / 2)  # tied ranks averaged
    assert math.isnan(rank_correlation([0, 1], [1, 1]))


# --------------------------------------------------------------------------- the recipe section


def recipe(conditioning, objective="grpo", weighting_kind="static"):
    return Recipe.model_validate({
        "model": {"tiny": {}},
        "rewards": [{"name": "correct", "plugin": "math_answer"},
                    {"name": "brief", "plugin": "length_penalty", "args": {"target": 1}}],
        "objective": {"kind": objective},
        "weighting": {"kind": weighting_kind},
        "conditioning": {"enabled": True, "components": ["correct", "brief"],
                         "template": TEMPLATE, **conditioning}})


def test_recipe_builds_the_conditioner():
    r = recipe({"eval_vectors": [[1, 0], [0.5, 0.5]]}, objective="rloo")
    c = build_conditioner(r.conditioning, [x.name for x in r.rewards], seed=r.run.seed)
    assert isinstance(c, PreferenceConditioner) and c.eval_vectors == [[1.0, 0.0], [0.5, 0.5]]
    assert recipe({}).conditioning.evaluation_vectors() == [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    fixed = recipe({"distribution": "fixed", "vectors": [[0.2, 0.8]]}, objective="reinforce_pp")
    assert fixed.conditioning.evaluation_vectors() == [[0.2, 0.8]]
    off = Recipe.model_validate({"model": {"tiny": {}}, "rewards": [{"name": "a", "plugin": "math_answer"}]})
    assert isinstance(build_conditioner(off.conditioning, ["a"], 0), NoConditioning)


@pytest.mark.parametrize("section, key", [
    ({"components": ["correct", "speed"]}, "conditioning.components.1"),
    ({"components": []}, "conditioning.components"),
    ({"distribution": "fixed", "vectors": [[0.5, 0.3, 0.2]]}, "conditioning.vectors.0"),
    ({"vectors": [[1.2, -0.2]]}, "conditioning.vectors.0: negative"),
    ({"eval_vectors": [[0.5, 0.6]]}, "conditioning.eval_vectors.0"),
    ({"distribution": "fixed"}, "conditioning.vectors"),
    ({"alpha": [1.0]}, "conditioning.alpha"),
    ({"alpha": 0.0}, "conditioning.alpha"),
    ({"template": "<pref {correct}> {prompt}"}, "conditioning.template.*brief"),
    ({"template": "<pref {weights}>"}, "conditioning.template.*prompt"),
    ({"template": "{weights} {speed} {prompt}"}, "conditioning.template: unknown placeholder"),
])
def test_validation_errors_name_the_key(section, key):
    with pytest.raises(ValueError, match=key):
        recipe(section)


def test_objectives_and_weighting_that_cannot_condition():
    with pytest.raises(ValueError, match="conditioning.enabled: works with objectives grpo, rloo, reinforce_pp"):
        recipe({}, objective="ppo")
    with pytest.raises(ValueError, match="weighting.kind hypervolume"):
        recipe({}, weighting_kind="hypervolume")


# --------------------------------------------------------------------------- rlhf sweep --conditioned


def test_conditioned_sweep_scores_one_checkpoint_at_every_vector(tmp_path, monkeypatch):
    import json

    from rlhf import sweep as sweep_module

    r = recipe({"eval_vectors": [[1, 0], [0.5, 0.5], [0, 1]]}).model_copy(deep=True)
    r.run.output_dir = str(tmp_path)
    seen = {}

    def fake_scores(rec, checkpoint, vectors):  # brief rises and correct falls with the brief weight
        seen["checkpoint"], seen["vectors"] = checkpoint, vectors
        out = {"cond/spearman/correct": 1.0, "cond/spearman/brief": 1.0}
        for i, (wc, wb) in enumerate(vectors):
            out.update({f"cond/{i}/correct": 0.2 + 0.5 * wc, f"cond/{i}/brief": -0.6 * wc, f"cond/{i}/score": 0.0})
        return out

    monkeypatch.setattr(sweep_module, "conditioned_scores", fake_scores)
    result = sweep_module.sweep(r, [], conditioned=True, checkpoint="ckpt")  # no training: the checkpoint is scored
    assert seen == {"checkpoint": "ckpt", "vectors": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]}
    assert [x["point"] for x in result["runs"]] == [[0.7, -0.6], [0.45, -0.3], [0.2, 0.0]]
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["spearman"] == {"correct": 1.0, "brief": 1.0}
    assert "rank correlation" in (tmp_path / "sweep" / "sweep.md").read_text()
    sweep_module.sweep(r, ["0.2,0.8"], conditioned=True, checkpoint="ckpt")  # --weights override the eval vectors
    assert seen["vectors"] == [[0.2, 0.8]]
    with pytest.raises(ValueError, match="--weights.0: negative"):
        sweep_module.sweep(r, ["1.5,-0.5"], conditioned=True, checkpoint="ckpt")
    with pytest.raises(ValueError, match="add --conditioned"):
        sweep_module.sweep(r, ["1,0"], checkpoint="ckpt")
    off = r.model_copy(update={"conditioning": r.conditioning.model_copy(update={"enabled": False})})
    with pytest.raises(ValueError, match="conditioning.enabled is false"):
        sweep_module.sweep(off, [], conditioned=True, checkpoint="ckpt")
