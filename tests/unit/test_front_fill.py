"""Front filling (rlhf/weighting/front_fill.py, rlhf sweep --fill): hand-computed gaps, specs and bounds for 2 and 3
components, the fill run's recipe, and a sweep (training faked) that marks the filled points.

Run: pytest tests/unit/test_front_fill.py -q
"""

from __future__ import annotations

import json
import os

import pytest

from rlhf.config.load import validate_dict
from rlhf.weighting.front_fill import FillSpec, fill_specs, front_gaps
from rlhf.weighting.pareto import hypervolume

# five points, all components maximised: four on the front (sorted by x: 3, 2, 1, 0), one dominated (4)
POINTS = [[1.0, 0.0], [0.8, 0.5], [0.2, 0.9], [0.0, 1.0], [0.5, 0.3]]


# ------------------------------------------------------------------------------------------------ the rule


def test_two_components_gaps_are_the_empty_rectangles_between_consecutive_front_points():
    # ranges are 1 in both components, so normalised = raw; rectangles: (0,1) 0.2*0.5, (1,2) 0.6*0.4, (2,3) 0.2*0.1
    gaps = front_gaps(POINTS)
    assert [pair for pair, _ in gaps] == [(1, 2), (0, 1), (2, 3)]
    assert [size for _, size in gaps] == pytest.approx([0.24, 0.10, 0.02])


def test_gap_sizes_are_normalised_by_each_components_range():
    scaled = [[x * 10.0, y - 3.0] for x, y in POINTS]  # range 10 and 1: the normalised gaps do not change
    assert [s for _, s in front_gaps(scaled)] == pytest.approx([0.24, 0.10, 0.02])


def test_two_component_specs_maximise_the_wide_side_from_the_neighbour_worse_on_it():
    specs = fill_specs(POINTS, 3)
    # gap (1, 2): (0.8, 0.5)-(0.2, 0.9), widths x 0.6 > y 0.4: maximise x from point 2 (x 0.2), y >= 0.9 - 0.4/2
    assert specs[0] == FillSpec(pair=(1, 2), size=pytest.approx(0.24), maximize=0, start=2,
                                bounds={1: pytest.approx(0.7)})
    # gap (0, 1): (1, 0)-(0.8, 0.5), widths x 0.2 < y 0.5: maximise y from point 0 (y 0), x >= 1 - 0.2/2
    assert specs[1] == FillSpec(pair=(0, 1), size=pytest.approx(0.10), maximize=1, start=0,
                                bounds={0: pytest.approx(0.9)})
    # gap (2, 3): (0.2, 0.9)-(0, 1), widths x 0.2 > y 0.1: maximise x from point 3, y >= 1 - 0.1/2
    assert (specs[2].maximize, specs[2].start, specs[2].bounds) == (0, 3, {1: pytest.approx(0.95)})
    # the start satisfies its own bounds (K = 2): the run begins feasible
    for s in specs:
        assert all(POINTS[s.start][j] >= b for j, b in s.bounds.items())


def test_step_moves_the_bound_between_the_middle_and_the_worse_neighbour():
    full = fill_specs(POINTS, 1, step=1.0)[0]
    assert full.bounds == {1: pytest.approx(0.5)}  # down to the worse neighbour's (point 1's) y
    assert fill_specs(POINTS, 1, step=0.25)[0].bounds == {1: pytest.approx(0.9 - 0.1)}
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        fill_specs(POINTS, 1, step=0.0)


def test_a_dominated_point_is_never_a_neighbour_or_a_start():
    # point 4 (0.5, 0.3) sits inside the largest gap; point 5 (0.79, 0.49) just under point 1; neither is a neighbour
    pts = POINTS + [[0.79, 0.49]]
    for spec in fill_specs(pts, 3):
        assert 4 not in spec.pair and 5 not in spec.pair and spec.start not in (4, 5)
    assert [p for p, _ in front_gaps(pts)] == [(1, 2), (0, 1), (2, 3)]


