"""The core promise, with real processes: the fake cloud, nonstop, a real llama-server
with a real small model, and the official anthropic SDK as the client."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest

from tests.support import procs, rawhttp, wirecheck
from tests.support.config import nonstop_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAILOVER_MODES = [
    "subscription_limit", "weekly_limit", "throttle", "api_key_limit", "overloaded",
    "server_error", "bad_gateway", "unavailable", "gateway_timeout", "credit", "spend_limit",
    "midstream_overloaded", "non_json_error", "reset",
]
# Modes that differ from others only in what a stream carries.
STREAM_ONLY = {"midstream_overloaded"}
PASSTHROUGH_ERRORS = {
    "auth": anthropic.AuthenticationError,
    "forbidden": anthropic.PermissionDeniedError,
    "invalid_request": anthropic.BadRequestError,
}


def config(cloud_url: str, local_url: str, *, window: int = 8192, **settings) -> str:
    llama = {"name": "llama", "url": local_url, "api": "anthropic", "model": "smollm2",
             "context_window": window, "max_output_tokens": 48}
    return nonstop_config(cloud_url, cloud={"first_byte_timeout": 3.0}, local=[llama], **settings)


def client(ns: procs.Proc, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=ns.url, api_key=procs.PLANTED_KEY, max_retries=0, timeout=120, **kw)


def ask(c: anthropic.Anthropic, stream: bool, **kw):
    """One request; returns (message, headers)."""
    params = dict(model="claude-sonnet-5", max_tokens=400, messages=[{"role": "user", "content": "Say hello."}])
    params.update(kw)
    if stream:
        with c.messages.stream(**params) as s:
            msg = s.get_final_message()
            return msg, s.response.headers
    raw = c.messages.with_raw_response.create(**params)
    return raw.parse(), raw.headers


def assert_complete(msg) -> None:
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.stop_reason in ("end_turn", "max_tokens", "tool_use", "stop_sequence")
    assert msg.usage.input_tokens > 0
    assert msg.content, "empty content"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_healthy_cloud_serves(cloud, llama, nonstop_factory, stream):
    ns = nonstop_factory(config(cloud.url, llama.url))
    msg, headers = ask(client(ns), stream)
    assert_complete(msg)
    assert headers["x-nonstop-backend"] == "cloud"
    assert msg.content[0].text == "Hello from the cloud."


@pytest.mark.parametrize(
    "mode,stream",
    [(m, s) for m in FAILOVER_MODES for s in (False, True) if s or m not in STREAM_ONLY],
    ids=lambda v: ("stream" if v else "json") if isinstance(v, bool) else v,
)
def test_failure_served_locally(cloud, llama, nonstop_factory, mode, stream):
    procs.set_mode(cloud, mode)
    ns = nonstop_factory(config(cloud.url, llama.url))
    msg, headers = ask(client(ns), stream)
    assert_complete(msg)
    assert headers["x-nonstop-backend"] == "llama"
    assert headers.get("x-nonstop-failover")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_refused_connection_served_locally(llama, nonstop_factory, stream):
    ns = nonstop_factory(config(f"http://127.0.0.1:{procs.free_port()}", llama.url))
    msg, headers = ask(client(ns), stream)
    assert_complete(msg)
    assert headers["x-nonstop-backend"] == "llama"
    assert "network" in headers["x-nonstop-failover"]


@pytest.mark.parametrize("mode", ["hang", "hang_after_head"])
def test_hung_cloud_goes_local_within_deadline(cloud, llama, nonstop_factory, mode):
    procs.set_mode(cloud, mode, hang_for=60)
    ns = nonstop_factory(config(cloud.url, llama.url))
    t0 = time.monotonic()
    msg, headers = ask(client(ns), True)
    assert_complete(msg)
    assert headers["x-nonstop-backend"] == "llama"
    assert time.monotonic() - t0 < 3.0 + 10 + 30  # deadline + local generation


@pytest.mark.parametrize("mode,exc", list(PASSTHROUGH_ERRORS.items()))
def test_client_and_auth_errors_are_shown(cloud, llama, nonstop_factory, mode, exc):
    procs.set_mode(cloud, mode)
    ns = nonstop_factory(config(cloud.url, llama.url))
    with pytest.raises(exc):
        ask(client(ns), False)


@pytest.mark.parametrize("mode", ["error_after_content", "reset_after_content", "truncate"])
def test_failure_after_content_ends_with_error_event(cloud, llama, nonstop_factory, mode):
    procs.set_mode(cloud, mode)
    ns = nonstop_factory(config(cloud.url, llama.url))
    body = {"model": "claude-sonnet-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=body, headers={"x-api-key": procs.PLANTED_KEY})
    assert r.status == 200
    # A well-formed stream that ends with a well-formed error event: every event before
    # it is complete JSON, nothing was cut mid-event.
    v = wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=True)
    assert v.outcome == "error", (v.problem, r.body[-600:])
    assert v.events[0] == "message_start"
    assert "content_block_delta" in v.events


@pytest.mark.parametrize("mode", ["overloaded_after_block_start", "reset_after_block_start",
                                  "overloaded_after_thinking_start"])
def test_a_cloud_failure_after_an_empty_block_start_goes_on_locally(cloud, llama, nonstop_factory, mode):
    # The cloud starts its message and an empty text (or, thinking on, thinking) block,
    # then overloads or drops the connection: the client has no content yet, so the real
    # llama-server's answer goes on in that block, as one message (the cloud's start, the
    # local text, one end).
    procs.set_mode(cloud, mode)
    ns = nonstop_factory(config(cloud.url, llama.url))
    body = {"model": "claude-sonnet-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if "thinking" in mode:
        body["thinking"] = {"type": "adaptive"}
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=body, headers={"x-api-key": procs.PLANTED_KEY})
    v = wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=True)
    assert v.outcome == "ok", (v.problem, r.body[-600:])
    assert v.events.count("message_start") == 1 and "error" not in v.events, v.events
    assert v.events.count("content_block_start") >= 1 and v.events[-1] == "message_stop"
    assert r.headers["x-nonstop-backend"] == "cloud"  # the head went out with the cloud's start
    rows = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/requests")[2])["requests"]
    row = next(x for x in rows if x["path"] == "/v1/messages")
    assert row["backend"] == "llama" and row["outcome"] == "ok", row
    assert "the cloud failed after its stream began" in row["error"], row
    assert row["reason"], row  # a failover like any other: logged, and counted by reason
    metrics = rawhttp.request("GET", ns.url + "/metrics")[2].decode()
    assert any(line.startswith("nonstop_failovers_total{") for line in metrics.splitlines()), metrics[:2000]
    # The official SDKs read it as one answer too, through either front door.
    msg, _ = ask(client(ns), True)
    assert_complete(msg)
    if "thinking" in mode:  # (the fake cloud starts a thinking block in this mode whatever is asked)
        # The cloud's thinking block, ended as a local one is (stripped on the way back).
        assert msg.content[0].type == "thinking" and msg.content[0].signature == "nonstop-local", msg.content
    oa = openai.OpenAI(base_url=ns.url + "/v1", api_key=procs.PLANTED_KEY, max_retries=0, timeout=120)
    chunks = list(oa.chat.completions.create(model="claude-sonnet-5", max_tokens=50, stream=True,
                                             messages=[{"role": "user", "content": "Say hello."}]))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_a_local_prompt_cache_hit_is_counted_as_the_cloud_counts_it(cloud, llama, nonstop_factory, api):
    """The second turn of a conversation: llama-server reads most of the prompt from its
    cache and says so (Anthropic format: cache_read_input_tokens with input_tokens 1;
    OpenAI: prompt_tokens_details.cached_tokens). The client hears the cache read, so the
    context it counts (input + cache read, as Claude Code does) is the whole prompt."""
    procs.set_mode(cloud, "subscription_limit")
    local = {"name": "llama", "url": llama.url, "api": api, "model": "smollm2", "context_window": 8192,
             "max_output_tokens": 8}
    ns = nonstop_factory(nonstop_config(cloud.url, cloud={"first_byte_timeout": 3.0}, local=[local]))
    words = " ".join(f"note {i}: the tide table for pier {i} changes weekly." for i in range(40))
    c = client(ns)
    totals = []
    for _ in range(2):
        msg, headers = ask(c, True, max_tokens=8, messages=[{"role": "user", "content": words}])
        assert headers["x-nonstop-backend"] == "llama"
        u = msg.usage
        totals.append((u.input_tokens, u.cache_read_input_tokens or 0))
    whole = sum(totals[0])  # (the first may be cached already: the llama fixture serves every test)
    second_in, second_read = totals[1]
    assert second_read > whole // 2, totals  # most of the prompt came from the cache
    assert abs(second_in + second_read - whole) <= 2, totals  # the same prompt, counted whole


def test_cloud_path_is_transparent(cloud, llama, nonstop_factory):
    ns = nonstop_factory(config(cloud.url, llama.url))
    body = (
        b'{"model":"claude-opus-5-5","max_tokens":128000,"stream":true,"thinking":{"type":"adaptive"},'
        b'"context_management":{"edits":[]},"output_config":{"effort":"high"},"metadata":{"user_id":"u"},'
        b'"system":[{"type":"text","text":"sys","cache_control":{"type":"ephemeral"}}],'
        b'"tools":[{"name":"Read","description":"d","input_schema":{"type":"object"},"defer_loading":true}],'
        b'"messages":[{"role":"system","content":"inner system"},{"role":"user","content":"hi"}],  "unknown_field": 1}'
    )
    headers = {
        "authorization": "Bearer sk-ant-oat01-" + "x" * 20,
        "anthropic-beta": "oauth-2025-04-20,interleaved-thinking-2025-05-14",
        "anthropic-version": "2023-06-01",
        "x-app": "cli",
        "user-agent": "claude-cli/2.1.332 (external, cli)",
        "x-claude-code-session-id": "sess-1",
        "x-stainless-lang": "js",
        "content-type": "application/json",
    }
    r = rawhttp.exchange("POST", ns.url + "/v1/messages?beta=true", body=body, headers=headers)
    assert r.status == 200
    assert r.headers["x-nonstop-backend"] == "cloud"
    assert "anthropic-ratelimit-unified-5h-utilization" in r.headers
    got = procs.cloud_requests(cloud)[-1]
    assert got["path"] == "/v1/messages" and got["query"] == "beta=true"
    assert got["body"].encode() == body
    received = {k.lower(): v for k, v in got["headers"]}
    for k, v in headers.items():
        assert received[k] == v, k


def test_no_cloud_credential_reaches_local(cloud, recorder_proc, nonstop_factory):
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(config(cloud.url, recorder_proc.url))
    already = len(procs.answered(recorder_proc))
    c = client(ns, default_headers={"anthropic-beta": "oauth-2025-04-20", "authorization": "Bearer " + procs.PLANTED_KEY})
    for stream in (False, True):
        msg, headers = ask(c, stream, system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}])
        assert headers["x-nonstop-backend"] == "llama"
        assert_complete(msg)
        assert msg.usage.input_tokens > 0  # the recorder says 0: nonstop fixes it
    seen = procs.answered(recorder_proc)[already:]
    assert seen
    for req in seen:
        dump = json.dumps(req)
        assert procs.PLANTED_KEY not in dump
        names = {k.lower() for k, _ in req["headers"]}
        assert not names & {"x-api-key", "authorization", "anthropic-beta", "cookie"}
        body = json.loads(req["body"])
        assert "cache_control" not in req["body"]
        assert body["model"] == "smollm2"


def test_back_on_cloud_after_reset(cloud, llama, nonstop_factory):
    # The reset is far enough away for the local answers before it, however slow the
    # machine makes them; then the test waits for the reset time nonstop reports.
    procs.set_mode(cloud, "subscription_limit", reset_in=8)
    ns = nonstop_factory(config(cloud.url, llama.url))
    c = client(ns)
    _, h1 = ask(c, True)
    assert h1["x-nonstop-backend"] == "llama"
    until = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["cloud"]["until"]
    procs.set_mode(cloud, "ok")
    before = len(procs.cloud_requests(cloud))
    _, h2 = ask(c, False)  # still out: the cloud is not touched
    assert time.time() < until, "the local answer outlasted the reset: the check below proves nothing"
    assert h2["x-nonstop-backend"] == "llama"
    assert len(procs.cloud_requests(cloud)) == before
    wait_until(until, "the quota's reset time")
    _, h3 = ask(c, True)
    assert h3["x-nonstop-backend"] == "cloud"
    status = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])
    assert status["cloud"]["state"] == "serving"


def test_state_survives_restart(cloud, llama, nonstop_factory, tmp_path):
    state = tmp_path / "state"
    procs.set_mode(cloud, "subscription_limit", reset_in=3600)
    cfg = config(cloud.url, llama.url)
    ns = nonstop_factory(cfg, state_dir=state)
    assert ask(client(ns), False)[1]["x-nonstop-backend"] == "llama"
    ns.stop()
    procs.set_mode(cloud, "ok")
    before = len(procs.cloud_requests(cloud))
    ns2 = nonstop_factory(cfg, state_dir=state)
    assert ask(client(ns2), True)[1]["x-nonstop-backend"] == "llama"
    assert len(procs.cloud_requests(cloud)) == before


def test_prompt_too_long_for_local_window(cloud, llama, nonstop_factory):
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(config(cloud.url, llama.url, window=600))
    with pytest.raises(anthropic.BadRequestError) as info:
        ask(client(ns), True, messages=[{"role": "user", "content": "word " * 3000}])
    assert "prompt is too long:" in str(info.value)
    assert "> 600 maximum" in str(info.value)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_server_that_cannot_count_is_sent_the_request_again_fitted_by_the_size_it_named(
        cloud, llama, nonstop_factory, stream):
    """llama-server through its OpenAI API, where nonstop cannot count: a history of
    digits (the model reads each as a token, the estimate 3.5 to a token) fits by the
    estimate and not in fact. llama-server refuses it naming its size; nonstop fits it by
    that size and sends it again, and the client gets its answer, not "prompt is too long"."""
    procs.set_mode(cloud, "subscription_limit")
    llama_openai = {"name": "llama", "url": llama.url, "api": "openai", "model": "smollm2",
                    "context_window": 8192, "max_output_tokens": 48}
    ns = nonstop_factory(nonstop_config(cloud.url, cloud={"first_byte_timeout": 3.0}, local=[llama_openai]))
    history = [
        {"role": "user", "content": "Keep this table of figures: " + "0123456789" * 2000},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Say hello."},
    ]
    msg, headers = ask(client(ns), stream, messages=history, max_tokens=48)
    assert headers["x-nonstop-backend"] == "llama"
    assert_complete(msg)
    rows = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/requests?limit=5")[2])["requests"]
    assert rows[0]["backend"] == "llama" and rows[0]["status"] == 200, rows[0]


def test_everything_failing_names_each_backend(cloud, nonstop_factory):
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(config(cloud.url, f"http://127.0.0.1:{procs.free_port()}"))
    with pytest.raises(anthropic.APIStatusError) as info:
        ask(client(ns), False)
    text = str(info.value)
    assert "cloud:" in text and "usage limit" in text
    assert "llama:" in text and "connection refused" in text


def test_count_tokens_and_models_and_hello(cloud, llama, nonstop_factory):
    ns = nonstop_factory(config(cloud.url, llama.url))
    c = client(ns)
    n = c.messages.count_tokens(model="claude-sonnet-5", messages=[{"role": "user", "content": "hello there"}])
    assert n.input_tokens > 0
    assert rawhttp.request("HEAD", ns.url + "/api/hello")[0] == 200
    assert rawhttp.request("GET", ns.url + "/v1/models")[0] == 200
    procs.set_mode(cloud, "subscription_limit")
    ask(c, False)  # marks the cloud out
    n2 = c.messages.count_tokens(model="claude-sonnet-5", messages=[{"role": "user", "content": "hello there"}])
    assert n2.input_tokens > 0
    models = json.loads(rawhttp.request("GET", ns.url + "/v1/models")[2])
    assert models["data"] and models["data"][0]["id"] == "smollm2"


def test_unknown_paths_are_proxied(cloud, llama, nonstop_factory):
    ns = nonstop_factory(config(cloud.url, llama.url))
    status, _, _ = rawhttp.request("GET", ns.url + "/v1/some/new/endpoint?x=1")
    assert status == 404  # the fake cloud's answer, passed through
    got = procs.cloud_requests(cloud)
    assert any(r["path"] == "/v1/some/new/endpoint" and r["query"] == "x=1" for r in got)


def test_a_local_backend_that_fails_after_the_stream_began_hands_the_message_to_the_next(cloud, recorder_proc, llama,
                                                                                          nonstop_factory):
    # The first backend's head is late (the client's stream begins with its message_start
    # and pings), then it answers 503: the next local backend answers the same message.
    procs.set_mode(cloud, "subscription_limit")
    first = {"name": "recorder", "url": recorder_proc.url, "api": "anthropic", "context_window": 8192,
             "max_output_tokens": 48}
    second = {"name": "llama", "url": llama.url, "api": "anthropic", "model": "smollm2", "context_window": 8192,
              "max_output_tokens": 48}
    ns = nonstop_factory(nonstop_config(cloud.url, cloud={"first_byte_timeout": 3.0}, local=[first, second],
                                        ping_interval=1.0))
    body = {"model": "claude-sonnet-5", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "[slow-fail] Say hello."}]}
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=body, headers={"x-api-key": procs.PLANTED_KEY})
    v = wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=True)
    assert v.outcome == "ok", (v.problem, r.body[-600:])
    assert v.events.count("message_start") == 1 and "content_block_start" in v.events, v.events
    assert r.headers["x-nonstop-backend"] == "recorder"  # the head went out before it failed
    rows = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/requests")[2])["requests"]
    row = next(x for x in rows if x["path"] == "/v1/messages")
    assert row["backend"] == "llama" and row["outcome"] == "ok", row
    assert "recorder failed after the stream began" in row["error"], row


def test_pings_while_local_processes_a_long_prompt(cloud, recorder_proc, nonstop_factory):
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(config(cloud.url, recorder_proc.url, ping_interval=1.0))
    body = {"model": "claude-sonnet-5", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "[slow] hi"}]}
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=body, headers={"x-api-key": procs.PLANTED_KEY})
    v = wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=True)
    assert v.outcome == "ok", (v.problem, r.body[-600:])  # one message_start with input_tokens, ..., message_stop
    names = v.events
    assert names[0] == "message_start"
    first_content = names.index("content_block_start")
    assert "ping" in names[1:first_content], names
