"""The reward plugin API's error, protocols and records: RewardPluginError, RewardFn, Scorer, PluginInfo, and
ComponentRecord (what the API reads of a reward component; ``component_record`` completes a partial one).

Part of the plugin API (re-exported by ``rewards.api``, where plugin authors import them). Standard library only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Protocol, Sequence, runtime_checkable


class RewardPluginError(ValueError):
    """A reward plugin could not be found, bound, run, or returned bad values.

    ``component``, ``plugin`` and ``sample_index`` say where (each may be None when unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        component: str | None = None,
        plugin: str | None = None,
        sample_index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.component = component
        self.plugin = plugin
        self.sample_index = sample_index


@runtime_checkable
class RewardFn(Protocol):
    """A function plugin: one value per completion (float, bool, or None for not applicable)."""

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> Sequence[Any]: ...


@runtime_checkable
class Scorer(Protocol):
    """An instance of a class plugin. The class takes the recipe's ``args`` as constructor kwargs.

    It may also define ``setup(self) -> None``, called once per worker before the first ``__call__``
    (load a model there, not in ``__init__``, so that building the config stays cheap).
    """

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> Sequence[Any]: ...


RewardModel = Scorer  # the name the design uses for stateful scorers


@dataclass(frozen=True)
class PluginInfo:
    """A resolved plugin: what ``rlhf rewards list`` shows and what ``build_scorer`` binds."""

    name: str  # registered name, entry-point name, or the 'module:attr' reference
    kind: str  # "reward" | "constraint" | "process"
    obj: Any  # the function or class
    doc: str  # its docstring (cleaned)
    source: str  # 'module:qualname' where it is defined

    @property
    def is_class(self) -> bool:
        return inspect.isclass(self.obj)

    @property
    def summary(self) -> str:
        """First line of the docstring."""
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


@dataclass(frozen=True)
class ComponentRecord:
    """What the plugin API (``build_scorer``, ``check_component``, ``check_columns``, ``component_kind``) reads of a
    reward component: the fields of the recipe's ``rewards[]`` entry (rlhf/config/schema.py RewardComponentConfig,
    where each is described), with the recipe's defaults."""

    name: str
    plugin: str
    kind: Optional[str] = None  # None: the plugin's kind
    args: Mapping[str, Any] = field(default_factory=dict)
    style: str = "auto"
    columns: Mapping[str, str] = field(default_factory=dict)
    output_key: Optional[str] = None
    dataset_name: Optional[str] = None
    transform: str = "none"
    outcome: str = "min"


_RECORD_FIELDS = tuple(f.name for f in fields(ComponentRecord))


def component_record(component: Any) -> ComponentRecord:
    """The API for duck-typed callers: a complete ComponentRecord from any object with at least ``name`` and
    ``plugin`` (a recipe's RewardComponentConfig, a reward worker's spec, or e.g. ``SimpleNamespace(name=...,
    plugin=..., args=...)`` in a test or script); the fields it lacks get the recipe's defaults. The plugin API's
    entry points call it, so they read every field directly: the one place a partial record is completed."""
    if isinstance(component, ComponentRecord):
        return component
    values = {name: getattr(component, name) for name in _RECORD_FIELDS if hasattr(component, name)}
    missing = [name for name in ("name", "plugin") if values.get(name) is None]
    if missing:
        raise RewardPluginError(f"a reward component needs a name and a plugin; {type(component).__name__} "
                                f"{component!r} has no {missing[0]!r}. Give it one (a recipe's rewards[] entry "
                                f"sets both)", plugin=values.get("plugin"))
    values["args"] = dict(values.get("args") or {})
    values["columns"] = dict(values.get("columns") or {})
    return ComponentRecord(**values)
