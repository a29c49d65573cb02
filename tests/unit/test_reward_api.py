"""Reward plugin API: registry, module:attr and entry-point resolution, kwargs binding, output checks.

Run: pytest tests/unit/test_reward_api.py -q
"""

import importlib.metadata
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # 'tests.plugins_for_tests' is imported by reference, as a recipe would
    sys.path.insert(0, str(ROOT))

from rewards import api  # noqa: E402
from rewards.api import (  # noqa: E402
    ComponentRecord,
    PluginInfo,
    RewardPluginError,
    build_scorer,
    check_component,
    check_outputs,
    component_kind,
    component_record,
    list_plugins,
    register_plugin,
    resolve_plugin,
    reward,
)
from rlhf.config.schema import RewardComponentConfig  # noqa: E402
from tests import plugins_for_tests as plugins  # noqa: E402

MOD = "tests.plugins_for_tests"
PROMPTS = ["p0", "p1", "p2", "p3"]
COMPLETIONS = ["a", "bb", "ccc", "dddd"]


def comp(plugin: str, name: str = "c", **kw) -> RewardComponentConfig:
    return RewardComponentConfig(name=name, plugin=plugin, **kw)


def score(component, columns=None, prompts=PROMPTS, completions=COMPLETIONS):
    return build_scorer(component)(prompts, completions, columns or {})


# --------------------------------------------------------------------------- resolution


def test_builtin_resolves_by_name():
    info = resolve_plugin("math_answer")
    assert info.name == "math_answer" and info.kind == "reward"
    assert info.source == "rewards.verifiable.math_answer:math_answer"
    assert "mathematically equivalent" in info.summary


def test_registered_name_resolves_to_the_object():
    info = resolve_plugin("testplug_length")
    assert info.obj is plugins.char_length
    assert info.kind == "reward"
    assert resolve_plugin("testplug_is_short").kind == "constraint"


def test_module_attr_reference():
    info = resolve_plugin(f"{MOD}:undecorated")
    assert info.obj is plugins.undecorated
    assert info.name == f"{MOD}:undecorated"
    assert info.kind == "reward"  # undecorated objects count as rewards
    assert resolve_plugin(f"{MOD}:is_short").kind == "constraint"  # decorated: keeps its kind


def test_module_attr_import_failure_names_module_and_cause():
    with pytest.raises(RewardPluginError) as err:
        resolve_plugin("no_such_pkg_xyz.scoring:fn")
    msg = str(err.value)
    assert "cannot import module 'no_such_pkg_xyz.scoring'" in msg
    assert "No module named 'no_such_pkg_xyz'" in msg


def test_module_attr_missing_attribute_suggests():
    with pytest.raises(RewardPluginError, match="has no attribute 'undecorate'. Did you mean 'undecorated'"):
        resolve_plugin(f"{MOD}:undecorate")


def test_unknown_name_suggests_closest_and_lists_known():
    with pytest.raises(RewardPluginError) as err:
        resolve_plugin("math_anwser")
    msg = str(err.value)
    assert "unknown reward plugin 'math_anwser'" in msg
    assert "Did you mean 'math_answer'?" in msg
    for name in ("exact_match", "length_penalty", "regex_format"):
        assert name in msg


def test_unknown_name_without_close_match_has_no_suggestion():
    with pytest.raises(RewardPluginError) as err:
        resolve_plugin("zzzzzzzz")
    assert "Did you mean" not in str(err.value)
    assert "Known plugins:" in str(err.value)


def _fake_entry_points(*eps):
    def entry_points(**kwargs):
        group = kwargs.get("group")
        return importlib.metadata.EntryPoints([ep for ep in eps if ep.group == group])

    return entry_points


def test_entry_point_resolution(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="ep_bonus", value=f"{MOD}:undecorated", group="rlhf.rewards")
    other = importlib.metadata.EntryPoint(name="ep_other", value=f"{MOD}:raises", group="other.group")
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(ep, other))
    info = resolve_plugin("ep_bonus")
    assert info.name == "ep_bonus" and info.obj is plugins.undecorated and info.kind == "reward"
    assert "ep_bonus" in [p.name for p in list_plugins()]
    with pytest.raises(RewardPluginError, match="unknown reward plugin 'ep_other'"):
        resolve_plugin("ep_other")  # another group is not ours
    values = build_scorer(comp("ep_bonus", args={"bonus": 1.5}))(["p"], ["c"], {})
    assert values == [2.5]


