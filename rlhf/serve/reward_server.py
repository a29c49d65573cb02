"""The remote reward server: a recipe's reward components behind a small, versioned HTTP API.

Start it with ``rlhf serve-rewards --recipe R`` (see :func:`serve`); trainers score through the ``remote`` reward
plugin (``rewards/remote.py``). In-process (tests)::

    server = RewardServer(recipe.rewards, token="s3cret", port=0).start()   # a background thread
    ... server.url ...
    server.stop()

Protocol 1 (every body is UTF-8 JSON; ``B`` samples, ``K`` components)::

    GET  /v1/health      no auth   -> {"status": "ok", "protocol": 1, "components": [name, ...]}
    GET  /v1/components  auth      -> {"protocol": 1, "components": [{"name", "kind", "plugin"}, ...]}
    POST /v1/score       auth
      request:  {"protocol": 1,
                 "components": [name, ...],            optional: default every component, in server order
                 "prompts": [str] * B, "completions": [str] * B,
                 "columns": {column: [value] * B}}     optional: the data columns plugins take as keywords
      response: {"protocol": 1, "names": [..K], "kinds": [..K],
                 "values": [[float | null] * K] * B,   null: not applicable (None/NaN) or an unusable value
                 "metadata": {name: {"seconds": float, "errors": int, "first_error": str | null}}}

``errors`` counts the samples whose value the plugin returned but could not be used (a string, an infinite
number...); they are null in ``values`` and ``first_error`` says why. Errors are ``{"error": message, ...}``:

* 400 malformed JSON, a missing/ill-typed field, lengths that disagree, an unknown component or a column a
  component needs but the request lacks -- the message names the field, component and sample;
* 401 a missing or wrong bearer token (``Authorization: Bearer <token>``, compared in constant time);
* 404/405 an unknown endpoint or method; 411 no Content-Length (chunked bodies are refused);
* 413 a Content-Length over ``max_body_mb`` (refused from the header: the body is never read into memory) or
  more than ``max_batch`` samples;
* 500 a plugin raised or returned the wrong number of values: ``{"error", "component", "sample",
  "retryable": false}`` (the failing sample is isolated by re-scoring halves of the batch when the plugin does not
  say which; the traceback goes to the server's log, never into the response);
* 503 + ``Retry-After`` when all ``max_concurrency`` scoring slots stay busy for ``acquire_timeout_s``;
* 504 a component ran past its recipe ``timeout_s``.

Each component is built once at start-up (``setup()`` runs then) and reused. A request scores its components in
parallel on a small thread pool; by default one component scores one batch at a time (``serialize_components``),
because plugins are written for the trainer, which never calls one concurrently. The server is plain HTTP: off
loopback, put it behind a TLS-terminating proxy or on a private network.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import nullcontext
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping, Sequence, TextIO

from rewards.api import PluginInfo, RewardPluginError, build_scorer, check_component, component_kind

PROTOCOL = 1
TOKEN_ENV = "RLHF_REWARD_TOKEN"
REQUEST_FIELDS = ("protocol", "components", "prompts", "completions", "columns")
_RESERVED_COLUMNS = ("prompts", "completions")
_LINGER_S = 1.0  # after refusing a request unread, discard what the client still sends for this long ...
_LINGER_MIN_BYTES = 16 << 20  # ... or this many bytes (at least), so that it reads the refusal instead of a reset

log = logging.getLogger("rlhf.serve")


class ServeError(ValueError):
    """The server cannot start as configured (no token, no components, insecure mode off loopback...)."""


class _RequestError(Exception):
    """A request answered with an error status; ``extra`` goes into the JSON body next to ``error``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


# --------------------------------------------------------------------------- components


@dataclass
class _Outcome:
    values: list[float] | None = None  # (B,), NaN where not applicable or unusable
    errors: list[RewardPluginError] = field(default_factory=list)  # per-sample unusable values
    seconds: float = 0.0
    failure: _RequestError | None = None  # the whole call failed


