"""The OpenAI front door tells a request over the model's window as OpenAI does
(`code: "context_length_exceeded"`, which clients such as Aider trim on), whoever found it
and whenever: before the stream, after it began, in either of the cloud's wordings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import nonstop.backends.local as local_module
from nonstop.backends.base import Reply, Usage, single
from nonstop.backends.cloud import CloudBackend
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.server.app import App
from nonstop.wire.errors import prompt_too_long_message
from nonstop.wire.openai import AnthropicToOpenAIStream
from tests.support.inprocess import post

USER = {"role": "user", "content": "hi"}
BASE = "http://127.0.0.1:8787"

START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
    "usage": {"input_tokens": 5, "output_tokens": 1}}})


def _sdk(app: App) -> openai.AsyncOpenAI:
    """The official SDK, talking to the app in process, as a real client does."""
    return openai.AsyncOpenAI(base_url=BASE + "/v1", api_key="x", max_retries=0,
                              http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE))


# --- "prompt too long" must carry OpenAI's context_length_exceeded code everywhere ---------------
#
# writers._openai_code gives a whole 400 whose message starts "prompt is too long" the
# code "context_length_exceeded" ("clients trim the conversation on it"). Two ways a
# prompt that is too long reaches an OpenAI client miss that code.


def test_a_streamed_prompt_too_long_error_carries_the_context_length_code() -> None:
    """A stream that has begun and then finds the prompt over the window (an `error`
    event "prompt is too long: N tokens > M maximum") ends with an error chunk that
    carries `code: "context_length_exceeded"`, as the whole reply does."""
    s = AnthropicToOpenAIStream(model="m", completion_id="c", include_usage=False, created=1)
    s.feed(*START)
    out = s.feed("error", {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": prompt_too_long_message(40000, 32768)}})
    assert out and "error" in out[0]
    assert out[0]["error"]["code"] == "context_length_exceeded", out


async def test_a_local_prompt_too_long_after_the_stream_began_reaches_the_sdk_with_the_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: no cloud, one local llama-server that answers a slow 400
    `exceed_context_size_error` after nonstop has committed the stream (COMMIT_AFTER
    lowered to 50 ms): the openai SDK raises APIError with code
    "context_length_exceeded", as the same failure gets before the stream begins."""
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.05)

    async def too_long(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.3)
        return web.json_response({"error": {"code": 400, "type": "exceed_context_size_error",
                                            "message": "the request exceeds the available context size, try increasing it",
                                            "n_prompt_tokens": 40000, "n_ctx": 32768}}, status=400)

    server_app = web.Application()
    server_app.router.add_post("/v1/messages", too_long)
    server = TestServer(server_app, host="127.0.0.1")
    await server.start_server()
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "cloud": {"url": "http://127.0.0.1:9"},
                        "embedded": {"mode": "never"}, "discovery": {"enabled": False},
                        "local": [{"name": "llama", "url": f"http://127.0.0.1:{server.port}", "model": "m",
                                   "count_tokens": "estimate"}]})
    app = App(cfg)
    cloud = CloudBackend(cfg.cloud, CloudBackend.make_session(cfg.cloud))
    try:
        async with aiohttp.ClientSession() as session:
            app.rt.use_backends([make_local_backend(b, session) for b in cfg.local], cloud=cloud)
            client = _sdk(app)
            with pytest.raises(openai.APIError) as caught:
                stream = await client.chat.completions.create(model="claude-sonnet-4-5", messages=[USER], stream=True)
                async for _ in stream:
                    pass
    finally:
        await cloud.session.close()
        await server.close()
    assert "prompt is too long" in caught.value.message
    assert caught.value.code == "context_length_exceeded", (caught.value.code, caught.value.body)


async def test_the_clouds_input_plus_max_tokens_over_the_window_carries_the_context_length_code(tmp_path: Path) -> None:
    """The cloud's other wording of a request over the window: 400 "input length and
    `max_tokens` exceed context limit: 198000 + 4096 > 200000, ..." (the OpenAI door sends
    max_tokens 4096 by default, so a near-full conversation meets it): relayed with
    `code: "context_length_exceeded"`."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}))
    cloud = CloudBackend(app.cfg.cloud, session=None)  # type: ignore[arg-type]
    refusal = {"type": "error", "request_id": "req_1", "error": {
        "type": "invalid_request_error",
        "message": "input length and `max_tokens` exceed context limit: 198000 + 4096 > 200000, "
                   "decrease input length or `max_tokens` and try again"}}

    async def request(method: Any, raw_path: Any, query: Any, headers: Any, body: Any, **kw: Any) -> Reply:
        return Reply(400, [(b"content-type", b"application/json")], single(orjson.dumps(refusal)), "cloud", False, Usage())

    cloud.request = request  # type: ignore[method-assign]
    app.rt.use_backends([], cloud=cloud)
    status, raw = await post(app, "/v1/chat/completions", orjson.dumps({"model": "claude-sonnet-4-5", "messages": [USER]}))
    doc = orjson.loads(raw)
    assert status == 400 and set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["code"] == "context_length_exceeded", doc
