"""Calling conventions of reward functions written for other libraries, so that they run unchanged.

A component's ``style`` (recipe key; ``auto`` by default) says how its plugin is called:

- ``native``: ``fn(prompts, completions, **columns)`` -> one value per completion (this project's API).
- ``trl``: TRL's GRPOTrainer convention, ``fn(prompts=..., completions=..., **columns)`` by keyword; it may also
  take ``log_metric(name, value)`` and ``log_extra(column, values)`` (logged as ``reward_extra/COMPONENT/NAME``);
  it may be ``async def``. TRL's ``completion_ids``, ``trainer_state`` and ``environments`` are not available.
- ``trl_conversational``: ``trl`` with TRL's conversational format: each completion is
  ``[{"role": "assistant", "content": text}]`` and each prompt ``[{"role": "user", "content": text}]`` (TRL's own
  reward functions, ``trl.rewards``, read ``completion[0]["content"]``).
- ``verl``: verl's per-sample ``compute_score(data_source, solution_str, ground_truth, extra_info=None,
  **reward_kwargs)`` -> a float or a dict (``score`` is the reward, the other numeric keys are logged); or its
  batch form (a ``solution_strs`` parameter, verl's BatchRewardManager) ``compute_score(data_sources,
  solution_strs, ground_truths, extra_infos, **reward_kwargs)``, called once per batch -> a list of those.
- ``openrlhf``: OpenRLHF's ``reward_func(queries, prompts, labels)`` (queries = prompt + completion; older
  versions take no ``labels``) -> a list or tensor of rewards, or a dict with ``rewards`` (the reward), ``scores``
  and ``extra_logs`` (both logged).

Auto-detection reads the call's signature (``detect_style``): a ``solution_str`` or ``solution_strs`` parameter
-> verl; a first parameter ``queries`` -> openrlhf; a ``completions`` parameter annotated as a list of message
lists (``list[list[dict[str, str]]]``, as TRL annotates its own) -> trl_conversational; a ``completions``
parameter that is not the second of ``(prompts, completions, ...)``, or a parameter only TRL passes
(``log_metric``, ``log_extra``, ``completion_ids``, ``trainer_state``) -> trl; else native (two positional
parameters). A function taking ``(prompts, completions, **kwargs)`` is run natively (set ``style: trl`` to get
TRL's extra keywords: native plugins get every column, and only columns, through ``**kwargs``).

Part of the plugin API below ``rewards.scorer`` (which calls the adapters: ``call_verl``, ``unwrap_verl``,
``unwrap_openrlhf``, ``as_messages``). Standard library only: numpy arrays and torch tensors are recognised by duck
typing.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import re
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from rewards.records import RewardPluginError

STYLES: tuple[str, ...] = ("native", "trl", "trl_conversational", "verl", "openrlhf")
STYLE_CHOICES: tuple[str, ...] = ("auto", *STYLES)
TRL_STYLES = ("trl", "trl_conversational")  # called by keyword with TRL's inputs
DICT_STYLES = ("verl", "openrlhf")  # may return dicts (output_key picks the key)
TRL_PASSED = ("prompts", "completions", "log_metric", "log_extra")  # keywords the trl styles pass
TRL_UNAVAILABLE = ("completion_ids", "trainer_state", "environments")  # TRL passes them; rlhf has no equivalent
VERL_INPUTS = ("data_source", "solution_str", "ground_truth", "extra_info")  # per sample
VERL_BATCH_INPUTS = ("data_sources", "solution_strs", "ground_truths", "extra_infos")  # the batch form, as lists
OPENRLHF_POSITIONAL = 3  # queries, prompts, labels
OPENRLHF_MIN_POSITIONAL = 2  # older OpenRLHF: queries, prompts (no labels)
GROUND_TRUTH_COLUMNS = ("ground_truth", "reward_model", "answer")  # verl's ground_truth: first present column
LABEL_COLUMNS = ("labels", "label", "answer")  # OpenRLHF's labels: first present column (else None per sample)
DEFAULT_OUTPUT_KEY = {"verl": "score", "openrlhf": "rewards"}
SHAPES = ("native (prompts, completions, *, column...), trl (completions, **kwargs), "
          "verl (data_source, solution_str, ground_truth, extra_info=None) or its batch form (data_sources, "
          "solution_strs, ground_truths, extra_infos), openrlhf (queries, prompts, labels)")


class StyleError(RewardPluginError):
    """An adapter's error: a sample's call raised (``__cause__`` set, ``sample_index`` too) or a result is unusable;
    ``BoundScorer`` re-raises it as a RewardPluginError naming the component and the plugin."""


@dataclass(frozen=True)
class _KeywordSpec:
    """The keyword parameters a call takes beyond the ones its style passes itself."""

    names: tuple[str, ...]  # every named keyword parameter
    required: tuple[str, ...]  # those without a default
    var_keyword: bool  # takes **kwargs

    def accepts(self, name: str) -> bool:
        return self.var_keyword or name in self.names


def _keyword_spec(params: list[inspect.Parameter], skip_positional: int) -> _KeywordSpec:
    names: list[str] = []
    required: list[str] = []
    var_keyword = False
    skipped = 0
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and skipped < skip_positional:
            skipped += 1
            continue
        if p.kind == p.VAR_KEYWORD:
            var_keyword = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return _KeywordSpec(tuple(names), tuple(required), var_keyword)


@dataclass(frozen=True)
class StyleOptions:
    """How a component calls its plugin: the style and its column mapping (plain data: it crosses Ray)."""

    style: str = "native"
    columns: Mapping[str, str] = field(default_factory=dict)  # {name the plugin receives: dataset column}
    output_key: str | None = None  # dict outputs (verl, openrlhf): the key holding this component's values
    dataset_name: str | None = None  # verl's data_source when the batch has no data_source column


# --------------------------------------------------------------------------- detection


def _positional(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    return [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _named(params: list[inspect.Parameter]) -> set[str]:
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def is_message_lists(annotation: Any) -> bool:
    """An annotation of a list of message lists (TRL's conversational completions: ``list[list[dict[str, str]]]``,
    ``typing.List[typing.List[typing.Dict]]``, ``Sequence[Sequence[Mapping]]``; a string annotation too)."""
    if annotation is inspect.Parameter.empty:
        return False
    text = annotation if isinstance(annotation, str) else repr(annotation)
    text = re.sub(r"\b(typing|collections\.abc)\.", "", text.replace(" ", "")).lower()
    return re.match(r"(list|sequence)\[(list|sequence)\[(dict|mapping)\b", text) is not None


def _conversational(params: list[inspect.Parameter]) -> bool:
    """Its ``completions`` parameter is annotated as a list of message lists."""
    return any(p.name == "completions" and is_message_lists(p.annotation) for p in params)


def is_verl_batch(names: Sequence[str]) -> bool:
    """A verl function takes the batch form (``solution_strs``: one call per batch, lists)."""
    return "solution_strs" in names


def detect_style(params: list[inspect.Parameter]) -> str | None:
    """The style a call's parameters say (see the module docstring), or None when no style fits."""
    names = _named(params)
    positional = _positional(params)
    if names & {"solution_str", "solution_strs"}:
        return "verl"
    if positional and positional[0].name == "queries":
        return "openrlhf"
    if _conversational(params):
        return "trl_conversational"
    native_shape = len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
    native_names = [p.name for p in positional[:2]] == ["prompts", "completions"]
    if "completions" in names and not native_names:
        return "trl"
    if names & {"log_metric", "log_extra", *TRL_UNAVAILABLE}:
        return "trl"
    return "native" if native_shape else None


