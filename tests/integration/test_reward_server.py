"""The remote reward server (`rlhf serve-rewards`, rlhf/serve/reward_server.py) and its client plugin `remote`.

Loopback only. Covers auth, size/batch limits (413, checked from Content-Length before the body is read), 400s
naming the problem, plugin failures (500 naming component and sample), 503 under saturation, the `remote` plugin
end to end (equal to local scoring; retries on 503, none on 4xx), a load test (prints requests/s), and the CLI as a
real process stopped by SIGTERM (exit 0: a requested shutdown is a clean one).
Run: pytest tests/integration/test_reward_server.py -q
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the test plugins are imported by reference, as a recipe would
    sys.path.insert(0, str(ROOT))

from rewards.api import RewardPluginError, build_scorer  # noqa: E402
from rewards.remote import RemoteReward  # noqa: E402
from rlhf.config.schema import RewardComponentConfig  # noqa: E402
from rlhf.serve.reward_server import RewardServer, ServeError  # noqa: E402
from tests.integration import _reward_server_plugins as plugins  # noqa: E402

MOD = "tests.integration._reward_server_plugins"
TOKEN = "test-token-0123456789"
PROMPTS = ["What is 2+2?", "Capital of France?", "Say hi", "What is 9+10?"]
COMPLETIONS = ["4", "Paris", "hello there, how are you", "21"]
COLUMNS = {"answer": ["4", "paris", None, "19"], "num_tokens": [1, 1, 6, 1], "finished": [True, True, False, True]}


def comp(name, plugin, **kw):
    return RewardComponentConfig(name=name, plugin=plugin, **kw)


def local_components():
    return [comp("exact", "exact_match"), comp("length", "length_penalty", args={"target": 4, "coef": 0.1})]


@pytest.fixture(scope="module")
def server():
    components = [
        *local_components(),
        comp("explode", f"{MOD}:explode"),
        comp("unusable", f"{MOD}:unusable"),
        comp("counter", f"{MOD}:SetupCounter", args={"bonus": 1.0}),
    ]
    s = RewardServer(components, token=TOKEN, max_body_mb=0.05, max_batch=64).start()
    yield s
    s.stop()


def request(url, method, path, body=None, token=TOKEN, headers=None, raw=False):
    """(status, headers, decoded JSON body) of one request over http.client."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        data = body if raw or body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.headers, json.loads(resp.read())
    finally:
        conn.close()


def score_body(**kw):
    return {"protocol": 1, "prompts": PROMPTS, "completions": COMPLETIONS, "columns": COLUMNS, **kw}


def local_values(components, prompts, completions, columns):
    return {c.name: build_scorer(c)(prompts, completions, columns) for c in components}


def same(a, b):
    """Equal lists of floats where None (JSON null) and NaN mean the same thing."""
    norm = [[None if (x is None or x != x) else x for x in xs] for xs in (a, b)]
    return norm[0] == norm[1]


# --------------------------------------------------------------------------- endpoints and auth


def test_health_needs_no_token(server):
    status, _, body = request(server.url, "GET", "/v1/health", token=None)
    assert status == 200
    assert body == {"status": "ok", "protocol": 1, "components": ["exact", "length", "explode", "unusable", "counter"]}


