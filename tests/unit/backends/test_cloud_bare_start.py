"""A cloud stream that fails after its start and an empty text or thinking block, before
any content: the client has nothing of the answer yet, so the message goes on from a local
model (the pipeline's choice, `Reply.instead`) in that block's place, instead of ending in
an error. Content lets the hand-over go; any other first block keeps the old end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from nonstop.backends.base import Reply, Usage
from nonstop.backends.cloud import CloudBackend, _bare_start
from nonstop.backends.head import forward_headers
from nonstop.config import CloudConfig
from nonstop.routing.classify import FailureKind, Verdict
from tests.support import wirecheck


def _ev(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


START = _ev("message_start", {"type": "message_start", "message": {
    "id": "msg_cloud", "type": "message", "role": "assistant", "model": "claude-sonnet-5", "content": [],
    "stop_reason": None, "usage": {"input_tokens": 1234, "cache_read_input_tokens": 50, "output_tokens": 1}}})
PING = _ev("ping", {"type": "ping"})
TEXT_START = _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
DELTA = _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "cloud"}})
OVERLOADED = _ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


def _local_events(first: str = "text") -> list[bytes]:
    """A local model's stream in nonstop's own encoding (whole events)."""
    start = _ev("message_start", {"type": "message_start", "message": {
        "id": "msg_local", "type": "message", "role": "assistant", "model": "local", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 99, "output_tokens": 0}}})
    thought = [_ev("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "thinking", "thinking": ""}}),
               _ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "thinking_delta", "thinking": "local thought"}}),
               _ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "signature_delta", "signature": "nonstop-local"}}),
               _ev("content_block_stop", {"type": "content_block_stop", "index": 0})]
    if first == "thinking":  # then the text, at index 1
        return [start, *thought, *(e.replace(b'"index":0', b'"index":1') for e in _local_events("text")[1:])]
    if first == "none":  # an empty answer: no block at all
        return [start, _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                             "usage": {"output_tokens": 7}}),
                _ev("message_stop", {"type": "message_stop"})]
    if first == "text":
        blocks = [_ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                  _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "local answer"}}),
                  _ev("content_block_stop", {"type": "content_block_stop", "index": 0})]
        stop = "end_turn"
    else:
        blocks = [_ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                      "type": "tool_use", "id": "toolu_L1", "name": "Read", "input": {}}}),
                  _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                      "type": "input_json_delta", "partial_json": '{"file_path":"a.py"}'}}),
                  _ev("content_block_stop", {"type": "content_block_stop", "index": 0})]
        stop = "tool_use"
    return [start, *blocks,
            _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 7}}),
            _ev("message_stop", {"type": "message_stop"})]


class Local:
    """The pipeline's side of a hand-over: what it was asked, and the stream it gives."""

    def __init__(self, first: str = "text", *, none: bool = False) -> None:
        self.asked: list[Verdict] = []
        self.first, self.none = first, none
        self.closed = False
        self.closes = 0

    async def instead(self, failure: Any) -> Reply | None:
        self.asked.append(failure)
        if self.none:
            return None
        events = _local_events(self.first)

        async def body() -> AsyncIterator[bytes]:
            for e in events:
                yield e

        def close() -> None:
            self.closed = True
            self.closes += 1

        return Reply(200, [], body(), "llama", True, Usage(input_tokens=99, output_tokens=7, stop_reason="end_turn",
                                                           complete=True), close=close)


