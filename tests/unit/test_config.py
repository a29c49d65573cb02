"""Recipe loading: every shipped recipe validates; bad input gives messages naming file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.config import RecipeError, load_recipe
from rlhf.config.load import apply_overrides

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
model: {tiny: {hidden_size: 32, intermediate_size: 64, num_heads: 4}}
rewards:
  - {name: correct, plugin: math_answer}
rollout: {prompts_per_step: 4, group_size: 4}
train: {num_ranks: 2}
"""


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "rollout:" in capsys.readouterr().out


def test_unknown_key_names_file_path_and_closest(tmp_path):
    p = _write(tmp_path, BASE + "objective: {kind: grpo, clip_eps_hgh: 0.3}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "unknown key 'objective.clip_eps_hgh'" in msg
    assert "did you mean 'clip_eps_high'?" in msg


def test_unknown_key_in_list_item(tmp_path):
    p = _write(tmp_path, BASE.replace("plugin: math_answer", "plugin: math_answer, wieght: 2"))
    with pytest.raises(RecipeError, match=r"unknown key 'rewards\.0\.wieght'; did you mean 'weight'\?"):
        load_recipe(p)


def test_unknown_section(tmp_path):
    p = _write(tmp_path, BASE + "rolout: {group_size: 2}\n")
    with pytest.raises(RecipeError, match=r"unknown key 'rolout'; did you mean 'rollout'\?"):
        load_recipe(p)


def test_wrong_type_and_range(tmp_path):
    p = _write(tmp_path, BASE.replace("train: {num_ranks: 2}", "train: {num_ranks: 2, lr: fast, zero_stage: 4}"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "train.lr: Input should be a valid number" in msg and "(got 'fast')" in msg
    assert "train.zero_stage: Input should be 0, 1, 2 or 3 (got 4)" in msg


def test_cross_field_batch_divisibility(tmp_path):
    p = _write(tmp_path, BASE.replace("prompts_per_step: 4, group_size: 4", "prompts_per_step: 3, group_size: 3"))
    with pytest.raises(RecipeError, match="9 sequences per step must be divisible by .* = 2"):
        load_recipe(p)


def test_missing_model_path(tmp_path):
    p = _write(tmp_path, BASE.replace("tiny: {hidden_size: 32, intermediate_size: 64, num_heads: 4}",
                                      "path: ./no/such/model"))
    with pytest.raises(RecipeError, match=r"model.path: path './no/such/model' does not exist"):
        load_recipe(p)


def test_missing_data_file(tmp_path):
    p = _write(tmp_path, BASE + "data: {source: jsonl, train_path: missing.jsonl}\n")
    with pytest.raises(RecipeError, match="data.train_path: path 'missing.jsonl' does not exist"):
        load_recipe(p)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_bad_yaml(tmp_path):
    p = _write(tmp_path, "model: {tiny: {\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)


def test_extends_and_overrides(tmp_path):
    _write(tmp_path, BASE + "run: {name: base, steps: 5}\n", "base.yaml")
    child = _write(tmp_path, "extends: base.yaml\nrun: {steps: 7}\ntrain: {lr: 0.01}\n", "child.yaml")
    r = load_recipe(child, ["train.zero_stage=3", "rewards.0.weight=2.5", 'rollout.stop=["\\n"]'])
    assert r.run.name == "base" and r.run.steps == 7  # merged, child wins
    assert r.train.lr == 0.01 and r.train.num_ranks == 2 and r.train.zero_stage == 3
    assert r.rewards[0].weight == 2.5
    assert r.rollout.stop == ["\n"]
    assert r.run.output_dir == "runs/base"


def test_extends_cycle(tmp_path):
    _write(tmp_path, "extends: b.yaml\n", "a.yaml")
    _write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(RecipeError, match="`extends` cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_override_errors():
    with pytest.raises(RecipeError, match="expected key.path=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(RecipeError, match="not a valid index"):
        apply_overrides({"rewards": [{"name": "a"}]}, ["rewards.3.weight=1"])


def test_validate_cli_reports_unknown_plugin(tmp_path, capsys):
    p = _write(tmp_path, BASE.replace("math_answer", "math_answr"))
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}: rewards.0:" in err and "Did you mean 'math_answer'?" in err


def test_validate_cli_reports_bad_plugin_arg(tmp_path, capsys):
    p = _write(tmp_path, BASE.replace("{name: correct, plugin: math_answer}",
                                      "{name: fmt, plugin: regex_format, args: {patern: x}}"))
    assert main(["validate", str(p)]) == 2
    assert "does not accept arg 'patern'" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "validate", "rewards"):
        assert cmd in out


def test_duplicate_key_is_an_error(tmp_path):
    p = _write(tmp_path, BASE + "train: {lr: 0.1}\n")  # a second `train:` section
    with pytest.raises(RecipeError, match="key 'train' appears twice"):
        load_recipe(p)


def test_hub_ids_are_not_checked_locally(tmp_path):
    for hub_id in ("gpt2", "Qwen/Qwen2.5-0.5B"):
        p = _write(tmp_path, BASE.replace("tiny: {hidden_size: 32, intermediate_size: 64, num_heads: 4}",
                                          f"path: {hub_id}"))
        assert load_recipe(p).model.path == hub_id


def test_dpo_needs_a_preference_file_and_cdpo_for_smoothing(tmp_path):
    p = _write(tmp_path, BASE + "objective: {kind: dpo}\n")
    with pytest.raises(RecipeError, match="objective dpo reads preference pairs from a local file"):
        load_recipe(p)
    p = _write(tmp_path, BASE + "objective: {kind: dpo, label_smoothing: 0.1}\n")
    with pytest.raises(RecipeError, match="label_smoothing is used by loss_type: cdpo only"):
        load_recipe(p)
    p = _write(tmp_path, BASE + "objective: {kind: dpo, betta: 0.1}\n")
    with pytest.raises(RecipeError, match=r"unknown key 'objective.betta'; did you mean 'beta'\?"):
        load_recipe(p)


def test_extends_with_another_objective_kind_replaces_the_section(tmp_path):
    _write(tmp_path, BASE + "objective: {kind: grpo, clip_eps: 0.3, dynamic_sampling: true}\n", "base.yaml")
    child = _write(tmp_path, "extends: base.yaml\nobjective: {kind: rloo, kl_coef: 0.1}\n", "child.yaml")
    r = load_recipe(child)
    assert r.objective.kind == "rloo" and r.objective.kl_coef == 0.1 and r.objective.clip_eps == 0.2
    same = _write(tmp_path, "extends: base.yaml\nobjective: {kind: grpo, kl_coef: 0.1}\n", "same.yaml")
    assert load_recipe(same).objective.clip_eps == 0.3  # same kind: merged


def test_overrides_after_flags(tmp_path, capsys):
    p = _write(tmp_path, BASE)
    assert main(["validate", str(p), "train.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["validate", str(p), "--bogus"])
