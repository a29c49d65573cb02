"""A plugin's outputs checked and converted to floats: one value per completion (or per-step scores for process
plugins), None -> NaN, bool -> 1.0/0.0; bad samples become NaN and a RewardPluginError naming the sample.

Part of the plugin API (``check_outputs``, ``convert_outputs`` and ``convert_process_outputs`` are re-exported by
``rewards.api``). Standard library only: numpy arrays and torch tensors are recognised by duck typing.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from rewards.records import PluginInfo, RewardPluginError


def check_outputs(
    component_name: str,
    plugin: str | PluginInfo,
    outputs: Any,
    n: int,
    kind: str,
    prompts: Sequence[str],
) -> list[float]:
    """Validate a plugin's outputs and convert them to floats: None -> NaN, bool -> 1.0/0.0.

    Raises RewardPluginError (naming component, plugin, sample index and a prompt snippet) on the first bad value.
    """
    values, errors = convert_outputs(component_name, plugin, outputs, n, kind, prompts)
    if errors:
        raise errors[0]
    return values


def convert_outputs(
    component_name: str,
    plugin: str | PluginInfo,
    outputs: Any,
    n: int,
    kind: str,
    prompts: Sequence[str],
) -> tuple[list[float], list[RewardPluginError]]:
    """Like check_outputs, but collect per-sample errors (their values become NaN) instead of raising the first.

    A wrong container or length is not per-sample and raises at once.
    """
    plugin_name, items = _output_items(component_name, plugin, outputs, n)
    values: list[float] = []
    errors: list[RewardPluginError] = []
    for i, item in enumerate(items):
        value, problem = _to_float(item, kind)
        if problem is not None:
            errors.append(_sample_error(component_name, plugin_name, i, problem, prompts))
            value = math.nan
        values.append(value)
    return values, errors


def _output_items(component_name: str, plugin: str | PluginInfo, outputs: Any, n: int) -> tuple[str, list[Any]]:
    """(plugin name, the outputs as a list of n entries); a wrong container or length raises at once."""
    plugin_name = plugin.name if isinstance(plugin, PluginInfo) else str(plugin)
    who = f"reward component {component_name!r} (plugin {plugin_name!r})"
    items = _as_list(outputs, who, component_name, plugin_name)
    if len(items) != n:
        raise RewardPluginError(
            f"{who} returned {len(items)} values for {n} samples; a plugin returns exactly one value per completion",
            component=component_name,
            plugin=plugin_name,
        )
    return plugin_name, items


def _sample_error(component_name: str, plugin_name: str, i: int, problem: str,
                  prompts: Sequence[str]) -> RewardPluginError:
    snippet = _snippet(prompts[i]) if i < len(prompts) else "?"
    return RewardPluginError(
        f"reward component {component_name!r} (plugin {plugin_name!r}), sample {i}: {problem}. Prompt: {snippet}",
        component=component_name,
        plugin=plugin_name,
        sample_index=i,
    )


def convert_process_outputs(
    component_name: str,
    plugin: str | PluginInfo,
    outputs: Any,
    n: int,
    prompts: Sequence[str],
    step_counts: Sequence[int] | None,
) -> tuple[list[float], list[list[float] | None], list[RewardPluginError]]:
    """A process plugin's outputs -> (outcome values, step scores, per-sample errors).

    Per sample: a list of finite floats, one per step (``step_counts[i]`` of them), is a step score list (its
    outcome value is left NaN for the runtime to summarise); a number or bool is an outcome value without steps;
    None is "not applicable". A bad sample gets NaN and no steps, and an error.
    """
    plugin_name, items = _output_items(component_name, plugin, outputs, n)
    values: list[float] = []
    steps: list[list[float] | None] = []
    errors: list[RewardPluginError] = []
    for i, item in enumerate(items):
        if hasattr(item, "tolist") and getattr(item, "ndim", 0) == 1:
            item = item.tolist()
        problem = None
        if isinstance(item, (list, tuple)):
            scores = [_to_float(x, "process") for x in item]
            problem = next((f"step {j}: {p}" for j, (_, p) in enumerate(scores) if p is not None), None)
            if problem is None and any(math.isnan(v) for v, _ in scores):
                problem = "a step score is None; score every step (or return None for the whole sample)"
            if problem is None and step_counts is not None and len(scores) != step_counts[i]:
                problem = (f"returned {len(scores)} step scores for {step_counts[i]} steps; return one score per "
                           f"entry of `steps`")
            values.append(math.nan)
            steps.append(None if problem else [v for v, _ in scores])
        else:
            value, problem = _to_float(item, "process")
            values.append(value)
            steps.append(None)
        if problem is not None:
            values[-1] = math.nan
            errors.append(_sample_error(component_name, plugin_name, i, problem, prompts))
    return values, steps, errors


def _as_list(outputs: Any, who: str, component_name: str, plugin_name: str) -> list[Any]:
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    if hasattr(outputs, "tolist") and getattr(outputs, "ndim", None) == 1:  # numpy array / torch tensor
        return outputs.tolist()
    raise RewardPluginError(
        f"{who} returned {type(outputs).__name__}; a plugin returns a list with one value per completion",
        component=component_name,
        plugin=plugin_name,
    )


def _to_float(item: Any, kind: str) -> tuple[float, str | None]:
    """(value, None) or (nan, what is wrong)."""
    if item is None:
        return math.nan, None
    if not isinstance(item, numbers.Real) and getattr(item, "shape", None) == () and hasattr(item, "item"):
        item = item.item()  # numpy bool / 0-d array / 0-d torch tensor
    if isinstance(item, bool):
        return (1.0 if item else 0.0), None
    if not isinstance(item, numbers.Real):
        return math.nan, f"returned {_short_repr(item)} ({type(item).__name__}); expected a float, int, bool or None"
    value = float(item)
    if not math.isfinite(value):
        return math.nan, f"returned {value}; return None for a sample the reward does not apply to"
    if kind == "constraint" and value not in (0.0, 1.0):
        return math.nan, f"returned {value}; a judge (constraint) returns True/False or 1/0"
    return value, None


def _short_repr(x: Any, limit: int = 40) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _snippet(prompt: Any) -> str:
    text = str(prompt)
    return repr(text[:60] + ("..." if len(text) > 60 else ""))