def test_exact_duplicates_collapse_to_the_first():
    pts = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    assert fill_specs(pts, 1)[0].pair == (0, 1)
    assert fill_specs(pts, 1)[0].size == pytest.approx(1.0)


def test_ties_in_width_pick_the_first_component_and_ties_in_size_the_first_pair():
    pts = [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]  # two gaps of 0.25, each 0.5 wide on both components
    specs = fill_specs(pts, 2)
    assert [s.pair for s in specs] == [(0, 1), (1, 2)]
    assert [s.maximize for s in specs] == [0, 0]
    assert [s.start for s in specs] == [0, 1]  # the neighbour worse on component 0
    assert [s.bounds for s in specs] == [{1: pytest.approx(0.75)}, {1: pytest.approx(0.25)}]


def test_too_many_gaps_names_the_option_and_the_front():
    with pytest.raises(ValueError, match=r"--fill 3: the front has only 2 points, so 1 gap$"):
        fill_specs([[1.0, 0.0], [0.0, 1.0], [0.2, -0.1]], 3)
    with pytest.raises(ValueError, match="only 1 point, so 0 gaps"):
        fill_specs([[1.0, 1.0], [0.0, 0.0]], 1)
    with pytest.raises(ValueError, match="positive integer"):
        fill_specs(POINTS, 0)
    with pytest.raises(ValueError, match="two components"):
        fill_specs([[1.0], [0.0]], 1)


def test_three_components_pairs_are_neighbours_along_some_component():
    # a = (1, 0, 0.5), b = (0, 1, 0.5), c = (0.5, 0.5, 1); ranges 1, 1, 0.5 -> z_c = 0 for a, b and 1 for c
    pts = [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.5, 0.5, 1.0]]
    gaps = dict(front_gaps(pts))
    # sorts: by x b, c, a; by y a, c, b; by z a, b, c (ties by index) -> pairs (0,2), (1,2), (0,1): all three
    assert set(gaps) == {(0, 1), (0, 2), (1, 2)}
    # sizes by hand: normalised front a' = (1, 0, 0), b' = (0, 1, 0), c' = (.5, .5, 1), reference -0.1 everywhere
    ref = [-0.1] * 3
    front = [[1, 0, 0], [0, 1, 0], [0.5, 0.5, 1]]
    base = hypervolume(front, ref)
    for (i, j), join in (((0, 1), [1, 1, 0]), ((0, 2), [1, 0.5, 1]), ((1, 2), [0.5, 1, 1])):
        assert gaps[(i, j)] == pytest.approx(hypervolume(front + [join], ref) - base)
    # join (1, .5, 1) of a, c: its box [-.1, 1] x [-.1, .5] x [-.1, 1] less c' (x <= .5) less a' (y <= 0, z <= 0):
    # 0.5 * (0.6 * 1.1 - 0.1 * 0.1) = 0.325; (1, 2) the same by symmetry. Join (1, 1, 0) of a, b: z in [-.1, 0],
    # (x, y) in (0, 1]^2 outside c's [0, .5]^2: 0.75 * 0.1 = 0.075
    assert [round(s, 9) for _, s in front_gaps(pts)] == [0.325, 0.325, 0.075]
    specs = fill_specs(pts, 2)
    assert [s.pair for s in specs] == [(0, 2), (1, 2)]
    # gap (0, 2): widths x 0.5, y 0.5, z 1.0 -> maximise z from a (z 0.5); a is better on x: x >= 1 - 0.5/2;
    # a is worse on y: keep a's own y >= 0
    assert (specs[0].maximize, specs[0].start) == (2, 0)
    assert specs[0].bounds == {0: pytest.approx(0.75), 1: pytest.approx(0.0)}
    assert (specs[1].maximize, specs[1].start, specs[1].bounds) == (2, 1, {0: 0.0, 1: pytest.approx(0.75)})


