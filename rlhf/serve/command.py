"""``rlhf serve-rewards``: where the bearer token comes from (``--token-file`` or ``$RLHF_REWARD_TOKEN``) and
``serve()``, which runs a ``RewardServer`` in the foreground until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
import threading
from typing import Any, Mapping, TextIO

from rlhf.serve.app import TOKEN_ENV, ServeError, is_loopback, missing_token_message
from rlhf.serve.http import RewardServer
from rlhf.serve.protocol import PROTOCOL

log = logging.getLogger("rlhf.serve")


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