def test_entry_point_load_failure_names_it(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="ep_broken", value="no_such_pkg_xyz:fn", group="rlhf.rewards")
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(ep))
    with pytest.raises(RewardPluginError) as err:
        resolve_plugin("ep_broken")
    msg = str(err.value)
    assert "'ep_broken'" in msg and "no_such_pkg_xyz:fn" in msg and "ModuleNotFoundError" in msg


def test_a_module_that_exits_on_import_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "exits_on_import.py").write_text('import sys\nsys.exit("run me as a script")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardPluginError) as err:
        resolve_plugin("exits_on_import:reward")
    msg = str(err.value)
    assert "cannot import module 'exits_on_import': importing it called sys.exit('run me as a script')" in msg
    assert "exits_on_import.py:2" in msg and "must not exit when imported" in msg and "\n" not in msg
    ep = importlib.metadata.EntryPoint(name="ep_exits", value="exits_on_import:reward", group="rlhf.rewards")
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(ep))
    sys.modules.pop("exits_on_import", None)
    with pytest.raises(RewardPluginError, match="'ep_exits' .* failed to load: called sys.exit\\('run me"):
        resolve_plugin("ep_exits")


class _BuiltinConstructor:
    """A scorer class whose constructor has no readable signature."""

    __init__ = dict.__init__

    def __call__(self, prompts, completions):
        return [0.0] * len(prompts)


def test_a_constructor_without_a_readable_signature_is_one_line():
    register_plugin("testplug_builtin_init", "reward", _BuiltinConstructor)
    with pytest.raises(RewardPluginError) as err:
        check_component(comp("testplug_builtin_init", name="rm"))
    msg = str(err.value)
    assert msg.startswith("reward component 'rm' (plugin 'testplug_builtin_init'): cannot read its constructor's")
    assert "Give the class an __init__ written in Python" in msg and err.value.component == "rm"


def test_a_partial_component_is_completed_in_one_place():
    """Duck-typed callers (tests, scripts) pass any object with a name and a plugin: component_record gives the
    rest the recipe's defaults."""
    partial = SimpleNamespace(name="len", plugin="testplug_length", kind=None, args=None)
    record = component_record(partial)
    assert record == ComponentRecord(name="len", plugin="testplug_length")
    assert (record.style, record.columns, record.output_key, record.transform) == ("auto", {}, None, "none")
    assert component_record(record) is record
    assert score(partial) == [1.0, 2.0, 3.0, 4.0]
    assert check_component(SimpleNamespace(name="len", plugin="testplug_length")).name == "testplug_length"
    full = component_record(comp("testplug_length", style="native", columns={"a": "b"}))
    assert (full.style, full.columns) == ("native", {"a": "b"})
    with pytest.raises(RewardPluginError, match="needs a name and a plugin; SimpleNamespace .* has no 'plugin'"):
        build_scorer(SimpleNamespace(name="x"))


def test_list_plugins_has_builtins_with_docs():
    listed = {p.name: p for p in list_plugins()}
    for name in ("math_answer", "exact_match", "regex_format", "length_penalty"):
        assert isinstance(listed[name], PluginInfo)
        assert listed[name].summary, f"{name} has no docstring"
    assert listed["regex_format"].is_class


# --------------------------------------------------------------------------- registration


def test_register_rejects_plugin_without_two_positional_params():
    with pytest.raises(TypeError, match="must accept \\(prompts, completions, ...\\)"):
        register_plugin("testplug_one_positional", "reward", plugins.one_positional)


def test_register_rejects_a_taken_name():
    def char_length(prompts, completions):  # same name, different function
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="'testplug_length' is already registered by tests.plugins_for_tests"):
        reward("testplug_length")(char_length)