def test_spec_json_names_the_components():
    spec = fill_specs(POINTS, 1)[0]
    assert spec.to_json(["correct", "brief"]) == {"pair": [1, 2], "size": pytest.approx(0.24), "maximize": "correct",
                                                  "start": 2, "bounds": {"brief": pytest.approx(0.7)}}


# ------------------------------------------------------------------------------------------- in the sweep


def _recipe(tmp_path, **extra):
    return validate_dict({
        "run": {"output_dir": str(tmp_path / "out"), "steps": 2, "progress": False, "name": "s"},
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4,
                           "max_position_embeddings": 32}},
        "data": {"synthetic": {"n_train": 32, "n_eval": 8, "max_operand": 9}, "max_prompt_tokens": 8},
        "rewards": [{"name": "correct", "plugin": "exact_match"},
                    {"name": "brief", "plugin": "length_penalty", "args": {"target": 1}}],
        "warmup": {"steps": 5},
        "weighting": {"constraints": [{"component": "correct", "max": 2.0}]},
        "train": {"backend": "torch", "num_ranks": 1},
        **extra,
    }, "test")


def _checkpoint(root, name="step_000002"):
    model = root / name / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    return str(root / name)


def test_fill_recipe_weights_constraints_model_and_warmup(tmp_path):
    from rlhf.sweep import fill_recipe

    recipe = _recipe(tmp_path)
    ckpt = _checkpoint(tmp_path / "w2" / "checkpoints")
    spec = FillSpec(pair=(1, 2), size=0.24, maximize=0, start=2, bounds={1: -0.3})
    r = fill_recipe(recipe, spec, ckpt, str(tmp_path / "fill0"), "s-fill0")
    assert [(c.name, c.weight) for c in r.rewards] == [("correct", 1.0), ("brief", 0.0)]
    assert [(c.component, c.min, c.max) for c in r.weighting.constraints] == [("correct", None, 2.0),
                                                                              ("brief", -0.3, None)]
    assert r.model.path == os.path.join(ckpt, "model") and r.model.tiny is None and r.model.tokenizer is None
    assert r.warmup.steps == 0 and r.run.output_dir == str(tmp_path / "fill0") and r.run.name == "s-fill0"
    assert recipe.rewards[1].weight == 1.0 and recipe.model.tiny is not None  # the sweep's recipe is untouched
    with pytest.raises(ValueError, match="no model/ directory"):
        fill_recipe(recipe, spec, str(tmp_path / "nowhere"), str(tmp_path / "fill0"), "x")


# the fake runs' points: weight vectors land on the three corners of a concave front; a fill run lands in its gap
FAKE_POINTS = {(1.0, 0.0): [1.0, -1.0], (0.5, 0.5): [0.9, -0.6], (0.0, 1.0): [0.0, 0.0]}


