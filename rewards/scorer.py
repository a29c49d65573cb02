"""BoundScorer, a reward component bound to its plugin, with its argument plumbing: the keyword parameters a
plugin's call takes (``_KeywordSpec``), which data columns and component args it receives, the calling convention
it is written for (``rewards.styles``: native, TRL, verl, OpenRLHF) and the scalars it logs besides its values
(``extras``), and errors that name the component, the plugin and where a plugin raised.

Part of the plugin API (``BoundScorer`` is re-exported by ``rewards.api``; ``rewards.api.build_scorer`` builds one).
Standard library only.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from rewards.outputs import convert_outputs, convert_process_outputs
from rewards.records import PluginInfo, RewardPluginError
from rewards.styles import (GROUND_TRUTH_COLUMNS, LABEL_COLUMNS, TRL_STYLES, TRL_UNAVAILABLE, MetricLog,
                            StyleError, StyleOptions, _KeywordSpec, _keyword_spec, as_messages, call_verl,
                            first_column, is_verl_batch, settle, unwrap_openrlhf, unwrap_verl)
from rewards.styles import where as _where

__all__ = ["BoundScorer", "_KeywordSpec", "_keyword_spec", "_where", "_RESERVED_PARAMS"]

_RESERVED_PARAMS = ("prompts", "completions")


class BoundScorer:
    """A component bound to its plugin. Call it with (prompts, completions, columns) -> list[float] (B,).

    Columns are passed as keyword arguments: only those the plugin names, or all when it takes ``**kwargs``.
    Component ``args`` win over columns of the same name. ``style`` (``rewards.styles``) says how the plugin is
    called (native by default); its ``columns`` mapping gives the plugin a dataset column under another name.
    ``fn`` may be None for a scorer that only checks columns (``column_problem``).
    """

    def __init__(
        self,
        component_name: str,
        plugin: PluginInfo,
        kind: str,
        fn: Callable | None,
        bound_args: dict[str, Any],
        spec: _KeywordSpec,
        style: StyleOptions | None = None,
        passed: Sequence[str] = (),
    ) -> None:
        self.component_name = component_name
        self.plugin = plugin
        self.kind = kind
        self._fn = fn
        self._bound_args = bound_args
        self._spec = spec
        self.style = style or StyleOptions()
        self._passed = tuple(passed)  # inputs the style passes that the plugin takes (styles.passed_inputs)
        self._verl_batch = is_verl_batch(self._passed)  # verl's batch form: one call with lists

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
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence],
        extras: dict[str, float] | None = None,
    ) -> tuple[list[float], list[RewardPluginError]]:
        """Score and check; returns values (NaN where a sample's output was bad) and one error per bad sample.

        Raises RewardPluginError when the plugin raises, or its output as a whole is unusable (wrong length).
        ``extras`` (when given) receives the scalars the plugin logs besides its values, by name (a verl dict's
        other keys, OpenRLHF's ``scores`` / ``extra_logs``, TRL's ``log_metric``): means over the batch.
        """
        outputs = self._call(prompts, completions, columns, {} if extras is None else extras)
        return convert_outputs(self.component_name, self.plugin.name, outputs, len(prompts), self.kind, prompts)

    def run_process(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence],
        extras: dict[str, float] | None = None,
    ) -> tuple[list[float], list[list[float] | None], list[RewardPluginError]]:
        """A process component's call: (outcome values (B,), step scores per sample or None, per-sample errors).

        ``columns["steps"]`` (the runtime's segmentation, one list of step texts per sample) is passed to plugins
        that take ``steps``; a sample's output is a list with one score per step, a single outcome value, or None.
        """
        outputs = self._call(prompts, completions, columns, {} if extras is None else extras)
        counts = [len(s) for s in columns["steps"]] if "steps" in columns else None
        return convert_process_outputs(self.component_name, self.plugin.name, outputs, len(prompts), prompts, counts)

    def column_problem(self, names: Sequence[str]) -> str | None:
        """None when a batch with the columns ``names`` gives the plugin every input it needs, else why not (the
        check a call makes before it reaches the plugin)."""
        try:
            self._inputs({name: [] for name in names}, 0)
        except RewardPluginError as exc:
            return str(exc)
        return None

    def _call(self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence],
              extras: dict[str, float]) -> Any:
        """The plugin's raw output (its reward values); a plugin that raises becomes a RewardPluginError naming it."""
        if self._fn is None:
            raise RuntimeError(f"{self.who}: this scorer only checks columns; build it with build_scorer")
        columns, kwargs = self._inputs(columns, n=len(prompts))
        style, n = self.style.style, len(prompts)
        try:
            if style == "verl":
                results = call_verl(self._fn, completions, columns, self._bound_args, self._accepts, self.style,
                                    self.who, batch=self._verl_batch)
                return unwrap_verl(results, self.style, self.who, extras)
            if style == "openrlhf":
                queries = [p + c for p, c in zip(prompts, completions)]
                positional: list[Any] = [queries, list(prompts)]
                if "labels" in self._passed:  # OpenRLHF's older reward_func(queries, prompts) takes no labels
                    truth = first_column(columns, LABEL_COLUMNS)
                    positional.append(list(columns[truth]) if truth else [None] * n)
                result = settle(self._fn(*positional, **kwargs))
                return unwrap_openrlhf(result, self.style, self.who, extras)
            if style in TRL_STYLES:
                log = MetricLog(extras)
                ps, cs = list(prompts), list(completions)
                if style == "trl_conversational":  # TRL's conversational format: one message per prompt / completion
                    ps, cs = as_messages(ps, "user"), as_messages(cs, "assistant")
                offered = {"prompts": ps, "completions": cs, "log_metric": log.log_metric, "log_extra": log.log_extra}
                kwargs.update({k: v for k, v in offered.items() if self._accepts(k)})
                return settle(self._fn(**kwargs))
            return settle(self._fn(list(prompts), list(completions), **kwargs))
        except StyleError as exc:  # from an adapter: a sample that raised (has a cause) or an unusable result
            raise RewardPluginError(str(exc), component=self.component_name, plugin=self.plugin.name,
                                    sample_index=exc.sample_index) from exc.__cause__
        except Exception as exc:
            raise RewardPluginError(
                f"{self.who} raised {type(exc).__name__}: {exc}{_where(exc)}",
                component=self.component_name,
                plugin=self.plugin.name,
            ) from exc

    def _accepts(self, name: str) -> bool:
        return self._spec.var_keyword or name in self._passed

    def _error(self, message: str) -> RewardPluginError:
        return RewardPluginError(message, component=self.component_name, plugin=self.plugin.name)

    def _inputs(self, columns: Mapping[str, Sequence], n: int) -> tuple[dict[str, Sequence], dict[str, Any]]:
        """(the columns with the style's mapping applied, the keyword arguments of a native / trl / openrlhf call)."""
        reserved = [c for c in _RESERVED_PARAMS if c in columns]
        if reserved:
            raise self._error(f"{self.who}: a data column may not be named {reserved[0]!r}; rename it in the dataset")
        mapped = dict(columns)
        for name, source in self.style.columns.items():
            if source not in columns:
                raise self._error(
                    f"{self.who}: its columns mapping gives it {name!r} from column {source!r}, which the batch "
                    f"does not have. Available columns: {sorted(columns) or '(none)'}. Fix the component's columns")
            mapped[name] = columns[source]
        style = self.style.style
        if style == "verl":
            self._check_verl_columns(mapped)
            return mapped, {}
        if style == "openrlhf":  # the positional inputs come from the adapter; args by keyword
            return mapped, dict(self._bound_args)
        return mapped, self._kwargs(mapped, n)

    def _check_verl_columns(self, columns: Mapping[str, Sequence]) -> None:
        truth = "ground_truths" if self._verl_batch else "ground_truth"
        wants_truth = self._accepts(truth) and truth not in self._bound_args
        if wants_truth and first_column(columns, GROUND_TRUTH_COLUMNS) is None:
            raise self._error(
                f"{self.who}: a verl compute_score takes ground_truth, and the batch has none of the columns "
                f"{list(GROUND_TRUTH_COLUMNS)}. Available columns: {sorted(columns) or '(none)'}. Map one with the "
                f"component's columns: {{ground_truth: COLUMN}}")

    def _kwargs(self, columns: Mapping[str, Sequence], n: int) -> dict[str, Any]:
        kwargs = dict(self._bound_args)
        wanted = [c for c in columns if self._spec.var_keyword or c in self._spec.names]
        for name in wanted:
            if name in kwargs:
                continue
            if len(columns[name]) != n:
                raise self._error(f"{self.who}: column {name!r} has {len(columns[name])} values for {n} samples")
            kwargs[name] = columns[name]
        missing = [r for r in self._spec.required if r not in kwargs]
        if missing and missing[0] in TRL_UNAVAILABLE:
            raise self._error(
                f"{self.who} needs TRL's {missing[0]!r}, which rlhf does not pass (there is no TRL trainer here). "
                f"Give the parameter a default (e.g. {missing[0]}=None)")
        if missing:
            raise self._error(
                f"{self.who} needs the column {missing[0]!r}, which the batch does not have. Available columns: "
                f"{sorted(columns) or '(none)'}. Add it to the dataset, set it under the component's args, "
                f"map it with the component's columns, or give the parameter a default.")
        return kwargs
