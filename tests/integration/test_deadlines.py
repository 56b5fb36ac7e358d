"""Every wait has a bound: a hung cloud goes local within its connect/first-byte deadline,
a silent stream is cut at its idle deadline with a well-formed error, a client that goes
away takes the upstream work with it, and a cloud that was out is retried once its
deadline has passed."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request

import pytest

from tests.support import procs, wirecheck
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01"}


CLOUD = {"connect_timeout": 1.0, "first_byte_timeout": 1.5, "idle_timeout": 2.0, "error_cooldown": 0.5,
         "default_cooldown": 1.0}


def config(cloud_url: str, local_url: str, *, local: dict | None = None, **settings) -> str:
    backend = {"name": "local", "url": local_url, "model": "local-model", "connect_timeout": 1.0,
               "count_tokens": "estimate", **(local or {})}
    return nonstop_config(cloud_url, cloud=CLOUD, local=[backend], **settings)


def post(url: str, path: str, body: dict, *, timeout: float = 30, headers: dict | None = None) -> tuple[int, dict, bytes, float, float]:
    """status, headers, body, seconds to the response head, seconds to the end."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        data = json.dumps(body).encode()
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
                f"Content-Length: {len(data)}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in {**HEADERS, **(headers or {})}.items()]
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        buf = b""
        t_head = None
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if t_head is None and b"\r\n\r\n" in buf:
                t_head = time.monotonic() - t0
    total = time.monotonic() - t0
    raw_head, _, body_bytes = buf.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if hdrs.get("transfer-encoding") == "chunked":
        body_bytes = _dechunk(body_bytes)
    return status, hdrs, body_bytes, t_head or total, total


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


# --- a hung cloud -----------------------------------------------------------------------------


HUNG = [("hang", False), ("hang", True), ("hang_after_head", True), ("endless_headers", False), ("endless_headers", True)]


@pytest.mark.parametrize("mode,stream", HUNG, ids=[f"{m}-{'stream' if s else 'json'}" for m, s in HUNG])
def test_hung_cloud_goes_local_within_the_first_byte_deadline(cloud, recorder_proc, nonstop_factory, mode, stream):
    procs.set_mode(cloud, mode, hang_for=30)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    status, h, body, t_head, _ = post(ns.url, "/v1/messages", {**MESSAGE, "stream": stream})
    assert status == 200
    assert h["x-nonstop-backend"] == "local"
    assert "timeout" in h.get("x-nonstop-failover", ""), h
    assert t_head < 1.0 + 1.5 + 1.5, f"{t_head:.1f}s to the response head"
    assert wirecheck.check_anthropic(status, h["content-type"], body, stream=stream).outcome == "ok"


def _unaccepting_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback port whose accept queue is full: new connections hang in SYN_SENT."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("could not fill the accept queue on this kernel")
    except (TimeoutError, OSError):
        pass
    finally:
        probe.close()
    return server, fillers


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_unanswered_connect_goes_local_within_the_connect_deadline(recorder_proc, nonstop_factory, stream):
    server, fillers = _unaccepting_listener()
    try:
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        ns = nonstop_factory(config(url, recorder_proc.url))
        status, h, _, t_head, _ = post(ns.url, "/v1/messages", {**MESSAGE, "stream": stream})
        assert status == 200 and h["x-nonstop-backend"] == "local"
        assert t_head < 1.0 + 1.5 + 1.0, f"{t_head:.1f}s to the response head"
    finally:
        for c in fillers:
            c.close()
        server.close()


# --- a silent stream ------------------------------------------------------------------------


@pytest.mark.parametrize("door", ["anthropic", "openai"])
def test_idle_cloud_stream_is_cut_with_a_well_formed_error(cloud, recorder_proc, nonstop_factory, door):
    procs.set_mode(cloud, "stall_after_content", hang_for=30)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    path = "/v1/messages" if door == "anthropic" else "/v1/chat/completions"
    status, h, body, t_head, total = post(ns.url, path, {**MESSAGE, "stream": True})
    assert status == 200 and h["x-nonstop-backend"] == "cloud"
    v = wirecheck.check(door, status, h["content-type"], body, stream=True)
    assert v.outcome == "error", (v, body[-500:])
    assert 2.0 - 0.2 <= total < 2.0 + 2.0, f"the stream was cut after {total:.1f}s, idle_timeout is 2s"