def style_problem(style: str, params: list[inspect.Parameter]) -> str | None:
    """None when the style can call a function with these parameters, else what is wrong."""
    positional = _positional(params)
    var_positional = any(p.kind == p.VAR_POSITIONAL for p in params)
    spec = _keyword_spec(params, 0)
    positional_only = [p.name for p in params if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]
    if style == "native" and len(positional) < 2 and not var_positional:
        return "style native calls fn(prompts, completions, ...): it needs two positional parameters"
    if style == "openrlhf" and len(positional) < OPENRLHF_MIN_POSITIONAL and not var_positional:
        return ("style openrlhf calls fn(queries, prompts, labels) (or fn(queries, prompts), OpenRLHF's older "
                "form): it needs two or three positional parameters")
    if style in (*TRL_STYLES, "verl") and positional_only:
        return f"style {style} passes everything by keyword; positional-only parameter {positional_only[0]!r}"
    if style in TRL_STYLES and not spec.accepts("completions"):
        return (f"style {style} calls fn(completions=..., prompts=..., **columns): it needs a 'completions' "
                f"parameter")
    if style == "trl" and _conversational(params):
        return ("style trl passes each completion as a string, and its 'completions' are annotated as TRL's "
                "conversational format (lists of messages): set the style to trl_conversational (or auto)")
    if style == "verl" and not (spec.accepts("solution_str") or spec.accepts("solution_strs")):
        return ("style verl calls fn(data_source=, solution_str=, ground_truth=, extra_info=) per sample or "
                "fn(data_sources=, solution_strs=, ...) per batch: it needs 'solution_str' or 'solution_strs'")
    return None


