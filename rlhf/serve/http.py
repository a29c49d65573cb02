"""The reward server's HTTP layer: ``RewardServer`` (a ``RewardApp`` listening on a port, served from a background
thread) and its request handler: routing, auth and admission (401, 411, 413 from Content-Length, 503 +
Retry-After when every scoring slot stays busy) before a body is read, JSON answers, graceful stop.

Standard library only (``http.server``); the protocol is described in ``reward_server.py``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping

from rlhf.serve.app import RewardApp, ServeError
from rlhf.serve.protocol import PROTOCOL, RequestError

_LINGER_S = 1.0  # after refusing a request unread, discard what the client still sends for this long ...
_LINGER_MIN_BYTES = 16 << 20  # ... or this many bytes (at least), so that it reads the refusal instead of a reset

log = logging.getLogger("rlhf.serve")


class RewardServer(RewardApp):
    """Serves reward components over HTTP (protocol 1). Takes ``RewardApp``'s arguments plus ``port`` (0: any
    free port); ``start()`` binds and serves in a background thread, ``stop()`` (or leaving a ``with`` block)
    finishes the requests in flight and releases the port."""

    def __init__(self, recipe_or_components: Any, *, port: int = 0, **options: Any) -> None:
        super().__init__(recipe_or_components, **options)
        self._requested_port = int(port)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._inflight = 0

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

    def __enter__(self) -> "RewardServer":
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _enter(self) -> None:
        with self._idle:
            self._inflight += 1

    def _leave(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()


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
                app.count("unauthorized_401")
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
        app.count("score_requests")
        problem = app.auth_problem(self.headers.get("Authorization"))
        if problem:
            app.count("unauthorized_401")
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
        if not app.acquire_slot():
            app.count("busy_503")
            return self._refuse_unread(503, f"server busy: all {app.max_concurrency} scoring slots are in use; "
                                            f"retry after {app.retry_after_s} s",
                                       {"Retry-After": str(app.retry_after_s)}, announced=length)
        app._enter()
        try:
            status, body, headers = self._answer(app, length)
            self._send_json(status, body, headers)
        finally:
            app.release_slot()
            app._leave()

    def _answer(self, app: RewardServer, length: int) -> tuple[int, dict, dict]:
        body = self.rfile.read(length) if length else b""
        try:
            if len(body) < length:
                raise RequestError(400, f"the body ended after {len(body)} of the {length} bytes in Content-Length")
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise RequestError(400, f"the request body is not valid JSON: {exc}") from None
            response = app.score(payload)
        except RequestError as exc:
            app.count("server_errors_5xx" if exc.status >= 500 else "client_errors_4xx")
            if exc.status < 500:
                log.info("refused a /v1/score request from %s (%d): %s", self.client_address[0], exc.status,
                         exc.message)
            return exc.status, exc.body(), exc.headers
        app.count("ok")
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

