"""Reward functions written for TRL, verl and OpenRLHF run unchanged: style detection, each adapter's inputs and
outputs, what they log (``reward_extra/COMPONENT/KEY``), and the errors that name what to change. TRL's own
reward functions (``trl.rewards``, the installed TRL) run in its conversational format.

Run: pytest tests/unit/test_reward_styles.py -q
"""

from __future__ import annotations

import inspect
import math
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # 'tests.fixtures.foreign_rewards' is referenced as a recipe would
    sys.path.insert(0, str(ROOT))

from rewards.api import RewardPluginError, build_scorer, check_component, register_plugin  # noqa: E402
from rewards.styles import STYLE_CHOICES, detect_style, is_message_lists, resolve_style  # noqa: E402
from rlhf.config.load import validate_dict  # noqa: E402
from rlhf.config.schema import RewardComponentConfig  # noqa: E402
from tests.fixtures import foreign_rewards as fr  # noqa: E402

MOD = "tests.fixtures.foreign_rewards"
PROMPTS = ["1+1=", "2+2=", "3+3="]
COMPLETIONS = ["2", "5 ok", ""]
COLUMNS = {"answer": ["2", "4", "6"], "finished": [True, True, False], "num_tokens": [1, 2, 0]}


def comp(plugin: str, name: str = "c", **kw) -> RewardComponentConfig:
    registered = ":" in plugin or plugin.startswith("teststyle_")  # else a function of the fixture module
    return RewardComponentConfig(name=name, plugin=plugin if registered else f"{MOD}:{plugin}", **kw)


def run(component, columns=None, prompts=PROMPTS, completions=COMPLETIONS):
    """(values, extras) of one call."""
    extras: dict[str, float] = {}
    values, errors = build_scorer(component).run(prompts, completions, COLUMNS if columns is None else columns,
                                                 extras)
    assert not errors, errors
    return values, extras


def params(fn):
    return list(inspect.signature(fn).parameters.values())


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("fn, style", [
    (fr.trl_accuracy, "trl"),                # completions first
    (fr.trl_logs, "trl"),
    (fr.trl_async, "trl"),
    (fr.trl_needs_state, "trl"),             # a parameter only TRL passes
    (fr.trl_length, "native"),               # (prompts, completions, **kwargs): both fit, run natively
    (fr.verl_compute_score, "verl"),
    (fr.verl_gsm8k_like, "verl"),            # solution_str without data_source
    (fr.verl_batch_compute_score, "verl"),   # the batch form (solution_strs), not native
    (fr.reward_func, "openrlhf"),
    (fr.reward_func_tensor, "openrlhf"),
    (fr.reward_func_unlabelled, "openrlhf"),  # OpenRLHF's older (queries, prompts)
    (fr.trl_chat_length, "trl"),             # conversational, but nothing says so: style: trl_conversational
    (lambda p, c, *, answer: [], "native"),  # any two positional names
    (fr.one_argument, None),
])
def test_detect_style_from_the_signature(fn, style):
    assert detect_style(params(fn)) == style


def test_an_explicit_style_must_fit_the_signature():
    assert resolve_style("trl", params(fr.trl_length)) == "trl"
    with pytest.raises(ValueError, match="style openrlhf calls fn\\(queries, prompts, labels\\)"):
        resolve_style("openrlhf", params(fr.trl_async))
    with pytest.raises(ValueError, match="style verl .* needs 'solution_str'"):
        resolve_style("verl", params(fr.reward_func))
    with pytest.raises(ValueError, match="Give it one of these shapes"):
        resolve_style("auto", params(fr.one_argument))


def test_a_trl_shaped_function_registers_with_the_decorator_api():
    def count_digits(completions, **kwargs):
        return [float(sum(ch.isdigit() for ch in c)) for c in completions]

    register_plugin("teststyle_count_digits", "reward", count_digits)
    assert run(comp("teststyle_count_digits"))[0] == [1.0, 1.0, 0.0]


# --------------------------------------------------------------------------- TRL


def test_trl_gets_keywords_and_columns():
    assert run(comp("trl_accuracy"))[0] == [1.0, 0.0, 0.0]


def test_trl_none_is_nan_and_log_metric_and_log_extra_are_logged():
    values, extras = run(comp("trl_logs"))
    assert values[:2] == [1.0, 4.0] and math.isnan(values[2])
    assert extras == {"mean_chars": pytest.approx(5 / 3), "has_digit": pytest.approx(2 / 3)}  # text: not logged