def resolve_style(requested: str, params: list[inspect.Parameter]) -> str:
    """The style to call with: ``requested`` unless ``auto``; raises ValueError (what to change) when none fits."""
    if requested not in STYLE_CHOICES:
        raise ValueError(f"unknown style {requested!r}; expected one of {', '.join(STYLE_CHOICES)}")
    style = detect_style(params) if requested == "auto" else requested
    signature = "(" + ", ".join(str(p) for p in params) + ")"
    if style is None:
        raise ValueError(f"its call must accept (prompts, completions, ...) or another library's convention; its "
                         f"parameters are {signature}. Give it one of these shapes: {SHAPES}")
    problem = style_problem(style, params)
    if problem is not None:
        raise ValueError(f"{problem}; its parameters are {signature}. Fix the signature or set the component's "
                         f"style to the convention it was written for ({', '.join(STYLES)})")
    return style


def call_spec(style: str, params: list[inspect.Parameter]) -> _KeywordSpec:
    """The keyword parameters a style leaves to columns and args."""
    if style == "native":
        return _keyword_spec(params, 2)
    if style == "openrlhf":
        return _keyword_spec(params, OPENRLHF_POSITIONAL)
    spec = _keyword_spec(params, 0)
    if style in TRL_STYLES:
        passed: tuple[str, ...] = TRL_PASSED
    else:
        passed = ("solution_strs", "extra_infos") if is_verl_batch(spec.names) else ("solution_str", "extra_info")
    keep = [n for n in spec.names if n not in passed]
    return _KeywordSpec(tuple(keep), tuple(n for n in spec.required if n in keep), spec.var_keyword)


def openrlhf_takes_labels(params: list[inspect.Parameter]) -> bool:
    """An OpenRLHF function takes ``labels`` (a third positional parameter); the older form takes two."""
    return len(_positional(params)) >= OPENRLHF_POSITIONAL or any(p.kind == p.VAR_POSITIONAL for p in params)


def passed_inputs(style: str, params: list[inspect.Parameter]) -> tuple[str, ...]:
    """The inputs the style passes itself that the plugin takes: the TRL keywords or verl inputs it names, or
    OpenRLHF's ``labels`` when it takes a third positional parameter."""
    if style == "openrlhf":
        return ("labels",) if openrlhf_takes_labels(params) else ()
    offered = TRL_PASSED if style in TRL_STYLES else (*VERL_INPUTS, *VERL_BATCH_INPUTS) if style == "verl" else ()
    return tuple(p.name for p in params if p.name in offered)


def as_messages(texts: Sequence[str], role: str) -> list[list[dict[str, str]]]:
    """TRL's conversational format: each text as a list of one message of ``role``."""
    return [[{"role": role, "content": text}] for text in texts]


# --------------------------------------------------------------------------- running


def settle(result: Any) -> Any:
    """The value of an awaitable result (an ``async def`` plugin), else the result itself."""
    if not inspect.isawaitable(result):
        return result
    return _run_async(_awaited(result))


