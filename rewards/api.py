"""The reward plugin API: decorators, the plugin registry, plugin resolution, binding and output checks.

A reward plugin is a plain function or a class. Register it by name with a decorator::

    from rewards.api import reward, judge

    @reward("exact_answer")
    def exact_answer(prompts, completions, *, answer):      # declare only the columns you need
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

    @judge("no_code")                                       # a judge: True/1 = satisfied, False/0 = violated
    def no_code(prompts, completions, **columns):            # **kwargs receives every column
        return ["```" not in c for c in completions]

A plugin returns one value per completion; ``None`` means "not applicable" and becomes NaN in the reward vector.
A stateful scorer (reward model, LLM judge) is a class: its constructor takes the recipe's ``args``, an optional
``setup()`` runs once per worker (load the model there), and ``__call__(prompts, completions, **columns)`` scores.

A recipe names a plugin by its registered name, by ``package.module:attr``, or through the entry-point group
``rlhf.rewards`` of an installed distribution. The built-in plugins (``rewards/verifiable``) are registered the
first time a plugin is looked up.

This module holds the decorators, the registry, resolution and binding (``build_scorer``, ``check_component``);
``rewards.records`` the error and records (``RewardPluginError``, ``PluginInfo``, the ``Scorer`` protocol,
``ComponentRecord``: what these functions read of a component; a duck-typed caller's partial component is
completed by ``component_record``),
``rewards.scorer`` the ``BoundScorer`` that ``build_scorer`` returns, ``rewards.styles`` the calling conventions of
reward functions written for TRL, verl and OpenRLHF (a component's ``style``, detected from the signature by
default), and ``rewards.outputs`` the output checks (``check_outputs``, ``convert_outputs``,
``convert_process_outputs``). Import them all from here. The API modules
import only the standard library (no torch, no ray).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import threading
from typing import Any, Callable, Sequence

from rewards.outputs import check_outputs, convert_outputs, convert_process_outputs
from rewards.records import (ComponentRecord, PluginInfo, RewardFn, RewardModel, RewardPluginError, Scorer,
                             component_record)
from rewards.scorer import _RESERVED_PARAMS, BoundScorer, _KeywordSpec, _keyword_spec, _where
from rewards.styles import (DICT_STYLES, VERL_BATCH_INPUTS, VERL_INPUTS, StyleOptions, call_spec, passed_inputs,
                            resolve_style)

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGIN_KINDS",
    "BoundScorer",
    "ComponentRecord",
    "PluginInfo",
    "RewardFn",
    "RewardModel",
    "RewardPluginError",
    "Scorer",
    "build_scorer",
    "check_columns",
    "check_component",
    "check_outputs",
    "component_kind",
    "component_record",
    "convert_outputs",
    "convert_process_outputs",
    "judge",
    "list_plugins",
    "process_reward",
    "register_plugin",
    "resolve_plugin",
    "reward",
]

PLUGIN_KINDS: tuple[str, ...] = ("reward", "constraint", "process")
ENTRY_POINT_GROUP = "rlhf.rewards"
_PLUGIN_ATTR = "__rlhf_plugin__"  # (name, kind) set on decorated functions and classes

_REGISTRY: dict[str, "PluginInfo"] = {}
_LOCK = threading.RLock()
_builtins_loaded = False


# --------------------------------------------------------------------------- decorators and registry


def reward(name: str | Callable | None = None) -> Callable:
    """Register a reward function or scorer class under ``name`` (default: its ``__name__``)."""
    return _decorator(name, "reward")


def judge(name: str | Callable | None = None) -> Callable:
    """Register a judge (a constraint): it returns True/1 for satisfied and False/0 for violated."""
    return _decorator(name, "constraint")


def process_reward(name: str | Callable | None = None) -> Callable:
    """Register a process reward plugin (kind "process").

    It may take ``steps`` (per completion, the list of its step texts as the recipe's ``process`` block segments
    it) and returns per completion a list with one score per step, a single outcome score, or None.
    """
    return _decorator(name, "process")


def _decorator(name: str | Callable | None, kind: str) -> Callable:
    if callable(name):  # used bare: @reward
        return register_plugin(name.__name__, kind, name)

    def register(obj: Any) -> Any:
        return register_plugin(name or obj.__name__, kind, obj)

    return register


def register_plugin(name: str, kind: str, obj: Any) -> Any:
    """Register ``obj`` (function or class) as plugin ``name`` of ``kind``; returns ``obj`` unchanged."""
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ValueError(f"reward plugin name must be a non-empty string without ':', got {name!r}")
    if kind not in PLUGIN_KINDS:
        raise ValueError(f"reward plugin {name!r}: unknown kind {kind!r}; expected one of {PLUGIN_KINDS}")
    _check_call_shape(name, obj)
    info = PluginInfo(name=name, kind=kind, obj=obj, doc=inspect.getdoc(obj) or "", source=_qualified(obj))
    with _LOCK:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.source != info.source:
            raise ValueError(
                f"reward plugin name {name!r} is already registered by {existing.source}; "
                f"{info.source} must use another name"
            )
        _REGISTRY[name] = info
    setattr(obj, _PLUGIN_ATTR, (name, kind))
    return obj


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _load_builtins() -> None:
    """Import ``rewards.builtins`` once, which registers the built-in plugins."""
    global _builtins_loaded
    with _LOCK:
        if not _builtins_loaded:
            importlib.import_module("rewards.builtins")
            _builtins_loaded = True


# --------------------------------------------------------------------------- signatures


def _call_target(obj: Any) -> Callable:
    """The callable whose signature receives (prompts, completions, **columns)."""
    if inspect.isclass(obj):
        defines_call = any("__call__" in vars(k) for k in obj.__mro__ if k is not object)
        if not defines_call:
            raise TypeError(f"scorer class {_qualified(obj)} must define __call__(self, prompts, completions, ...)")
        return obj.__call__
    if not callable(obj):
        raise TypeError(f"{obj!r} is not callable; a reward plugin is a function or a class")
    return obj


def _plugin_params(obj: Any) -> list[inspect.Parameter]:
    """Parameters of the plugin's scoring call (``self`` dropped for classes)."""
    params = list(inspect.signature(_call_target(obj)).parameters.values())
    return params[1:] if inspect.isclass(obj) else params


