"""The cloud's stream as the relay reads it, against a small in-process server that sends
raw SSE bytes: every legal framing (LF, CRLF, lone CR, with or without the space after
`event:`), split anywhere, comes out whole and LF-framed; the client's response ends at
`message_stop` even when the cloud holds its connection open; an event that never ends
is cut at a size."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiohttp import web

import nonstop.backends.cloud as cloud_module
from nonstop.backends.base import Reply
from nonstop.backends.cloud import CloudBackend
from nonstop.backends.head import forward_headers
from nonstop.config import CloudConfig
from nonstop.routing.classify import FailureKind, Verdict
from tests.support import wirecheck
from tests.support.inprocess import paced_app


def _ev(name: str, data: dict, *, space: bool = True) -> bytes:
    return b"event:" + (b" " if space else b"") + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _stream(space: bool = True) -> bytes:
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
           "stop_reason": None, "usage": {"input_tokens": 11, "output_tokens": 1}}
    return b"".join([
        _ev("message_start", {"type": "message_start", "message": msg}, space=space),
        _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, space=space),
        _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "héllo"}}, space=space),
        _ev("content_block_stop", {"type": "content_block_stop", "index": 0}, space=space),
        _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}, space=space),
        _ev("message_stop", {"type": "message_stop"}, space=space),
    ])


def _server(body: bytes, piece: int, hold: float = 0.0) -> web.Application:
    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(0, len(body), piece):
            await resp.write(body[i : i + piece])
            if piece < len(body):
                await asyncio.sleep(0)
        await asyncio.sleep(hold)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


async def _relay(url: str) -> tuple[Reply, bytes, float]:
    cfg = CloudConfig(url=url, first_byte_timeout=10.0)
    session = CloudBackend.make_session(cfg)
    try:
        backend = CloudBackend(cfg, session)
        started = time.monotonic()
        res = await backend.request("POST", b"/v1/messages", b"", forward_headers([(b"x-api-key", b"k")]), b"{}",
                                    stream=True, expect="stream")
        assert isinstance(res, Reply), res
        chunks = [c async for c in res.body]
        if res.close is not None:
            res.close()
        return res, b"".join(chunks), time.monotonic() - started
    finally:
        await session.close()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("space", [True, False], ids=["space", "no-space"])
@pytest.mark.parametrize("piece", [1, 7, 1 << 20], ids=["byte", "seven", "whole"])
async def test_every_legal_framing_comes_out_whole_and_lf_framed(serve, ending, space, piece):
    body = _stream(space).replace(b"\n", ending)
    res, out, _ = await _relay(await serve(_server(body, piece)))
    assert out == _stream(space)
    assert res.usage.complete and not res.usage.error
    assert (res.usage.input_tokens, res.usage.output_tokens, res.usage.stop_reason) == (11, 3, "end_turn")
    if space:
        assert wirecheck.check_anthropic_stream(out).outcome == "ok"


async def test_an_event_that_never_ends_is_cut_at_a_size(serve, monkeypatch):
    monkeypatch.setattr(cloud_module, "MAX_EVENT", 64 * 1024)
    body = _stream()
    start_end = body.index(b"event: content_block_delta")
    endless = body[:start_end] + b"event: content_block_delta\ndata: " + b"x" * (256 * 1024)
    res, out, _ = await _relay(await serve(_server(endless, 8192)))
    assert out.startswith(body[:start_end]) and b"too large to relay" in out
    assert res.usage.error and not res.usage.complete


def _server_seen(body: bytes, *, end_after: float) -> tuple[web.Application, list[object]]:
    """A server that sends the whole stream, then ends the response `end_after` seconds
    later (the chunked terminator in a read of its own); which client port each came on."""
    ports: list[object] = []

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ports.append(peer[1] if peer else None)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(body)
        await asyncio.sleep(end_after)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app, ports


async def test_a_stream_that_ends_leaves_its_connection_for_the_next_request(serve):
    app, ports = _server_seen(_stream(), end_after=0.05)
    url = await serve(app)
    cfg = CloudConfig(url=url, first_byte_timeout=10.0)
    session = CloudBackend.make_session(cfg)
    try:
        backend = CloudBackend(cfg, session)
        for _ in range(3):
            res = await backend.request("POST", b"/v1/messages", b"", forward_headers([(b"x-api-key", b"k")]), b"{}",
                                        stream=True, expect="stream")
            assert isinstance(res, Reply)
            assert b"".join([c async for c in res.body]) == _stream()
            if res.close is not None:
                res.close()
    finally:
        await session.close()
    assert len(set(ports)) == 1, f"each stream opened a connection of its own: {ports}"


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
async def test_every_framing_ends_at_message_stop_when_the_cloud_holds_its_connection(serve, ending):
    res, out, took = await _relay(await serve(_server(_stream().replace(b"\n", ending), 1 << 20, hold=30)))
    assert out == _stream() and res.usage.complete
    assert took < 5, f"the relay waited {took:.1f} s for the cloud to close after message_stop"


@pytest.mark.parametrize("space", [True, False], ids=["space", "no-space"])
async def test_an_error_event_mid_stream_ends_it_with_what_the_cloud_said(serve, space):
    """An `error` event after content (written `event: error` or `event:error`) ends the
    client's stream there, incomplete, with the cloud's own words in the log."""
    head = _stream(space).split(b"event:" + (b" " if space else b"") + b"content_block_stop")[0]
    err = _ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, space=space)

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(head)
        await asyncio.sleep(0.2)  # the client has the content before the error comes
        await resp.write(err)
        await asyncio.sleep(30)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    res, out, took = await _relay(await serve(app))
    assert out == head + err
    assert not res.usage.complete and "overloaded_error: Overloaded" in res.usage.error
    assert took < 5


async def test_an_event_name_that_does_not_start_its_line_ends_nothing(serve):
    """Only an `event:` line names an event: the same words later in another line (a
    comment here) neither end the stream nor count as its usage."""
    body = _stream()
    at = body.index(b"event: content_block_stop")
    fake = b": event: message_stop\n: event: message_delta\ndata: {\"usage\": {\"output_tokens\": 99}}\n\n"
    res, out, _ = await _relay(await serve(_server(body[:at] + fake + body[at:], 1 << 20, hold=30)))
    assert out.endswith(body[at:]) and res.usage.complete
    assert res.usage.output_tokens == 3


async def _flags(url: str) -> list[tuple[bytes, bool]]:
    """Each chunk of a stream, and whether the body had said it was the last when it came."""
    cfg = CloudConfig(url=url, first_byte_timeout=10.0)
    session = CloudBackend.make_session(cfg)
    try:
        res = await CloudBackend(cfg, session).request("POST", b"/v1/messages", b"", forward_headers([(b"x-api-key", b"k")]),
                                                       b"{}", stream=True, expect="stream")
        assert isinstance(res, Reply), res
        seen = [(c, res.usage.final) async for c in res.body]
        if res.close is not None:
            res.close()
        return seen
    finally:
        await session.close()


def _in_two(first: bytes, second: bytes) -> web.Application:
    """A server that sends `first`, and a moment later `second` and its body's end at once."""
    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(first)
        await asyncio.sleep(0.1)  # the client reads it on its own
        await resp.write(second)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