def test_components_and_score_need_the_token(server):
    for token, expected in ((None, "missing bearer token"), ("wrong-token", "invalid bearer token")):
        for method, path, body in (("GET", "/v1/components", None), ("POST", "/v1/score", score_body())):
            status, headers, answer = request(server.url, method, path, body, token=token)
            assert status == 401, (method, path, token)
            assert expected in answer["error"] and headers["WWW-Authenticate"] == "Bearer"
    status, _, answer = request(server.url, "POST", "/v1/score", score_body(), token=None,
                                headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401 and "malformed Authorization" in answer["error"]
    status, _, answer = request(server.url, "GET", "/v1/components")
    assert status == 200
    assert answer["components"][0] == {"name": "exact", "kind": "reward", "plugin": "exact_match"}


def test_unknown_endpoint_and_method(server):
    status, _, body = request(server.url, "GET", "/v2/score")
    assert status == 404 and "/v1/score" in body["error"]
    status, headers, _ = request(server.url, "GET", "/v1/score")
    assert status == 405 and headers["Allow"] == "POST"


# --------------------------------------------------------------------------- scoring


def test_score_equals_local_scoring_and_nan_is_null(server):
    status, _, body = request(server.url, "POST", "/v1/score", score_body(components=["length", "exact"]))
    assert status == 200, body
    assert body["protocol"] == 1 and body["names"] == ["length", "exact"] and body["kinds"] == ["reward", "reward"]
    expected = local_values(local_components(), PROMPTS, COMPLETIONS, COLUMNS)
    assert same([row[1] for row in body["values"]], expected["exact"])
    assert [row[0] for row in body["values"]] == expected["length"]
    assert body["values"][2][1] is None  # answer None: not applicable -> null
    assert set(body["metadata"]) == {"length", "exact"}
    assert body["metadata"]["exact"]["errors"] == 0 and body["metadata"]["exact"]["seconds"] >= 0


def test_default_is_every_component_and_setup_ran_once(server):
    one = {"protocol": 1, "prompts": ["p"], "completions": ["ab"], "columns": {"answer": ["ab"]}}
    for _ in range(3):
        status, _, body = request(server.url, "POST", "/v1/score", one)
        assert status == 200, body
    assert body["names"] == ["exact", "length", "explode", "unusable", "counter"]
    assert body["values"] == [[1.0, 0.0, 1.0, 0.5, 3.0]]
    assert plugins.SetupCounter.setups == 1


def test_unusable_value_is_null_and_counted(server):
    body = {"protocol": 1, "components": ["unusable"], "prompts": ["a", "b"], "completions": ["ok", "bad"]}
    status, _, answer = request(server.url, "POST", "/v1/score", body)
    assert status == 200
    assert answer["values"] == [[0.5], [None]]
    meta = answer["metadata"]["unusable"]
    assert meta["errors"] == 1 and "sample 1" in meta["first_error"] and "'oops'" in meta["first_error"]


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, ["not valid JSON"]),
    (b"[1, 2]", 400, ["JSON object", "an array"]),
    ({"prompts": ["a"], "completions": ["b"]}, 400, ["'protocol' is missing"]),
    ({"protocol": 2, "prompts": ["a"], "completions": ["b"]}, 400, ["protocol 1", "2"]),
    ({"protocol": 1, "prompts": ["a", "b"], "completions": ["b"]}, 400, ["'completions' has 1 values for 2"]),
    ({"protocol": 1, "prompts": ["a", 3], "completions": ["b", "c"]}, 400, ["'prompts', sample 1", "a number"]),
    ({"protocol": 1, "prompts": ["a"]}, 400, ["'completions' is missing"]),
    ({"protocol": 1, "prompts": ["a"], "completions": ["b"], "columns": {"answer": ["x", "y"]}}, 400,
     ["column 'answer' has 2 values for 1 samples"]),
    ({"protocol": 1, "prompts": ["a"], "completions": ["b"], "components": ["exact", "nope"]}, 400,
     ["unknown component 'nope'", "exact, length"]),
    ({"protocol": 1, "prompts": ["a"], "completions": ["b"], "components": ["exact"]}, 400,
     ["'exact'", "needs the column 'answer'"]),
    ({"protocol": 1, "prompts": ["a"], "completions": ["b"], "column": {}}, 400, ["unknown field 'column'"]),
    ({"protocol": 1, "prompts": ["a"] * 65, "completions": ["b"] * 65}, 413, ["65 samples", "max_batch of 64"]),
])
def test_bad_requests_name_the_problem(server, body, status, words):
    got, _, answer = request(server.url, "POST", "/v1/score", body, raw=isinstance(body, bytes))
    assert got == status, answer
    for word in words:
        assert word in answer["error"], (word, answer["error"])