def test_trl_async_function():
    assert run(comp("trl_async"))[0] == [1.0, 0.0, 0.0]


def test_trl_style_set_explicitly_passes_trl_keywords():
    assert run(comp("trl_length"))[1] == {}  # native: no log_metric
    with pytest.raises(RewardPluginError, match="raised KeyError"):
        run(comp("trl_explicit"))
    assert run(comp("trl_explicit", style="trl")) == ([0.5] * 3, {"called": 1.0})


def test_trl_trainer_state_is_not_available():
    with pytest.raises(RewardPluginError, match="needs TRL's 'trainer_state'.*Give the parameter a default"):
        run(comp("trl_needs_state"))


def test_columns_mapping_renames_a_column_for_any_style():
    assert run(comp("trl_accuracy", columns={"answer": "gold"}), {"gold": ["2", "5", "6"]})[0] == [1.0, 1.0, 0.0]


# --------------------------------------------------------------------------- TRL's conversational format


@pytest.mark.parametrize("annotation, expected", [
    (list[list[dict[str, str]]], True),                       # as TRL annotates its own reward functions
    (typing.List[typing.List[typing.Dict[str, str]]], True),  # noqa: UP006
    (Sequence[Sequence[Mapping[str, str]]], True),
    ("list[list[dict[str, str]]]", True),                     # from __future__ import annotations
    (list[str], False),
    (inspect.Parameter.empty, False),
])
def test_conversational_completions_are_recognised_by_their_annotation(annotation, expected):
    assert is_message_lists(annotation) is expected


def test_trl_shipped_reward_functions_are_detected_as_conversational():
    from trl.rewards import accuracy_reward, think_format_reward

    assert detect_style(params(think_format_reward)) == "trl_conversational"
    assert detect_style(params(accuracy_reward)) == "trl_conversational"
    with pytest.raises(ValueError, match="annotated as TRL's conversational format.*trl_conversational"):
        resolve_style("trl", params(think_format_reward))  # strings would fail inside it (completion[0]["content"])


def test_trl_think_format_reward_runs_unchanged():
    completions = ["<think>\nthe sum\n</think>\n2", "<think>\nno closing tag, 4", "6"]
    assert run(comp("trl.rewards:think_format_reward"), completions=completions) == ([1.0, 0.0, 0.0], {})


def test_trl_accuracy_reward_runs_unchanged_on_a_mapped_solution_column():
    completions = [r"The answer is \boxed{\frac{1}{3}}", r"So \boxed{\frac{1}{2}}", "no idea", r"\boxed{7}"]
    gold = [r"\frac{1}{3}", r"\frac{1}{3}", "$2$", "not a number"]  # the last gold does not parse: None
    values, extras = run(comp("trl.rewards:accuracy_reward", columns={"solution": "gold"}), {"gold": gold},
                         prompts=["q"] * 4, completions=completions)
    assert values[:3] == [1.0, 0.0, 0.0] and math.isnan(values[3])
    assert extras == {}  # it logs text columns (solution, gold_parsed) through log_extra: not metrics


def test_trl_conversational_set_explicitly_passes_messages():
    seen = {}

    def chat_reward(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions)
        return [float(len(c[0]["content"])) for c in completions]

    register_plugin("teststyle_chat_seen", "reward", chat_reward)
    values, _ = run(comp("teststyle_chat_seen", style="trl_conversational"))
    assert values == [1.0, 4.0, 0.0]
    assert seen["prompts"][0] == [{"role": "user", "content": "1+1="}]
    assert seen["completions"][1] == [{"role": "assistant", "content": "5 ok"}]
    assert run(comp("trl_chat_length", style="trl_conversational"))[0] == [1.0, 4.0, 0.0]
    with pytest.raises(RewardPluginError, match="raised TypeError"):  # detected as trl: strings, not messages
        run(comp("trl_chat_length"))


# --------------------------------------------------------------------------- verl


def test_verl_dict_score_is_the_reward_and_numeric_keys_are_logged():
    values, extras = run(comp("verl_compute_score"))
    assert values == [1.0, -0.5, -0.5]
    assert extras == {"acc": pytest.approx(1 / 3), "source_seen": 0.0, "has_info": 1.0}  # 'pred' is text