def test_idle_local_stream_is_cut_with_a_well_formed_error(cloud, nonstop_factory):
    """The local side has its own idle deadline ([[local]] idle_timeout)."""
    local = procs.start_fake_cloud()
    try:
        procs.set_mode(local, "stall_after_content", hang_for=30)
        procs.set_mode(cloud, "subscription_limit", reset_in=600)
        ns = nonstop_factory(config(cloud.url, local.url, local={"idle_timeout": 2.0}))
        status, h, body, _, total = post(ns.url, "/v1/messages", {**MESSAGE, "stream": True})
        assert status == 200 and h["x-nonstop-backend"] == "local"
        v = wirecheck.check_anthropic_stream(body)
        assert v.outcome == "error", (v, body[-500:])
        assert total < 2.0 + 3.0
    finally:
        local.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_local_first_byte_deadline_is_honoured(cloud, nonstop_factory, stream):
    """[[local]] first_byte_timeout is documented as the wait for the first token; a local
    server that never answers must be given up on within it (not at idle_timeout)."""
    local = procs.start_fake_cloud()
    try:
        procs.set_mode(local, "hang", hang_for=60)
        procs.set_mode(cloud, "subscription_limit", reset_in=600)
        ns = nonstop_factory(config(cloud.url, local.url, local={"first_byte_timeout": 1.5, "idle_timeout": 10.0},
                                    ping_interval=0.5))
        try:
            status, h, body, _, total = post(ns.url, "/v1/messages", {**MESSAGE, "stream": stream}, timeout=9)
        except TimeoutError:
            pytest.fail("no complete answer 9 s after the local server stopped answering; first_byte_timeout is 1.5 s")
        assert total < 1.5 + 3.0 + 2.0, f"{total:.1f}s"
        v = wirecheck.check_anthropic(status, h["content-type"], body, stream=stream)
        assert v.outcome == "error", v
    finally:
        local.stop()


# --- a client that goes away ---------------------------------------------------------------------


def _open_stream(url: str, path: str, body: dict, until: bytes, timeout: float = 60) -> tuple[socket.socket, bytes]:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=timeout)
    data = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json", f"Content-Length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in HEADERS.items()]
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    buf = b""
    deadline = time.monotonic() + timeout
    while until not in buf and time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return s, buf


@pytest.mark.parametrize("door", ["anthropic", "openai"])
def test_client_disconnect_closes_the_cloud_stream(cloud, recorder_proc, nonstop_factory, door):
    procs.set_mode(cloud, "endless_stream", hang_for=60, delay=0.05)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    path = "/v1/messages" if door == "anthropic" else "/v1/chat/completions"
    marker = b"word3" if door == "anthropic" else b"word3"
    s, buf = _open_stream(ns.url, path, {**MESSAGE, "stream": True}, marker)
    assert marker in buf
    active = json.loads(procs.http("GET", cloud.url + "/_fake/active")[2])["active"]
    assert active.get("endless_stream") == 1
    s.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        active = json.loads(procs.http("GET", cloud.url + "/_fake/active")[2])["active"]
        if active.get("endless_stream") == 0:
            break
        time.sleep(0.05)
    assert active.get("endless_stream") == 0, "the cloud stream went on after the client left"
    rows = json.loads(procs.http("GET", ns.url + "/_nonstop/api/requests")[2])["requests"]
    assert rows and rows[-1]["outcome"] == "client_gone"


def _slots(llama_url: str) -> list[dict]:
    with urllib.request.urlopen(llama_url + "/slots", timeout=5) as r:
        return json.loads(r.read())