def test_plugin_exception_is_500_naming_component_and_sample(server):
    body = {"protocol": 1, "components": ["exact", "explode"], "prompts": ["p0", "p1", "p2", "p3", "p4"],
            "completions": ["a", "b", "c", "boom", "d"], "columns": {"answer": ["a"] * 5}}
    status, _, answer = request(server.url, "POST", "/v1/score", body)
    assert status == 500
    assert answer["component"] == "explode" and answer["sample"] == 3 and answer["retryable"] is False
    assert "ValueError: cannot score 'boom'" in answer["error"] and "failing sample: 3 (prompt 'p3')" in answer["error"]
    assert "Traceback" not in json.dumps(answer)


def test_oversized_body_is_refused_from_content_length_without_reading_it(server):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("POST", "/v1/score")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(10**9))  # announced 1 GB, sends 16 bytes: reading it would hang
    conn.endheaders(b'{"protocol": 1}\n')
    start = time.monotonic()
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and time.monotonic() - start < 2
    assert "1000000000 bytes" in answer["error"] and "--max-body-mb" in answer["error"]


def test_missing_content_length_is_411(server):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("POST", "/v1/score")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()


def test_saturated_server_answers_503_with_retry_after_and_a_slow_component_504():
    components = [comp("slow", f"{MOD}:slow", args={"delay": 0.6}),
                  comp("late", f"{MOD}:slow", args={"delay": 0.5}, timeout_s=0.1)]
    with RewardServer(components, token=TOKEN, max_concurrency=1, acquire_timeout_s=0.01) as s:
        body = {"protocol": 1, "components": ["slow"], "prompts": ["a"], "completions": ["b"]}
        first = threading.Thread(target=request, args=(s.url, "POST", "/v1/score", body))
        first.start()
        time.sleep(0.2)
        status, headers, answer = request(s.url, "POST", "/v1/score", body)
        first.join()
        assert status == 503 and headers["Retry-After"] == "1" and "busy" in answer["error"]
        status, _, answer = request(s.url, "POST", "/v1/score", {**body, "components": ["late"]})
        assert status == 504 and answer["component"] == "late" and "timeout_s of 0.1 s" in answer["error"]
        assert s.stats()["busy_503"] == 1


def test_component_still_running_a_timed_out_call_answers_503():
    components = [comp("late", f"{MOD}:slow", args={"delay": 0.5}, timeout_s=0.1)]
    with RewardServer(components, token=TOKEN) as s:
        body = {"protocol": 1, "prompts": ["a"], "completions": ["b"]}
        assert request(s.url, "POST", "/v1/score", body)[0] == 504
        status, headers, answer = request(s.url, "POST", "/v1/score", body)
        assert status == 503 and headers["Retry-After"] == "1" and answer["component"] == "late"
        assert "still running an earlier call" in answer["error"]
        time.sleep(0.6)  # the late call has returned: the component runs (and times out) again
        assert request(s.url, "POST", "/v1/score", body)[0] == 504


def test_refuses_to_start_without_a_token(monkeypatch):
    with pytest.raises(ServeError, match="RLHF_REWARD_TOKEN"):
        RewardServer(local_components())
    with pytest.raises(ServeError, match="loopback"):
        RewardServer(local_components(), insecure_no_auth=True, host="0.0.0.0")
    with RewardServer(local_components(), insecure_no_auth=True) as s:  # explicit, on loopback: allowed
        status, _, body = request(s.url, "POST", "/v1/score", score_body(), token=None)
        assert status == 200 and len(body["values"]) == 4


# --------------------------------------------------------------------------- the remote plugin


def test_remote_plugin_equals_local_scoring(server, monkeypatch):
    monkeypatch.setenv("RLHF_REWARD_TOKEN", TOKEN)
    expected = local_values(local_components(), PROMPTS, COMPLETIONS, COLUMNS)
    for name in ("exact", "length"):
        remote = build_scorer(comp(name, "remote", args={"url": server.url + "/", "component": name}))  # setup() runs
        assert same(remote(PROMPTS, COMPLETIONS, COLUMNS), expected[name])
    with pytest.raises(RewardPluginError, match="does not serve component 'nope'.*exact, length"):
        build_scorer(comp("x", "remote", args={"url": server.url, "component": "nope"}))


