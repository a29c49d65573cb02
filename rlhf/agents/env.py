"""The Environment API users write against, and how the runtime finds, describes and calls an environment.

An environment is a plain class (no base class), one instance per episode::

    from rlhf.agents import Step, environment

    @environment("calculator")                         # recipes say  rollout.agent.env: calculator
    class Calculator:
        def reset(self, *, prompt, answer, **row):     # the dataset row's columns by name
            self.answer = answer                       # returns the first observation, or None: the row's prompt
        def add(self, a: int, b: int) -> int:          # public typed methods are the tools
            \"\"\"Add two integers.\"\"\"
            return a + b
        def score(self, response: str) -> dict:        # optional, once at the end (response = the last model turn)
            return {"correct": float(response.strip() == self.answer)}

or gym-like, with ``step(action) -> Step | (observation, rewards, done)`` called with each model turn that holds
no tool call. Optional: ``setup()`` as a classmethod (once per run, for state shared by all episodes), ``close()``
(once per episode, at its end), ``async def`` methods (run on an event loop of the episode's own).

A recipe names the class by registered name, ``package.module:attr`` or the ``rlhf.environments`` entry-point
group, like reward plugins. Tools: every public method that is not part of the protocol (reset, step, score,
setup, close) is a tool; its JSON schema comes from the signature's annotations and the docstring (the first
paragraph describes the tool; ``Args:`` lines ``name: text`` describe parameters).

``EnvCaller`` runs one call with a timeout in a daemon thread, so an environment that sleeps or waits cannot hang the
run (one that holds the GIL can only be bounded by a process of its own: see EnvCaller); the rollout decides what
a failure means for the episode (rlhf/rollout/agent.py).
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import importlib.metadata
import inspect
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

ENTRY_POINT_GROUP = "rlhf.environments"
PROTOCOL_METHODS = ("reset", "step", "score", "setup", "close")
_REGISTRY: dict[str, type] = {}
_LOCK = threading.RLock()
_builtins_loaded = False


class EnvironmentError_(ValueError):
    """An environment broke its contract (wrong return type, unknown name, reset failed): the message names the
    environment, the method and the episode."""


AgentEnvError = EnvironmentError_


@dataclass
class Step:
    """What a gym-like ``step`` returns."""

    observation: str | None = None  # appended to the episode (None: nothing to show)
    rewards: dict[str, float] = field(default_factory=dict)  # this turn's named rewards
    done: bool = False


# --------------------------------------------------------------------------- registration and resolution


def environment(name: str | type | None = None) -> Any:
    """Register an environment class under ``name`` (default: the class name)."""
    if isinstance(name, type):
        return _register(name.__name__, name)

    def register(cls: type) -> type:
        return _register(name or cls.__name__, cls)

    return register


def _register(name: str, cls: type) -> type:
    if not isinstance(cls, type):
        raise TypeError(f"@environment({name!r}) decorates a class, got {type(cls).__name__}")
    if not callable(getattr(cls, "reset", None)):
        raise TypeError(f"environment {name!r} ({cls.__qualname__}) has no reset(**row) method")
    with _LOCK:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and _where(existing) != _where(cls):
            raise ValueError(f"environment name {name!r} is already registered by {_where(existing)}")
        _REGISTRY[name] = cls
    return cls


def _where(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _load_builtins() -> None:
    global _builtins_loaded
    with _LOCK:
        if not _builtins_loaded:
            importlib.import_module("rlhf.agents.envs")
            _builtins_loaded = True


def resolve_environment(ref: str) -> type:
    """The environment class a recipe names: a registered name, ``module:attr`` or an entry point."""
    where = f"rollout.agent.env {ref!r}"
    if ":" in ref:
        module_name, _, attr = ref.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise EnvironmentError_(f"{where}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise EnvironmentError_(f"{where}: module {module_name!r} has no attribute {part!r}")
            obj = getattr(obj, part)
        return _check_class(obj, where)
    _load_builtins()
    with _LOCK:
        if ref in _REGISTRY:
            return _REGISTRY[ref]
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == ref:
            return _check_class(ep.load(), f"{where} (entry point {ep.value})")
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(ref, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise EnvironmentError_(f"{where}: no environment of that name{hint} Known: {known}; or give 'module:Class'")


def _check_class(obj: Any, where: str) -> type:
    if not isinstance(obj, type):
        raise EnvironmentError_(f"{where} is {type(obj).__name__}, not a class")
    if not callable(getattr(obj, "reset", None)):
        raise EnvironmentError_(f"{where}: class {obj.__qualname__} has no reset(**row) method")
    return obj


def list_environments() -> dict[str, type]:
    _load_builtins()
    with _LOCK:
        return dict(_REGISTRY)


# --------------------------------------------------------------------------- tools and their schemas

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array", dict: "object"}


def tool_names(cls: type) -> list[str]:
    """The public methods of ``cls`` that are tools (not part of the protocol), in definition order: its own, then
    inherited ones (a mixin providing `python`, say)."""
    names: list[str] = []
    for base in cls.__mro__[:-1]:  # the class, then its bases; not `object`
        for name, member in vars(base).items():
            if (not name.startswith("_") and name not in PROTOCOL_METHODS and inspect.isfunction(member)
                    and name not in names):
                names.append(name)
    return names


def tool_specs(cls: type) -> list[dict]:
    """OpenAI-style function specs of the class's tools: name, description, JSON-schema parameters."""
    specs = []
    for name in tool_names(cls):
        fn = getattr(cls, name)
        doc = inspect.getdoc(fn) or ""
        described = _arg_docs(doc)
        props, required = {}, []
        for p in list(inspect.signature(fn).parameters.values())[1:]:  # skip self
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            prop: dict[str, Any] = {}
            annotation = _annotation(fn, p.name)
            if annotation in _JSON_TYPES:
                prop["type"] = _JSON_TYPES[annotation]
            if p.name in described:
                prop["description"] = described[p.name]
            props[p.name] = prop
            if p.default is p.empty:
                required.append(p.name)
        specs.append({"type": "function", "function": {
            "name": name, "description": doc.split("\n\n")[0].strip(),
            "parameters": {"type": "object", "properties": props, "required": required}}})
    return specs


