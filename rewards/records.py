"""The reward plugin API's error, protocols and records: RewardPluginError, RewardFn, Scorer, PluginInfo.

Part of the plugin API (re-exported by ``rewards.api``, where plugin authors import them). Standard library only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable


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