def test_remote_plugin_fails_fast_on_4xx_and_plugin_errors(server, monkeypatch):
    monkeypatch.delenv("RLHF_REWARD_TOKEN", raising=False)
    before = server.stats()
    with pytest.raises(RewardPluginError, match=r"HTTP 401: missing bearer token.*\(set RLHF_REWARD_TOKEN"):
        RemoteReward(server.url, "exact", backoff_s=0)(PROMPTS, COMPLETIONS, answer=COLUMNS["answer"])
    explode = RemoteReward(server.url, "explode", token=TOKEN, backoff_s=0)
    with pytest.raises(RewardPluginError, match=r"HTTP 500: .*cannot score 'boom'.*failing sample: 1"):
        explode(["a", "b"], ["x", "boom"])
    unusable = RemoteReward(server.url, "unusable", token=TOKEN)
    with pytest.raises(RewardPluginError, match="1 sample\\(s\\) got unusable values; first: .*sample 0"):
        unusable(["a"], ["bad"])
    after = server.stats()
    assert after["unauthorized_401"] - before["unauthorized_401"] == 1  # no retries
    assert after["server_errors_5xx"] - before["server_errors_5xx"] == 1  # retryable: false -> no retries


def test_remote_plugin_columns_must_be_json(server):
    import numpy as np

    remote = RemoteReward(server.url, "exact", token=TOKEN)
    assert remote(["p", "q"], ["1", "2"], answer=np.array([1, 3])) == [1.0, 0.0]  # numpy converts
    with pytest.raises(RewardPluginError, match="column 'answer', sample 1: a value of type object"):
        remote(["p", "q"], ["1", "2"], answer=["1", object()])


class _Stub(BaseHTTPRequestHandler):
    """Answers /v1/score from a script of (status, headers, body) and counts the calls."""

    script: list = []
    calls: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append(self.path)
        status, headers, body = type(self).script.pop(0) if len(type(self).script) > 1 else type(self).script[0]
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    _Stub.calls = []
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_remote_plugin_retries_503_and_5xx(stub):
    _, url = stub
    ok = {"protocol": 1, "names": ["c"], "kinds": ["reward"], "values": [[0.25], [None]],
          "metadata": {"c": {"seconds": 0.0, "errors": 0}}}
    _Stub.script = [(503, {"Retry-After": "0"}, {"error": "busy"}), (502, {}, {"error": "proxy"}), (200, {}, ok)]
    remote = RemoteReward(url, "c", token="t", retries=3, backoff_s=0.01)
    assert remote(["a", "b"], ["x", "y"]) == [0.25, None]
    assert _Stub.calls == ["/v1/score"] * 3


def test_remote_plugin_does_not_retry_400(stub):
    _, url = stub
    _Stub.script = [(400, {}, {"error": "field 'prompts', sample 0: expected a string"})]
    with pytest.raises(RewardPluginError, match=f"{url}.*HTTP 400: field 'prompts', sample 0"):
        RemoteReward(url, "c", token="t", retries=3, backoff_s=0.01)(["a"], ["x"])
    assert len(_Stub.calls) == 1


def test_remote_plugin_gives_up_after_retries_when_nothing_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections are refused
    remote = RemoteReward(f"http://127.0.0.1:{port}", "c", retries=2, backoff_s=0.01)
    expected = f"127.0.0.1:{port}.*failed after 3 attempt\\(s\\); last error: .*refused"
    with pytest.raises(RewardPluginError, match=expected):
        remote(["a"], ["x"])


# --------------------------------------------------------------------------- load