def test_verl_output_key_makes_another_key_the_component():
    values, extras = run(comp("verl_compute_score", output_key="acc"))
    assert values == [1.0, 0.0, 0.0] and extras["score"] == pytest.approx(0.0)


def test_verl_float_result_and_reward_kwargs_from_args():
    assert run(comp("verl_float_score", args={"bonus": 0.5}))[0] == [1.5, 0.5, 0.5]


def test_verl_builtin_scorer_without_data_source_or_extra_info():
    assert run(comp("verl_gsm8k_like", args={"format_score": 0.1}))[0] == [1.0, 0.1, 0.1]


_names = iter(range(10_000))


def _recorder() -> tuple[str, list[dict]]:
    """(a registered verl compute_score that records its inputs, what it saw)."""
    seen: list[dict] = []

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        seen.append({"data_source": data_source, "ground_truth": ground_truth, "extra_info": extra_info})
        return 0.0

    name = f"teststyle_verl_seen_{next(_names)}"
    register_plugin(name, "reward", compute_score)
    return name, seen


def test_verl_inputs_from_verl_shaped_rows():
    name, seen = _recorder()
    rows = {"data_source": ["openai/gsm8k"], "reward_model": [{"ground_truth": "2", "style": "rule"}],
            "extra_info": [{"index": 7, "split": "train"}], "finished": [True]}
    build_scorer(comp(name))(PROMPTS[:1], COMPLETIONS[:1], rows)
    assert seen == [{"data_source": "openai/gsm8k", "ground_truth": "2",
                     "extra_info": {"index": 7, "split": "train", "finished": True}}]  # other columns + extra_info


def test_verl_inputs_from_mapped_columns_and_args():
    name, seen = _recorder()
    component = comp(name, columns={"ground_truth": "gold"}, args={"data_source": "mine"})
    build_scorer(component)(PROMPTS[:1], COMPLETIONS[:1], {"gold": ["2"], "answer": ["x"]})
    assert seen == [{"data_source": "mine", "ground_truth": "2", "extra_info": {"answer": "x"}}]


@pytest.mark.parametrize("data, expected", [
    ({}, "synthetic_arithmetic"),
    ({"source": "jsonl", "train_path": "/data/gsm8k.train.jsonl"}, "gsm8k"),
    ({"source": "hf", "train_path": "openai/gsm8k"}, "openai/gsm8k"),
])
def test_verl_data_source_without_a_column_is_the_dataset_name(data, expected):
    name, seen = _recorder()
    recipe = validate_dict({"model": {"tiny": {}}, "data": data, "rollout": {"prompts_per_step": 2, "group_size": 2},
                            "rewards": [{"name": "v", "plugin": name}]}, "test")
    build_scorer(recipe.rewards[0])(PROMPTS[:1], COMPLETIONS[:1], {"answer": ["2"]})
    assert seen[0]["data_source"] == expected and seen[0]["ground_truth"] == "2"


def test_verl_errors_name_the_sample_or_what_to_change():
    def flaky(data_source, solution_str, ground_truth, extra_info=None):
        return 1 / len(solution_str)

    register_plugin("teststyle_verl_flaky", "reward", flaky)
    with pytest.raises(RewardPluginError, match="sample 2: raised ZeroDivisionError") as info:
        build_scorer(comp("teststyle_verl_flaky"))(PROMPTS, COMPLETIONS, COLUMNS)
    assert info.value.sample_index == 2 and info.value.component == "c"
    with pytest.raises(RewardPluginError, match="none of the columns .* columns: \\{ground_truth: COLUMN\\}"):
        build_scorer(comp("verl_compute_score"))(PROMPTS, COMPLETIONS, {"gold": ["2", "4", "6"]})
    with pytest.raises(RewardPluginError, match="without 'nope'.*set the component's output_key"):
        run(comp("verl_compute_score", output_key="nope"))


def test_verl_async_compute_score_runs_samples_together():
    async def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        return float(solution_str == ground_truth)

    register_plugin("teststyle_verl_async", "reward", compute_score)
    assert run(comp("teststyle_verl_async"))[0] == [1.0, 0.0, 0.0]