def settle_all(results: list[Any]) -> list[Any]:
    """Per-sample results, the awaitable ones awaited together (concurrently)."""
    pending = [i for i, r in enumerate(results) if inspect.isawaitable(r)]
    if not pending:
        return results

    async def gather() -> list[Any]:
        return list(await asyncio.gather(*(results[i] for i in pending), return_exceptions=True))

    out = list(results)
    for i, value in zip(pending, _run_async(gather())):
        out[i] = value
    return out


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _run_async(coro: Any) -> Any:
    """Run a coroutine to completion: here, or in a helper thread when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the calling thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="reward-async", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class MetricLog:
    """TRL's ``log_metric`` / ``log_extra`` callbacks: numeric values are averaged into ``extras`` by name."""

    def __init__(self, extras: dict[str, float]) -> None:
        self._extras = extras
        self._values: dict[str, list[float]] = {}

    def log_metric(self, name: str, value: Any) -> None:
        self._add(str(name), [value])

    def log_extra(self, column: str, values: Sequence[Any]) -> None:
        self._add(str(column), list(values) if isinstance(values, (list, tuple)) else [values])

    def _add(self, name: str, values: list[Any]) -> None:
        numbers_only = [v for v in (_number(x) for x in values) if v is not None]  # text columns are not shown
        if numbers_only:
            self._values.setdefault(name, []).extend(numbers_only)
            self._extras[name] = sum(self._values[name]) / len(self._values[name])


def _number(x: Any) -> float | None:
    """A finite float from a number, bool, 0-d array or tensor; None for anything else (text, None, NaN)."""
    if not isinstance(x, numbers.Real) and getattr(x, "shape", None) == () and hasattr(x, "item"):
        x = x.item()
    if isinstance(x, bool):
        return 1.0 if x else 0.0
    if isinstance(x, numbers.Real) and math.isfinite(float(x)):
        return float(x)
    return None


def mean_of(value: Any) -> float | None:
    """The mean of a logged value: a number, or a list / 1-d array / tensor of numbers; None when not numeric."""
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) >= 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        found = [v for v in (_number(x) for x in value) if v is not None]
        return sum(found) / len(found) if found else None
    return _number(value)


def first_column(columns: Mapping[str, Sequence], candidates: Sequence[str]) -> str | None:
    """The column a style input reads: the first of ``candidates`` the batch has (a mapped name is a column)."""
    return next((c for c in candidates if c in columns), None)


def _ground_truth(value: Any) -> Any:
    """verl keeps the ground truth in a ``reward_model`` dict column: ``{"ground_truth": ..., "style": ...}``."""
    if isinstance(value, Mapping) and "ground_truth" in value:
        return value["ground_truth"]
    return value


def call_verl(fn: Callable, completions: Sequence[str], columns: Mapping[str, Sequence], args: Mapping[str, Any],
              accepts: Callable[[str], bool], options: StyleOptions, who: str, batch: bool = False) -> list[Any]:
    """verl's ``compute_score`` once per sample (or once with lists: ``batch``) -> raw per-sample results (floats,
    dicts or None).

    ``columns`` has the component's mapping applied. ``data_source``: args, else the ``data_source`` column,
    else the dataset's name; ``ground_truth``: the first of GROUND_TRUTH_COLUMNS; ``extra_info``: a dict of the
    row's other columns, updated with its ``extra_info`` column when that holds a dict. The batch form gets them as
    lists (``data_sources``, ``ground_truths``, ``extra_infos``; args go as they are). Only the inputs the function
    ``accepts`` are passed. Raises StyleError (sample_index set) when a sample's call raises, or when a batch call
    returns something other than a list.
    """
    rows = _verl_rows(len(completions), columns, options)
    if batch:
        return _call_verl_batch(fn, completions, rows, args, accepts, who)
    results: list[Any] = []
    for i, row in enumerate(rows):
        kwargs: dict[str, Any] = {"solution_str": completions[i]}
        kwargs.update({k: v for k, v in row.items() if accepts(k) and k not in args})
        kwargs.update(args)
        try:
            results.append(fn(**kwargs))
        except Exception as exc:
            raise _sample_raised(who, i, exc) from exc
    results = settle_all(results)
    for i, r in enumerate(results):
        if isinstance(r, BaseException):  # an async sample that raised
            raise _sample_raised(who, i, r) from r
    return results


def _verl_rows(n: int, columns: Mapping[str, Sequence], options: StyleOptions) -> list[dict[str, Any]]:
    """Per sample, verl's data_source, ground_truth and extra_info (see call_verl)."""
    source_col = first_column(columns, ("data_source",))
    truth_col = first_column(columns, GROUND_TRUTH_COLUMNS)
    used = {source_col, truth_col, "extra_info", *options.columns.values()}
    rows = []
    for i in range(n):
        info = {k: v[i] for k, v in columns.items() if k not in used}
        row_info = columns["extra_info"][i] if "extra_info" in columns else None
        if isinstance(row_info, Mapping):
            info.update(row_info)
        rows.append({"data_source": columns[source_col][i] if source_col else options.dataset_name,
                     "ground_truth": _ground_truth(columns[truth_col][i]) if truth_col else None,
                     "extra_info": info})
    return rows