def _wait_idle(llama_url: str, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not any(s.get("is_processing") for s in _slots(llama_url)):
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


# At temperature 0 the bundled SmolLM2-135M writes this story to any length it is allowed.
LONG_STORY = "Write a very long story about a dragon. Make it at least 3000 words long, with many chapters."


@pytest.mark.parametrize("api", ["anthropic", "openai"])
@pytest.mark.parametrize("door", ["anthropic", "openai"])
def test_client_disconnect_stops_local_generation(cloud, llama, nonstop_factory, door, api):
    assert _wait_idle(llama.url, 120) is not None, "llama-server is busy before the test"
    procs.set_mode(cloud, "subscription_limit", reset_in=600)
    ns = nonstop_factory(config(cloud.url, llama.url, local={"api": api, "context_window": 8192, "max_output_tokens": 4000}))
    path = "/v1/messages" if door == "anthropic" else "/v1/chat/completions"
    body = {"model": "claude-sonnet-4-5", "max_tokens": 4000, "stream": True, "temperature": 0.0,
            "messages": [{"role": "user", "content": LONG_STORY}]}
    marker = b"content_block_delta" if door == "anthropic" else b'"content":"'
    s, buf = _open_stream(ns.url, path, body, marker)
    try:
        assert marker in buf, buf[-500:]
        time.sleep(0.3)
        assert any(sl.get("is_processing") for sl in _slots(llama.url)), "generation ended on its own too early to tell"
    finally:
        s.close()
    took = _wait_idle(llama.url, 10)
    assert took is not None and took < 3.0, f"llama-server was still generating {took or 10:.1f}s after the client left"
    time.sleep(0.3)
    rows = json.loads(procs.http("GET", ns.url + "/_nonstop/api/requests")[2])["requests"]
    assert rows and rows[-1]["outcome"] == "client_gone", rows[-1:]


# --- the cloud is retried once its deadline passes ---------------------------------------------------


def _served_by_cloud_within(ns: procs.Proc, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _, h, _ = procs.http("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)
        if h.get("x-nonstop-backend") == "cloud":
            return True
        time.sleep(0.2)
    return False


def test_probe_answered_with_a_client_error_does_not_block_the_cloud(cloud, recorder_proc, nonstop_factory):
    """The request that probes the cloud after a quota deadline may itself be invalid (the
    cloud answers 400 and the client sees it). That must not leave the cloud un-probed."""
    procs.set_mode(cloud, "subscription_limit", reset_in=1)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    _, h, _ = procs.http("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)
    assert h["x-nonstop-backend"] == "local"
    time.sleep(1.5)
    procs.set_mode(cloud, "ok")
    status, h, _ = procs.http("POST", ns.url + "/v1/messages", MESSAGE, {**HEADERS, "x-fake-mode": "invalid_request"})
    assert status == 400 and h["x-nonstop-backend"] == "cloud"
    assert _served_by_cloud_within(ns, 5), "the cloud answers again, but nonstop kept serving locally"


def test_warm_up_request_does_not_swallow_the_probe(cloud, recorder_proc, nonstop_factory):
    """Claude Code sends HEAD /api/hello at start-up. If that is the first request after
    the quota deadline, its answer must count (or it must not take the probe)."""
    procs.set_mode(cloud, "subscription_limit", reset_in=1)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    _, h, _ = procs.http("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)
    assert h["x-nonstop-backend"] == "local"
    time.sleep(1.5)
    procs.set_mode(cloud, "ok")
    assert procs.http("HEAD", ns.url + "/api/hello", None, HEADERS)[0] == 200
    assert _served_by_cloud_within(ns, 5), "the cloud answers again, but nonstop kept serving locally"


@pytest.mark.parametrize("mode", ["throttle", "api_key_limit", "overloaded", "reset"])
def test_short_outage_returns_to_the_cloud(cloud, recorder_proc, nonstop_factory, mode):
    procs.set_mode(cloud, mode, retry_after=1, api_key_retry_after=1, reset_in=1)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    for _ in range(3):  # three blips open the breaker for transient kinds
        _, h, _ = procs.http("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)
        assert h["x-nonstop-backend"] == "local"
    procs.set_mode(cloud, "ok")
    assert _served_by_cloud_within(ns, 4), "nonstop did not go back to the cloud after a 1 s outage"