def test_verl_batch_form_is_called_once_with_lists():
    values, extras = run(comp("verl_batch_compute_score"))
    assert values == [1.0, -1.0, -1.0] and extras == {"acc": pytest.approx(1 / 3)}
    calls = []

    def compute_score(data_sources, solution_strs, ground_truths, extra_infos, bonus=0.0):
        calls.append({"data_sources": data_sources, "solution_strs": solution_strs,
                      "ground_truths": ground_truths, "extra_infos": extra_infos})
        return [float(s == g) + bonus for s, g in zip(solution_strs, ground_truths)]

    register_plugin("teststyle_verl_batch_seen", "reward", compute_score)
    rows = {"data_source": ["a", "b"], "reward_model": [{"ground_truth": "2"}, {"ground_truth": "9"}],
            "extra_info": [{"index": 0}, {"index": 1}]}
    component = comp("teststyle_verl_batch_seen", args={"bonus": 0.5})
    assert build_scorer(component)(PROMPTS[:2], ["2", "x"], rows) == [1.5, 0.5]
    assert calls == [{"data_sources": ["a", "b"], "solution_strs": ["2", "x"], "ground_truths": ["2", "9"],
                      "extra_infos": [{"index": 0}, {"index": 1}]}]


def test_verl_batch_form_output_key_tensor_result_and_errors():
    values, extras = run(comp("verl_batch_compute_score", output_key="acc"))
    assert values == [1.0, 0.0, 0.0] and extras == {"score": pytest.approx(-1 / 3)}

    def as_tensor(data_sources, solution_strs, ground_truths, extra_infos):
        return torch.tensor([float(len(s)) for s in solution_strs])

    def one_dict(data_sources, solution_strs, ground_truths, extra_infos):
        return {"score": 1.0}

    register_plugin("teststyle_verl_batch_tensor", "reward", as_tensor)
    register_plugin("teststyle_verl_batch_dict", "reward", one_dict)
    assert run(comp("teststyle_verl_batch_tensor"))[0] == [1.0, 4.0, 0.0]
    with pytest.raises(RewardPluginError, match="returned dict; a batch compute_score .* one score"):
        run(comp("teststyle_verl_batch_dict"))
    with pytest.raises(RewardPluginError, match="none of the columns .* columns: \\{ground_truth: COLUMN\\}"):
        build_scorer(comp("verl_batch_compute_score"))(PROMPTS, COMPLETIONS, {"gold": ["2", "4", "6"]})


# --------------------------------------------------------------------------- OpenRLHF


def test_openrlhf_dict_with_tensors_and_extra_logs():
    values, extras = run(comp("reward_func"))  # labels: the 'answer' column
    assert values == [1.0, 0.0, 0.0]
    assert extras["scores"] == pytest.approx(1 / 3) and extras["hit_rate"] == pytest.approx(1 / 3)
    assert extras["lengths"] == pytest.approx(sum(len(p + c) for p, c in zip(PROMPTS, COMPLETIONS)) / 3)


def test_openrlhf_queries_are_prompt_plus_completion_and_labels_a_mapped_column():
    seen = {}

    def reward_func(queries, prompts, labels):
        seen.update(queries=queries, prompts=prompts, labels=labels)
        return torch.zeros(len(queries))

    register_plugin("teststyle_openrlhf_seen", "reward", reward_func)
    build_scorer(comp("teststyle_openrlhf_seen", columns={"labels": "gold"}))(PROMPTS, COMPLETIONS,
                                                                             {"gold": ["a", "b", "c"]})
    assert seen == {"queries": ["1+1=2", "2+2=5 ok", "3+3="], "prompts": PROMPTS, "labels": ["a", "b", "c"]}
    build_scorer(comp("teststyle_openrlhf_seen"))(PROMPTS, COMPLETIONS, {})
    assert seen["labels"] == [None, None, None]  # no label column


def test_openrlhf_plain_tensor_and_output_key_from_extra_logs():
    assert run(comp("reward_func_tensor"))[0] == [1.0, 4.0, 0.0]
    values, extras = run(comp("reward_func", output_key="lengths"))
    assert values == [5.0, 8.0, 4.0] and "rewards" in extras and "lengths" not in extras


def test_openrlhf_older_form_without_labels():
    seen = []

    def reward_func(queries, prompts):
        seen.append((queries, prompts))
        return [0.0] * len(queries)

    register_plugin("teststyle_openrlhf_unlabelled", "reward", reward_func)
    build_scorer(comp("teststyle_openrlhf_unlabelled"))(PROMPTS, COMPLETIONS, COLUMNS)  # has 'answer': not passed
    assert seen == [(["1+1=2", "2+2=5 ok", "3+3="], PROMPTS)]
    assert run(comp("reward_func_unlabelled"))[0] == [-1.0, -4.0, -0.0]