def _check_call_shape(name: str, obj: Any) -> None:
    """Fail early (TypeError) unless the plugin's call fits a style: (prompts, completions, ...) or the convention
    of TRL, verl or OpenRLHF (``rewards.styles``)."""
    problem = _shape_problem(obj)
    if problem is not None:
        raise TypeError(f"reward plugin {name!r} ({_qualified(obj)}): {problem}")


def _shape_problem(obj: Any) -> str | None:
    """None when some style (``rewards.styles``) can call the plugin, else what is wrong."""
    try:
        resolve_style("auto", _plugin_params(obj))
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _constructor_spec(component: ComponentRecord, plugin: PluginInfo) -> _KeywordSpec:
    """The keyword parameters of a class plugin's constructor (its ``args``); RewardPluginError when its signature
    cannot be read (a constructor written in C, e.g. ``__init__ = dict.__init__``)."""
    try:
        return _keyword_spec(list(inspect.signature(plugin.obj).parameters.values()), skip_positional=0)
    except (TypeError, ValueError) as exc:
        raise _error(component, plugin, f"cannot read its constructor's parameters ({type(exc).__name__}: {exc}), "
                                        f"so its args cannot be checked. Give the class an __init__ written in "
                                        f"Python (def __init__(self, ...)) taking the args it needs") from None


# --------------------------------------------------------------------------- resolution