def test_register_rejects_bad_names_and_kinds():
    with pytest.raises(ValueError, match="without ':'"):
        register_plugin("a:b", "reward", plugins.undecorated)
    with pytest.raises(ValueError, match="unknown kind 'score'"):
        register_plugin("testplug_kind", "score", plugins.undecorated)


# --------------------------------------------------------------------------- binding


def test_kwargs_filtered_to_declared_parameters():
    columns = {"answer": ["a", "x", "ccc", "y"], "level": [1, 2, 3, 4]}
    assert score(comp("testplug_needs_answer"), columns) == [1.0, 0.0, 1.0, 0.0]  # 'level' not passed


def test_var_kwargs_receive_all_columns_and_args():
    plugins.SEEN_KWARGS.clear()
    columns = {"answer": ["1"] * 4, "finished": [True] * 4}
    score(comp("testplug_takes_all", args={"temperature": 0.5}), columns)
    assert plugins.SEEN_KWARGS == [{"answer": ["1"] * 4, "finished": [True] * 4, "temperature": 0.5}]


def test_optional_column_used_when_present():
    assert score(comp("testplug_optional_column")) == [2.0] * 4
    finished = {"finished": [True, False, True, False]}
    assert score(comp("testplug_optional_column"), finished) == [2.0, 0.0, 2.0, 0.0]


def test_args_bind_and_win_over_same_named_columns():
    columns = {"weight": [9.0] * 4}
    assert score(comp("testplug_optional_column", args={"weight": 5.0}), columns) == [5.0] * 4


def test_missing_column_error_names_plugin_column_and_available():
    with pytest.raises(RewardPluginError) as err:
        score(comp("testplug_needs_answer", name="acc"), {"finished": [True] * 4, "level": [1] * 4})
    msg = str(err.value)
    assert "reward component 'acc' (plugin 'testplug_needs_answer') needs the column 'answer'" in msg
    assert "Available columns: ['finished', 'level']" in msg


def test_column_length_mismatch_names_column():
    with pytest.raises(RewardPluginError, match="column 'answer' has 2 values for 4 samples"):
        score(comp("testplug_needs_answer"), {"answer": ["a", "b"]})


def test_unknown_arg_names_component_plugin_and_arg():
    with pytest.raises(RewardPluginError) as err:
        build_scorer(comp("testplug_optional_column", name="w", args={"wieght": 1.0}))
    msg = str(err.value)
    assert "reward component 'w' (plugin 'testplug_optional_column')" in msg
    assert "does not accept arg 'wieght'. Did you mean 'weight'?" in msg
    assert "It accepts: weight, finished" in msg


def test_unknown_arg_caught_by_check_component_without_building():
    with pytest.raises(RewardPluginError, match="does not accept arg 'bad'"):
        check_component(comp(f"{MOD}:CountingScorer", args={"bad": 1}))


def test_reserved_arg_rejected():
    with pytest.raises(RewardPluginError, match="'completions' cannot be set in args"):
        build_scorer(comp("testplug_takes_all", args={"completions": ["x"]}))


def test_class_scorer_gets_args_and_setup_runs_once():
    before = plugins.CountingScorer.instances
    scorer = build_scorer(comp(f"{MOD}:CountingScorer", args={"offset": 10.0}))
    assert plugins.CountingScorer.instances == before + 1
    assert scorer(PROMPTS, COMPLETIONS, {}) == [11.0] * 4
    assert scorer(PROMPTS, COMPLETIONS, {"answer": ["x"] * 4}) == [11.0] * 4  # setup_calls still 1
    assert plugins.CountingScorer.instances == before + 1


def test_class_scorer_missing_required_arg():
    with pytest.raises(RewardPluginError, match="'fmt' \\(plugin 'regex_format'\\): missing required arg 'pattern'"):
        build_scorer(comp("regex_format", name="fmt"))


def test_class_scorer_setup_failure_is_named():
    with pytest.raises(RewardPluginError) as err:
        build_scorer(comp(f"{MOD}:FailingSetup", name="rm"))
    msg = str(err.value)
    assert "reward component 'rm'" in msg
    assert "setup() failed: RuntimeError: weights not found at /nowhere" in msg


