"""Serving makes no cyclic garbage: what a request allocates is freed by reference counts,
which is what lets server/run.py collect the young generation rarely (YOUNG_THRESHOLD).
A request through each path (the cloud, a failover to a local stream or answer, both
front doors) is served with the collector off, and then a collection finds nothing."""

from __future__ import annotations

import gc
from pathlib import Path

import aiohttp
import orjson
import pytest
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


ANTHROPIC = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
OPENAI = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("mode", ["ok", "subscription_limit"], ids=["cloud", "failover"])
async def test_serving_a_request_leaves_no_cycles(serve, tmp_path: Path, mode: str) -> None:
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                        "cloud": {"url": await serve(fake_cloud_app()), "default_cooldown": 0},
                        "local": [{"name": "llama", "url": await serve(_local_server()), "model": "m",
                                   "count_tokens": "estimate"}]})
    app = App(cfg)
    cloud = CloudBackend(cfg.cloud, CloudBackend.make_session(cfg.cloud))
    headers = [(b"x-api-key", b"sk-ant-test"), (b"anthropic-version", b"2023-06-01"), (b"x-fake-mode", mode.encode())]
    requests = [("/v1/messages", {**ANTHROPIC, "stream": s}) for s in (True, False)]
    requests += [("/v1/chat/completions", {**OPENAI, "stream": s}) for s in (True, False)]
    async with aiohttp.ClientSession() as session:
        app.rt.use_backends([make_local_backend(b, session) for b in cfg.local], cloud=cloud)
        try:
            for path, req in requests:  # once first: caches and pools fill
                await exchange(app, "POST", path, body=orjson.dumps(req), headers=headers)
            gc.collect()
            gc.disable()
            try:
                for _ in range(3):
                    for path, req in requests:
                        status, got, _ = await exchange(app, "POST", path, body=orjson.dumps(req), headers=headers)
                        assert status == 200
                        assert got[b"x-nonstop-backend"] == (b"cloud" if mode == "ok" else b"llama")
                garbage = gc.collect()
            finally:
                gc.enable()
        finally:
            await cloud.session.close()
    assert garbage == 0, f"{garbage} objects were left in reference cycles"