# --------------------------------------------------------------------------- recipe options


def test_output_key_needs_a_dict_returning_style():
    with pytest.raises(RewardPluginError, match="output_key picks a key .* style 'trl'.*Remove output_key"):
        check_component(comp("trl_accuracy", output_key="acc"))


def test_verl_and_openrlhf_args_must_be_parameters():
    with pytest.raises(RewardPluginError, match="does not accept arg 'bonsu'. Did you mean 'bonus'"):
        check_component(comp("verl_float_score", args={"bonsu": 1.0}))
    with pytest.raises(RewardPluginError, match="does not accept arg 'x'"):
        check_component(comp("reward_func", args={"x": 1}))


def test_the_recipe_offers_every_style():
    assert typing.get_args(RewardComponentConfig.model_fields["style"].annotation) == STYLE_CHOICES


def test_a_worker_spec_carries_the_style_options():
    from rewards.api import resolve_plugin
    from rlhf.scoring.workers import WorkerSpec

    component = comp("verl_compute_score", style="verl", columns={"ground_truth": "gold"}, output_key="acc")
    spec = WorkerSpec.of(component, resolve_plugin(component.plugin))
    assert (spec.style, spec.columns, spec.output_key, spec.kind) == ("verl", {"ground_truth": "gold"}, "acc",
                                                                      "reward")
    assert build_scorer(spec)(PROMPTS, COMPLETIONS, {"gold": ["2", "4", "6"]}) == [1.0, 0.0, 0.0]


def test_native_kwargs_are_columns_only():
    """(prompts, completions, **kwargs) runs natively and gets no TRL callables: native plugins (e.g. the built-in
    remote one) treat every keyword as a data column."""
    seen = {}

    def every_column(prompts, completions, **columns):
        seen.update(columns)
        return [0.0] * len(prompts)

    register_plugin("teststyle_every_column", "reward", every_column)
    build_scorer(comp("teststyle_every_column"))(PROMPTS, COMPLETIONS, COLUMNS)
    assert seen == COLUMNS


def test_the_reward_group_logs_extras_as_reward_extra_metrics():
    from rlhf.scoring.group import RewardGroup

    group = RewardGroup([comp("verl_compute_score", name="v"), comp("trl_logs", name="t"),
                         comp("reward_func", name="o")], use_ray=False)
    try:
        rv, metrics = group.score(PROMPTS, COMPLETIONS, COLUMNS)
    finally:
        group.shutdown()
    assert rv.values[:, 0].tolist() == [1.0, -0.5, -0.5]
    assert metrics["reward_extra/v/acc"] == pytest.approx(1 / 3)
    assert metrics["reward_extra/t/mean_chars"] == pytest.approx(5 / 3)
    assert metrics["reward_extra/o/hit_rate"] == pytest.approx(1 / 3)
    assert metrics["reward/o/failures"] == 0


def test_the_readme_example_of_each_style(tmp_path, monkeypatch):
    """README's "Reward functions from other libraries" module and recipe lines, run as written."""
    import re

    import yaml

    from rlhf.scoring.group import RewardGroup

    readme = (ROOT / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                if b.startswith("# foreign_rewards.py"))
    lines = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S) if "foreign_rewards:" in b)
    (tmp_path / "foreign_rewards.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("foreign_rewards", None)
    recipe = validate_dict({"model": {"tiny": {}}, "rollout": {"prompts_per_step": 2, "group_size": 2},
                            **yaml.safe_load(lines)}, "README.md")
    group = RewardGroup(recipe.rewards, use_ray=False)
    try:
        rv, metrics = group.score(["1+1=", "2+2="], ["2", "5"], {"answer": ["2", "4"]})
    finally:
        group.shutdown()
    assert rv.names == ("trl", "verl", "verl_acc", "openrlhf")
    assert rv.values.tolist() == [[1.0, 1.0, 1.0, 1.0], [0.0, -0.5, 0.0, 0.0]]
    assert metrics["reward_extra/verl/acc"] == 0.5 and metrics["reward_extra/verl_acc/score"] == 0.25
    assert metrics["reward_extra/openrlhf/hits"] == 1.0 and metrics["reward_extra/openrlhf/scores"] == 0.5