@pytest.mark.parametrize("split", [False, True], ids=["whole", "in-two"])
async def test_a_complete_stream_read_to_its_end_says_which_chunk_is_its_last(serve, split):
    """The relay sends that chunk with the response's end, in one write (Usage.final)."""
    body = _stream()
    at = body.index(b"event: content_block_stop") if split else len(body)
    seen = await _flags(await serve(_in_two(body[:at], body[at:]) if split else _server(body, 1 << 20)))
    assert b"".join(c for c, _ in seen) == body
    assert [f for _, f in seen] == [False] * (len(seen) - 1) + [True]
    assert b"event: message_stop" in seen[-1][0] and len(seen) == (2 if split else 1)


async def test_a_stream_whose_body_has_not_ended_does_not_hold_its_last_chunk(serve):
    """message_stop has come, the body's end has not: the chunk goes out at once (the
    drain that follows may wait for the cloud), so the client is never kept waiting."""
    seen = await _flags(await serve(_server(_stream(), 1 << 20, hold=0.3)))
    assert b"".join(c for c, _ in seen) == _stream() and not any(f for _, f in seen)


async def test_a_stream_that_ends_with_an_error_does_not_hold_its_last_chunk(serve):
    head = _stream().split(b"event: content_block_stop")[0]
    err = _ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    seen = await _flags(await serve(_in_two(head, err)))
    assert b"".join(c for c, _ in seen) == head + err and not any(f for _, f in seen)