def test_sweep_fills_the_largest_gap_and_marks_the_point(tmp_path, monkeypatch):
    from rlhf import sweep as sweep_module
    from rlhf.runtime import controller

    seen = []

    def fake_run(recipe, resume=False):
        seen.append(recipe)
        out = recipe.run.output_dir
        ckpt = _checkpoint(tmp_path / os.path.basename(out))
        weights = tuple(c.weight for c in recipe.rewards)
        point = FAKE_POINTS[weights] if not recipe.weighting.constraints[1:] else [0.6, -0.2]
        return {"eval_after": dict(zip(["correct", "brief"], point)), "checkpoint": ckpt}

    monkeypatch.setattr(controller, "run", fake_run)
    result = sweep_module.sweep(_recipe(tmp_path), ["1,0", "0.5,0.5", "0,1"], reference=[-0.1, -1.1], fill=1)
    # gaps (normalised by ranges 1 and 1): w0-w1 0.1*0.4 = 0.04, w1-w2 0.9*0.6 = 0.54 -> fill w1-w2; widths
    # correct 0.9 > brief 0.6: maximise correct from w2 (correct 0) with brief >= 0 - 0.6/2
    fill_run = seen[-1]
    assert [c.weight for c in fill_run.rewards] == [1.0, 0.0]
    assert fill_run.weighting.constraints[-1].component == "brief"
    assert fill_run.weighting.constraints[-1].min == pytest.approx(-0.3)
    assert fill_run.model.path == os.path.join(str(tmp_path / "w2" / "step_000002"), "model")
    assert fill_run.run.output_dir == str(tmp_path / "out" / "sweep" / "fill0")
    saved = json.loads((tmp_path / "out" / "sweep" / "sweep.json").read_text())
    assert [(r["label"], r["source"]) for r in saved["runs"]] == [("w0", "weights"), ("w1", "weights"),
                                                                  ("w2", "weights"), ("fill0", "fill")]
    fill = saved["runs"][3]["fill"]
    assert fill["pair"] == ["w1", "w2"] and fill["start"] == "w2" and fill["maximize"] == "correct"
    assert fill["bounds"] == {"brief": pytest.approx(-0.3)}
    assert saved["front"] == [0, 1, 2, 3]
    before = hypervolume([[1.0, -1.0], [0.9, -0.6], [0.0, 0.0]], [-0.1, -1.1])
    assert saved["hypervolume_before_fill"] == pytest.approx(before)
    assert saved["hypervolume"] == pytest.approx(before + 0.6 * 0.4)  # (0.6, -0.2) fills [0, .6] x [-.6, -.2]
    md = (tmp_path / "out" / "sweep" / "sweep.md").read_text()
    assert "| fill0 |" in md and "maximise correct s.t. brief >= -0.3; from w2's checkpoint" in md
    assert result["plot"] is None or (tmp_path / "out" / "sweep" / "sweep.png").exists()


def test_fill_refuses_before_training(tmp_path, monkeypatch):
    from rlhf import sweep as sweep_module
    from rlhf.runtime import controller

    monkeypatch.setattr(controller, "run", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(ValueError, match="--fill 2: 2 weight vector"):
        sweep_module.sweep(_recipe(tmp_path), ["1,0", "0,1"], fill=2)
    with pytest.raises(ValueError, match="--fill 1: a conditioned sweep"):
        sweep_module.sweep(_recipe(tmp_path), [], conditioned=True, fill=1)
    with pytest.raises(ValueError, match="--fill 1: fill runs start from a checkpoint's full model"):
        sweep_module.sweep(_recipe(tmp_path, model={"tiny": {"hidden_size": 32, "intermediate_size": 64,
                                                            "num_layers": 1, "num_heads": 4},
                                                   "lora": {"r": 4}}), ["1,0", "0,1"], fill=1)


def test_a_front_too_small_for_fill_says_so_after_writing_the_weight_sweep(tmp_path, monkeypatch):
    from rlhf import sweep as sweep_module
    from rlhf.runtime import controller

    def fake_run(recipe, resume=False):
        return {"eval_after": {"correct": 1.0, "brief": 0.0}, "checkpoint": _checkpoint(tmp_path / recipe.run.name)}

    monkeypatch.setattr(controller, "run", fake_run)
    with pytest.raises(ValueError, match=r"--fill 1: the front has only 1 point, so 0 gaps .*--resume"):
        sweep_module.sweep(_recipe(tmp_path), ["1,0", "0,1"], fill=1)
    assert len(json.loads((tmp_path / "out" / "sweep" / "sweep.json").read_text())["runs"]) == 2


def test_cli_passes_fill(monkeypatch):
    from rlhf import cli
    from rlhf import sweep as sweep_module

    got = {}

    def fake_sweep(recipe, weights, reference, resume, conditioned, checkpoint, fill):
        got.update(weights=weights, fill=fill)
        raise ValueError("stop here")

    monkeypatch.setattr(sweep_module, "sweep", fake_sweep)
    assert cli.main(["sweep", "recipes/grpo_tiny_cpu.yaml", "--weights", "1,0,0", "0,1,0", "--fill", "1"]) == 2
    assert got == {"weights": ["1,0,0", "0,1,0"], "fill": 1}
