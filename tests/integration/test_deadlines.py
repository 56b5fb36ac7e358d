"""Every wait has a bound: a hung cloud goes local within its connect/first-byte deadline,
a silent stream is cut at its idle deadline with a well-formed error, a client that goes
away takes the upstream work with it, and a cloud that was out is retried once its
deadline has passed."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

from nonstop.routing.deadline import ANSWER_PACE
from tests.support import procs, rawhttp, wirecheck
from tests.support.config import nonstop_config
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01"}


CLOUD = {"connect_timeout": 1.0, "first_byte_timeout": 1.5, "idle_timeout": 2.0, "error_cooldown": 0.5,
         "default_cooldown": 1.0}
# Room, beyond a deadline, for the local answer and a loaded machine. Each bound stays well
# short of what a missing deadline would cost (a cloud that hangs for 30-60 s, a local
# idle_timeout of 10 s), so the tests still prove the deadline that is meant.
SLACK = 3.0


def config(cloud_url: str, local_url: str, *, local: dict | None = None, **settings) -> str:
    backend = {"name": "local", "url": local_url, "model": "local-model", "connect_timeout": 1.0,
               "count_tokens": "estimate", **(local or {})}
    return nonstop_config(cloud_url, cloud=CLOUD, local=[backend], **settings)


# --- a hung cloud -----------------------------------------------------------------------------


HUNG = [("hang", False), ("hang", True), ("hang_after_head", True), ("endless_headers", False), ("endless_headers", True)]


@pytest.mark.parametrize("mode,stream", HUNG, ids=[f"{m}-{'stream' if s else 'json'}" for m, s in HUNG])
def test_hung_cloud_goes_local_within_the_first_byte_deadline(cloud, recorder_proc, nonstop_factory, mode, stream):
    procs.set_mode(cloud, mode, hang_for=30)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    # A short answer (5 tokens): the wait is the deadline's, plus 0.5 s for writing it.
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": stream, "max_tokens": 5},
                         headers=HEADERS, timeout=30)
    assert r.status == 200
    assert r.headers["x-nonstop-backend"] == "local"
    assert "timeout" in r.headers.get("x-nonstop-failover", ""), r.headers
    # A non-streamed answer's head comes once it is whole: its wait allows for writing it.
    writing = 0.0 if stream else 5 / ANSWER_PACE
    assert r.head_s < 1.0 + 1.5 + writing + SLACK, f"{r.head_s:.1f}s to the response head"
    assert wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=stream).outcome == "ok"


SMALL_FAULTS = [(path, mode) for path in ("/v1/messages/count_tokens", "/v1/models")
                for mode in ("hang_after_head", "json_empty", "json_garbled", "json_not_message", "json_negative")]


@pytest.mark.parametrize("path,mode", SMALL_FAULTS, ids=[f"{p.rsplit('/', 1)[-1]}-{m}" for p, m in SMALL_FAULTS])
def test_small_reply_that_stalls_or_is_broken_is_answered_locally_within_the_deadline(
        cloud, recorder_proc, nonstop_factory, path, mode):
    # A 200 whose body never comes (bound by the first-byte deadline, not by the idle
    # timeout, set long here as a missing bound would cost), or comes empty, cut, or
    # without the field asked for: answered locally, never relayed.
    procs.set_mode(cloud, mode, hang_for=30)
    ns = nonstop_factory(nonstop_config(cloud.url, cloud={**CLOUD, "idle_timeout": 25.0}, local=[
        {"name": "local", "url": recorder_proc.url, "model": "local-model", "connect_timeout": 1.0,
         "count_tokens": "estimate"}]))
    if path.endswith("count_tokens"):
        r = rawhttp.exchange("POST", ns.url + path, json=MESSAGE, headers=HEADERS)
        assert r.status == 200 and json.loads(r.body)["input_tokens"] > 0
        assert r.headers["x-nonstop-backend"] == "local"
    else:
        r = rawhttp.exchange("GET", ns.url + path, headers=HEADERS)
        assert r.status == 200 and isinstance(json.loads(r.body)["data"], list)
        assert r.headers["x-nonstop-backend"] == "local"
    assert r.head_s < 1.0 + 1.5 + SLACK, f"{r.head_s:.1f}s to the response head"


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
        r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": stream}, headers=HEADERS)
        assert r.status == 200 and r.headers["x-nonstop-backend"] == "local"
        assert r.head_s < 1.0 + 1.5 + SLACK, f"{r.head_s:.1f}s to the response head"
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
    r = rawhttp.exchange("POST", ns.url + path, json={**MESSAGE, "stream": True}, headers=HEADERS)
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "cloud"
    v = wirecheck.check(door, r.status, r.headers["content-type"], r.body, stream=True)
    assert v.outcome == "error", (v, r.body[-500:])
    assert 2.0 - 0.2 <= r.total_s < 2.0 + SLACK, f"the stream was cut after {r.total_s:.1f}s, idle_timeout is 2s"


def test_idle_local_stream_is_cut_with_a_well_formed_error(cloud, nonstop_factory):
    """The local side has its own idle deadline ([[local]] idle_timeout)."""
    with procs.start_fake_cloud() as local:
        procs.set_mode(local, "stall_after_content", hang_for=30)
        procs.set_mode(cloud, "subscription_limit", reset_in=600)
        ns = nonstop_factory(config(cloud.url, local.url, local={"idle_timeout": 2.0}))
        r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": True}, headers=HEADERS)
        assert r.status == 200 and r.headers["x-nonstop-backend"] == "local"
        v = wirecheck.check_anthropic_stream(r.body)
        assert v.outcome == "error", (v, r.body[-500:])
        assert r.total_s < 2.0 + SLACK


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_local_first_byte_deadline_is_honoured(cloud, nonstop_factory, stream):
    """[[local]] first_byte_timeout is documented as the wait for the first token; a local
    server that never answers must be given up on within it (not at idle_timeout)."""
    with procs.start_fake_cloud() as local:
        procs.set_mode(local, "hang", hang_for=60)
        procs.set_mode(cloud, "subscription_limit", reset_in=600)
        ns = nonstop_factory(config(cloud.url, local.url, local={"first_byte_timeout": 1.5, "idle_timeout": 10.0},
                                    ping_interval=0.5))
        try:
            r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": stream}, headers=HEADERS,
                                 timeout=20)
        except TimeoutError:
            pytest.fail("no complete answer 20 s after the local server stopped answering; first_byte_timeout is 1.5 s")
        # Under idle_timeout (10 s): the first-byte deadline is the one that ended it.
        assert r.total_s < 1.5 + 1.0 + SLACK + 2.0, f"{r.total_s:.1f}s"
        v = wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=stream)
        assert v.outcome == "error", v


def test_a_local_whole_reply_whose_body_stalls_is_given_up_at_the_heads_deadline(cloud, nonstop_factory):
    """A reply that is not a stream is its answer: once the head is in, the body is bound by
    the same first_byte_timeout, not by idle_timeout of silence."""
    with procs.start_fake_cloud() as local:
        procs.set_mode(local, "json_stall_body", hang_for=60)
        procs.set_mode(cloud, "subscription_limit", reset_in=600)
        ns = nonstop_factory(config(cloud.url, local.url, local={"first_byte_timeout": 1.5, "idle_timeout": 10.0}))
        r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=MESSAGE, headers=HEADERS, timeout=20)
        assert r.total_s < 1.5 + 1.0 + SLACK + 2.0, f"{r.total_s:.1f}s"
        v = wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=False)
        assert v.outcome == "error", v
        assert "first_byte_timeout" in json.loads(r.body)["error"]["message"], r.body


# --- a client that goes away ---------------------------------------------------------------------


@pytest.mark.parametrize("door", ["anthropic", "openai"])
def test_client_disconnect_closes_the_cloud_stream(cloud, recorder_proc, nonstop_factory, door):
    procs.set_mode(cloud, "endless_stream", hang_for=60, delay=0.05)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    path = "/v1/messages" if door == "anthropic" else "/v1/chat/completions"
    marker = b"word3" if door == "anthropic" else b"word3"
    with rawhttp.open_stream("POST", ns.url + path, json={**MESSAGE, "stream": True}, headers=HEADERS, until=marker) as seen:
        assert marker in seen
        active = json.loads(rawhttp.request("GET", cloud.url + "/_fake/active")[2])["active"]
        assert active.get("endless_stream") == 1
    # The stream would go on for a minute: closed within seconds means the client's leaving closed it.
    wait_for(lambda: json.loads(rawhttp.request("GET", cloud.url + "/_fake/active")[2])["active"].get("endless_stream") == 0,
             10, "the cloud stream to close after the client left")
    wait_for(lambda: (rows := _requests(ns)) and rows[-1]["outcome"] == "client_gone", 10,
             "the request to be logged as client_gone")


def _requests(ns: procs.Proc) -> list[dict]:
    return json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/requests")[2])["requests"]


def _slots(llama_url: str) -> list[dict]:
    return json.loads(rawhttp.request("GET", llama_url + "/slots", timeout=5)[2])


def _wait_idle(llama_url: str, timeout: float, every: float = 0.05) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not any(s.get("is_processing") for s in _slots(llama_url)):
            return time.monotonic() - t0
        time.sleep(every)
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
    with rawhttp.open_stream("POST", ns.url + path, json=body, headers=HEADERS, until=marker) as seen:
        assert marker in seen, seen[-500:]
        time.sleep(0.3)
        assert any(sl.get("is_processing") for sl in _slots(llama.url)), "generation ended on its own too early to tell"
    # A 4000-token story takes llama-server minutes here: idle within seconds means it was stopped.
    took = _wait_idle(llama.url, 20)
    assert took is not None and took < 10.0, f"llama-server was still generating {took or 20:.1f}s after the client left"
    wait_for(lambda: (rows := _requests(ns)) and rows[-1]["outcome"] == "client_gone", 10,
             "the request to be logged as client_gone")


def _leave_after(url: str, body: dict, seconds: float) -> None:
    """Send the request, and hang up `seconds` later with no answer read."""
    with pytest.raises(TimeoutError), rawhttp.open_stream("POST", url, json=body, headers=HEADERS,
                                                          until=b"never", timeout=seconds):
        pass


@pytest.mark.parametrize("door", ["anthropic", "openai"])
def test_a_client_that_leaves_before_its_answer_starts_stops_the_local_work(cloud, llama, nonstop_factory, door):
    # Not streamed: nothing reaches the client until the whole answer is written, so the
    # relay never starts; the client's leaving must still stop the generation.
    assert _wait_idle(llama.url, 120) is not None, "llama-server is busy before the test"
    procs.set_mode(cloud, "subscription_limit", reset_in=600)
    ns = nonstop_factory(config(cloud.url, llama.url, local={"context_window": 8192, "max_output_tokens": 4000}))
    path = "/v1/messages" if door == "anthropic" else "/v1/chat/completions"
    body = {"model": "claude-sonnet-4-5", "max_tokens": 4000, "temperature": 0.0,
            "messages": [{"role": "user", "content": LONG_STORY}]}
    _leave_after(ns.url + path, body, 3.0)
    wait_for(lambda: (rows := _requests(ns)) and rows[-1]["outcome"] == "client_gone", 10,
             "the request to be logged as client_gone")
    # llama-server notices a closed connection within a second or two when it is not
    # being asked about its slots many times a second (it was seen not to, here, when it was).
    took = _wait_idle(llama.url, 20, every=1.0)
    assert took is not None and took < 10.0, f"llama-server was still generating {took or 20:.1f}s after the client left"


def test_a_client_that_leaves_before_the_cloud_answers_is_not_waited_for(cloud, recorder_proc, nonstop_factory):
    procs.set_mode(cloud, "late_first_byte", late_by=8)  # a long answer being written
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    started = time.monotonic()
    _leave_after(ns.url + "/v1/messages", MESSAGE, 1.0)
    wait_for(lambda: (rows := _requests(ns)) and rows[-1]["outcome"] == "client_gone", 10,
             "the request to be logged as client_gone")
    assert time.monotonic() - started < 5, "the cloud's answer was waited for after the client left"
    assert _requests(ns)[-1]["backend"] == ""  # nothing answered: the local backend was not asked either


# --- the cloud is retried once its deadline passes ---------------------------------------------------


def _served_by_cloud_within(ns: procs.Proc, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _, h, _ = rawhttp.request("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)
        if h.get("x-nonstop-backend") == "cloud":
            return True
        time.sleep(0.2)
    return False


def _past_a_one_second_quota_deadline(cloud: procs.Proc, ns: procs.Proc) -> None:
    """The cloud meets its limit with a reset 1 s away (nonstop goes local), then that
    second passes and the cloud answers again: the next request is nonstop's probe."""
    procs.set_mode(cloud, "subscription_limit", reset_in=1)
    _, h, _ = rawhttp.request("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)
    assert h["x-nonstop-backend"] == "local"
    time.sleep(1.5)
    procs.set_mode(cloud, "ok")


def test_probe_answered_with_a_client_error_does_not_block_the_cloud(cloud, recorder_proc, nonstop_factory):
    """The request that probes the cloud after a quota deadline may itself be invalid (the
    cloud answers 400 and the client sees it). That must not leave the cloud un-probed."""
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    _past_a_one_second_quota_deadline(cloud, ns)
    status, h, _ = rawhttp.request("POST", ns.url + "/v1/messages", MESSAGE, {**HEADERS, "x-fake-mode": "invalid_request"})
    assert status == 400 and h["x-nonstop-backend"] == "cloud"
    assert _served_by_cloud_within(ns, 15), "the cloud answers again, but nonstop kept serving locally"


def test_warm_up_request_does_not_swallow_the_probe(cloud, recorder_proc, nonstop_factory):
    """Claude Code sends HEAD /api/hello at start-up. If that is the first request after
    the quota deadline, its answer must count (or it must not take the probe)."""
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    _past_a_one_second_quota_deadline(cloud, ns)
    assert rawhttp.request("HEAD", ns.url + "/api/hello", None, HEADERS)[0] == 200
    assert _served_by_cloud_within(ns, 15), "the cloud answers again, but nonstop kept serving locally"


@pytest.mark.parametrize("mode", ["throttle", "api_key_limit", "overloaded", "reset"])
def test_short_outage_returns_to_the_cloud(cloud, recorder_proc, nonstop_factory, mode):
    procs.set_mode(cloud, mode, retry_after=1, api_key_retry_after=1, reset_in=1)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    for _ in range(3):  # three blips open the breaker for transient kinds
        _, h, _ = rawhttp.request("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)
        assert h["x-nonstop-backend"] == "local"
    procs.set_mode(cloud, "ok")
    assert _served_by_cloud_within(ns, 15), "nonstop did not go back to the cloud after a 1 s outage"
