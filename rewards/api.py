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
``rewards.records`` the error and records (``RewardPluginError``, ``PluginInfo``, the ``Scorer`` protocol),
``rewards.scorer`` the ``BoundScorer`` that ``build_scorer`` returns, and ``rewards.outputs`` the output checks
(``check_outputs``, ``convert_outputs``, ``convert_process_outputs``). Import them all from here. The API modules
import only the standard library (no torch, no ray).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import threading
from typing import Any, Callable

from rewards.outputs import check_outputs, convert_outputs, convert_process_outputs
from rewards.records import PluginInfo, RewardFn, RewardModel, RewardPluginError, Scorer
from rewards.scorer import _RESERVED_PARAMS, BoundScorer, _KeywordSpec, _keyword_spec, _where

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGIN_KINDS",
    "BoundScorer",
    "PluginInfo",
    "RewardFn",
    "RewardModel",
    "RewardPluginError",
    "Scorer",
    "build_scorer",
    "check_component",
    "check_outputs",
    "component_kind",
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
    """Fail early unless the plugin accepts (prompts, completions) positionally."""
    try:
        params = _plugin_params(obj)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"reward plugin {name!r}: {exc}") from exc
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var_positional = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(positional) < 2 and not has_var_positional:
        raise TypeError(
            f"reward plugin {name!r} ({_qualified(obj)}): its call must accept (prompts, completions, ...) as the "
            f"first two positional parameters; its parameters are ({', '.join(str(p) for p in params)})"
        )


def _constructor_spec(cls: type) -> _KeywordSpec:
    return _keyword_spec(list(inspect.signature(cls).parameters.values()), skip_positional=0)


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
    except Exception as exc:
        raise RewardPluginError(
            f"reward plugin {ref!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}",
            plugin=ref,
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise RewardPluginError(_missing_attr_message(ref, obj, part), plugin=ref)
        obj = getattr(obj, part)
    return _info_for_object(ref, obj)


def _missing_attr_message(ref: str, owner: Any, attr: str) -> str:
    public = sorted(n for n in dir(owner) if not n.startswith("_") and callable(getattr(owner, n, None)))
    close = difflib.get_close_matches(attr, public, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"reward plugin {ref!r}: {getattr(owner, '__name__', owner)!r} has no attribute {attr!r}.{hint}"


def _info_for_object(ref: str, obj: Any) -> PluginInfo:
    """PluginInfo for an object reached by reference; undecorated objects count as kind "reward"."""
    marker = vars(obj).get(_PLUGIN_ATTR) if inspect.isclass(obj) else getattr(obj, _PLUGIN_ATTR, None)
    kind = marker[1] if marker else "reward"
    _check_call_shape(ref, obj)
    return PluginInfo(name=ref, kind=kind, obj=obj, doc=inspect.getdoc(obj) or "", source=_qualified(obj))


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> PluginInfo:
    try:
        obj = ep.load()
    except Exception as exc:
        raise RewardPluginError(
            f"reward plugin {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) failed to load: "
            f"{type(exc).__name__}: {exc}",
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


def component_kind(component: Any, plugin: PluginInfo) -> str:
    """The component's kind: the recipe's ``kind`` when it sets one, else the plugin's kind."""
    kind = getattr(component, "kind", None) or plugin.kind
    if kind not in PLUGIN_KINDS:
        raise RewardPluginError(
            f"reward component {component.name!r}: unknown kind {kind!r}; expected one of {PLUGIN_KINDS}",
            component=component.name,
            plugin=plugin.name,
        )
    return kind


def check_component(component: Any) -> PluginInfo:
    """Resolve a component's plugin and check its ``args`` without building it (cheap; no setup())."""
    plugin = resolve_plugin(component.plugin)
    _check_step_options(component, component_kind(component, plugin))
    _check_args(component, plugin)
    return plugin


def _check_step_options(component: Any, kind: str) -> None:
    """Step transforms and outcome summaries only mean something for process (step-level) components."""
    if kind == "process":
        return
    for key, default in (("transform", "none"), ("outcome", "min")):
        if getattr(component, key, default) != default:
            raise RewardPluginError(
                f"reward component {component.name!r}: {key}={getattr(component, key)!r} applies to process "
                f"(step-level) components only; this component's kind is {kind!r}",
                component=component.name, plugin=getattr(component, "plugin", None))


def _check_args(component: Any, plugin: PluginInfo) -> None:
    args = dict(component.args or {})
    who = f"reward component {component.name!r} (plugin {plugin.name!r})"
    for reserved in _RESERVED_PARAMS:
        if reserved in args:
            raise RewardPluginError(
                f"{who}: {reserved!r} cannot be set in args; the runtime passes it",
                component=component.name,
                plugin=plugin.name,
            )
    spec = _constructor_spec(plugin.obj) if plugin.is_class else _keyword_spec(_plugin_params(plugin.obj), 2)
    for arg in args:
        if not spec.var_keyword and arg not in spec.names:
            close = difflib.get_close_matches(arg, spec.names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RewardPluginError(
                f"{who}: the plugin does not accept arg {arg!r}.{hint} It accepts: "
                f"{', '.join(spec.names) or 'no keyword arguments'}",
                component=component.name,
                plugin=plugin.name,
            )
    missing = [r for r in spec.required if r not in args] if plugin.is_class else []
    if missing:  # a function's required keywords may be data columns: checked when called
        raise RewardPluginError(
            f"{who}: missing required arg {missing[0]!r}; set it under the component's args "
            f"(the scorer's constructor takes: {', '.join(spec.names) or 'no arguments'})",
            component=component.name,
            plugin=plugin.name,
        )


def build_scorer(component: Any, plugin: PluginInfo | None = None) -> "BoundScorer":
    """Bind a component (``.name .plugin .kind .args``) to its plugin: a callable
    ``(prompts, completions, columns) -> list[float]``. Classes are instantiated with ``args`` and ``setup()`` runs.

    ``plugin`` skips resolution (the reward workers resolve in the driver and ship the PluginInfo).
    """
    plugin = plugin or resolve_plugin(component.plugin)
    kind = component_kind(component, plugin)
    _check_args(component, plugin)
    args = dict(component.args or {})
    if not plugin.is_class:
        spec = _keyword_spec(_plugin_params(plugin.obj), skip_positional=2)
        return BoundScorer(component.name, plugin, kind, plugin.obj, args, spec)
    instance = _instantiate(component.name, plugin, args)
    params = list(inspect.signature(instance.__call__).parameters.values())
    return BoundScorer(component.name, plugin, kind, instance, {}, _keyword_spec(params, skip_positional=2))


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