def test_plugin_exception_keeps_type_and_message():
    with pytest.raises(RewardPluginError) as err:
        score(comp(f"{MOD}:raises", name="boom"))
    msg = str(err.value)
    assert f"reward component 'boom' (plugin '{MOD}:raises') raised ZeroDivisionError: boom from plugin" in msg
    assert "plugins_for_tests.py" in msg  # where it was raised
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_component_kind_from_plugin_unless_recipe_sets_it():
    judge_info = resolve_plugin("testplug_is_short")
    assert component_kind(comp("testplug_is_short"), judge_info) == "constraint"
    assert component_kind(comp("testplug_is_short", kind="reward"), judge_info) == "reward"
    assert build_scorer(comp("testplug_is_short")).kind == "constraint"


# --------------------------------------------------------------------------- outputs


def test_outputs_none_becomes_nan_and_bools_become_floats():
    values = score(comp(f"{MOD}:none_for_odd"))
    assert values[0] == 1.0 and values[2] == 1.0
    assert math.isnan(values[1]) and math.isnan(values[3])
    assert score(comp("testplug_is_short")) == [1.0, 1.0, 1.0, 0.0]


def test_wrong_length_is_an_error():
    with pytest.raises(RewardPluginError) as err:
        score(comp(f"{MOD}:wrong_length", name="len"))
    assert f"reward component 'len' (plugin '{MOD}:wrong_length') returned 3 values for 4 samples" in str(err.value)
    assert err.value.sample_index is None


def test_wrong_type_names_sample_and_prompt():
    with pytest.raises(RewardPluginError) as err:
        score(comp(f"{MOD}:wrong_type", name="typ"))
    msg = str(err.value)
    assert "sample 1: returned 'high' (str); expected a float, int, bool or None" in msg
    assert "Prompt: 'p1'" in msg
    assert err.value.sample_index == 1 and err.value.component == "typ"


def test_nan_returned_by_plugin_is_an_error():
    with pytest.raises(RewardPluginError) as err:
        score(comp(f"{MOD}:returns_nan"))
    assert "sample 2: returned nan; return None for a sample the reward does not apply to" in str(err.value)
    assert err.value.sample_index == 2


def test_non_list_output_is_an_error():
    with pytest.raises(RewardPluginError, match="returned dict; a plugin returns a list"):
        score(comp(f"{MOD}:not_a_list"))


def test_judge_must_return_zero_or_one():
    with pytest.raises(RewardPluginError) as err:
        score(comp("testplug_bad_judge", name="safe"))
    msg = str(err.value)
    assert "reward component 'safe' (plugin 'testplug_bad_judge'), sample 1: returned 0.5" in msg
    assert "a judge (constraint) returns True/False or 1/0" in msg


def test_check_outputs_accepts_numpy_and_torch():
    out = check_outputs("c", "p", np.array([1.0, 0.5], dtype=np.float32), 2, "reward", ["a", "b"])
    assert out == [1.0, 0.5]
    out = check_outputs("c", "p", torch.tensor([True, False]), 2, "constraint", ["a", "b"])
    assert out == [1.0, 0.0]
    out = check_outputs("c", "p", [np.float64(2.0), np.int64(3), np.bool_(True), torch.tensor(0.25)], 4, "reward",
                        ["a"] * 4)
    assert out == [2.0, 3.0, 1.0, 0.25]
    assert all(type(v) is float for v in out)


def test_check_outputs_rejects_inf_and_long_prompt_is_snipped():
    prompt = "x" * 100
    with pytest.raises(RewardPluginError) as err:
        check_outputs("c", "p", [float("inf")], 1, "reward", [prompt])
    msg = str(err.value)
    assert "sample 0: returned inf" in msg
    assert f"Prompt: '{'x' * 60}...'" in msg and "x" * 61 not in msg


def test_check_outputs_rejects_multi_element_tensor_item():
    with pytest.raises(RewardPluginError, match="sample 0: returned tensor"):
        check_outputs("c", "p", [torch.tensor([1.0, 2.0])], 1, "reward", ["a"])


def test_api_module_imports_no_ray_or_torch():
    src = Path(api.__file__).read_text()
    assert "import ray" not in src and "import torch" not in src
