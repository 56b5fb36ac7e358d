"""What a relayed cloud stream holds while it is open: its response lets go of the head
once nonstop has read it (cloud._let_go_of_head), and everything that head was read for
still happens. The head is the cloud's thirty-odd headers, kept by aiohttp twice (bytes
and a CIMultiDict of str) for the body's whole life otherwise."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from aiohttp import web

from nonstop.backends.base import Reply
from nonstop.backends.cloud import CloudBackend, _let_go_of_head
from nonstop.backends.head import forward_headers
from nonstop.config import CloudConfig

QUOTA = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-5h-utilization": "0.42",
    "anthropic-ratelimit-unified-5h-reset": "1796554800",
    "request-id": "req_0123",
}


def _ev(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


START = (_ev("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
    "usage": {"input_tokens": 11, "output_tokens": 1}}})
    + _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
REST = (_ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})
        + _ev("content_block_stop", {"type": "content_block_stop", "index": 0})
        + _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})
        + _ev("message_stop", {"type": "message_stop"}))


def _app(gate: asyncio.Event) -> web.Application:
    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", **QUOTA})
        await resp.prepare(request)
        await resp.write(START)
        await gate.wait()  # the rest once the test has looked at the open stream
        await resp.write(REST)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


async def test_an_open_stream_holds_no_head_and_relays_as_before(serve):
    gate = asyncio.Event()
    url = await serve(_app(gate))
    cfg = CloudConfig(url=url, first_byte_timeout=10.0)
    session = CloudBackend.make_session(cfg)
    seen: list[dict[str, str]] = []
    try:
        backend = CloudBackend(cfg, session, observe_headers=lambda account, h: seen.append(dict(h)))
        for _ in range(2):  # the second on the connection the first gave back
            gate.clear()
            reply = await backend.request("POST", b"/v1/messages", b"", forward_headers([(b"x-api-key", b"k")]),
                                          b"{}", stream=True, expect="stream")
            assert isinstance(reply, Reply), reply
            resp = reply.close.__self__  # type: ignore[union-attr]  # (the response's own close)
            assert isinstance(resp, aiohttp.ClientResponse)
            # Open, its body not read yet: the response holds no head...
            assert len(resp.headers) == 0 and resp.raw_headers == ()
            # ...and nonstop's own copy of it is the one relayed, the quota headers learnt.
            relayed = dict(reply.headers)
            assert relayed[b"request-id"] == b"req_0123"
            assert relayed[b"anthropic-ratelimit-unified-5h-utilization"] == b"0.42"
            await asyncio.sleep(0)  # (the quota headers are read on the loop's next turn)
            assert seen[-1]["anthropic-ratelimit-unified-5h-utilization"] == "0.42"
            gate.set()
            body = b"".join([c async for c in reply.body])
            assert body == START + REST
            assert reply.usage.complete and reply.usage.output_tokens == 3 and not reply.usage.error
            reply.close()
        connector = session.connector
        assert connector is not None
        assert sum(len(c) for c in connector._conns.values()) == 1  # kept alive, reused
    finally:
        await session.close()


async def test_aiohttp_keeps_the_head_where_it_is_let_go_of(serve):
    """If aiohttp moves where a response keeps its head, this fails (and a stream would
    hold it again): ClientResponse.start sets `_headers` and `_raw_headers`, and the
    properties keep what they gave in `_cache` (reify)."""
    gate = asyncio.Event()
    gate.set()
    url = await serve(_app(gate))
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/messages", data=b"{}") as resp:
        assert resp.headers is resp._headers and resp.raw_headers is resp._raw_headers
        assert resp._cache["headers"] is resp._headers and resp._cache["raw_headers"] is resp._raw_headers
        assert resp.headers["request-id"] == "req_0123"
        _let_go_of_head(resp)
        assert len(resp.headers) == 0 and resp.raw_headers == () and resp.content_type == "application/octet-stream"
        assert await resp.read() == START + REST