def _annotation(fn: Callable, param: str) -> Any:
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception:  # an annotation that cannot be evaluated: the schema leaves its type out
        hints = {}
    return hints.get(param)


def _arg_docs(doc: str) -> dict[str, str]:
    """``Args:`` section lines ``name: text`` (Google style) or ``name (type): text``."""
    out: dict[str, str] = {}
    section = re.split(r"\n\s*Args:\s*\n", doc, maxsplit=1)
    if len(section) < 2:
        return out
    for line in section[1].splitlines():
        m = re.match(r"\s+(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
        elif line.strip() and not line.startswith(" "):
            break
    return out


def bind_call(cls: type, name: str, args: tuple, kwargs: dict) -> str | None:
    """None when ``name(*args, **kwargs)`` fits the tool's signature, else a short message for the model."""
    tools = tool_names(cls)
    if name not in tools:
        return f"unknown tool {name!r}; tools: {', '.join(tools) or 'none'}"
    try:
        bound = inspect.signature(getattr(cls, name)).bind(None, *args, **kwargs)
    except TypeError as exc:
        return f"bad arguments for {name}: {exc}"
    for param, value in bound.arguments.items():
        want = _annotation(getattr(cls, name), param)
        if want in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                     or (want is int and not isinstance(value, int))):
            return f"bad arguments for {name}: {param} must be {_JSON_TYPES[want]}, got {type(value).__name__}"
        if want in (str, list, dict) and not isinstance(value, want):
            return f"bad arguments for {name}: {param} must be {_JSON_TYPES[want]}, got {type(value).__name__}"
    return None


# --------------------------------------------------------------------------- calling with a timeout


@dataclass
class CallResult:
    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    seconds: float = 0.0


class EnvCaller:
    """Runs ``fn(*args, **kwargs)`` in a daemon thread and waits at most ``timeout_s``. One caller per episode: a
    coroutine (``async def`` methods) runs on the episode's own event loop, kept for its whole life (so what
    ``reset`` ties to the loop still works in ``step``), started on first use and stopped by ``close``.

    A call that times out keeps its thread (Python cannot kill it): the rollout then abandons the episode's
    environment. A call that holds the GIL (a C extension, a catastrophic regex) cannot be preempted; it is marked
    timed out once it returns late, but it delays the turn meanwhile: run such environments behind a process
    boundary (a subprocess, a server) of their own."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None

    def _episode_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True, name="env-loop").start()
            self._loop = loop
        return self._loop

    def __call__(self, fn: Callable, *args: Any, **kwargs: Any) -> CallResult:
        result = CallResult()
        start = time.perf_counter()

        def target() -> None:
            try:
                value = fn(*args, **kwargs)
                if inspect.iscoroutine(value):
                    value = asyncio.run_coroutine_threadsafe(value, self._episode_loop()).result()
                result.value = value
            except BaseException as exc:  # noqa: BLE001  (reported to the episode, never swallowed silently)
                result.error = exc

        thread = threading.Thread(target=target, daemon=True, name=f"env-{getattr(fn, '__name__', 'call')}")
        thread.start()
        thread.join(self.timeout_s)
        result.seconds = time.perf_counter() - start
        if thread.is_alive() or result.seconds > self.timeout_s:
            result.timed_out = True
        return result

    def close(self) -> None:
        """Stop the episode's event loop (if one was started)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None


def as_step(value: Any, env_name: str, episode: int) -> Step:
    """A ``step`` return value as a Step: a Step, or (observation, rewards, done); rewards a dict or a number."""
    if isinstance(value, Step):
        step = value
    elif isinstance(value, tuple) and len(value) == 3:
        step = Step(value[0], value[1], value[2])
    else:
        raise EnvironmentError_(f"environment {env_name!r}, episode {episode}: step() returned "
                                f"{type(value).__name__}; expected a Step or (observation, rewards, done)")
    step.rewards = as_rewards(step.rewards, env_name, "step", episode)
    if step.observation is not None and not isinstance(step.observation, str):
        raise EnvironmentError_(f"environment {env_name!r}, episode {episode}: step() observation is "
                                f"{type(step.observation).__name__}; expected str or None")
    if not isinstance(step.done, bool):
        raise EnvironmentError_(f"environment {env_name!r}, episode {episode}: step() done is "
                                f"{type(step.done).__name__}; expected bool")
    return step


def as_rewards(value: Any, env_name: str, method: str, episode: int) -> dict[str, float]:
    """Named rewards from a dict of numbers, a single number ({"reward": x}) or None ({})."""
    if value is None:
        return {}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"reward": float(value)}
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                                       for k, v in value.items()):
        return {k: float(v) for k, v in value.items()}
    raise EnvironmentError_(f"environment {env_name!r}, episode {episode}: {method}() returned {value!r}; expected "
                            "a number or a dict of name -> number")


def takes_response(cls: type) -> bool:
    """``score(self, response)`` takes the last model turn; ``score(self)`` does not."""
    params = list(inspect.signature(cls.score).parameters.values())[1:]
    return bool(params)
