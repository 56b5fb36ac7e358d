"""Serving makes no cyclic garbage: what a request allocates is freed by reference counts,
which is what lets server/run.py collect the young generation rarely (YOUNG_THRESHOLD).
A request through each path (the cloud, a failover to a local stream or answer, both
front doors) is served with the collector off, and then a collection finds nothing; so
are requests that go wrong (a cloud that refuses or breaks, a local server that cuts
its answer, a client that leaves mid-stream)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import uvloop
from aiohttp import web

from nonstop.backends.cloud import CloudBackend
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.server.app import App
from tests.support.fake_cloud import make_app as fake_cloud_app
from tests.support.inprocess import exchange


def _ev(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


LOCAL_STREAM = b"".join([
    _ev("message_start", {"type": "message_start", "message": {
        "id": "msg_l", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
        "usage": {"input_tokens": 5, "output_tokens": 1}}}),
    _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
    _ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
    _ev("message_stop", {"type": "message_stop"}),
])
LOCAL_MESSAGE = {"id": "msg_l", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
                 "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 5, "output_tokens": 2}}


def _local_server() -> web.Application:
    async def messages(request: web.Request) -> web.StreamResponse:
        req = await request.json()
        if not req.get("stream"):
            return web.json_response(LOCAL_MESSAGE)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(LOCAL_STREAM)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


@pytest.fixture
def event_loop_policy() -> uvloop.EventLoopPolicy:
    """uvloop, as nonstop serves on (server/run.py): asyncio's own selector transports
    make a reference cycle of their own as a connection closes (each keeps a bound
    method of itself), which a served process never has."""
    return uvloop.EventLoopPolicy()


ANTHROPIC = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
OPENAI = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
BOTH_DOORS = [(path, {**req, "stream": s}) for path, req in (("/v1/messages", ANTHROPIC), ("/v1/chat/completions", OPENAI))
              for s in (True, False)]
Request = tuple[str, dict[str, Any]]
Send = Callable[[App, str, bytes, list[tuple[bytes, bytes]]], Awaitable[None]]


async def _answered(app: App, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    status, _, _ = await exchange(app, "POST", path, body=body, headers=headers)
    assert status in (200, 400, 502, 503)


async def _cycles_left(serve, tmp_path: Path, mode: str, local: web.Application, requests: list[Request],
                       send: Send = _answered, **cloud_settings: Any) -> int:
    """The objects left in reference cycles by serving `requests` three times (after once
    first: caches and pools fill) with the fake cloud in `mode` and `local` as the local
    server, the collector off meanwhile."""
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                        "cloud": {"url": await serve(fake_cloud_app()), "default_cooldown": 0, **cloud_settings},
                        "local": [{"name": "llama", "url": await serve(local), "model": "m", "count_tokens": "estimate"}]})
    app = App(cfg)
    cloud = CloudBackend(cfg.cloud, CloudBackend.make_session(cfg.cloud))
    headers = [(b"x-api-key", b"sk-ant-test"), (b"anthropic-version", b"2023-06-01"), (b"x-fake-mode", mode.encode())]
    bodies = [(path, orjson.dumps(req)) for path, req in requests]
    async with aiohttp.ClientSession() as session:
        app.rt.use_backends([make_local_backend(b, session) for b in cfg.local], cloud=cloud)
        try:
            for path, body in bodies:
                await send(app, path, body, headers)
            await asyncio.sleep(0.1)  # servers whose client left see it gone
            gc.collect()
            gc.disable()
            try:
                for _ in range(3):
                    for path, body in bodies:
                        await send(app, path, body, headers)
                await asyncio.sleep(0.1)
                return gc.collect()
            finally:
                gc.enable()
        finally:
            await cloud.session.close()


@pytest.mark.parametrize("mode", ["ok", "subscription_limit"], ids=["cloud", "failover"])
async def test_serving_a_request_leaves_no_cycles(serve, tmp_path: Path, mode: str) -> None:
    async def served(app: App, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        status, got, _ = await exchange(app, "POST", path, body=body, headers=headers)
        assert status == 200
        assert got[b"x-nonstop-backend"] == (b"cloud" if mode == "ok" else b"llama")

    garbage = await _cycles_left(serve, tmp_path, mode, _local_server(), BOTH_DOORS, served)
    assert garbage == 0, f"{garbage} objects were left in reference cycles"


# The ways a cloud reply goes wrong: refused before anything (and failed over), refused
# and relayed, broken before its first content (failed over), broken after an empty text
# block's start (a local model goes on with the message), broken after content (the
# client's stream ends with an error event), and a whole reply cut short.
FAULTS = ["overloaded", "invalid_request", "midstream_overloaded", "overloaded_after_block_start",
          "reset_after_block_start", "error_after_content", "reset_after_content",
          "truncate", "malformed_chunk", "json_cut_half", "wrong_content_type"]


@pytest.mark.parametrize("mode", FAULTS)
async def test_a_cloud_that_fails_leaves_no_cycles(serve, tmp_path: Path, mode: str) -> None:
    garbage = await _cycles_left(serve, tmp_path, mode, _local_server(), BOTH_DOORS[:2])
    assert garbage == 0, f"{mode}: {garbage} objects were left in reference cycles"


@pytest.mark.parametrize("mode", ["hang", "hang_after_head", "stall_after_content"])
async def test_a_cloud_that_stalls_leaves_no_cycles(serve, tmp_path: Path, mode: str) -> None:
    """Stalls end by nonstop's own timers (the first-byte deadline, a read's silence): the
    timer, the cancelled read and its error must not keep the request alive in a cycle."""
    garbage = await _cycles_left(serve, tmp_path, mode, _local_server(), BOTH_DOORS[:2],
                                 first_byte_timeout=0.3, idle_timeout=0.3)
    assert garbage == 0, f"{mode}: {garbage} objects were left in reference cycles"


def _cutting_local_server() -> web.Application:
    """A local server whose answers stop half-way: the connection is dropped in the middle
    of a stream, and of a whole reply whose length was declared."""
    async def messages(request: web.Request) -> web.StreamResponse:
        req = await request.json()
        transport = request.transport
        assert transport is not None
        if req.get("stream"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(LOCAL_STREAM[: len(LOCAL_STREAM) // 2])
            transport.abort()
            return resp
        body = orjson.dumps(LOCAL_MESSAGE)
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                        + body[: len(body) // 2])
        transport.abort()
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


async def test_a_local_server_that_fails_leaves_no_cycles(serve, tmp_path: Path) -> None:
    garbage = await _cycles_left(serve, tmp_path, "subscription_limit", _cutting_local_server(), BOTH_DOORS)
    assert garbage == 0, f"{garbage} objects were left in reference cycles"


def _slow_local_server() -> web.Application:
    """A local server that streams an event every 20 ms."""
    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for event in LOCAL_STREAM.split(b"\n\n")[:-1]:
            await resp.write(event + b"\n\n")
            await asyncio.sleep(0.02)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


async def _leave_after_first_bytes(app: App, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """One streamed request whose client goes away once the first bytes of its answer came."""
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:8787"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), *headers]}
    parts, answered = [body], asyncio.Event()

    async def receive() -> dict[str, Any]:
        if parts:
            return {"type": "http.request", "body": parts.pop(), "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.body" and msg.get("body"):
            answered.set()

    await asyncio.wait_for(app(scope, receive, send), 10)


@pytest.mark.parametrize("mode", ["slow", "subscription_limit"], ids=["cloud", "failover"])
async def test_a_client_that_leaves_mid_stream_leaves_no_cycles(serve, tmp_path: Path, mode: str) -> None:
    streams = [(path, req) for path, req in BOTH_DOORS if req["stream"]]
    garbage = await _cycles_left(serve, tmp_path, mode, _slow_local_server(), streams, _leave_after_first_bytes)
    assert garbage == 0, f"{mode}: {garbage} objects were left in reference cycles"