def test_load_many_concurrent_clients_all_answered():
    threads, per_thread, batch = 16, 20, 32
    # exact and length are cheap; judge waits 20 ms per batch like a remote judge model, so that 16 clients
    # contend for the 8 slots and some requests are refused (503) and retried
    components = [*local_components(), comp("judge", f"{MOD}:slow", args={"delay": 0.02})]
    scorers = {c.name: build_scorer(c) for c in components}
    with RewardServer(components, token=TOKEN, max_concurrency=8, acquire_timeout_s=0.005,
                      serialize_components=False) as s:
        remotes = {c.name: RemoteReward(s.url, c.name, token=TOKEN, retries=50, backoff_s=0.005,
                                        max_retry_wait_s=0.02, timeout_s=10) for c in components}
        failures: list[str] = []
        done = [0]
        lock = threading.Lock()
        deadline = time.monotonic() + 10.0

        def client(t: int) -> None:
            for i in range(per_thread):
                if time.monotonic() > deadline:
                    with lock:
                        failures.append(f"thread {t}: out of time after {i} requests")
                    return
                prompts = [f"t{t} r{i} s{k}" for k in range(batch)]
                completions = [str((t * 7 + i * 3 + k) % 11) * (k % 5 + 1) for k in range(batch)]
                columns = {"answer": [str(k % 11) for k in range(batch)]}
                name = ("exact", "length", "judge")[(t + i) % 3]
                try:
                    got = remotes[name](prompts, completions, **columns)
                    ok = same(got, scorers[name](prompts, completions, columns))
                except RewardPluginError as exc:
                    ok, got = False, str(exc)
                with lock:
                    done[0] += 1
                    if not ok:
                        failures.append(f"thread {t} request {i} ({name}): {got}")

        start = time.monotonic()
        workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=15)
        elapsed = time.monotonic() - start
        stats = s.stats()
    print(f"\nreward server load test: {done[0]} requests x {batch} samples from {threads} clients in {elapsed:.2f} s "
          f"= {done[0] / elapsed:.0f} requests/s; failures={len(failures)}; 503s retried={stats['busy_503']}")
    assert not failures, failures[:3]
    assert done[0] == threads * per_thread
    assert stats["ok"] == threads * per_thread


# --------------------------------------------------------------------------- the command


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(
        "model: {tiny: {}}\n"
        "rewards:\n"
        "  - {name: exact, plugin: exact_match}\n"
        "  - {name: length, plugin: length_penalty, args: {target: 4, coef: 0.1}}\n"
        f"  - {{name: explode, plugin: '{MOD}:explode'}}\n"
    )
    return path


def test_cli_refuses_bad_setups(tmp_path, monkeypatch, capsys):
    from rlhf.cli import main

    monkeypatch.delenv("RLHF_REWARD_TOKEN", raising=False)
    recipe = str(_recipe(tmp_path))
    assert main(["serve-rewards", "--recipe", recipe]) == 2
    err = capsys.readouterr().err
    assert "no bearer token: set the environment variable RLHF_REWARD_TOKEN, or pass --token-file" in err
    assert main(["serve-rewards", "--recipe", recipe, "--insecure-no-auth", "--host", "0.0.0.0"]) == 2
    assert "only allowed on a loopback host" in capsys.readouterr().err
    assert main(["serve-rewards", "--recipe", str(tmp_path / "missing.yaml")]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["serve-rewards", "--recipe", recipe, "rewards.0.plugin=exact_mach"]) == 2
    assert "Did you mean 'exact_match'?" in capsys.readouterr().err
    assert main(["serve-rewards", "--recipe", recipe, "--token-file", str(tmp_path / "nope.token")]) == 2
    assert "cannot read the token file" in capsys.readouterr().err


def test_cli_serves_until_sigterm(tmp_path):
    token_file = tmp_path / "reward.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "RLHF_REWARD_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "rlhf.cli", "serve-rewards", "--recipe", str(_recipe(tmp_path)), "--port", str(port),
           "--token-file", str(token_file), "--max-concurrency", "4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(url + "/v1/health", timeout=1) as resp:
                    assert json.loads(resp.read())["components"] == ["exact", "length", "explode"]
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up within 20 s"
                time.sleep(0.1)
        status, _, body = request(url, "POST", "/v1/score", score_body(components=["exact", "length"]))
        assert status == 200
        expected = local_values(local_components(), PROMPTS, COMPLETIONS, COLUMNS)
        assert same([r[0] for r in body["values"]], expected["exact"])
        assert request(url, "POST", "/v1/score", score_body(), token="bad")[0] == 401
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err and "stopped" in err
