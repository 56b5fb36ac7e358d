"""Hostile and broken input from both sides, against a running nonstop.

From the client: malformed JSON, wrong types for every known field, missing and unknown
fields, oversized bodies, huge headers, invalid UTF-8, odd model names and paths — on
/v1/messages, /v1/messages/count_tokens and /v1/chat/completions, on the way to the cloud
and on the way to the local backend. Every input gets a 4xx or a valid success in the
client's own protocol: never a 500, never a hang, and nonstop keeps serving.

From the client, slowly: a request head or body sent a piece at a time, or in part and
then never finished. Each gets a 408 (in the client's protocol once the head is complete)
or, for a client that sent nothing, just the close, within its deadline.

From the upstream: a non-JSON error body, the wrong content type, endless headers, a
stream that goes silent, a 200 whose JSON is cut, empty or garbled, a stream that errors
before or after its first content, a first byte that comes too late. Each is classified
sanely and nonstop never crashes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support import procs, rawhttp, wirecheck
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

MAX_BODY = 65536
HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
KEY = procs.PLANTED_KEY
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _config(cloud_url: str, local_url: str) -> str:
    return nonstop_config(
        cloud_url, max_body_bytes=MAX_BODY, head_timeout=HEAD_TIMEOUT, body_timeout=BODY_TIMEOUT,
        cloud={"connect_timeout": 1.0, "first_byte_timeout": 1.5, "idle_timeout": 2.0, "error_cooldown": 0.1,
               "default_cooldown": 0.1},
        local=[{"name": "local", "url": local_url, "model": "local-model", "connect_timeout": 1.0}],
    )


class Stack:
    """Two gateways: `cloud` forwards to a healthy fake cloud (x-fake-mode can make one
    request fail), `local` has an unreachable cloud so that everything goes local."""

    def __init__(self, fake: procs.Proc, recorder: procs.Proc):
        self.fake = fake
        self.cloud = procs.start_nonstop(_config(fake.url, recorder.url))
        self.local = procs.start_nonstop(_config(f"http://127.0.0.1:{procs.free_port()}", recorder.url))

    def route(self, name: str) -> procs.Proc:
        return self.cloud if name == "cloud" else self.local


@pytest.fixture(scope="module")
def stack(fake_cloud: procs.Proc, recorder_proc: procs.Proc) -> Iterator[Stack]:
    rawhttp.request("POST", fake_cloud.url + "/_fake/reset")
    procs.set_mode(fake_cloud, "ok", no_log=True)
    s = Stack(fake_cloud, recorder_proc)
    yield s
    problems = []
    for ns in (s.cloud, s.local):
        ns.stop()
        out = ns.output()
        if "Traceback" in out:
            i = out.index("Traceback")
            problems.append(f"nonstop logged a traceback:\n{out[max(0, i - 300):][:4000]}")
        if KEY in out:
            problems.append("the key is in nonstop's output")
    rawhttp.request("POST", fake_cloud.url + "/_fake/reset")
    assert not problems, "\n".join(problems)


def assert_answer(door: str, r: rawhttp.Reply, *, stream: bool) -> wirecheck.Verdict:
    v = wirecheck.check(door, r.status, r.headers.get("content-type", ""), r.body, stream=stream)
    assert v.valid, f"HTTP {r.status}: {v.problem}"
    assert r.status < 500, f"HTTP {r.status} for a client-side problem: {r.body[:300]!r}"
    return v


def alive(ns: procs.Proc) -> None:
    status, _, body = rawhttp.request("GET", ns.url + "/health", timeout=5)
    assert status == 200 and json.loads(body)["status"] == "ok"


# --- strategies -------------------------------------------------------------------------------

json_scalar = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                          max_leaves=12)
odd_text = st.sampled_from([
    "", "\x00", "claude\x00", "a\nb", "\r\n\r\nHTTP/1.1 200 OK", "../../etc/passwd", "%00", "%2e%2e/%2e%2e/etc/passwd",
    "model/../../x", "\u202e\u0000", "\ud7ff", "x" * 300, "claude-sonnet-4-5", "😀" * 10, "' OR 1=1 --", "${jndi:ldap://x}",
    "<script>alert(1)</script>", "\\u0000",
])
block_types = st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "document",
                               "server_tool_use", "search_result", "", None, 5])
block = st.fixed_dictionaries({"type": block_types}, optional={
    "text": json_value, "source": json_value, "id": json_value, "name": json_value, "input": json_value,
    "tool_use_id": json_value, "content": json_value, "is_error": json_value, "thinking": json_value,
    "signature": json_value, "cache_control": json_value,
}) | json_value
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "", "USER"]) | json_value},
                                optional={"content": st.text(max_size=40) | st.lists(block, max_size=4) | json_value})

ANTHROPIC_FIELDS = ["model", "messages", "max_tokens", "stream", "system", "tools", "tool_choice", "metadata",
                    "stop_sequences", "temperature", "top_p", "top_k", "thinking", "context_management",
                    "output_config", "service_tier", "mcp_servers", "container"]
OPENAI_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "tools",
                 "tool_choice", "temperature", "top_p", "n", "stop", "response_format", "functions", "function_call",
                 "logprobs", "top_logprobs", "user", "seed", "reasoning_effort", "parallel_tool_calls", "presence_penalty"]


# Fields that, half the time, get a value of about the right shape instead of any JSON.
ANTHROPIC_SHAPED = {
    "messages": st.lists(message, max_size=4),
    "system": st.lists(block, max_size=3),
    "tools": st.lists(st.fixed_dictionaries({"name": json_value}, optional={
        "input_schema": json_value, "description": json_value, "type": json_value, "defer_loading": json_value}), max_size=3),
}
openai_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", ""]) | json_value},
    optional={"content": st.text(max_size=30) | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_audio", "file", "x"])},
        optional={"text": json_value, "image_url": json_value}), max_size=3) | json_value,
              "tool_calls": json_value, "tool_call_id": json_value, "name": json_value,
              "reasoning_content": json_value})
OPENAI_SHAPED = {"messages": st.lists(openai_message, max_size=4)}


def _mutate(draw, req: dict, fields: list[str], shaped: dict) -> dict:
    """req, maybe streamed, with up to three of `fields` given a wrong value, deleted or
    (the model) an odd name, and maybe unknown fields added."""
    if draw(st.booleans()):
        req["stream"] = True
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(fields))
        action = draw(st.sampled_from(["wrong", "delete", "odd"]))
        if action == "delete":
            req.pop(name, None)
        elif action == "odd" and name == "model":
            req[name] = draw(odd_text)
        elif name in shaped and draw(st.booleans()):
            req[name] = draw(shaped[name])
        else:
            req[name] = draw(json_value)
    if draw(st.booleans()):
        req.update(draw(st.dictionaries(st.text(min_size=1, max_size=12), json_value, max_size=2)))
    return req


@st.composite
def anthropic_request(draw) -> dict:
    req = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
    return _mutate(draw, req, ANTHROPIC_FIELDS, ANTHROPIC_SHAPED)


@st.composite
def openai_request(draw) -> dict:
    req = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    return _mutate(draw, req, OPENAI_FIELDS, OPENAI_SHAPED)


ROUTE_TO = st.sampled_from(["cloud", "local"])
BASE = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"content-type": "application/json", "x-api-key": KEY, "anthropic-version": "2023-06-01", **(extra or {})}


# --- the client side ------------------------------------------------------------------------------


@FUZZ
@given(req=anthropic_request(), route=ROUTE_TO)
@example(req={**BASE, "tools": [{"name": ["Read"]}], "tool_choice": {"type": "tool", "name": "Read"}}, route="local")
@example(req={**BASE, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": 5, "content": {"a": 1}}]}]}, route="local")
@example(req={**BASE, "system": [{"type": "text", "text": {"nested": True}}], "stream": True}, route="local")
@example(req={**BASE, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": None, "name": 5, "input": "x"}]}]}, route="local")
def test_messages_fuzz(stack, req, route):
    r = rawhttp.exchange("POST", stack.route(route).url + "/v1/messages", json=req, headers=_headers())
    assert_answer("anthropic", r, stream=req.get("stream") is True and r.status == 200)


@FUZZ
@given(req=anthropic_request(), route=ROUTE_TO)
def test_count_tokens_fuzz(stack, req, route):
    req.pop("stream", None)
    r = rawhttp.exchange("POST", stack.route(route).url + "/v1/messages/count_tokens", json=req, headers=_headers())
    assert r.status < 500, f"HTTP {r.status}: {r.body[:300]!r}"
    doc = json.loads(r.body)
    if r.status == 200:
        assert isinstance(doc.get("input_tokens"), int) and doc["input_tokens"] > 0, doc
    else:
        assert wirecheck.is_anthropic_error(doc), doc


@FUZZ
@given(req=openai_request(), route=ROUTE_TO)
@example(req={"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": 1, "function": {"name": ["x"], "arguments": {"a": 1}}}]}]}, route="local")
@example(req={"model": "m", "messages": [{"role": "tool", "tool_call_id": None, "content": [{"type": "text", "text": 5}]}]}, route="cloud")
@example(req={"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": {"x": 1}}}], "tool_choice": {"type": "function", "function": {"name": []}}}, route="local")
@example(req={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": "yes"}, "n": 3}, route="local")
def test_chat_completions_fuzz(stack, req, route):
    r = rawhttp.exchange("POST", stack.route(route).url + "/v1/chat/completions", json=req, headers=_headers())
    assert_answer("openai", r, stream=req.get("stream") is True and r.status == 200)


MALFORMED = [
    b"", b"{", b"}", b"[]", b"null", b'"text"', b"1", b"true", b"{'model': 'x'}", b'{"model": "x",}',
    b'{"model": NaN, "messages": []}', b'{"model": "x", "max_tokens": 1e999, "messages": []}',
    b'{"model": "\xff\xfe", "messages": []}', b"\xef\xbb\xbf{}", b'{"model": "a\x00", "messages": []}',
    b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"model": "x", "messages": [], "system": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"\x00" * 64, b'{"messages": [' + b'{"role":"user","content":"x"},' * 2 + b"]}",
]


@pytest.mark.parametrize("path,door", [("/v1/messages", "anthropic"), ("/v1/messages/count_tokens", "anthropic"),
                                       ("/v1/chat/completions", "openai")])
def test_malformed_bodies(stack, path, door):
    ns = stack.cloud
    for body in MALFORMED:
        r = rawhttp.exchange("POST", ns.url + path, body=body, headers={"content-type": "application/json", "x-api-key": KEY})
        assert 400 <= r.status < 500, (body[:60], r.status, r.body[:200])
        doc = json.loads(r.body)
        assert (wirecheck.is_openai_error(doc) if door == "openai" else wirecheck.is_anthropic_error(doc)), (body[:60], doc)
    alive(ns)


@pytest.mark.parametrize("path,door", [("/v1/messages", "anthropic"), ("/v1/messages/count_tokens", "anthropic"),
                                       ("/v1/chat/completions", "openai"), ("/v1/files", "anthropic")])
@pytest.mark.parametrize("how", ["declared", "chunked"])
def test_oversized_body_is_413_in_the_clients_format(stack, path, door, how):
    ns = stack.cloud
    big = json.dumps({"model": "x", "messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]}).encode()
    r = rawhttp.exchange("POST", ns.url + path, body=big, headers={"content-type": "application/json"},
                         chunked=how == "chunked")
    assert r.status == 413, (r.status, r.body[:200])
    doc = json.loads(r.body)
    if door == "openai":
        assert wirecheck.is_openai_error(doc) and "max_body_bytes" in doc["error"]["message"], doc
    else:
        assert wirecheck.is_anthropic_error(doc) and doc["error"]["type"] == "request_too_large", doc
    alive(ns)


@pytest.mark.parametrize("size", [8 * 1024, 100 * 1024, 1024 * 1024])
@pytest.mark.parametrize("shape", ["one-header", "many-headers"])
def test_huge_headers_are_refused_not_fatal(stack, size, shape):
    ns = stack.cloud
    if shape == "one-header":
        headers = {"x-big": "a" * size}
    else:
        headers = {f"x-h{i}": "v" * 60 for i in range(size // 64)}
    t0 = time.monotonic()
    try:
        r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, headers=headers, timeout=20)
        assert r.status < 500, (r.status, r.body[:200])
    except (ConnectionResetError, BrokenPipeError):
        pass  # refusing the connection outright is fine
    assert time.monotonic() - t0 < 20
    alive(ns)


@pytest.mark.parametrize("model", ["claude\x00", "a\nb", "a\x7fb", "x" * 300])
@pytest.mark.parametrize("path,door", [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")])
def test_model_names_with_control_characters_are_400(stack, model, path, door):
    ns = stack.cloud
    r = rawhttp.exchange("POST", ns.url + path, json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                         headers={"x-api-key": KEY})
    assert r.status == 400
    v = wirecheck.check(door, r.status, r.headers["content-type"], r.body, stream=False)
    assert v.outcome == "error" and "model" in v.problem


@pytest.mark.parametrize("model", ["../../etc/passwd", "%00", "%2e%2e%2f", "claude-sonnet-4-5/../../v1/admin", "?x=1#y"])
def test_path_like_model_names_stay_inside_the_body(stack, model, recorder_proc):
    cloud = stack.fake
    procs.set_mode(cloud, "ok")  # logging on
    for route in ("cloud", "local"):
        r = rawhttp.exchange("POST", stack.route(route).url + "/v1/messages", headers=_headers(),
                             json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status == 200 and wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=False).outcome == "ok"
    last = procs.cloud_requests(cloud)[-1]
    assert last["path"] == "/v1/messages"
    seen = procs.answered(recorder_proc)[-1]
    assert seen["path"] == "/v1/messages" and json.loads(seen["body"])["model"] == "local-model"
    procs.set_mode(cloud, "ok", no_log=True)


@pytest.mark.parametrize("target", [
    "/v1/messages/../messages", "/v1/messages%00", "/v1/%2e%2e/%2e%2e/etc/passwd", "//v1/messages",
    "/v1/messages?x=%00%0d%0a", "/_nonstop/../../etc/passwd", "/_nonstop/%2e%2e/%2e%2e/etc/passwd",
    "/_nonstop/static/../../../../etc/passwd", "/v1/messages;jsessionid=1", "*",
    "http://evil.example/v1/messages", "/" + "a" * 8000,
])
def test_odd_request_targets(stack, target):
    ns, cloud = stack.cloud, stack.fake
    procs.set_mode(cloud, "ok")
    before = len(procs.cloud_requests(cloud))
    try:
        r = rawhttp.exchange("POST", ns.url, target=target, json={"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, headers={"x-api-key": KEY})
        status, data = r.status, r.body
    except ConnectionResetError:
        status, data = 400, b""
    assert status < 500 or status == 502, (target, status, data[:300])
    assert b"root:" not in data, "a local file was served"
    for r in procs.cloud_requests(cloud)[before:]:
        assert "evil.example" not in json.dumps(r.get("headers"))
    procs.set_mode(cloud, "ok", no_log=True)
    alive(ns)


def test_invalid_utf8_in_headers_and_query(stack):
    ns = stack.cloud
    # Header values and the target are sent as latin-1: "\xff" is the byte 0xff.
    r = rawhttp.exchange("POST", ns.url, target="/v1/messages?q=\xff\xfe", json={"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                         headers={"User-Agent": "\xff\xfe\xfd", "X-Claude-Code-Session-Id": "\xc3\x28", "x-api-key": KEY})
    assert r.status < 500, r.body[:300]
    alive(ns)


# --- the client, slowly ------------------------------------------------------------------------------

SLOW = settings(max_examples=24, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@SLOW
@given(path=st.sampled_from(["/v1/messages", "/v1/chat/completions", "/v1/messages/count_tokens", "/v1/files"]),
       cut=st.floats(min_value=0.0, max_value=1.0), in_head=st.booleans(), trickle=st.booleans())
@example(path="/v1/messages", cut=0.0, in_head=True, trickle=False)  # nothing at all
@example(path="/v1/chat/completions", cut=1.0, in_head=True, trickle=False)  # the head without its blank line
def test_slow_or_unfinished_requests(stack, path, cut, in_head, trickle):
    """A request cut somewhere in its head or its body, then either trickled a byte every
    0.2 s or never finished: closed within its deadline with a 408 in the client's
    protocol (plain text while the head is incomplete), nothing if nothing came, or its
    answer if the last few bytes made it in time."""
    ns = stack.cloud
    door = "openai" if path == "/v1/chat/completions" else "anthropic"
    body = json.dumps({**BASE, "messages": [{"role": "user", "content": "x" * 400}]}).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{ns.port}\r\nContent-Type: application/json\r\n"
            f"x-api-key: {KEY}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    whole = head + body
    at = int(cut * (len(head) - 4)) if in_head else len(head) + int(cut * (len(body) - 1))
    raw, took = rawhttp.trickle(ns.port, whole[:at], whole[at:], piece=1 if trickle else 0, every=0.2,
                                source="127.0.3.1")
    assert took < HEAD_TIMEOUT + BODY_TIMEOUT + 3.0, f"closed after {took:.1f} s"
    if at == 0 and not trickle:
        assert raw == b"", f"a client that sent nothing got an answer: {raw[:200]!r}"
        return
    status, headers, answer = rawhttp.split_response(raw)
    if status != 408:  # the last bytes made it: a whole answer (the cloud's 404 for /v1/files)
        assert trickle, f"an unfinished request was answered: {raw[:300]!r}"
        assert status in (200, 404) and isinstance(json.loads(answer), dict), raw[:300]
    else:
        assert status == 408 and headers.get("connection") == "close", raw[:300]
        if headers.get("content-type", "").startswith("application/json"):  # the head had arrived
            v = wirecheck.check(door, status, headers["content-type"], answer, stream=False)
            assert v.outcome == "error", v.problem
        else:
            assert in_head, f"a request whose head had arrived got a plain-text 408: {raw[:300]!r}"
    alive(ns)


# --- the upstream side -----------------------------------------------------------------------------


@pytest.mark.parametrize("door", ["anthropic", "openai"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", ["non_json_error", "wrong_content_type", "endless_headers", "stall_after_content",
                                  "malformed_chunk", "truncate", "tool_then_reset", "reset", "hang_after_head",
                                  "json_cut_empty", "json_cut_half", "json_empty", "json_garbled", "json_not_message", "json_stall_body",
                                  "midstream_overloaded", "error_after_content", "late_first_byte"])
def test_hostile_upstream(stack, mode, stream, door):
    """Whatever the cloud does, the client gets a complete answer or a well-formed error
    in its own protocol, within the deadlines, and nonstop stays up."""
    ns = stack.cloud
    time.sleep(0.15)  # any cooldown from the previous case has passed: this one probes
    path = "/v1/messages" if door == "anthropic" else "/v1/chat/completions"
    body = {"model": "claude-sonnet-4-5", "max_tokens": 20, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    r = rawhttp.exchange("POST", ns.url + path, json=body, headers={**_headers(), "x-fake-mode": mode}, timeout=15)
    assert r.total_s < 1.0 + 1.5 + 2.0 + 2.0, f"{r.total_s:.1f}s"
    v = wirecheck.check(door, r.status, r.headers.get("content-type", ""), r.body, stream=stream and r.status == 200)
    assert v.valid, f"{mode}: HTTP {r.status} from {r.headers.get('x-nonstop-backend')}: {v.problem}"
    assert r.status < 500, f"{mode}: HTTP {r.status}: {r.body[:300]!r}"
    alive(ns)


def test_upstream_error_body_is_classified_not_echoed_into_routing(stack):
    """A non-JSON 502 from the cloud counts as a server error (failover), not as a client error."""
    ns = stack.cloud
    time.sleep(0.15)
    hdrs = rawhttp.exchange("POST", ns.url + "/v1/messages", json={"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                            headers={**_headers(), "x-fake-mode": "non_json_error"}).headers
    assert hdrs["x-nonstop-backend"] == "local"
    assert hdrs["x-nonstop-failover"].startswith("server_error"), hdrs
