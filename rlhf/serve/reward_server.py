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
number...; a process component's step scores, as protocol 1 carries one value per sample); they are null in
``values`` and ``first_error`` says why. Errors are ``{"error": message, ...}``:

* 400 malformed JSON, a missing/ill-typed field, lengths that disagree, an unknown component or a column a
  component needs but the request lacks -- the message names the field, component and sample;
* 401 a missing or wrong bearer token (``Authorization: Bearer <token>``, compared in constant time);
* 404/405 an unknown endpoint or method; 411 no Content-Length (chunked bodies are refused);
* 413 a Content-Length over ``max_body_mb`` (refused from the header: the body is never read into memory) or
  more than ``max_batch`` samples;
* 500 a plugin raised or returned the wrong number of values: ``{"error", "component", "sample",
  "retryable": false}`` (the failing sample is isolated by re-scoring halves of the batch when the plugin does not
  say which; the traceback goes to the server's log, never into the response);
* 503 + ``Retry-After`` when all ``max_concurrency`` scoring slots stay busy for ``acquire_timeout_s``, or when a
  requested component is still running an earlier call that ran past its ``timeout_s``;
* 504 a component ran past its recipe ``timeout_s``.

Scoring goes through the platform's one scoring path, an in-process ``RewardGroup`` (``rlhf/scoring``): each
component is built once at start-up (``setup()`` runs then) and reused; a request scores its components in
parallel threads, each bounded by its ``timeout_s``; by default one component scores one batch at a time
(``serialize_components``), because plugins are written for the trainer, which never calls one concurrently. The
server is plain HTTP: off loopback, put it behind a TLS-terminating proxy or on a private network.

This module is the server's public face (``rlhf/cli.py`` and the tests import from here). The code: ``protocol.py``
(request fields and their checks), ``app.py`` (settings, auth, scoring through the group, statuses), ``http.py``
(``RewardServer``: listener, handler, limits checked before a body is read), ``command.py`` (token, ``serve()``).
"""

from rlhf.serve.app import TOKEN_ENV, RewardApp, ServeError, is_loopback, missing_token_message
from rlhf.serve.command import resolve_token, serve
from rlhf.serve.http import RewardServer
from rlhf.serve.protocol import PROTOCOL, REQUEST_FIELDS, RequestError

__all__ = ["PROTOCOL", "REQUEST_FIELDS", "TOKEN_ENV", "RequestError", "RewardApp", "RewardServer", "ServeError",
           "is_loopback", "missing_token_message", "resolve_token", "serve"]
