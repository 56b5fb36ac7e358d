"""server/recovery: a cloud stream that dies after text is continued by a local model
inside the same message (opt-in). The tracker says when that is allowed, the splice
renumbers the local blocks after the cloud's, and the whole is one well-formed stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from nonstop.backends.base import Reply, Usage
from nonstop.backends.cloud import CloudBackend
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.server.app import App
from nonstop.server.recovery import StreamTracker, prefill_request, recovering, splice
from nonstop.wire.sse import JSONEventDecoder, encode_event
from tests.support.anthropic_stream import validate_anthropic_stream
from tests.support.fake_cloud import make_app as fake_cloud_app
from tests.support.inprocess import exchange

Event = tuple[str, dict[str, Any]]


def sse(events: list[Event]) -> bytes:
    return b"".join(encode_event(name, orjson.dumps(data)) for name, data in events)


def start() -> Event:
    return ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}})


def block(idx: int, kind: str = "text", **fields: Any) -> Event:
    empty = {"text": {"type": "text", "text": ""}, "tool_use": {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}},
             "thinking": {"type": "thinking", "thinking": "", "signature": ""}}[kind]
    return ("content_block_start", {"type": "content_block_start", "index": idx, "content_block": {**empty, **fields}})


def text(idx: int, words: str) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": words}})


def stop(idx: int) -> Event:
    return ("content_block_stop", {"type": "content_block_stop", "index": idx})


def end(reason: str = "end_turn", out: int = 3) -> list[Event]:
    return [("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
                                "usage": {"output_tokens": out}}),
            ("message_stop", {"type": "message_stop"})]


ERROR: Event = ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


def events_of(data: bytes) -> list[Event]:
    return [(ev.event, doc) for ev, doc in JSONEventDecoder().feed(data)]


def local_reply(events: list[Event], *, output_tokens: int = 4, stop_reason: str = "end_turn") -> Reply:
    closed: list[bool] = []
    usage = Usage(output_tokens=output_tokens, stop_reason=stop_reason, complete=True)
    reply = Reply(200, [], chunks(sse(events)), "llama", True, usage, close=lambda: closed.append(True))
    reply.closed = closed  # type: ignore[attr-defined]
    return reply


# --- when it applies ---------------------------------------------------------------------------


@pytest.mark.parametrize(("events", "recoverable"), [
    ([start(), block(0), text(0, "Hello")], True),
    ([start(), block(0), text(0, "Hello"), stop(0), block(1), text(1, "more")], True),
    ([start()], False),  # nothing written yet: the usual failover, not a continuation
    ([start(), block(0)], False),
    ([start(), block(0), text(0, "Hi"), stop(0), block(1, "tool_use")], False),  # half a call: never
    ([start(), block(0, "thinking")], False),  # a signature no local model can make
    ([start(), block(0), text(0, "Hi"), stop(0), *end()[:1]], False),  # the answer was over
])
def test_a_stream_is_recoverable_only_after_text_and_before_its_end(events: list[Event], recoverable: bool) -> None:
    tracker = StreamTracker()
    tracker.feed(sse(events))
    assert tracker.recoverable is recoverable


def test_the_tracker_reads_events_split_anywhere() -> None:
    data = sse([start(), block(0), text(0, "Hel"), text(0, "lo")])
    tracker = StreamTracker()
    for i in range(0, len(data), 7):
        tracker.feed(data[i:i + 7])
    assert "".join(tracker.text) == "Hello" and tracker.open == {0} and tracker.next_index == 1


def test_the_prefill_is_the_partial_answer_without_trailing_space() -> None:
    req = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    out = prefill_request(req, "Hello there \n")
    assert out["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Hello there"}]}
    assert req["messages"] == [{"role": "user", "content": "hi"}]  # the original is untouched


# --- the splice --------------------------------------------------------------------------------


async def test_the_local_text_continues_the_open_cloud_block_and_later_blocks_follow() -> None:
    tracker = StreamTracker()
    cloud = [start(), block(0), text(0, "Hel")]
    tracker.feed(sse(cloud))
    local = local_reply([start(), ("ping", {"type": "ping"}), block(0), text(0, "lo"), stop(0),
                         block(1, "tool_use"), ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
                             "type": "input_json_delta", "partial_json": '{"file_path": "a"}'}}), stop(1), *end("tool_use")])
    out = events_of(b"".join([c async for c in splice(tracker, local)]))
    # no second message_start; the local stream's pings go on (a CPU model reading the prompt)
    assert [n for n, _ in out].count("message_start") == 0 and out[0] == ("ping", {"type": "ping"})
    validate_anthropic_stream(cloud + out)
    assert [(n, d.get("index")) for n, d in out if n.startswith("content_block")] == [
        ("content_block_delta", 0), ("content_block_stop", 0), ("content_block_start", 1),
        ("content_block_delta", 1), ("content_block_stop", 1)]
    assert local.closed == [True]  # type: ignore[attr-defined]


async def test_a_cloud_block_the_local_model_never_continued_is_closed_before_the_end() -> None:
    tracker = StreamTracker()
    cloud = [start(), block(0), text(0, "Hel")]
    tracker.feed(sse(cloud))
    out = events_of(b"".join([c async for c in splice(tracker, local_reply([start(), *end()]))]))
    validate_anthropic_stream(cloud + out)
    assert out[0] == stop(0)


# --- the whole of it ---------------------------------------------------------------------------


async def test_a_cloud_stream_that_dies_after_text_is_one_message_with_the_local_continuation() -> None:
    cloud = [start(), block(0), text(0, "Hel")]
    reply = Reply(200, [], chunks(sse(cloud), sse([ERROR])), "cloud", True, Usage(error="cloud stream failed"))
    asked: list[dict[str, Any]] = []

    async def continue_locally(req: dict[str, Any]) -> Reply | None:
        asked.append(req)
        return local_reply([start(), block(0), text(0, "lo"), stop(0), *end()], output_tokens=4)

    req = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    out = events_of(b"".join([c async for c in recovering(reply, reply.body, req, continue_locally)]))
    validate_anthropic_stream(out)
    assert "".join(d["delta"]["text"] for n, d in out if n == "content_block_delta") == "Hello"
    assert asked[0]["messages"][-1]["content"][0]["text"] == "Hel"
    assert reply.usage.error == "" and reply.usage.complete and reply.usage.stop_reason == "end_turn"
    assert "continued on llama" in reply.note


@pytest.mark.parametrize("cloud", [
    [start(), block(0), text(0, "Hi"), stop(0), block(1, "tool_use")],
    [start()],
], ids=["after a tool call began", "before any text"])
async def test_a_stream_that_cannot_be_continued_ends_with_the_clouds_error(cloud: list[Event]) -> None:
    reply = Reply(200, [], chunks(sse(cloud + [ERROR])), "cloud", True)

    async def continue_locally(req: dict[str, Any]) -> Reply | None:
        raise AssertionError("not asked")

    out = events_of(b"".join([c async for c in recovering(reply, reply.body, {"messages": []}, continue_locally)]))
    assert out == cloud + [ERROR]


async def test_no_local_backend_leaves_the_clouds_error() -> None:
    cloud = [start(), block(0), text(0, "Hel")]
    reply = Reply(200, [], chunks(sse(cloud + [ERROR])), "cloud", True)

    async def nobody(req: dict[str, Any]) -> Reply | None:
        return None

    out = events_of(b"".join([c async for c in recovering(reply, reply.body, {"messages": []}, nobody)]))
    assert out == cloud + [ERROR]


async def test_a_continuation_that_starts_with_a_tool_call_closes_the_clouds_text_block_first(
        tmp_path: Path, serve: Any) -> None:
    """The cloud streams some text and dies; the local model continues the message with a
    tool call (the usual next step after "Let me read the file."). The cloud's text block
    is closed before the tool_use block opens, so the client gets one well-formed message
    with one block open at a time, in the order a strict client (Claude Code, the SDKs)
    records the turn."""

    async def calls_a_tool(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse([start(), block(0, "tool_use"), ("content_block_delta", {
            "type": "content_block_delta", "index": 0, "delta": {
                "type": "input_json_delta", "partial_json": '{"file_path": "/src/a.py"}'}}), stop(0), *end("tool_use")]))
        return resp

    local = web.Application()
    local.router.add_post("/v1/messages", calls_a_tool)
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "cloud": {"url": await serve(fake_cloud_app())},
                        "recovery": {"continue_locally": True},
                        "local": [{"name": "llama", "url": await serve(local), "model": "m", "count_tokens": "estimate"}]})
    app = App(cfg)
    cloud = CloudBackend(cfg.cloud, CloudBackend.make_session(cfg.cloud))
    async with aiohttp.ClientSession() as session:
        app.rt.use_backends([make_local_backend(b, session) for b in cfg.local], cloud=cloud)
        body = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 200, "stream": True,
                             "messages": [{"role": "user", "content": "What does src/a.py do?"}]})
        try:
            status, headers, out = await exchange(app, "POST", "/v1/messages", body=body, headers=[
                (b"x-api-key", b"sk-ant-test"), (b"anthropic-version", b"2023-06-01"),
                (b"x-fake-mode", b"error_after_content")])
        finally:
            await cloud.session.close()
    events = events_of(out)
    assert status == 200 and headers[b"x-nonstop-backend"] == b"cloud"
    assert any(n == "content_block_start" and d["content_block"]["type"] == "tool_use" for n, d in events), \
        "the local continuation was not spliced in"
    validate_anthropic_stream(events)


async def test_the_continuation_and_its_close_are_freed_without_the_collector() -> None:
    import gc
    import weakref

    cloud = [start(), block(0), text(0, "Hel")]
    reply = Reply(200, [], chunks(sse(cloud), sse([ERROR])), "cloud", True, Usage(error="cloud stream failed"))
    made: list[weakref.ref[Reply]] = []

    def continuation() -> Reply:  # a local stream's close holds its reply, as LocalBackend's does
        local = local_reply([start(), block(0), text(0, "lo"), stop(0), *end()])
        local.close = lambda: local.closed.append(True)  # type: ignore[attr-defined]
        made.append(weakref.ref(local))
        return local

    async def continue_locally(req: dict[str, Any]) -> Reply | None:
        return continuation()

    gc.collect()
    gc.disable()
    try:
        out = [c async for c in recovering(reply, reply.body, {"messages": []}, continue_locally)]
        assert out
        assert made and made[0]() is None, "the continuation outlived the recovery: a cycle holds it"
    finally:
        gc.enable()
