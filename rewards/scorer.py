"""BoundScorer, a reward component bound to its plugin, with its argument plumbing: the keyword parameters a
plugin's call takes (``_KeywordSpec``), which data columns and component args it receives, and errors that name
the component, the plugin and where a plugin raised.

Part of the plugin API (``BoundScorer`` is re-exported by ``rewards.api``; ``rewards.api.build_scorer`` builds one).
Standard library only.
"""

from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from rewards.outputs import convert_outputs, convert_process_outputs
from rewards.records import PluginInfo, RewardPluginError

_RESERVED_PARAMS = ("prompts", "completions")


@dataclass(frozen=True)
class _KeywordSpec:
    """The keyword parameters a callable takes after (prompts, completions)."""

    names: tuple[str, ...]  # every named keyword parameter
    required: tuple[str, ...]  # those without a default
    var_keyword: bool  # takes **kwargs


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


def _where(exc: BaseException) -> str:
    """' (at file:line in function)' for the innermost frame of exc's traceback, or ''."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno} in {last.name})"


class BoundScorer:
    """A component bound to its plugin. Call it with (prompts, completions, columns) -> list[float] (B,).

    Columns are passed as keyword arguments: only those the plugin names, or all when it takes ``**kwargs``.
    Component ``args`` win over columns of the same name.
    """

    def __init__(
        self,
        component_name: str,
        plugin: PluginInfo,
        kind: str,
        fn: Callable,
        bound_args: dict[str, Any],
        spec: _KeywordSpec,
    ) -> None:
        self.component_name = component_name
        self.plugin = plugin
        self.kind = kind
        self._fn = fn
        self._bound_args = bound_args
        self._spec = spec

    @property
    def who(self) -> str:
        return f"reward component {self.component_name!r} (plugin {self.plugin.name!r})"

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence]
    ) -> list[float]:
        values, errors = self.run(prompts, completions, columns)
        if errors:
            raise errors[0]
        return values

    def run(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence]
    ) -> tuple[list[float], list[RewardPluginError]]:
        """Score and check; returns values (NaN where a sample's output was bad) and one error per bad sample.

        Raises RewardPluginError when the plugin raises, or its output as a whole is unusable (wrong length).
        """
        outputs = self._call(prompts, completions, columns)
        return convert_outputs(self.component_name, self.plugin.name, outputs, len(prompts), self.kind, prompts)

    def run_process(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence]
    ) -> tuple[list[float], list[list[float] | None], list[RewardPluginError]]:
        """A process component's call: (outcome values (B,), step scores per sample or None, per-sample errors).

        ``columns["steps"]`` (the runtime's segmentation, one list of step texts per sample) is passed to plugins
        that take ``steps``; a sample's output is a list with one score per step, a single outcome value, or None.
        """
        outputs = self._call(prompts, completions, columns)
        counts = [len(s) for s in columns["steps"]] if "steps" in columns else None
        return convert_process_outputs(self.component_name, self.plugin.name, outputs, len(prompts), prompts, counts)

    def _call(self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence]) -> Any:
        """The plugin's raw output; a plugin that raises becomes a RewardPluginError naming it."""
        kwargs = self._kwargs(columns, n=len(prompts))
        try:
            return self._fn(list(prompts), list(completions), **kwargs)
        except Exception as exc:
            raise RewardPluginError(
                f"{self.who} raised {type(exc).__name__}: {exc}{_where(exc)}",
                component=self.component_name,
                plugin=self.plugin.name,
            ) from exc

    def _kwargs(self, columns: Mapping[str, Sequence], n: int) -> dict[str, Any]:
        kwargs = dict(self._bound_args)
        reserved = [c for c in _RESERVED_PARAMS if c in columns]
        if reserved:
            raise RewardPluginError(
                f"{self.who}: a data column may not be named {reserved[0]!r}; rename it in the dataset",
                component=self.component_name,
                plugin=self.plugin.name,
            )
        wanted = [c for c in columns if self._spec.var_keyword or c in self._spec.names]
        for name in wanted:
            if name in kwargs:
                continue
            if len(columns[name]) != n:
                raise RewardPluginError(
                    f"{self.who}: column {name!r} has {len(columns[name])} values for {n} samples",
                    component=self.component_name,
                    plugin=self.plugin.name,
                )
            kwargs[name] = columns[name]
        missing = [r for r in self._spec.required if r not in kwargs]
        if missing:
            raise RewardPluginError(
                f"{self.who} needs the column {missing[0]!r}, which the batch does not have. Available columns: "
                f"{sorted(columns) or '(none)'}. Add it to the dataset, set it under the component's args, "
                f"or give the parameter a default.",
                component=self.component_name,
                plugin=self.plugin.name,
            )
        return kwargs