class _Component:
    """One built component: its scorer, kind, timeout and (when serialised) the lock around its calls."""

    def __init__(self, config: Any, plugin: PluginInfo, serialize: bool, locate_failures: bool) -> None:
        self.name: str = config.name
        self.plugin = plugin
        self.kind = component_kind(config, plugin)
        self.timeout_s = float(getattr(config, "timeout_s", 60.0) or 60.0)
        self.scorer = build_scorer(config, plugin)  # instantiates a class plugin and runs its setup()
        self._lock = threading.Lock() if serialize else nullcontext()
        self._locate_failures = locate_failures

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "plugin": self.plugin.name}

    def check_columns(self, columns: Mapping[str, list], n: int) -> None:
        """400 when the batch lacks a column this component needs (checked before anything is scored)."""
        try:
            self.scorer._kwargs(columns, n)  # the same check BoundScorer.run makes before calling the plugin
        except RewardPluginError as exc:
            raise _RequestError(400, str(exc), component=self.name) from None

    def run(self, prompts: list[str], completions: list[str], columns: Mapping[str, list]) -> _Outcome:
        with self._lock:
            start = time.perf_counter()
            try:
                values, errors = self.scorer.run(prompts, completions, columns)
            except RewardPluginError as exc:
                return _Outcome(seconds=time.perf_counter() - start,
                                failure=self._failure(exc, prompts, completions, columns))
            except Exception as exc:  # not the plugin: a bug here; keep the details in the log
                log.error("component %r: internal error while scoring %d samples", self.name, len(prompts),
                          exc_info=exc)
                failure = _RequestError(500, f"internal error while scoring component {self.name!r}: "
                                        f"{type(exc).__name__} (see the server log)", component=self.name,
                                        sample=None, retryable=False)
                return _Outcome(seconds=time.perf_counter() - start, failure=failure)
            return _Outcome(values=values, errors=errors, seconds=time.perf_counter() - start)

    def _failure(self, exc: RewardPluginError, prompts: list[str], completions: list[str],
                 columns: Mapping[str, list]) -> _RequestError:
        """500 naming the component and, when it can be found, the failing sample; the traceback is logged."""
        raised = exc.__cause__ is not None  # the plugin raised (vs. returned a wrong-length/-type result)
        sample = exc.sample_index
        cause = exc.__cause__
        if sample is None and isinstance(cause, RewardPluginError) and cause.sample_index is not None:
            sample = cause.sample_index
        if sample is None and raised and self._locate_failures:
            sample = self._locate(prompts, completions, columns, deadline=time.monotonic() + min(5.0, self.timeout_s))
        if sample is not None and 0 <= sample < len(prompts):
            where = f"failing sample: {sample} (prompt {_snippet(prompts[sample])})"
        else:
            where = "the failing sample could not be isolated" if raised else "whole batch"
            sample = None
        log.error("component %r (plugin %r) failed on a batch of %d samples; %s", self.name, self.plugin.name,
                  len(prompts), where, exc_info=exc)
        return _RequestError(500, f"{exc}; {where}", component=self.name, sample=sample, retryable=False)

    def _locate(self, prompts: list[str], completions: list[str], columns: Mapping[str, list],
                deadline: float) -> int | None:
        """The first sample whose own call raises, by bisection (None when the failure needs the whole batch
        or the time budget runs out)."""
        lo, hi = 0, len(prompts)  # [lo, hi) is known to fail
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if time.monotonic() > deadline:
                return None
            if self._raises(prompts, completions, columns, lo, mid):
                hi = mid
                continue
            if time.monotonic() > deadline or not self._raises(prompts, completions, columns, mid, hi):
                return None
            lo = mid
        return lo

    def _raises(self, prompts: list[str], completions: list[str], columns: Mapping[str, list], a: int, b: int) -> bool:
        try:
            self.scorer.run(prompts[a:b], completions[a:b], {k: v[a:b] for k, v in columns.items()})
        except RewardPluginError as exc:
            return exc.__cause__ is not None
        except Exception:
            return True
        return False


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


def _build_components(source: Any, serialize: bool, locate_failures: bool) -> list[_Component]:
    from rewards.remote import RemoteReward

    configs = _component_configs(source)
    if not configs:
        raise ServeError("no reward components to serve: the recipe's `rewards` list is empty")
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ServeError(f"duplicate reward component names {duplicates}")
    plugins = [check_component(c) for c in configs]  # every plugin resolves before any is built
    for c, p in zip(configs, plugins):
        if isinstance(p.obj, type) and issubclass(p.obj, RemoteReward):
            raise ServeError(f"reward component {c.name!r} uses the 'remote' plugin: a reward server serves the "
                             f"components themselves; start it with the recipe that defines them")
    return [_Component(c, p, serialize, locate_failures) for c, p in zip(configs, plugins)]