def resolve_plugin(ref: str) -> PluginInfo:
    """Find a plugin by registered name, ``module:attr`` reference, or ``rlhf.rewards`` entry point."""
    if not isinstance(ref, str) or not ref.strip():
        raise RewardPluginError(f"reward plugin reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    if ":" in ref:
        return _resolve_module_attr(ref)
    _load_builtins()
    with _LOCK:
        info = _REGISTRY.get(ref)
    if info is not None:
        return info
    entry_points = _entry_points()
    if ref in entry_points:
        return _load_entry_point(entry_points[ref])
    raise _unknown_plugin_error(ref, sorted(set(_REGISTRY) | set(entry_points)))


def list_plugins() -> list[PluginInfo]:
    """Every registered plugin plus every ``rlhf.rewards`` entry point, sorted by name."""
    _load_builtins()
    with _LOCK:
        infos = dict(_REGISTRY)
    for name, ep in _entry_points().items():
        if name not in infos:
            infos[name] = _load_entry_point(ep)
    return [infos[name] for name in sorted(infos)]


def _resolve_module_attr(ref: str) -> PluginInfo:
    module_name, _, attr_path = ref.partition(":")
    if not module_name or not attr_path:
        raise RewardPluginError(f"reward plugin reference {ref!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() on import is a broken plugin too
        raise RewardPluginError(_import_error_message(ref, module_name, exc), plugin=ref) from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise RewardPluginError(_missing_attr_message(ref, obj, part), plugin=ref)
        obj = getattr(obj, part)
    return _info_for_object(ref, obj)


def _import_error_message(ref: str, module_name: str, exc: BaseException) -> str:
    """One line: the module is not on the path (what to change), importing it exited, or it raised (where)."""
    if isinstance(exc, SystemExit):
        return (f"reward plugin {ref!r}: cannot import module {module_name!r}: importing it called sys.exit("
                f"{exc.code!r}){_where(exc)}. Fix the module: a plugin module must not exit when imported (put "
                f"script code under `if __name__ == \"__main__\":`)")
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing is not None and (module_name == missing or module_name.startswith(missing + ".")):
        return (f"reward plugin {ref!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}. Put the "
                f"directory that holds it on PYTHONPATH (or run from it), or install its package")
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line (a SyntaxError's text has newlines)
    where = "" if isinstance(exc, SyntaxError) else _where(exc)  # a SyntaxError's text says file and line
    return (f"reward plugin {ref!r}: cannot import module {module_name!r}: importing it raised {detail}{where}. "
            f"Fix the module (it must import cleanly on its own)")


def _missing_attr_message(ref: str, owner: Any, attr: str) -> str:
    public = sorted(n for n in dir(owner) if not n.startswith("_") and callable(getattr(owner, n, None)))
    close = difflib.get_close_matches(attr, public, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"reward plugin {ref!r}: {getattr(owner, '__name__', owner)!r} has no attribute {attr!r}.{hint}"


def _info_for_object(ref: str, obj: Any) -> PluginInfo:
    """PluginInfo for an object reached by reference; undecorated objects count as kind "reward"."""
    marker = vars(obj).get(_PLUGIN_ATTR) if inspect.isclass(obj) else getattr(obj, _PLUGIN_ATTR, None)
    kind = marker[1] if marker else "reward"
    problem = _shape_problem(obj)
    if problem is not None:
        where = "" if _qualified(obj) == ref else f" ({_qualified(obj)})"
        raise RewardPluginError(f"reward plugin {ref!r}{where}: {problem}", plugin=ref)
    return PluginInfo(name=ref, kind=kind, obj=obj, doc=inspect.getdoc(obj) or "", source=_qualified(obj))


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> PluginInfo:
    try:
        obj = ep.load()
    except (Exception, SystemExit) as exc:  # SystemExit: its module called sys.exit() on import
        exited = isinstance(exc, SystemExit)
        what = f"called sys.exit({exc.code!r}){_where(exc)}" if exited else f"{type(exc).__name__}: {exc}"
        raise RewardPluginError(
            f"reward plugin {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) failed to load: "
            f"{' '.join(what.split())}",
            plugin=ep.name,
        ) from exc
    info = _info_for_object(ep.name, obj)
    return PluginInfo(name=ep.name, kind=info.kind, obj=obj, doc=info.doc, source=info.source)


def _unknown_plugin_error(ref: str, known: list[str]) -> RewardPluginError:
    close = difflib.get_close_matches(ref, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return RewardPluginError(
        f"unknown reward plugin {ref!r}.{hint} Known plugins: {', '.join(known) or '(none)'}. "
        f"Reference your own plugin as 'package.module:function', or install it under the entry-point group "
        f"{ENTRY_POINT_GROUP!r}.",
        plugin=ref,
    )


# --------------------------------------------------------------------------- binding
#
# The entry points below take a component as the recipe has it (RewardComponentConfig), a reward worker's spec, or
# any object with ``name`` and ``plugin`` (a duck-typed caller's partial record): each completes it once with
# ``component_record`` and the helpers read the ComponentRecord's fields directly.


def component_kind(component: Any, plugin: PluginInfo) -> str:
    """The component's kind: the recipe's ``kind`` when it sets one, else the plugin's kind."""
    return _kind(component_record(component), plugin)


def _kind(component: ComponentRecord, plugin: PluginInfo) -> str:
    kind = component.kind or plugin.kind
    if kind not in PLUGIN_KINDS:
        raise RewardPluginError(
            f"reward component {component.name!r}: unknown kind {kind!r}; expected one of {PLUGIN_KINDS}",
            component=component.name,
            plugin=plugin.name,
        )
    return kind


def check_component(component: Any) -> PluginInfo:
    """Resolve a component's plugin and check its style, ``args`` and options without building it (cheap; no
    setup()). Every problem is a one-line RewardPluginError naming the component, the plugin and what to change."""
    component = component_record(component)
    try:
        plugin = resolve_plugin(component.plugin)
    except RewardPluginError as exc:
        raise RewardPluginError(f"reward component {component.name!r}: {exc}", component=component.name,
                                plugin=exc.plugin or component.plugin) from exc
    _check_step_options(component, _kind(component, plugin))
    _check_args(component, plugin)
    return plugin


def check_columns(component: Any, plugin: PluginInfo, names: Sequence[str]) -> str | None:
    """None when a batch with the columns ``names`` gives the component's plugin every input it needs, else why
    not (one line). Builds nothing: a class plugin is neither constructed nor set up."""
    return _binding(component_record(component), plugin, fn=None).column_problem(list(names))


def _who(component: ComponentRecord, plugin: PluginInfo) -> str:
    return f"reward component {component.name!r} (plugin {plugin.name!r})"


def _error(component: ComponentRecord, plugin: PluginInfo, message: str) -> RewardPluginError:
    return RewardPluginError(f"{_who(component, plugin)}: {message}", component=component.name, plugin=plugin.name)


def _style(component: ComponentRecord, plugin: PluginInfo) -> tuple[str, list[inspect.Parameter]]:
    """(the style the component's plugin is called with, the parameters of its call)."""
    params = _plugin_params(plugin.obj)
    try:
        return resolve_style(component.style, params), params
    except ValueError as exc:
        raise _error(component, plugin, str(exc)) from None


def _options(component: ComponentRecord, style: str) -> StyleOptions:
    return StyleOptions(style=style, columns=dict(component.columns), output_key=component.output_key,
                        dataset_name=component.dataset_name)


def _binding(component: ComponentRecord, plugin: PluginInfo, fn: Any) -> BoundScorer:
    """A BoundScorer of the component calling ``fn`` (None: for checks only) with its style and spec."""
    kind = _kind(component, plugin)
    style, params = _style(component, plugin)
    args = {} if plugin.is_class else dict(component.args)
    return BoundScorer(component.name, plugin, kind, fn, args, call_spec(style, params), _options(component, style),
                       passed_inputs(style, params))


def _check_step_options(component: ComponentRecord, kind: str) -> None:
    """Step transforms and outcome summaries only mean something for process (step-level) components."""
    if kind == "process":
        return
    for key, value, default in (("transform", component.transform, "none"), ("outcome", component.outcome, "min")):
        if value != default:
            raise RewardPluginError(
                f"reward component {component.name!r}: {key}={value!r} applies to process (step-level) components "
                f"only; this component's kind is {kind!r}",
                component=component.name, plugin=component.plugin)


def _check_args(component: ComponentRecord, plugin: PluginInfo) -> None:
    """The component's args, style and style options against the plugin (RewardPluginError naming both)."""
    args = dict(component.args)
    style, params = _style(component, plugin)
    for reserved in _RESERVED_PARAMS:
        if reserved in args:
            raise _error(component, plugin, f"{reserved!r} cannot be set in args; the runtime passes it")
    if component.output_key is not None and style not in DICT_STYLES:
        raise _error(component, plugin, f"output_key picks a key of the dicts verl and OpenRLHF functions return; "
                                        f"this plugin is called in style {style!r}, which returns a list. Remove "
                                        f"output_key")
    spec = _constructor_spec(component, plugin) if plugin.is_class else call_spec(style, params)
    for arg in args:
        if not spec.var_keyword and arg not in spec.names:
            close = difflib.get_close_matches(arg, spec.names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise _error(component, plugin, f"the plugin does not accept arg {arg!r}.{hint} It accepts: "
                                            f"{', '.join(spec.names) or 'no keyword arguments'}")
    if plugin.is_class:
        missing = [r for r in spec.required if r not in args]
        what = f"(the scorer's constructor takes: {', '.join(spec.names) or 'no arguments'})"
    elif style in DICT_STYLES:  # their calls pass no data columns: the rest must come from args
        own = {*VERL_INPUTS, *VERL_BATCH_INPUTS}  # the verl adapter passes these itself
        missing = [r for r in spec.required if r not in args and r not in own]
        what = f"({style} functions get their own inputs and the component's args only)"
    else:  # a function's required keywords may be data columns: checked when called (and by rlhf validate)
        missing = []
    if missing:
        raise _error(component, plugin, f"missing required arg {missing[0]!r}; set it under the component's args "
                                        f"{what}")


def build_scorer(component: Any, plugin: PluginInfo | None = None) -> "BoundScorer":
    """Bind a component (a recipe's ``rewards[]`` entry, or any object with ``name`` and ``plugin``: see
    ``component_record``) to its plugin: a callable ``(prompts, completions, columns) -> list[float]``. Classes
    are instantiated with ``args`` and ``setup()`` runs.

    ``plugin`` skips resolution (the reward workers resolve in the driver and ship the PluginInfo).
    """
    component = component_record(component)
    plugin = plugin or resolve_plugin(component.plugin)
    _check_args(component, plugin)
    if not plugin.is_class:
        return _binding(component, plugin, plugin.obj)
    instance = _instantiate(component.name, plugin, dict(component.args))
    return _binding(component, plugin, instance)


def _instantiate(component_name: str, plugin: PluginInfo, args: dict[str, Any]) -> Any:
    who = f"reward component {component_name!r} (plugin {plugin.name!r})"
    try:
        instance = plugin.obj(**args)
    except Exception as exc:
        raise RewardPluginError(
            f"{who}: constructing the scorer failed: {type(exc).__name__}: {exc}{_where(exc)}",
            component=component_name,
            plugin=plugin.name,
        ) from exc
    setup = getattr(instance, "setup", None)
    if callable(setup):
        try:
            setup()
        except Exception as exc:
            raise RewardPluginError(
                f"{who}: setup() failed: {type(exc).__name__}: {exc}{_where(exc)}",
                component=component_name,
                plugin=plugin.name,
            ) from exc
    return instance
