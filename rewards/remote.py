"""Built-in reward ``remote``: score with a component served by a reward server (``rlhf serve-rewards``).

Recipe use (on the trainer)::

    rewards:
      - name: helpful
        plugin: remote
        args: {url: "http://10.0.0.5:8000", component: helpful, timeout_s: 30, retries: 3}

The server runs the recipe that defines ``helpful`` (its model, its GPU); this plugin posts each batch to
``{url}/v1/score`` (protocol 1, see ``rlhf/serve/reward_server.py``) and returns that component's values.

* Auth: the bearer token comes from ``token`` or else the environment variable named by ``token_env``
  (default ``RLHF_REWARD_TOKEN``). Prefer the environment: recipe args are printed by ``rlhf validate``.
* Retries: connection errors, timeouts and 5xx answers are retried ``retries`` times with exponential backoff
  (``backoff_s`` doubled per attempt, with jitter); a ``Retry-After`` header is honoured up to
  ``max_retry_wait_s``. A 500 the server marks ``"retryable": false`` (the plugin itself raised) and every 4xx
  fail at once with RewardPluginError naming the server and its message.
* Columns: every data column is sent (``send_columns`` restricts them); values must be JSON-serialisable (numpy
  and torch values are converted; anything else fails naming the column and sample).
* Samples the server could not use (its ``errors`` count) fail the call, so the component's ``on_error`` applies.
* ``setup()`` asks ``GET /v1/components`` once, so a wrong URL, token or component name fails at start-up.
* Connections are direct: proxy environment variables are ignored and redirects are not followed (they would
  carry the token elsewhere).

Standard library only.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Sequence

from rewards.api import RewardPluginError, reward

PROTOCOL = 1
log = logging.getLogger(__name__)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102, ANN001
        return None  # urllib then raises HTTPError with the 3xx status


@reward("remote")
class RemoteReward:
    """Scores with one component of a remote reward server (`rlhf serve-rewards`), with retries and timeouts.

    Args: url, component (its name on the server), token_env, token, timeout_s (per HTTP request), retries,
    backoff_s, max_retry_wait_s, send_columns (column names to send; default all).
    """

    def __init__(
        self,
        url: str,
        component: str,
        token_env: str = "RLHF_REWARD_TOKEN",
        token: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_retry_wait_s: float = 10.0,
        send_columns: Sequence[str] | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(str(url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"remote: url must look like http://host:port, got {url!r}")
        if not isinstance(component, str) or not component:
            raise ValueError(f"remote: component must be the name of a component on the server, got {component!r}")
        if not timeout_s > 0 or int(retries) < 0 or backoff_s < 0 or max_retry_wait_s < 0:
            raise ValueError("remote: timeout_s must be > 0 and retries, backoff_s, max_retry_wait_s >= 0")
        self.url = str(url).rstrip("/")
        self.component = component
        self.token_env = token_env
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_retry_wait_s = float(max_retry_wait_s)
        self.send_columns = None if send_columns is None else set(send_columns)
        token = token if token is not None else os.environ.get(token_env, "")
        self._token = token.strip() or None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._random = random.Random()
        host = parsed.hostname or ""
        if self._token and parsed.scheme == "http" and not _loopback(host):
            log.warning("remote reward %r: sending the bearer token over plain http to %s", component, host)

    def __repr__(self) -> str:
        return f"RemoteReward(url={self.url!r}, component={self.component!r})"

    def setup(self) -> None:
        """Check once that the server answers, accepts the token and serves the component."""
        body = self._request("GET", "/v1/components")
        names = [c.get("name") for c in body.get("components", []) if isinstance(c, dict)]
        if self.component not in names:
            raise RewardPluginError(f"remote reward server {self.url} does not serve component {self.component!r}; "
                                    f"it serves: {', '.join(map(str, names)) or '(nothing)'}")

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        n = len(prompts)
        sent = {name: _json_column(name, values) for name, values in columns.items()
                if self.send_columns is None or name in self.send_columns}
        payload = {"protocol": PROTOCOL, "components": [self.component], "prompts": list(prompts),
                   "completions": list(completions), "columns": sent}
        body = self._request("POST", "/v1/score", json.dumps(payload).encode("utf-8"))
        return self._values(body, n)

    # ---- helpers

    def _values(self, body: dict, n: int) -> list[float | None]:
        def bad(why: str) -> RewardPluginError:
            return RewardPluginError(f"remote reward server {self.url} sent a malformed answer for component "
                                     f"{self.component!r}: {why}")

        if body.get("protocol") != PROTOCOL:
            raise bad(f"protocol {body.get('protocol')!r}, expected {PROTOCOL}")
        names, values = body.get("names"), body.get("values")
        if not isinstance(names, list) or self.component not in names:
            raise bad(f"names {names!r} lack the component")
        if not isinstance(values, list) or len(values) != n:
            raise bad(f"expected {n} rows of values, got {len(values) if isinstance(values, list) else values!r}")
        j = names.index(self.component)
        out: list[float | None] = []
        for i, row in enumerate(values):
            if not isinstance(row, list) or len(row) != len(names):
                raise bad(f"row {i} is {row!r}")
            value = row[j]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise bad(f"sample {i}: {value!r} is not a number or null")
            out.append(value)
        meta = (body.get("metadata") or {}).get(self.component) or {}
        if meta.get("errors"):
            raise RewardPluginError(f"remote reward server {self.url}, component {self.component!r}: "
                                    f"{meta['errors']} sample(s) got unusable values; first: {meta.get('first_error')}")
        return out

    def _request(self, method: str, path: str, data: bytes | None = None) -> dict:
        """One JSON request with retries -> the decoded JSON object."""
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        what = f"remote reward server {self.url}: {method} {path} for component {self.component!r}"
        attempts = self.retries + 1
        last = ""
        for attempt in range(attempts):
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            retry_after: str | None = None
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    raw = response.read()
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise RewardPluginError(f"{what}: the answer is not JSON: {exc}") from None
                if not isinstance(body, dict):
                    raise RewardPluginError(f"{what}: the answer is not a JSON object")
                return body
            except urllib.error.HTTPError as exc:
                message, retryable = _error_of(exc)
                if exc.code < 500 or retryable is False:
                    raise RewardPluginError(f"{what} failed with HTTP {exc.code}: {message}"
                                            f"{self._hint(exc)}") from None
                last = f"HTTP {exc.code}: {message}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                last = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
            if attempt + 1 < attempts:
                time.sleep(self._wait(attempt, retry_after))
        raise RewardPluginError(f"{what} failed after {attempts} attempt(s); last error: {last}")

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(0.0, float(retry_after)), self.max_retry_wait_s)
            except ValueError:
                pass  # an HTTP date: fall back to the backoff
        return min(self.backoff_s * (2 ** attempt) * self._random.uniform(0.5, 1.0), self.max_retry_wait_s)

    def _hint(self, exc: urllib.error.HTTPError) -> str:
        if exc.code == 401:
            if self._token:
                return f" (the token from {self.token_env} or args.token does not match the server's)"
            return f" (set {self.token_env} to the server's token)"
        if 300 <= exc.code < 400:
            return f" (redirect to {exc.headers.get('Location')!r} not followed: set url to the server itself)"
        return ""


def _error_of(exc: urllib.error.HTTPError) -> tuple[str, bool | None]:
    """(the server's error message, its "retryable" flag or None)."""
    try:
        raw = exc.read(1 << 16)
    except Exception:  # noqa: BLE001 - the status alone will do
        raw = b""
    finally:
        exc.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        retryable = body.get("retryable")
        return str(body["error"]), (retryable if isinstance(retryable, bool) else None)
    text = raw.decode("utf-8", "replace").strip()
    return (text[:300] or exc.reason or "no message"), None


def _json_column(name: str, values: Any) -> list:
    if hasattr(values, "tolist"):
        values = values.tolist()
    out = []
    for i, value in enumerate(values):
        try:
            out.append(_jsonable(value, 0))
        except TypeError as exc:
            raise RewardPluginError(
                f"remote reward: column {name!r}, sample {i}: {exc}; columns are sent as JSON (str, number, bool, "
                f"None, and lists / str-keyed dicts of those): convert the column in the dataset, or leave it out "
                f"with the arg send_columns",
                sample_index=i,
            ) from None
    return out


def _jsonable(value: Any, depth: int) -> Any:
    if depth > 64:
        raise TypeError("the value is nested too deeply (a cycle?)")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars, torch tensors
        return _jsonable(value.tolist(), depth + 1)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"a dict key {bad[0]!r} is not a string")
        return {k: _jsonable(v, depth + 1) for k, v in value.items()}
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-serialisable")


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