# --------------------------------------------------------------------------- request checks


def _parse_score_request(payload: Any, known: Mapping[str, _Component], max_batch: int) -> tuple[
        list[_Component], list[str], list[str], dict[str, list]]:
    """(components, prompts, completions, columns) of a /v1/score body, or a 400/413 naming what is wrong."""
    if not isinstance(payload, dict):
        raise _RequestError(400, f"the request body must be a JSON object, got {_json_type(payload)}")
    unknown = [k for k in payload if k not in REQUEST_FIELDS]
    if unknown:
        raise _RequestError(400, f"unknown field {unknown[0]!r} in the request; protocol {PROTOCOL} fields are: "
                                 f"{', '.join(REQUEST_FIELDS)}", field=unknown[0])
    if "protocol" not in payload:
        raise _RequestError(400, f"field 'protocol' is missing: send \"protocol\": {PROTOCOL}", field="protocol")
    protocol = payload["protocol"]
    if isinstance(protocol, bool) or protocol != PROTOCOL:
        raise _RequestError(400, f"field 'protocol': this server speaks protocol {PROTOCOL}, the request says "
                                 f"{protocol!r}", field="protocol")
    prompts = _list_field(payload, "prompts")
    if len(prompts) > max_batch:
        raise _RequestError(413, f"batch of {len(prompts)} samples exceeds the server's max_batch of {max_batch}; "
                                 f"split it into smaller requests", field="prompts")
    completions = _list_field(payload, "completions")
    if len(completions) != len(prompts):
        raise _RequestError(400, f"field 'completions' has {len(completions)} values for {len(prompts)} prompts",
                            field="completions")
    _all_strings("prompts", prompts)
    _all_strings("completions", completions)
    columns = _columns(payload.get("columns", {}), len(prompts))
    return _requested(payload.get("components"), known), prompts, completions, columns


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _list_field(payload: dict, name: str) -> list:
    if name not in payload:
        raise _RequestError(400, f"field {name!r} is missing: send a list with one string per sample", field=name)
    value = payload[name]
    if not isinstance(value, list):
        raise _RequestError(400, f"field {name!r} must be a list of strings, got {_json_type(value)}", field=name)
    return value


def _all_strings(name: str, values: list) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise _RequestError(400, f"field {name!r}, sample {i}: expected a string, got {_json_type(v)}",
                                field=name, sample=i)


def _columns(value: Any, n: int) -> dict[str, list]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _RequestError(400, f"field 'columns' must be an object {{column: [one value per sample]}}, got "
                                 f"{_json_type(value)}", field="columns")
    columns: dict[str, list] = {}
    for name, values in value.items():
        if name in _RESERVED_COLUMNS:
            raise _RequestError(400, f"field 'columns': a column may not be named {name!r}", field="columns")
        if not isinstance(values, list):
            raise _RequestError(400, f"column {name!r} must be a list with one value per sample, got "
                                     f"{_json_type(values)}", field="columns", column=name)
        if len(values) != n:
            raise _RequestError(400, f"column {name!r} has {len(values)} values for {n} samples",
                                field="columns", column=name)
        columns[name] = values
    return columns


def _requested(value: Any, known: Mapping[str, _Component]) -> list[_Component]:
    if value is None:
        return list(known.values())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _RequestError(400, "field 'components' must be a list of component names", field="components")
    if not value:
        raise _RequestError(400, "field 'components' is empty: leave it out to score with every component",
                            field="components")
    seen: set[str] = set()
    for name in value:
        if name not in known:
            raise _RequestError(400, f"unknown component {name!r}; this server serves: {', '.join(known)}",
                                field="components", component=name)
        if name in seen:
            raise _RequestError(400, f"component {name!r} is requested twice", field="components", component=name)
        seen.add(name)
    return [known[name] for name in value]


