"""A local server's whole replies, against small in-process servers: a reply that is not a
stream shares its head's deadline and is read up to a size, and nonstop's own questions
to a server (health, token counts) are read up to a size too, so a server that stalls,
trickles or never stops sending cannot hold a request or fill memory."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

import nonstop.backends.local as local_module
import nonstop.backends.local_anthropic as local_anthropic
from nonstop.backends.base import MAX_SIDE_REPLY, Reply, ReplyTooLarge, TooLong, read_capped
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.routing.classify import FailureKind, Verdict

REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [{"type": "text", "text": "ok"}],
           "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}


async def _endless(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"type": "message", "content": [{"type": "text", "text": "')
    chunk = b"x" * 65536
    while True:
        await resp.write(chunk)


async def _stalls(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "application/json"})
    await resp.prepare(request)
    await resp.write(orjson.dumps(MESSAGE)[:20])
    await asyncio.sleep(30)
    return resp


async def _answers(request: web.Request) -> web.Response:
    return web.json_response(MESSAGE)


def _app(messages, *, models=None) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", _endless)
    app.router.add_get("/v1/models", models or _answers)
    return app


async def _send(url: str, **local) -> tuple[object, float]:
    cfg = parse_config({"local": [{"name": "box", "url": url, "api": "anthropic", "context_window": 8192,
                                   "count_tokens": "estimate", **local}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        started = time.monotonic()
        res = await asyncio.wait_for(backend.send_request(dict(REQUEST), stream=False), 20)
        return res, time.monotonic() - started


async def test_a_whole_reply_is_still_answered(serve):
    res, _ = await _send(await serve(_app(_answers)))
    assert not isinstance(res, Verdict) and res.status == 200


async def test_a_whole_reply_whose_body_stalls_is_given_up_at_the_heads_deadline(serve):
    # idle_timeout is 10 s: the body is bound by connect + first_byte_timeout from sending.
    res, took = await _send(await serve(_app(_stalls)), first_byte_timeout=0.5, connect_timeout=0.5, idle_timeout=10.0)
    assert isinstance(res, Verdict) and res.kind is FailureKind.TIMEOUT and res.failover
    assert "first_byte_timeout" in res.detail
    assert took < 5, f"the stalled body held the request {took:.1f} s"


async def test_a_whole_reply_that_never_ends_is_cut_at_the_size_nonstop_reads(serve, monkeypatch):
    monkeypatch.setattr(local_module, "MAX_WHOLE_BODY", 1024 * 1024)
    res, _ = await _send(await serve(_app(_endless)), first_byte_timeout=30.0)
    assert isinstance(res, Verdict) and res.kind is FailureKind.BAD_RESPONSE and "larger than" in res.detail


async def test_a_token_count_that_never_ends_falls_back_to_the_estimate(serve):
    cfg = parse_config({"local": [{"name": "box", "url": await serve(_app(_answers)), "api": "anthropic",
                                   "count_tokens": "server"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        n = await asyncio.wait_for(backend.count_tokens(dict(REQUEST)), 20)
    assert 0 < n < 100  # the estimate of a two-word request


async def test_a_health_check_reads_a_model_list_only_up_to_its_size(serve):
    cfg = parse_config({"local": [{"name": "box", "url": await serve(_app(_answers, models=_endless)), "api": "anthropic"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        assert await asyncio.wait_for(backend.check_health(), 20) is True  # it answered; its list is not read


@pytest.mark.parametrize("size,over", [(0, False), (MAX_SIDE_REPLY, False), (MAX_SIDE_REPLY + 1, True)])
async def test_read_capped_takes_a_body_up_to_its_limit(serve, size, over):
    async def body(request: web.Request) -> web.Response:
        return web.Response(body=b"a" * size)

    app = web.Application()
    app.router.add_get("/", body)
    url = await serve(app)
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        if over:
            with pytest.raises(ReplyTooLarge):
                await read_capped(r)
        else:
            assert len(await read_capped(r)) == size


# --- a server that cannot count, and one whose window the prompt is over -------------------------


async def test_a_token_count_that_hangs_gives_the_estimate_and_is_not_asked_again(serve, monkeypatch):
    monkeypatch.setattr(local_anthropic, "COUNT_TIMEOUT", 0.5)
    counted: list[int] = []

    async def hangs(request: web.Request) -> web.Response:
        counted.append(1)
        await asyncio.sleep(30)
        return web.json_response({"input_tokens": 5})

    app = web.Application()
    app.router.add_post("/v1/messages", _answers)
    app.router.add_post("/v1/messages/count_tokens", hangs)
    url = await serve(app)
    cfg = parse_config({"local": [{"name": "box", "url": url, "api": "anthropic", "context_window": 8192}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        for _ in range(2):
            res = await asyncio.wait_for(backend.send_request(dict(REQUEST), stream=False), 10)
            assert not isinstance(res, Verdict) and res.status == 200
    assert counted == [1]


LLAMA = ('{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it",'
         '"type":"exceed_context_size_error","n_prompt_tokens":40000,"n_ctx":8192}}')
VLLM = ('{"object":"error","message":"This model\'s maximum context length is 4096 tokens. However, you requested '
        '9000 tokens (8000 in the messages, 1000 in the completion).","type":"BadRequestError","code":400}')
OLLAMA = '{"error":"input length exceeds context length"}'
LMSTUDIO = '{"error":"Trying to keep the first 9000 tokens when context the overflows. However, the model is loaded with context length of only 4096 tokens"}'


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status,text,tokens,window", [
    (400, LLAMA, 40000, 8192), (400, VLLM, 9000, 4096), (400, OLLAMA, 0, 8192), (500, LMSTUDIO, 0, 8192),
], ids=["llama-server", "vllm", "ollama", "lm-studio"])
async def test_a_server_that_says_the_prompt_is_over_its_window_gives_too_long(serve, stream, status, text, tokens, window):
    async def over(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/messages", over)
    cfg = parse_config({"local": [{"name": "box", "url": await serve(app), "api": "anthropic", "context_window": 8192,
                                   "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await asyncio.wait_for(backend.send_request(dict(REQUEST), stream=stream), 10)
    assert isinstance(res, TooLong) and res.backend == "box" and res.window == window
    assert res.tokens == (tokens or res.tokens) and res.tokens > 0


async def test_an_overflow_after_the_stream_began_is_told_in_the_words_claude_code_compacts_on(serve, monkeypatch):
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.1)

    async def late_over(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(status=400, text=LLAMA, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/messages", late_over)
    cfg = parse_config({"local": [{"name": "box", "url": await serve(app), "api": "anthropic", "context_window": 8192,
                                   "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await asyncio.wait_for(backend.send_request(dict(REQUEST), stream=True), 10)
        assert isinstance(res, Reply) and res.stream
        body = b"".join([c async for c in res.body])
    assert b"event: message_start" in body and b"prompt is too long: 40000 tokens > 8192 maximum" in body
    assert b'"invalid_request_error"' in body