def _call_verl_batch(fn: Callable, completions: Sequence[str], rows: list[dict[str, Any]], args: Mapping[str, Any],
                     accepts: Callable[[str], bool], who: str) -> list[Any]:
    kwargs: dict[str, Any] = {"solution_strs": list(completions)}
    for single, plural in zip(VERL_INPUTS, VERL_BATCH_INPUTS):
        if single != "solution_str" and accepts(plural) and plural not in args:
            kwargs[plural] = [row[single] for row in rows]
    kwargs.update(args)
    result = settle(fn(**kwargs))
    if hasattr(result, "tolist") and getattr(result, "ndim", 0) == 1:  # a 1-d array or tensor of scores
        result = result.tolist()
    if not isinstance(result, (list, tuple)):
        raise StyleError(f"{who}: returned {type(result).__name__}; a batch compute_score (solution_strs) returns a "
                         f"list with one score (a float or a dict) per sample")
    return list(result)


def where(exc: BaseException) -> str:
    """' (at file:line in function)' for the innermost frame of exc's traceback that is not a library's (a
    wrapper installed over e.g. sys.exit by another package must not hide the user's line), or ''."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    ours = [f for f in frames if "site-packages" not in f.filename and not f.filename.startswith("<frozen")]
    last = (ours or frames)[-1]
    return f" (at {last.filename}:{last.lineno} in {last.name})"


def _sample_raised(who: str, i: int, exc: BaseException) -> StyleError:
    return StyleError(f"{who}, sample {i}: raised {type(exc).__name__}: {exc}{where(exc)}",
                             sample_index=i)


def unwrap_verl(results: list[Any], options: StyleOptions, who: str, extras: dict[str, float]) -> list[Any]:
    """Per-sample verl results -> per-sample values; a dict's other numeric keys are averaged into ``extras``."""
    key = options.output_key or DEFAULT_OUTPUT_KEY["verl"]
    values: list[Any] = []
    logged: dict[str, list[float]] = {}
    for i, r in enumerate(results):
        if not isinstance(r, Mapping):
            if options.output_key is not None:
                raise StyleError(f"{who}, sample {i}: returned {type(r).__name__}, not a dict; output_key "
                                        f"{key!r} needs dicts. Remove output_key")
            values.append(r)
            continue
        if key not in r and options.output_key is None and "reward" in r:
            key = "reward"  # older verl reward managers read "reward"
        if key not in r:
            raise StyleError(f"{who}, sample {i}: returned a dict without {key!r} (keys: {sorted(r)}); set "
                                    f"the component's output_key to the key that holds its reward")
        values.append(r[key])
        for k, v in r.items():
            number = _number(v) if k != key else None
            if number is not None:
                logged.setdefault(str(k), []).append(number)
    extras.update({k: sum(v) / len(v) for k, v in logged.items()})
    return values


def unwrap_openrlhf(result: Any, options: StyleOptions, who: str, extras: dict[str, float]) -> Any:
    """OpenRLHF's result -> the per-sample values; ``scores`` and ``extra_logs`` means go into ``extras``."""
    if not isinstance(result, Mapping):
        if options.output_key is not None:
            raise StyleError(f"{who}: returned {type(result).__name__}, not a dict; output_key "
                                    f"{options.output_key!r} needs a dict. Remove output_key")
        return result
    logs = result.get("extra_logs") or {}
    if not isinstance(logs, Mapping):
        raise StyleError(f"{who}: 'extra_logs' is {type(logs).__name__}; OpenRLHF's extra_logs is a dict")
    key = options.output_key or DEFAULT_OUTPUT_KEY["openrlhf"]
    found = result if key in result else logs if key in logs else None
    if found is None:
        raise StyleError(f"{who}: returned a dict without {key!r} (keys: {sorted(result)}, extra_logs: "
                                f"{sorted(logs)}); set the component's output_key to the key that holds its reward")
    for name, value in [*((k, v) for k, v in result.items() if k not in ("extra_logs", key)), *logs.items()]:
        if name == key:
            continue
        mean = mean_of(value)
        if mean is not None:
            extras[str(name)] = mean
    return found[key]
