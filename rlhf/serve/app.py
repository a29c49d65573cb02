"""The reward server's application, without sockets: its settings and limits, bearer-token auth, and the answers
to ``/v1/health``, ``/v1/components`` and ``/v1/score`` (protocol 1, see ``reward_server.py``).

Scoring goes through the platform's one scoring path, an in-process ``RewardGroup`` (``rlhf/scoring``): it builds
the components once (``setup()`` runs then), runs the requested ones in parallel threads, each bounded by its
recipe ``timeout_s`` and one call at a time unless ``serialize_components=False``, isolates a failing plugin and
looks for the sample it fails on. This module maps those per-component outcomes onto the protocol's statuses.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import threading
from typing import Any, Mapping

from rewards.api import RewardPluginError
from rlhf.scoring.group import RewardGroup, ScoreOutcome, check_components
from rlhf.scoring.workers import BUSY, INTERNAL, RAISED, TIMEOUT
from rlhf.serve.protocol import PROTOCOL, RequestError, parse_score_request

TOKEN_ENV = "RLHF_REWARD_TOKEN"
LOCATE_S = 5.0  # seconds spent at most looking for the sample a raising plugin fails on (capped by timeout_s)

log = logging.getLogger("rlhf.serve")


class ServeError(ValueError):
    """The server cannot start as configured (no token, no components, insecure mode off loopback...)."""


def missing_token_message() -> str:
    return (f"no bearer token: set the environment variable {TOKEN_ENV}, or pass --token-file FILE with a file "
            f"holding a long random secret (e.g. `python -c \"import secrets; print(secrets.token_urlsafe(32))\" "
            f"> reward.token && chmod 600 reward.token`); trainers send the same token. For local testing only, "
            f"--insecure-no-auth serves without a token on a loopback host")


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class RewardApp:
    """The server's state and answers (``RewardServer`` in ``http.py`` adds the HTTP listener).

    ``recipe_or_components``: a Recipe, a recipe path, or a list of reward component configs (or dicts with
    name/plugin/kind/args/timeout_s). Components are built, and their ``setup()`` run, here. ``token`` is the
    bearer token; None is refused unless ``insecure_no_auth`` and ``host`` is a loopback address.
    """

    def __init__(
        self,
        recipe_or_components: Any,
        *,
        token: str | None = None,
        host: str = "127.0.0.1",
        max_body_mb: float = 8.0,
        max_concurrency: int = 8,
        max_batch: int = 1024,
        insecure_no_auth: bool = False,
        acquire_timeout_s: float = 0.05,
        retry_after_s: int = 1,
        serialize_components: bool = True,
        locate_failures: bool = True,
    ) -> None:
        if not max_body_mb > 0:
            raise ServeError(f"max_body_mb must be > 0, got {max_body_mb}")
        if int(max_concurrency) < 1 or int(max_batch) < 1:
            raise ServeError(f"max_concurrency and max_batch must be >= 1, got {max_concurrency} and {max_batch}")
        if token is not None:
            token = token.strip()
            if not token:
                raise ServeError("the bearer token is empty")
            if insecure_no_auth:
                raise ServeError("a token and insecure_no_auth were both given: pick one")
        elif not insecure_no_auth:
            raise ServeError(missing_token_message())
        if insecure_no_auth and not is_loopback(host):
            raise ServeError(f"--insecure-no-auth is only allowed on a loopback host (127.0.0.1, ::1, localhost), "
                             f"not {host!r}: set a token to listen there")
        self.host = host
        self.max_body_bytes = int(max_body_mb * (1 << 20))
        self.max_concurrency = int(max_concurrency)
        self.max_batch = int(max_batch)
        self.acquire_timeout_s = float(acquire_timeout_s)
        self.retry_after_s = max(1, int(math.ceil(retry_after_s)))
        self.locate_s = LOCATE_S if locate_failures else 0.0
        self._token = token.encode("utf-8") if token is not None else None
        self.group = _build_group(recipe_or_components, serialize_components)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._stats_lock = threading.Lock()
        self._stats = {"score_requests": 0, "ok": 0, "busy_503": 0, "unauthorized_401": 0, "client_errors_4xx": 0,
                       "server_errors_5xx": 0}

    @property
    def names(self) -> list[str]:
        return list(self.group.names)

    # ---- admission and counters

    def acquire_slot(self) -> bool:
        """Take one of the ``max_concurrency`` scoring slots, waiting up to ``acquire_timeout_s``."""
        return self._slots.acquire(timeout=self.acquire_timeout_s)

    def release_slot(self) -> None:
        self._slots.release()

    def stats(self) -> dict[str, int]:
        """Counters: score requests, answered ok, refused busy (503), 401s, other 4xx, 5xx."""
        with self._stats_lock:
            return dict(self._stats)

    def count(self, key: str) -> None:
        with self._stats_lock:
            self._stats[key] += 1

    # ---- answers

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "protocol": PROTOCOL, "components": self.names}

    def describe(self) -> dict[str, Any]:
        group = self.group
        return {"protocol": PROTOCOL, "components": [
            {"name": name, "kind": kind, "plugin": plugin.name}
            for name, kind, plugin in zip(group.names, group.kinds, group.plugins)]}

    def auth_problem(self, header: str | None) -> str | None:
        """Why the Authorization header is refused, or None when it carries the token (or auth is off)."""
        if self._token is None:
            return None
        if not header:
            return "missing bearer token: send the header 'Authorization: Bearer <token>'"
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return "malformed Authorization header: expected 'Bearer <token>'"
        if not hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), self._token):
            return "invalid bearer token"
        return None

    def score(self, payload: Any) -> dict[str, Any]:
        """Answer a /v1/score body (already parsed JSON) -> the response body; raises RequestError."""
        wanted, prompts, completions, columns = parse_score_request(payload, self.names, self.max_batch)
        try:  # a column some component needs is missing: 400, before anything is scored
            self.group.check_columns(columns, only=wanted)
        except RewardPluginError as exc:
            raise RequestError(400, str(exc), component=exc.component) from None
        n = len(prompts)
        if n == 0:
            outcomes = {name: ScoreOutcome(values=[]) for name in wanted}
        else:
            outcomes = self.group.outcomes(prompts, completions, columns, only=wanted, locate_s=self.locate_s)
        for name, outcome in outcomes.items():
            if outcome.error is not None:
                raise self._failure(name, outcome, prompts)
        errors = {name: self._sample_errors(name, outcome) for name, outcome in outcomes.items()}
        rows = [[_json_float(outcomes[name].values[i], i, errors[name]) for name in wanted]  # type: ignore[index]
                for i in range(n)]
        metadata = {
            name: {"seconds": round(outcome.elapsed_s, 6), "errors": len(errors[name]),
                   "first_error": errors[name][min(errors[name])] if errors[name] else None}
            for name, outcome in outcomes.items()
        }
        kinds = dict(zip(self.group.names, self.group.kinds))
        return {"protocol": PROTOCOL, "names": wanted, "kinds": [kinds[name] for name in wanted], "values": rows,
                "metadata": metadata}

    def _sample_errors(self, name: str, outcome: ScoreOutcome) -> dict[int, str]:
        """{sample: why its value is unusable}: the plugin's bad values, and step scores (protocol 1 carries one
        value per sample: a process component is served by the outcome values its plugin returns)."""
        errors = dict(outcome.sample_errors)
        for i, steps in enumerate(outcome.steps or []):
            if steps is not None and i not in errors:
                errors[i] = (f"reward component {name!r}, sample {i}: returned {len(steps)} step scores; protocol "
                             f"{PROTOCOL} serves one value per sample (return a single outcome value)")
        return errors

    def _failure(self, name: str, outcome: ScoreOutcome, prompts: list[str]) -> RequestError:
        """The answer to a component's failed call: 504 timeout, 503 still busy with a timed-out call, else 500
        naming the component and, when it is known, the failing sample; tracebacks go to the log only."""
        timeout_s = self.group.timeouts[self.group.names.index(name)]
        if outcome.cause == TIMEOUT:
            log.error("component %r ran past its timeout_s of %.1f s on a batch of %d samples", name, timeout_s,
                      len(prompts))
            return RequestError(504, f"component {name!r} did not finish within its timeout_s of {timeout_s:g} s",
                                component=name, sample=None)
        if outcome.cause == BUSY:
            return RequestError(503, f"component {name!r} is still running an earlier call that ran past its "
                                     f"timeout_s of {timeout_s:g} s; retry after {self.retry_after_s} s",
                                {"Retry-After": str(self.retry_after_s)}, component=name)
        if outcome.cause == INTERNAL:
            log.error("component %r: internal error while scoring %d samples: %s", name, len(prompts),
                      outcome.traceback or outcome.error)
            return RequestError(500, f"internal error while scoring component {name!r} (see the server log)",
                                component=name, sample=None, retryable=False)
        raised = outcome.cause == RAISED  # the plugin raised (vs. returned a wrong-length/-type result)
        sample = outcome.error_sample
        if sample is not None and 0 <= sample < len(prompts):
            where = f"failing sample: {sample} (prompt {_snippet(prompts[sample])})"
        else:
            where = "the failing sample could not be isolated" if raised else "whole batch"
            sample = None
        plugin = self.group.plugins[self.group.names.index(name)].name
        log.error("component %r (plugin %r) failed on a batch of %d samples; %s\n%s", name, plugin, len(prompts),
                  where, outcome.traceback or outcome.error)
        return RequestError(500, f"{outcome.error}; {where}", component=name, sample=sample, retryable=False)


def _json_float(value: float, i: int, errors: Mapping[int, str]) -> float | None:
    return None if i in errors or value is None or math.isnan(value) else float(value)


def _snippet(text: Any, limit: int = 60) -> str:
    s = str(text)
    return repr(s[:limit] + ("..." if len(s) > limit else ""))


def _component_configs(source: Any) -> list[Any]:
    """Reward component configs from a Recipe, a recipe path, or a sequence of configs / dicts."""
    if isinstance(source, (str, os.PathLike)):
        from rlhf.config import load_recipe

        source = load_recipe(source)
    if hasattr(source, "rewards"):
        return list(source.rewards)
    configs = []
    for item in source:
        if isinstance(item, Mapping):
            from rlhf.config.schema import RewardComponentConfig

            item = RewardComponentConfig(**item)
        configs.append(item)
    return configs


def _build_group(source: Any, serialize: bool) -> RewardGroup:
    """The in-process reward group of the served components (every plugin resolves before any is built)."""
    from rewards.remote import RemoteReward

    configs = _component_configs(source)
    if not configs:
        raise ServeError("no reward components to serve: the recipe's `rewards` list is empty")
    try:
        plugins = check_components(configs)
    except RewardPluginError:
        raise
    except ValueError as exc:  # duplicate names
        raise ServeError(str(exc)) from None
    for c, plugin in zip(configs, plugins):
        if isinstance(plugin.obj, type) and issubclass(plugin.obj, RemoteReward):
            raise ServeError(f"reward component {c.name!r} uses the 'remote' plugin: a reward server serves the "
                             f"components themselves; start it with the recipe that defines them")
    return RewardGroup(configs, use_ray=False, serialize=serialize)