# --- silences --------------------------------------------------------------------------------


async def _backend(url: str, idle: float) -> CloudBackend:
    cfg = CloudConfig(url=url, first_byte_timeout=10.0, idle_timeout=idle)
    return CloudBackend(cfg, CloudBackend.make_session(cfg))


async def _timed_stream(backend: CloudBackend) -> tuple[Reply, bytes, float]:
    """A stream request relayed to its end: the reply, its bytes, the seconds it took."""
    try:
        started = time.monotonic()
        res = await backend.request("POST", b"/v1/messages", b"", forward_headers([]), b"{}", stream=True, expect="stream")
        assert isinstance(res, Reply), res
        out = b"".join([c async for c in res.body])
        return res, out, time.monotonic() - started
    finally:
        await backend.session.close()


async def test_a_stream_silent_for_idle_timeout_ends_with_an_error_event(serve):
    whole = _stream()
    cut = whole.index(b"event: content_block_stop")
    backend = await _backend(await serve(paced_app([whole[:cut], whole[cut:]], 30)), idle=0.3)
    res, out, took = await _timed_stream(backend)
    assert out.startswith(whole[:cut])
    assert b"event: error" in out and b"silent for 0.3 s" in out
    assert res.usage.error == "cloud stream failed: silent for 0.3 s"
    assert 0.3 <= took < 3


async def test_pauses_each_under_idle_timeout_do_not_cut_a_stream_longer_than_it(serve):
    whole = _stream()
    pieces = [whole[i:i + 90] for i in range(0, len(whole), 90)]
    backend = await _backend(await serve(paced_app(pieces, 0.12)), idle=0.3)
    try:
        res = await backend.request("POST", b"/v1/messages", b"", forward_headers([]), b"{}", stream=True, expect="stream")
        assert isinstance(res, Reply), res
        out = b"".join([c async for c in res.body])
    finally:
        await backend.session.close()
    assert len(pieces) * 0.12 > 0.6  # twice the limit in all
    assert out == whole and not res.usage.error


async def test_a_slow_client_between_reads_is_not_the_clouds_silence(serve):
    whole = _stream()
    backend = await _backend(await serve(paced_app([whole[i:i + 90] for i in range(0, len(whole), 90)], 0.01)), idle=0.2)
    try:
        res = await backend.request("POST", b"/v1/messages", b"", forward_headers([]), b"{}", stream=True, expect="stream")
        assert isinstance(res, Reply), res
        out = []
        async for c in res.body:
            out.append(c)
            await asyncio.sleep(0.5)  # the client takes its time over every chunk
    finally:
        await backend.session.close()
    assert len(out) >= 2 and b"".join(out) == whole and not res.usage.error


async def test_another_path_whose_body_goes_silent_is_a_timeout_not_a_hang(serve):
    app = paced_app([b'{"data": [', b"]}"], 30, path="/v1/files", method="GET", ctype="application/json")
    backend = await _backend(await serve(app), idle=0.3)
    try:
        started = time.monotonic()
        res = await backend.request("GET", b"/v1/files", b"", forward_headers([]), b"")
        took = time.monotonic() - started
    finally:
        await backend.session.close()
    assert isinstance(res, Verdict) and res.kind is FailureKind.TIMEOUT, res
    assert 0.3 <= took < 3


async def test_a_cloud_that_trickles_an_event_is_cut_at_idle_timeout(serve):
    # Each read re-arms the silence timer; reads that finish no event add up to it.
    whole = _stream()
    cut = whole.index(b"event: content_block_stop")
    trickle = [b"event: content_block_delta\ndata: {"] + [b" "] * 40
    backend = await _backend(await serve(paced_app([whole[:cut], *trickle], 0.05)), idle=0.3)
    res, out, took = await _timed_stream(backend)
    assert out.startswith(whole[:cut]) and b"stalled mid-event" in out
    assert res.usage.error == "the cloud sent no whole event for 0.3 s"
    assert took < 40 * 0.05  # well before the trickle ends