def _cloud(pieces: list[bytes | float | str]) -> web.Application:
    """A cloud that writes `pieces` in order: bytes are written, a float is a pause, "cut"
    drops the connection, "hang" holds it."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for p in pieces:
            if isinstance(p, bytes):
                await resp.write(p)
            elif isinstance(p, float):
                await asyncio.sleep(p)
            elif p == "cut":
                assert request.transport is not None
                request.transport.abort()
                return resp
            elif p == "hang":
                await asyncio.sleep(30)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    return app


async def _relay(url: str, local: Local | None, *, idle: float = 10.0) -> tuple[Reply, bytes]:
    cfg = CloudConfig(url=url, first_byte_timeout=10.0, idle_timeout=idle)
    async with CloudBackend.make_session(cfg) as session:
        res = await CloudBackend(cfg, session).request("POST", b"/v1/messages", b"", forward_headers([(b"x-api-key", b"k")]),
                                                       b"{}", stream=True, expect="stream")
        assert isinstance(res, Reply) and res.handover, res  # until its first content, the message may go on locally
        res.instead = local.instead if local is not None else None
        chunks = [c async for c in res.body]
        assert res.close is not None
        res.close()
    return res, b"".join(chunks)


def _events(out: bytes) -> list[tuple[str, dict[str, Any]]]:
    events, rest = wirecheck.parse_sse(out)
    assert not rest.strip(), rest
    return [(name, orjson.loads(data)) for name, data in events]


def _assert_one_local_message(res: Reply, out: bytes, local: Local) -> list[tuple[str, dict[str, Any]]]:
    assert wirecheck.check_anthropic_stream(out).outcome == "ok", out
    evs = _events(out)
    names = [n for n, _ in evs]
    assert names.count("message_start") == 1 and evs[0][1]["message"]["id"] == "msg_cloud"  # the client's message
    assert "error" not in names
    final = next(d for n, d in evs if n == "message_delta")
    # The prompt's counts stay the cloud's (for the prompt the client sent); the output is the local model's.
    assert final["usage"]["input_tokens"] == 1234 and final["usage"]["cache_read_input_tokens"] == 50
    assert final["usage"]["output_tokens"] == 7
    assert res.backend == "llama" and not res.usage.error and res.usage.complete
    assert "the cloud failed after its stream began" in res.usage.note and "handed to llama" in res.usage.note
    assert local.closed
    return evs


@pytest.mark.parametrize("ending", ["overloaded", "cut", "silence", "early_end", "malformed"])
async def test_a_failure_after_an_empty_text_block_goes_on_locally_in_that_block(serve, ending):
    tail: list[bytes | float | str] = {
        "overloaded": [0.05, OVERLOADED], "cut": [0.05, "cut"], "silence": ["hang"], "early_end": [0.05],
        "malformed": [0.05, b"event: content_block_delta\ndata: {\"type\": \"content_blo\n\n"],
    }[ending]
    local = Local()
    res, out = await _relay(await serve(_cloud([START + PING + TEXT_START, *tail])), local, idle=0.5)
    evs = _assert_one_local_message(res, out, local)
    # One text block, index 0: the cloud's empty start, the local model's text in it.
    assert [(n, d.get("index")) for n, d in evs if n.startswith("content_block")] == [
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0)]
    assert next(d for n, d in evs if n == "content_block_delta")["delta"]["text"] == "local answer"
    assert len(local.asked) == 1
    failure = local.asked[0]
    if ending == "overloaded":
        assert failure.kind is FailureKind.OVERLOADED
    else:
        assert failure.kind is FailureKind.BAD_RESPONSE and failure.detail


async def test_pings_between_the_start_and_the_failure_still_hand_over(serve):
    local = Local()
    res, out = await _relay(await serve(_cloud([START + TEXT_START, 0.03, PING, 0.03, PING + OVERLOADED])), local)
    _assert_one_local_message(res, out, local)


async def test_a_local_tool_call_closes_the_empty_text_block_first(serve):
    local = Local("tool")
    res, out = await _relay(await serve(_cloud([START + PING + TEXT_START, 0.05, OVERLOADED])), local)
    evs = _assert_one_local_message(res, out, local)
    assert [(n, d.get("index")) for n, d in evs if n.startswith("content_block")] == [
        ("content_block_start", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1)]
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_content_lets_the_hand_over_go(serve):
    local = Local()
    res, out = await _relay(await serve(_cloud([START + PING + TEXT_START, 0.05, DELTA, 0.05, OVERLOADED])), local)
    assert local.asked == [] and res.instead is None  # let go at the first delta
    evs = _events(out)
    assert [n for n, _ in evs][-1] == "error" and res.backend == "cloud" and "overloaded" in res.usage.error


async def test_with_no_local_model_to_take_it_the_error_ends_the_stream_as_before(serve):
    local = Local(none=True)
    res, out = await _relay(await serve(_cloud([START + PING + TEXT_START, 0.05, OVERLOADED])), local)
    assert len(local.asked) == 1
    assert out.endswith(OVERLOADED) and out.count(b"event: error") == 1
    assert wirecheck.check_anthropic_stream(out).outcome == "error"
    assert res.backend == "cloud" and res.usage.error and res.instead is None


THINKING_START = _ev("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "thinking", "thinking": "", "signature": ""}})


def _blocks(evs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, int, str]]:
    return [(n, d["index"], (d.get("delta") or d.get("content_block") or {}).get("type", "")) for n, d in evs
            if n.startswith("content_block")]


@pytest.mark.parametrize("ending", ["overloaded", "cut"])
async def test_a_failure_after_an_empty_thinking_block_closes_it_and_goes_on_locally(serve, ending):
    # With thinking on, the cloud's first block is a thinking block. A local model that
    # answers without thinking: the cloud's block ends with the signature every locally
    # ended thinking block has (stripped before the history goes back to the cloud), and
    # the local text follows at index 1.
    local = Local()
    tail: list[bytes | float | str] = [0.05, OVERLOADED] if ending == "overloaded" else [0.05, "cut"]
    res, out = await _relay(await serve(_cloud([START + PING + THINKING_START, *tail])), local)
    evs = _assert_one_local_message(res, out, local)
    assert _blocks(evs) == [("content_block_start", 0, "thinking"), ("content_block_delta", 0, "signature_delta"),
                            ("content_block_stop", 0, ""), ("content_block_start", 1, "text"),
                            ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, "")]
    assert evs[3][1]["delta"]["signature"] == "nonstop-local"


async def test_a_local_tool_call_after_an_empty_thinking_block_closes_it_signed_first(serve):
    local = Local("tool")
    res, out = await _relay(await serve(_cloud([START + THINKING_START, 0.05, OVERLOADED])), local)
    evs = _assert_one_local_message(res, out, local)
    assert _blocks(evs) == [("content_block_start", 0, "thinking"), ("content_block_delta", 0, "signature_delta"),
                            ("content_block_stop", 0, ""), ("content_block_start", 1, "tool_use"),
                            ("content_block_delta", 1, "input_json_delta"), ("content_block_stop", 1, "")]
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_a_local_answer_with_no_block_still_closes_the_cloud_thinking_block(serve):
    local = Local("none")
    res, out = await _relay(await serve(_cloud([START + THINKING_START, 0.05, OVERLOADED])), local)
    evs = _assert_one_local_message(res, out, local)
    assert _blocks(evs) == [("content_block_start", 0, "thinking"), ("content_block_delta", 0, "signature_delta"),
                            ("content_block_stop", 0, "")]
    assert [n for n, _ in evs][-2:] == ["message_delta", "message_stop"]


async def test_a_local_model_that_thinks_goes_on_in_the_cloud_thinking_block(serve):
    local = Local("thinking")
    res, out = await _relay(await serve(_cloud([START + THINKING_START.replace(b',"signature":""', b""), 0.05,
                                                OVERLOADED])), local)
    evs = _assert_one_local_message(res, out, local)
    assert _blocks(evs) == [("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
                            ("content_block_delta", 0, "signature_delta"), ("content_block_stop", 0, ""),
                            ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
                            ("content_block_stop", 1, "")]
    assert evs[2][1]["delta"]["thinking"] == "local thought"


async def test_a_local_model_that_thinks_after_an_empty_text_block_thinks_in_a_block_of_its_own(serve):
    local = Local("thinking")
    res, out = await _relay(await serve(_cloud([START + TEXT_START, 0.05, OVERLOADED])), local)
    evs = _assert_one_local_message(res, out, local)
    assert _blocks(evs)[:4] == [("content_block_start", 0, "text"), ("content_block_stop", 0, ""),
                                ("content_block_start", 1, "thinking"), ("content_block_delta", 1, "thinking_delta")]


@pytest.mark.parametrize("block", [
    {"type": "thinking", "thinking": "already thinking"},
    {"type": "redacted_thinking", "data": "abc"},
    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}},
])
async def test_a_stream_whose_first_block_is_not_an_empty_text_or_thinking_block_is_not_handed_over(serve, block):
    first = _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
    local = Local()
    res, out = await _relay(await serve(_cloud([START + first, 0.05, OVERLOADED])), local)
    assert local.asked == [] and out.endswith(OVERLOADED) and res.backend == "cloud"
    assert res.instead is None  # let go all the same: it holds the request


_USAGE = {"input_tokens": 1234, "cache_read_input_tokens": 50, "output_tokens": 1}


@pytest.mark.parametrize("first,usage", [
    (START + PING + TEXT_START, (_USAGE, "text")),
    (START + TEXT_START + PING, (_USAGE, "text")),
    (START.replace(b"\n", b"\r\n") + TEXT_START.replace(b"\n", b"\r\n"), (_USAGE, "text")),
    (START + THINKING_START, (_USAGE, "thinking")),
    (START + PING + THINKING_START.replace(b',"signature":""', b""), (_USAGE, "thinking")),
    (START + THINKING_START.replace(b'"signature":""', b'"signature":"x"'), None),
    (START + THINKING_START.replace(b'"index":0', b'"index":1'), None),
    (START + THINKING_START.replace(b'"index":0', b'"index":false'), None),  # (False == 0 in Python)
    (START + TEXT_START.replace(b'"index":0', b'"index":0.0'), None),
    (TEXT_START, None),  # no message start
    (START, None),  # no block
    (START + TEXT_START + TEXT_START.replace(b'"index":0', b'"index":1'), None),  # two blocks
    (START + TEXT_START.replace(b'"index":0', b'"index":1'), None),
    (START + TEXT_START.replace(b'"text":""}', b'"text":"hi"}'), None),  # text in the start is content
    (START + TEXT_START + b"event: ping\ndata: nope\n\n", None),
    (START + TEXT_START + _ev("message_delta", {"type": "message_delta", "delta": {}}), None),
])
def test_the_bare_start_is_read_exactly(first, usage):
    assert _bare_start(first) == usage


async def test_a_client_that_leaves_before_the_failure_lets_the_hand_over_go(serve):
    local = Local()
    cfg = CloudConfig(url=await serve(_cloud([START + PING + TEXT_START, "hang"])), first_byte_timeout=10.0)
    async with CloudBackend.make_session(cfg) as session:
        res = await CloudBackend(cfg, session).request("POST", b"/v1/messages", b"", forward_headers([(b"x-api-key", b"k")]),
                                                       b"{}", stream=True, expect="stream")
        assert isinstance(res, Reply) and res.handover
        res.instead = local.instead
        body = res.body
        assert await anext(body)  # the start went out; then the client goes
        await body.aclose()
        assert res.instead is None and local.asked == []


async def test_a_client_that_leaves_mid_hand_over_closes_the_local_stream_once(serve):
    # The relay closes the reply when its client goes, then the body: the local stream
    # (whose close gives back its slot) is closed once, not by both ends.
    local = Local()
    cfg = CloudConfig(url=await serve(_cloud([START + PING + TEXT_START, 0.05, OVERLOADED])), first_byte_timeout=10.0)
    async with CloudBackend.make_session(cfg) as session:
        res = await CloudBackend(cfg, session).request("POST", b"/v1/messages", b"", forward_headers([(b"x-api-key", b"k")]),
                                                       b"{}", stream=True, expect="stream")
        assert isinstance(res, Reply)
        res.instead = local.instead
        body = res.body
        await anext(body)  # the cloud's start
        await anext(body)  # the local model's first events
        assert local.asked and res.backend == "llama" and res.close is not None
        res.close()
        await body.aclose()
        await asyncio.sleep(0.1)  # the inner generators end in asyncio's finalizer, a task later
        assert local.closes == 1