# --------------------------------------------------------------------------- the server


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class RewardServer:
    """Serves reward components over HTTP (protocol 1, see the module docstring).

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
        port: int = 0,
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
        self._requested_port = int(port)
        self.max_body_bytes = int(max_body_mb * (1 << 20))
        self.max_concurrency = int(max_concurrency)
        self.max_batch = int(max_batch)
        self.acquire_timeout_s = float(acquire_timeout_s)
        self.retry_after_s = max(1, int(math.ceil(retry_after_s)))
        self._token = token.encode("utf-8") if token is not None else None
        self.components = _build_components(recipe_or_components, serialize_components, locate_failures)
        self._by_name = {c.name: c for c in self.components}
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._idle = threading.Condition()
        self._inflight = 0
        self._stats = {"score_requests": 0, "ok": 0, "busy_503": 0, "unauthorized_401": 0, "client_errors_4xx": 0,
                       "server_errors_5xx": 0}

    # ---- lifecycle

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("RewardServer.port before start()")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "RewardServer":
        """Bind and serve in a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("RewardServer.start() called twice")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("_RewardHTTPServer", (_HTTPServer,), {"address_family": family})
        try:
            self._httpd = server_cls((self.host.strip("[]"), self._requested_port), _Handler, self)
        except OSError as exc:
            raise ServeError(f"cannot listen on {self.host}:{self._requested_port}: {exc}") from exc
        workers = min(64, self.max_concurrency * len(self.components))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward-component")
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="reward-server", daemon=True)
        self._thread.start()
        log.debug("serving %s on %s (protocol %d, %s)", ", ".join(self.names), self.url, PROTOCOL,
                 "bearer-token auth" if self._token else "NO AUTH (loopback only)")
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting connections, let in-flight requests finish (up to ``grace_s``), release the port.
        Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        deadline = time.monotonic() + grace_s
        with self._idle:
            while self._inflight and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            if self._inflight:
                log.warning("stopping with %d request(s) still running after %.0f s", self._inflight, grace_s)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "RewardServer":
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stats(self) -> dict[str, int]:
        """Counters: score requests, answered ok, refused busy (503), 401s, other 4xx, 5xx."""
        with self._idle:
            return dict(self._stats)

    def _count(self, key: str) -> None:
        with self._idle:
            self._stats[key] += 1

    # ---- requests

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "protocol": PROTOCOL, "components": self.names}

    def describe(self) -> dict[str, Any]:
        return {"protocol": PROTOCOL, "components": [c.describe() for c in self.components]}

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
        """Answer a /v1/score body (already parsed JSON) -> the response body; raises _RequestError."""
        wanted, prompts, completions, columns = _parse_score_request(payload, self._by_name, self.max_batch)
        n = len(prompts)
        for component in wanted:
            component.check_columns(columns, n)
        if n == 0:
            outcomes = [_Outcome(values=[]) for _ in wanted]
        else:
            outcomes = self._run(wanted, prompts, completions, columns)
        failures = [o.failure for o in outcomes if o.failure is not None]
        if failures:
            raise failures[0]
        rows = [[_json_float(o.values[i]) for o in outcomes] for i in range(n)]  # type: ignore[index]
        metadata = {
            c.name: {"seconds": round(o.seconds, 6), "errors": len(o.errors),
                     "first_error": str(o.errors[0]) if o.errors else None}
            for c, o in zip(wanted, outcomes)
        }
        return {"protocol": PROTOCOL, "names": [c.name for c in wanted], "kinds": [c.kind for c in wanted],
                "values": rows, "metadata": metadata}

    def _run(self, wanted: Sequence[_Component], prompts: list[str], completions: list[str],
             columns: dict[str, list]) -> list[_Outcome]:
        """Every component on the pool; waits for all of them (each up to its timeout_s)."""
        if self._pool is None:
            raise RuntimeError("RewardServer.score() before start()")
        start = time.monotonic()
        futures = [self._pool.submit(c.run, prompts, completions, columns) for c in wanted]
        outcomes = []
        for component, future in zip(wanted, futures):
            try:
                outcomes.append(future.result(timeout=max(0.0, start + component.timeout_s - time.monotonic())))
            except FutureTimeout:
                future.cancel()
                log.error("component %r ran past its timeout_s of %.1f s on a batch of %d samples",
                          component.name, component.timeout_s, len(prompts))
                outcomes.append(_Outcome(seconds=component.timeout_s, failure=_RequestError(
                    504, f"component {component.name!r} did not finish within its timeout_s of "
                         f"{component.timeout_s:g} s", component=component.name, sample=None)))
        return outcomes

    def _enter(self) -> None:
        with self._idle:
            self._inflight += 1

    def _leave(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # stop() waits for in-flight requests itself, with a deadline
    request_queue_size = 128  # the default 5 drops connections under a burst of clients

    def __init__(self, address: tuple[str, int], handler: type, app: RewardServer) -> None:
        self.app = app
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "rlhf-reward-server/1"
    sys_version = ""
    timeout = 60  # a client that stalls mid-request is dropped after this many seconds
    server: _HTTPServer

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def setup(self) -> None:
        super().setup()
        self._unread_body = 0  # bytes the client announced but we chose not to read

    # ---- routing

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        app = self.server.app
        if path == "/v1/health":
            self._send_json(200, app.health())
        elif path == "/v1/components":
            problem = app.auth_problem(self.headers.get("Authorization"))
            if problem:
                app._count("unauthorized_401")
                self._send_json(401, {"error": problem}, {"WWW-Authenticate": "Bearer"})
            else:
                self._send_json(200, app.describe())
        elif path == "/v1/score":
            self._send_json(405, {"error": "use POST for /v1/score"}, {"Allow": "POST"})
        else:
            self._send_json(404, {"error": _no_such_endpoint(path)})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/v1/score":
            self._score()
        elif path in ("/v1/health", "/v1/components"):
            self._refuse_unread(405, f"use GET for {path}", {"Allow": "GET"})
        else:
            self._refuse_unread(404, _no_such_endpoint(path))

    def _score(self) -> None:
        app = self.server.app
        app._count("score_requests")
        problem = app.auth_problem(self.headers.get("Authorization"))
        if problem:
            app._count("unauthorized_401")
            log.warning("refused a /v1/score request from %s: %s", self.client_address[0], problem)
            return self._refuse_unread(401, problem, {"WWW-Authenticate": "Bearer"})
        if self.headers.get("Transfer-Encoding"):
            return self._refuse_unread(411, "send the body with a Content-Length header; chunked transfer "
                                            "encoding is not accepted")
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return self._refuse_unread(411, "the Content-Length header is required")
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError
        except ValueError:
            return self._refuse_unread(400, f"Content-Length must be a non-negative integer, got {raw_length!r}")
        if length > app.max_body_bytes:
            return self._refuse_unread(413, f"request body of {length} bytes exceeds the server's limit of "
                                            f"{app.max_body_bytes} bytes (--max-body-mb); send smaller batches",
                                       announced=length)
        if not app._slots.acquire(timeout=app.acquire_timeout_s):
            app._count("busy_503")
            return self._refuse_unread(503, f"server busy: all {app.max_concurrency} scoring slots are in use; "
                                            f"retry after {app.retry_after_s} s",
                                       {"Retry-After": str(app.retry_after_s)}, announced=length)
        app._enter()
        try:
            status, body, headers = self._answer(app, length)
            self._send_json(status, body, headers)
        finally:
            app._slots.release()
            app._leave()

    def _answer(self, app: RewardServer, length: int) -> tuple[int, dict, dict]:
        body = self.rfile.read(length) if length else b""
        try:
            if len(body) < length:
                raise _RequestError(400, f"the body ended after {len(body)} of the {length} bytes in Content-Length")
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise _RequestError(400, f"the request body is not valid JSON: {exc}") from None
            response = app.score(payload)
        except _RequestError as exc:
            app._count("server_errors_5xx" if exc.status >= 500 else "client_errors_4xx")
            if exc.status < 500:
                log.info("refused a /v1/score request from %s (%d): %s", self.client_address[0], exc.status,
                         exc.message)
            return exc.status, exc.body(), exc.headers
        app._count("ok")
        return 200, response, {}

    # ---- responses

    def _send_json(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None,
                   close: bool = False) -> None:
        data = json.dumps(body, allow_nan=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _refuse_unread(self, status: int, message: str, headers: Mapping[str, str] | None = None,
                       announced: int | None = None) -> None:
        """Answer without reading the body; the connection closes after the answer."""
        if announced is None:
            try:
                announced = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                announced = 0
        self._unread_body = max(0, announced) or (1 if self.headers.get("Transfer-Encoding") else 0)
        self._send_json(status, {"error": message}, headers, close=True)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON instead of http.server's HTML page (malformed request lines, unsupported methods)."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._unread_body = 1 if getattr(self, "headers", None) is not None else 0
        self._send_json(code, {"error": message or phrase}, close=True)

    def finish(self) -> None:
        super().finish()
        if self._unread_body:
            self._discard_unread(max(_LINGER_MIN_BYTES, 4 * self.server.app.max_body_bytes))

    def _discard_unread(self, limit: int) -> None:
        """Half-close, then drop what the client is still sending (bounded in bytes and time), so that closing a
        socket with unread data does not reset the connection before the client has read the refusal."""
        conn = self.connection
        try:
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_S
            received = 0
            while received < limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.settimeout(left)
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                received += len(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)


def _no_such_endpoint(path: str) -> str:
    return f"no endpoint {path!r}; this server has GET /v1/health, GET /v1/components and POST /v1/score"


# --------------------------------------------------------------------------- the command


def missing_token_message() -> str:
    return (f"no bearer token: set the environment variable {TOKEN_ENV}, or pass --token-file FILE with a file "
            f"holding a long random secret (e.g. `python -c \"import secrets; print(secrets.token_urlsafe(32))\" "
            f"> reward.token && chmod 600 reward.token`); trainers send the same token. For local testing only, "
            f"--insecure-no-auth serves without a token on a loopback host")


def resolve_token(token_file: str | None, insecure_no_auth: bool, env: Mapping[str, str] | None = None) -> str | None:
    """The token from ``token_file`` (first) or ``$RLHF_REWARD_TOKEN``; None only with ``insecure_no_auth``."""
    env = os.environ if env is None else env
    if token_file:
        if insecure_no_auth:
            raise ServeError("--token-file and --insecure-no-auth were both given: pick one")
        try:
            token = open(token_file, encoding="utf-8").read().strip()
            mode = os.stat(token_file).st_mode
        except OSError as exc:
            raise ServeError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise ServeError(f"the token file {token_file} is empty")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %s is readable by other users; `chmod 600 %s`", token_file, token_file)
        return token
    if insecure_no_auth:
        if env.get(TOKEN_ENV, "").strip():
            log.warning("--insecure-no-auth: ignoring %s", TOKEN_ENV)
        return None
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ServeError(missing_token_message())
    return token


def serve(
    recipe: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token_file: str | None = None,
    insecure_no_auth: bool = False,
    max_body_mb: float = 8.0,
    max_concurrency: int = 8,
    max_batch: int = 1024,
    out: TextIO | None = None,
) -> int:
    """Serve ``recipe``'s reward components until SIGTERM or SIGINT; returns 0 after a graceful shutdown.

    Raises ServeError (no token, insecure mode off loopback, port taken...) or RewardPluginError (a component
    cannot be built) before serving. Must run in the main thread (it installs signal handlers).
    """
    out = sys.stderr if out is None else out
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=out, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = resolve_token(token_file, insecure_no_auth)
    if insecure_no_auth and not is_loopback(host):
        raise ServeError(f"--insecure-no-auth is only allowed on a loopback host (127.0.0.1, ::1, localhost), not "
                         f"{host!r}: set a token to listen there")
    server = RewardServer(recipe, token=token, host=host, port=port, max_body_mb=max_body_mb,
                          max_concurrency=max_concurrency, max_batch=max_batch, insecure_no_auth=insecure_no_auth)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        print(f"rlhf serve-rewards: serving {', '.join(server.names)} on {server.url} (protocol {PROTOCOL}); "
              f"SIGTERM or Ctrl-C stops", file=out, flush=True)
        while not stop.wait(0.5):
            pass
        print(f"rlhf serve-rewards: {signal.Signals(received[0]).name} received, finishing in-flight requests",
              file=out, flush=True)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"rlhf serve-rewards: stopped; {server.stats()}", file=out, flush=True)
    return 0
