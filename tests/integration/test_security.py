"""nonstop holds the developer's credentials: what it exposes, to whom, and where a key
may never appear."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

TOKEN = "nonstop-test-token-5f1c2a9e"
KEY = procs.PLANTED_KEY
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
EVENT_END = b"\n\n"  # the end of the first server-sent event: the dashboard's stream never ends on its own


def config(cloud_url: str, local_url: str, **settings) -> str:
    return nonstop_config(
        cloud_url, cloud={"first_byte_timeout": 3.0, "error_cooldown": 0.2, "default_cooldown": 0.5},
        local=[{"name": "local", "url": local_url, "model": "local-model", "connect_timeout": 1.0}], **settings,
    )


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


# --- exposure -------------------------------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on port, from /proc/net/tcp{,6}."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state = parts[1], parts[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def test_listens_on_loopback_by_default(tmp_path):
    from nonstop.config import DEFAULT_LISTEN, parse_config

    assert parse_config({}).host == "127.0.0.1" == DEFAULT_LISTEN.split(":")[0]
    port = procs.free_port()
    cfg = procs.write_config(tmp_path, nonstop_config(state_dir=tmp_path / "state"))
    env = {k: v for k, v in os.environ.items() if k != "NONSTOP_TOKEN"}
    with open(tmp_path / "out.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nonstop", "serve", "--config", str(cfg), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=procs.ROOT)
        try:
            procs.wait_http(f"http://127.0.0.1:{port}/health", timeout=30, proc=proc, log=tmp_path / "out.log")
            assert _listening_addresses(port) == {"0100007F"}, "nonstop must listen on 127.0.0.1 only"
        finally:
            proc.terminate()
            proc.wait(15)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_exposed_address_without_token_refuses_to_start(tmp_path, host):
    cfg = procs.write_config(tmp_path, nonstop_config(state_dir=tmp_path / "state"))
    env = {k: v for k, v in os.environ.items() if k != "NONSTOP_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "nonstop", "serve", "--config", str(cfg), "--host", host, "--port", str(procs.free_port())],
                          capture_output=True, text=True, env=env, cwd=procs.ROOT, timeout=30)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "token" in proc.stderr and "NONSTOP_TOKEN" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_exposed_listen_in_config_without_token_refuses_to_start(tmp_path):
    cfg = procs.write_config(tmp_path, nonstop_config(listen=f"0.0.0.0:{procs.free_port()}", state_dir=tmp_path / "state",
                                                        embedded=None, discovery=None))
    env = {k: v for k, v in os.environ.items() if k != "NONSTOP_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "nonstop", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, env=env, cwd=procs.ROOT, timeout=30)
    assert proc.returncode == 2
    assert "listen" in proc.stderr and "token" in proc.stderr


# --- the access token -------------------------------------------------------------------------

# (method, path, body, protocol of the 401)
ROUTES = [
    ("POST", "/v1/messages", dumps(MESSAGE), "anthropic"),
    ("POST", "/v1/messages?beta=true", dumps({**MESSAGE, "stream": True}), "anthropic"),
    ("POST", "/v1/messages/count_tokens", dumps(MESSAGE), "anthropic"),
    ("GET", "/v1/models", None, "anthropic"),
    ("HEAD", "/api/hello", None, "anthropic"),
    ("GET", "/api/hello", None, "anthropic"),
    ("POST", "/v1/chat/completions", dumps(CHAT), "openai"),
    ("GET", "/health", None, "anthropic"),
    ("HEAD", "/health", None, "anthropic"),
    ("GET", "/metrics", None, "anthropic"),
    ("GET", "/_nonstop/", None, "anthropic"),
    ("GET", "/_nonstop/index.html", None, "anthropic"),
    ("GET", "/_nonstop/api/status", None, "anthropic"),
    ("GET", "/_nonstop/api/requests", None, "anthropic"),
    ("GET", "/_nonstop/api/events", None, "anthropic"),
    ("POST", "/_nonstop/api/probe", b"", "anthropic"),
    ("GET", "/v1/some/new/endpoint", None, "anthropic"),
]


@pytest.fixture
def guarded(cloud, recorder_proc, nonstop_factory):
    return nonstop_factory(config(cloud.url, recorder_proc.url, token=TOKEN))


@pytest.mark.parametrize("method,path,body,protocol", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_route_requires_the_token(guarded, cloud, method, path, body, protocol):
    before = len(procs.cloud_requests(cloud))
    for headers in ({}, {"x-nonstop-token": "wrong"}, {"x-nonstop-token": TOKEN[:-1]},
                    {"authorization": f"Bearer {TOKEN}"}, {"cookie": "nonstop_token=wrong"}):
        r = rawhttp.exchange(method, guarded.url + path, headers={"content-type": "application/json", "x-api-key": KEY, **headers}, body=body)
        assert r.status == 401, (headers, r.status, r.body[:200])
        assert r.headers.get("access-control-allow-origin") != "*"
        if method == "HEAD":
            continue
        doc = json.loads(r.body)
        if protocol == "openai":
            assert doc["error"]["code"] == "invalid_api_key" and "x-nonstop-token" in doc["error"]["message"]
        else:
            assert doc["type"] == "error" and doc["error"]["type"] == "authentication_error"
            assert "x-nonstop-token" in doc["error"]["message"]
    assert len(procs.cloud_requests(cloud)) == before, "an unauthorised request reached the cloud"


@pytest.mark.parametrize("method,path,body,protocol", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_route_works_with_the_token(guarded, cloud, method, path, body, protocol):
    headers = {"content-type": "application/json", "x-api-key": KEY, "x-nonstop-token": TOKEN, "anthropic-version": "2023-06-01"}
    r = rawhttp.exchange(method, guarded.url + path, headers=headers, body=body, until=EVENT_END if path.endswith("/events") else None)
    assert r.status != 401
    assert r.status < 500
    assert r.headers.get("access-control-allow-origin") != "*"
    for sent in procs.cloud_requests(cloud):
        names = {k.lower() for k, _ in sent["headers"]}
        assert "x-nonstop-token" not in names, "nonstop's own token was forwarded to the cloud"
        assert TOKEN not in json.dumps(sent)


def test_dashboard_token_in_query_sets_a_strict_cookie(guarded):
    r = rawhttp.exchange("GET", guarded.url + f"/_nonstop/?token={TOKEN}")
    assert r.status == 200
    cookie = r.headers.get("set-cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    r = rawhttp.exchange("GET", guarded.url + "/_nonstop/api/status", headers={"cookie": f"nonstop_token={TOKEN}"})
    assert r.status == 200
    # The query form is for opening the dashboard in a browser; the API paths of the
    # model front doors do not take it.
    r = rawhttp.exchange("POST", guarded.url + f"/v1/messages?token={TOKEN}", json=MESSAGE)
    assert r.status == 401


# --- browsers and other origins -----------------------------------------------------------------


def test_no_wildcard_cors_anywhere(cloud, recorder_proc, nonstop_factory):
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    paths = [(m, p, b) for m, p, b, _ in ROUTES if not p.endswith("/events")]
    for origin in ("https://evil.example", "null"):
        for method, path, body in paths:
            r = rawhttp.exchange(method, ns.url + path, body=body,
                                 headers={"origin": origin, "content-type": "application/json", "x-api-key": KEY})
            assert r.headers.get("access-control-allow-origin") not in ("*", origin), (path, r.pairs)
            assert "access-control-allow-credentials" not in r.headers
        # A CORS preflight is not granted either.
        r = rawhttp.exchange("OPTIONS", ns.url + "/v1/messages", headers={
            "origin": origin, "access-control-request-method": "POST", "access-control-request-headers": "x-api-key,content-type"})
        assert r.headers.get("access-control-allow-origin") not in ("*", origin)


@pytest.mark.parametrize("path", ["/_nonstop/api/status", "/_nonstop/api/requests", "/v1/messages"])
def test_foreign_host_header_is_refused(cloud, recorder_proc, nonstop_factory, path):
    """DNS rebinding: a web page whose name resolves to 127.0.0.1 talks to nonstop as a
    same-origin site, so CORS does not protect the request log or the local model. A
    loopback-only gateway without a token must answer only to loopback Host names."""
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    rawhttp.request("POST", ns.url + "/v1/messages", MESSAGE, {"x-api-key": KEY})
    body = dumps(MESSAGE) if path == "/v1/messages" else None
    method = "POST" if body else "GET"
    r = rawhttp.exchange(method, ns.url + path, body=body,
                         headers={"host": f"rebind.evil.example:{ns.port}", "content-type": "application/json"})
    assert r.status in (400, 403, 421), (r.status, r.body[:300])
    for host in (f"127.0.0.1:{ns.port}", f"localhost:{ns.port}", f"[::1]:{ns.port}"):
        r = rawhttp.exchange(method, ns.url + path, body=body, headers={"host": host, "content-type": "application/json", "x-api-key": KEY})
        assert r.status == 200, host


# --- the state directory ------------------------------------------------------------------------


def _assert_private(state: Path) -> None:
    assert stat.S_IMODE(state.stat().st_mode) == 0o700, oct(state.stat().st_mode)
    files = [p for p in state.rglob("*")]
    assert any(p.name == "nonstop.db" for p in files)
    for p in files:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            assert mode == 0o700, (p, oct(mode))
        else:
            assert mode == 0o600, (p, oct(mode))


def test_state_dir_is_private(cloud, recorder_proc, nonstop_factory, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    old = os.umask(0o022)
    try:
        cfg = config(cloud.url, recorder_proc.url)
        ns = nonstop_factory(cfg, state_dir=state)
        procs.set_mode(cloud, "subscription_limit", reset_in=600)
        for stream in (False, True):
            rawhttp.request("POST", ns.url + "/v1/messages", {**MESSAGE, "stream": stream}, {"x-api-key": KEY})
        time.sleep(0.5)
        _assert_private(state)
        ns.stop()
        _assert_private(state)
        ns2 = nonstop_factory(cfg, state_dir=state)
        rawhttp.request("POST", ns2.url + "/v1/messages", MESSAGE, {"x-api-key": KEY})
        time.sleep(0.5)
        _assert_private(state)
    finally:
        os.umask(old)


# --- the planted key --------------------------------------------------------------------------


def _send_everywhere(ns: procs.Proc, cloud: procs.Proc) -> list[bytes]:
    """Requests carrying the key through every path nonstop has: served by the cloud,
    failed over, passed-through errors, a cloud that quotes the key back, and a failure
    of every backend. Returns the bodies nonstop itself wrote (its own error messages)."""
    own: list[bytes] = []
    auths = [{"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY, "authorization": f"Bearer {KEY}"}]
    modes = [("ok", {}), ("subscription_limit", {"reset_in": 0.5}), ("auth", {}), ("overloaded", {}),
             ("echo_key", {"status": 400}), ("echo_key", {"status": 429}), ("echo_key", {"status": 500}),
             ("non_json_error", {}), ("midstream_overloaded", {})]
    for mode, params in modes:
        procs.set_mode(cloud, mode, **params)
        for auth in auths:
            for path, body in (("/v1/messages", MESSAGE), ("/v1/chat/completions", CHAT)):
                for stream in (False, True):
                    status, h, data = rawhttp.request("POST", ns.url + path, {**body, "stream": stream},
                                                 {"anthropic-version": "2023-06-01", **auth})
                    failover = h.get("x-nonstop-failover", "")
                    assert KEY not in failover, f"{mode}: the key is in the x-nonstop-failover header"
                    if h.get("x-nonstop-backend") != "cloud":
                        own.append(data)
            rawhttp.request("POST", ns.url + "/v1/messages/count_tokens", MESSAGE, auth)
            rawhttp.request("GET", ns.url + "/v1/models", None, auth)
            rawhttp.request("GET", ns.url + "/v1/unknown/thing", None, auth)
        time.sleep(0.6)  # let any cooldown pass so the next mode reaches the cloud
    return own


@pytest.mark.parametrize("local_up", [True, False], ids=["local-up", "local-down"])
def test_planted_key_never_leaks(cloud, recorder_proc, nonstop_factory, local_up):
    local_url = recorder_proc.url if local_up else f"http://127.0.0.1:{procs.free_port()}"
    before_local = len(json.loads(rawhttp.request("GET", recorder_proc.url + "/_recorded")[2]))
    ns = nonstop_factory(config(cloud.url, local_url))
    own = _send_everywhere(ns, cloud)
    for data in own:
        assert KEY.encode() not in data, f"the key is in an error message nonstop wrote: {data[:300]!r}"
    for path in ("/_nonstop/api/status", "/_nonstop/api/requests?limit=1000", "/metrics", "/health"):
        status, _, data = rawhttp.request("GET", ns.url + path)
        assert status == 200
        assert KEY.encode() not in data, f"the key is in {path}"
    events = rawhttp.exchange("GET", ns.url + "/_nonstop/api/events", until=EVENT_END).body
    assert KEY.encode() not in events
    state = Path(ns.extra["state_dir"])
    ns.stop()
    out = ns.output()
    assert KEY not in out, "the key is in nonstop's output"
    assert not re.search(r"sk-ant-api03-PLANTED", out)
    for f in state.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f"the key is in {f.name}"
    seen = json.loads(rawhttp.request("GET", recorder_proc.url + "/_recorded")[2])[before_local:]
    if local_up:
        assert seen, "nothing reached the local backend"
    for req in seen:
        assert KEY not in json.dumps(req), "the key reached the local backend"
        names = {k.lower() for k, _ in req["headers"]}
        assert not names & {"x-api-key", "authorization", "anthropic-beta", "cookie"}


def test_key_in_a_request_body_is_not_logged(cloud, recorder_proc, nonstop_factory):
    """A body that fails validation is echoed nowhere, even when it contains a key."""
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    for body in (b'{"model": "' + KEY.encode() + b'\x01", "messages": []}', b"{" + KEY.encode(), KEY.encode()):
        for path in ("/v1/messages", "/v1/chat/completions", "/v1/messages/count_tokens"):
            r = rawhttp.exchange("POST", ns.url + path, body=body, headers={"content-type": "application/json"})
            assert 400 <= r.status < 500
            assert KEY.encode() not in r.body, (path, r.body[:300])
    ns.stop()
    assert KEY not in ns.output()
