"""A local server's whole replies, against small in-process servers: a reply that is not a
stream shares its head's deadline and is read up to a size, and nonstop's own questions
to a server (health, token counts) are read up to a size too, so a server that stalls,
trickles or never stops sending cannot hold a request or fill memory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

import nonstop.backends.local as local_module
import nonstop.backends.local_anthropic as local_anthropic
from nonstop.backends.base import (
    MAX_SIDE_REPLY,
    Reply,
    ReplyTooLarge,
    TooLong,
    UnreadableRequest,
    read_capped,
)
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.wire.anthropic import estimate_tokens
from tests.support import wirecheck

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


async def _send(url: str, *, stream: bool = False, req: dict = REQUEST, **local) -> tuple[object, float]:
    cfg = parse_config({"local": [{"name": "box", "url": url, "api": "anthropic", "context_window": 8192,
                                   "count_tokens": "estimate", **local}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        started = time.monotonic()
        res = await asyncio.wait_for(backend.send_request(dict(req), stream=stream), 20)
        return res, time.monotonic() - started


def _replies(status: int, text: str, *, delay: float = 0.0) -> web.Application:
    """A server that answers every Messages request with this status and body."""
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(status=status, text=text, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    return app


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
    """A server not known to count that hangs on the count (Ollama can, on an endpoint it
    lacks): a request waits FIRST_COUNT_TIMEOUT, not the 30 s a server known to count is
    given; after UNKNOWN_COUNT_TIMEOUTS such waits (the start-up calibration is one) it
    is not asked again."""
    monkeypatch.setattr(local_anthropic, "FIRST_COUNT_TIMEOUT", 0.5)
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
        for _ in range(3):
            res = await asyncio.wait_for(backend.send_request(dict(REQUEST), stream=False), 5)
            assert not isinstance(res, Verdict) and res.status == 200
    assert counted == [1] * local_anthropic.UNKNOWN_COUNT_TIMEOUTS


async def test_a_server_slow_to_count_once_is_still_asked(serve, monkeypatch):
    """A count that times out once while the server loads its model on first use (LM
    Studio's JIT, llama-swap): the server is asked again, and once it counts, it counts."""
    monkeypatch.setattr(local_anthropic, "FIRST_COUNT_TIMEOUT", 0.3)
    got, _, backend = await _counts_slow_once(serve, slow_call=1, counts=2, hang=5)  # loading
    assert got[0] != 7 and got[1] == 7 and backend._server_counts is True


async def _counts_slow_once(serve, *, slow_call: int, counts: int, hang: float) -> tuple[list[int], list[int], Any]:
    """`counts` token counts of REQUEST by a server that counts 7 tokens, and hangs for
    `hang` seconds on its `slow_call`-th count: what each gave, the calls, the backend."""
    calls: list[int] = []

    async def count(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) == slow_call:
            await asyncio.sleep(hang)
        return web.json_response({"input_tokens": 7})

    app = web.Application()
    app.router.add_post("/v1/messages/count_tokens", count)
    cfg = parse_config({"local": [{"name": "box", "url": await serve(app), "api": "anthropic"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        got = [await asyncio.wait_for(backend.count_tokens(dict(REQUEST)), 10) for _ in range(counts)]
    return got, calls, backend


LLAMA = ('{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it",'
         '"type":"exceed_context_size_error","n_prompt_tokens":40000,"n_ctx":8192}}')
VLLM = ('{"object":"error","message":"This model\'s maximum context length is 4096 tokens. However, you requested '
        '9000 tokens (8000 in the messages, 1000 in the completion).","type":"BadRequestError","code":400}')
OLLAMA = '{"error":"input length exceeds context length"}'
LMSTUDIO = '{"error":"Trying to keep the first 9000 tokens when context the overflows. However, the model is loaded with context length of only 4096 tokens"}'


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status,text,tokens,window", [
    (400, LLAMA, 40000, 8192), (400, VLLM, 8000, 4096), (400, OLLAMA, 0, 8192), (500, LMSTUDIO, 0, 8192),
], ids=["llama-server", "vllm", "ollama", "lm-studio"])
async def test_a_server_that_says_the_prompt_is_over_its_window_gives_too_long(serve, stream, status, text, tokens, window):
    res, _ = await _send(await serve(_replies(status, text)), stream=stream)
    assert isinstance(res, TooLong) and res.backend == "box" and res.window == window
    assert res.tokens == (tokens or window + 1)  # over the window, as the words say, when no size is named


async def test_an_overflow_after_the_stream_began_is_told_in_the_words_claude_code_compacts_on(serve, monkeypatch):
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.1)
    res, body, _ = await _stream_from(await serve(_replies(400, LLAMA, delay=0.5)), "anthropic")
    assert isinstance(res, Reply) and res.stream
    assert b"event: message_start" in body and b"prompt is too long: 40000 tokens > 8192 maximum" in body
    assert b'"invalid_request_error"' in body


async def test_a_client_gone_while_the_next_backend_reads_the_prompt_leaves_no_request_behind(serve, monkeypatch):
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.1)
    cfg = parse_config({"local": [
        {"name": "first", "url": await serve(_replies(503, "{}", delay=0.2)), "api": "anthropic", "count_tokens": "estimate"},
        {"name": "next", "url": await serve(_replies(200, "{}", delay=30)), "api": "anthropic", "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        first, nxt = (make_local_backend(c, session) for c in cfg.local)
        res = await first.send_request(dict(REQUEST), stream=True)
        assert isinstance(res, Reply)
        asked = asyncio.Event()

        async def instead(failure):
            monkeypatch.setattr(local_module, "COMMIT_AFTER", 5.0)  # the next one's head is awaited
            asked.set()
            got = await nxt.send_request(dict(REQUEST), stream=True)
            return got if isinstance(got, Reply) else None

        res.instead = instead
        body = res.body.__aiter__()
        first_chunk = await body.__anext__()  # the message_start
        assert b"message_start" in first_chunk
        reading = asyncio.ensure_future(body.__anext__())
        await asyncio.wait_for(asked.wait(), 5)
        await asyncio.sleep(0.1)
        reading.cancel()  # the client left: the relay's task is cancelled, then it closes the reply and its body
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        res.close()
        await body.aclose()
        await asyncio.sleep(0.05)
        left = [t for t in asyncio.all_tasks() if "_open" in repr(t.get_coro()) and not t.done()]
        assert left == [] and nxt.state.inflight == 0


@pytest.mark.parametrize("api,path", [("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")])
async def test_a_server_that_names_the_prompts_size_teaches_its_token_ratio(serve, api, path):
    # The server's tokens run four to one against nonstop's estimate, and it says so once,
    # naming the size in its overflow. nonstop then sizes this server's requests by it: the
    # same request is fitted to the window before it is sent again.
    seen: list[dict] = []
    answer = MESSAGE if api == "anthropic" else {
        "id": "c", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        if len(seen) > 1:
            return web.json_response(answer)
        return web.Response(status=400, content_type="application/json", text=orjson.dumps({"error": {
            "code": 400, "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error", "n_prompt_tokens": estimate_tokens(first) * 4, "n_ctx": 8192}}).decode())

    app = web.Application()
    app.router.add_post(path, handler)
    local = {"name": "box", "url": await serve(app), "api": api, "context_window": 8192}
    cfg = parse_config({"local": [local | ({"count_tokens": "estimate"} if api == "anthropic" else {})]})
    big = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "word " * 1500}]}
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        first = backend.local_request(big)
        estimate = estimate_tokens(first)
        assert estimate * 4 > 8192 > estimate  # by the estimate alone, it fits
        res = await asyncio.wait_for(backend.send_request(dict(big), stream=False), 10)
        # Refused, naming its size: fitted by that size and sent again, in the same request.
        assert isinstance(res, Reply) and res.status == 200 and len(seen) == 2
        assert backend.state.token_ratio == pytest.approx(4.0)
        assert await backend.count_tokens(backend.local_request(big)) == estimate * 4
        again = await asyncio.wait_for(backend.send_request(dict(big), stream=False), 10)
    # The next one is sized by the ratio: fitted before it is sent, and not refused.
    assert isinstance(again, Reply) and again.status == 200 and len(seen) == 3
    for fitted in seen[1:]:  # by the server's own count (four to one) within its window
        assert len(orjson.dumps(fitted)) < len(orjson.dumps(seen[0]))
        assert estimate_tokens(fitted) * 4 <= 8192


async def test_an_overflow_naming_a_size_below_the_estimate_teaches_no_ratio(serve):
    # The prompt was no larger than nonstop thought: the window is what is smaller.
    big = {**REQUEST, "messages": [{"role": "user", "content": "word " * 1500}]}
    named = 1000  # below the estimate of about 2,100
    text = orjson.dumps({"error": {"code": 400, "message": "the request exceeds the available context size",
                                   "type": "exceed_context_size_error", "n_prompt_tokens": named, "n_ctx": 900}}).decode()
    cfg = parse_config({"local": [{"name": "box", "url": await serve(_replies(400, text)), "api": "anthropic",
                                   "context_window": 8192, "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await asyncio.wait_for(backend.send_request(dict(big), stream=False), 10)
        assert isinstance(res, TooLong) and res.window == 900
        assert backend.state.token_ratio is None


# --- streams and replies of odd shape ------------------------------------------------------------


def _sse_app(path: str, body: bytes, *, ctype: str = "text/event-stream", hold: float = 0.0) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": ctype})
        await resp.prepare(request)
        await resp.write(body)
        await asyncio.sleep(hold)
        return resp

    app = web.Application()
    app.router.add_post(path, handler)
    return app


async def _stream_from(url: str, api: str, req: dict = REQUEST) -> tuple[object, bytes, float]:
    cfg = parse_config({"local": [{"name": "box", "url": url, "api": api, "context_window": 8192, "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        started = time.monotonic()
        res = await asyncio.wait_for(backend.send_request(dict(req), stream=True), 10)
        if not isinstance(res, Reply):
            return res, b"", time.monotonic() - started
        body = b"".join([c async for c in res.body])
        if res.close is not None:
            res.close()
        return res, body, time.monotonic() - started


def _chunk(delta: dict | None = None, finish: str | None = None, **extra) -> bytes:
    doc = {"id": "c", "object": "chat.completion.chunk", "model": "m",
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


OPENAI_ANSWER = (_chunk({"role": "assistant", "content": "hi"}) + _chunk({}, "stop")
                 + _chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}))


async def test_an_openai_stream_ends_at_done_though_the_server_holds_its_connection(serve):
    res, body, took = await _stream_from(await serve(_sse_app("/v1/chat/completions", OPENAI_ANSWER + b"data: [DONE]\n\n",
                                                              hold=30)), "openai")
    assert wirecheck.check_anthropic_stream(body).outcome == "ok", body[-300:]
    assert took < 5, f"the relay waited {took:.1f} s after [DONE]"


async def test_an_openai_chunk_whose_error_is_null_is_no_error(serve):
    body = _chunk({"role": "assistant", "content": "hi"}) + _chunk({}, "stop") + _chunk(None, error=None) + b"data: [DONE]\n\n"
    _, out, _ = await _stream_from(await serve(_sse_app("/v1/chat/completions", body)), "openai")
    assert wirecheck.check_anthropic_stream(out).outcome == "ok", out[-300:]


def _ev(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


START = _ev("message_start", {"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant",
                                                                  "content": [], "usage": {"input_tokens": 3, "output_tokens": 0}}})


@pytest.mark.parametrize("body,words", [
    (START + _ev("error", {"type": "error", "error": "model crashed"}), b"model crashed"),
    (_ev("message_start", {"type": "message_start", "message": "m1"}), b"cannot read"),
    (START + _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": "text"}),
     b"cannot read"),
    (START + b"event: content_block_delta\ndata: " + b"x" * (16 * 1024 * 1024 + 10), b"cannot read"),  # a line never ending
    (b"", b"ended the stream early"),
], ids=["string-error", "message-a-string", "block-a-string", "line-over-16-MiB", "empty"])
async def test_an_anthropic_stream_nonstop_cannot_read_ends_well_formed(serve, body, words):
    res, out, _ = await _stream_from(await serve(_sse_app("/v1/messages", body)), "anthropic")
    assert isinstance(res, Reply)
    v = wirecheck.check_anthropic_stream(out)
    assert v.outcome == "error", (v, out[-300:])
    assert words in out


@pytest.mark.parametrize("api,path", [("anthropic", "/v1/messages"), ("openai", "/v1/chat/completions")])
@pytest.mark.parametrize("ctype,body,words", [
    ("application/json", b'{"error": {"type": "server_error", "message": "model failed to load"}}', "model failed to load"),
    ("text/html", b"<html><body><h1>Bad gateway</h1></body></html>", "Bad gateway"),
    ("", b"", ""),
], ids=["json-error", "html", "empty"])
async def test_a_stream_request_answered_with_something_else_is_a_broken_reply(serve, api, path, ctype, body, words):
    res, _, _ = await _stream_from(await serve(_sse_app(path, body, ctype=ctype)), api)
    assert isinstance(res, Verdict) and res.kind is FailureKind.BAD_RESPONSE and res.failover
    assert words in res.detail and "Traceback" not in res.detail


@pytest.mark.parametrize("doc,ok", [
    ({"error": {"type": "server_error", "message": "model failed to load"}}, False),
    ({}, False),
    ({"type": "message", "content": "hello there", "usage": {"input_tokens": 1, "output_tokens": 2}}, True),
])
async def test_a_whole_anthropic_reply_must_be_a_message(serve, doc, ok):
    async def answer(request: web.Request) -> web.Response:
        return web.json_response(doc)

    res, _ = await _send(await serve(_app(answer)))
    if ok:
        assert isinstance(res, Reply)
        msg = orjson.loads(b"".join([c async for c in res.body]))
        assert msg["content"] == [{"type": "text", "text": "hello there"}]
    else:
        assert isinstance(res, Verdict) and res.kind is FailureKind.BAD_RESPONSE


def test_a_servers_error_page_is_quoted_without_markup_or_traceback():
    page = ("<html><head><title>500</title></head><body><h1>Internal Server Error</h1><pre>Traceback (most recent call "
            "last):\n  File \"/srv/app.py\", line 3\nKeyError: 'x'</pre></body></html>")
    assert local_module.server_words(page) == "500 Internal Server Error"
    assert local_module.server_words('{"error": {"message": "no such model"}}') == "no such model"
    assert local_module.server_words('{"error": "busy"}') == "busy"
    assert local_module.server_words("x" * 500) == "x" * 200


def test_an_error_page_of_unclosed_tags_is_read_once():
    t0 = time.perf_counter()
    assert local_module.server_words("<" * 20_000 + "<b>busy</b>") == "<" * 200
    assert time.perf_counter() - t0 < 0.2  # from each "<" to the end was seconds
    assert local_module.server_words("<p>a <b>busy</b> server</p>") == "a busy server"


def _endless_text(api: str, path: str, first: str, then: str) -> web.Application:
    """A server that writes text without end, whatever max_tokens asked: `first`, then
    `then` again and again, in its API's stream."""
    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if api == "anthropic":
            await resp.write(START + _ev("content_block_start", {"type": "content_block_start", "index": 0,
                                                                  "content_block": {"type": "text", "text": ""}}))
        text = first
        while True:
            if api == "openai":
                await resp.write(_chunk({"content": text}))
            else:
                await resp.write(_ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                             "delta": {"type": "text_delta", "text": text}}))
            text = then
            await asyncio.sleep(0.001)

    app = web.Application()
    app.router.add_post(path, endless)
    return app


@pytest.mark.parametrize("api,path", [("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")])
async def test_a_server_that_ignores_max_tokens_is_ended_as_if_it_had_reached_it(serve, api, path):
    res, out, took = await _stream_from(await serve(_endless_text(api, path, "word " * 20, "word " * 20)), api)
    assert wirecheck.check_anthropic_stream(out).outcome == "ok", out[-300:]
    assert b'"stop_reason":"max_tokens"' in out and took < 10
    assert len(out) < 64 * 1024  # REQUEST asks for 20 tokens


# Claude Code asks for 32,000 tokens; nonstop lowers that to the backend's max_output_tokens.
LONG = {**REQUEST, "max_tokens": 32000}


def _call(args: str) -> dict:
    return {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "Write", "arguments": args}}]}


@pytest.mark.parametrize("args,finish,stop", [
    ('{"path": "a.txt", "content": "line one\\nli', "length", "max_tokens"),  # cut: not a call to run
    ('{"path": "a.txt"}', "tool_calls", "tool_use"),
    ('{"path": "a.txt"}', "length", "tool_use"),  # whole, at nonstop's lowered limit: the call stands
    ('{"path": "a.txt", "content": "li', None, "max_tokens"),  # the stream ended mid-call
])
async def test_an_openai_stream_cut_inside_a_tool_call_is_max_tokens_even_under_nonstops_cap(serve, args, finish, stop):
    body = _chunk({"role": "assistant"}) + _chunk(_call(args)) + _chunk({}, finish) + b"data: [DONE]\n\n"
    res, out, _ = await _stream_from(await serve(_sse_app("/v1/chat/completions", body)), "openai", LONG)
    read = wirecheck.check_anthropic_stream(out)
    assert read.outcome == "ok", out[-300:]
    assert f'"stop_reason":"{stop}"'.encode() in out
    assert orjson.loads("".join(
        orjson.loads(line[6:])["delta"]["partial_json"] for line in out.split(b"\n")
        if line.startswith(b"data: ") and b"input_json_delta" in line))["path"] == "a.txt"


@pytest.mark.parametrize("args,finish,stop", [
    ('{"path": "a.txt", "content": "line one\\nli', "length", "max_tokens"),
    ('{"path": "a.txt"}', "tool_calls", "tool_use"),
    ('{"path": "a.txt"}', "length", "tool_use"),
])
async def test_an_openai_whole_reply_cut_inside_a_tool_call_is_max_tokens_even_under_nonstops_cap(serve, args, finish, stop):
    msg = await _whole_chat_reply(serve, {"role": "assistant", **_call(args)}, finish, LONG)
    assert msg["stop_reason"] == stop and msg["content"][-1]["input"]["path"] == "a.txt"


async def _whole_chat_reply(serve, message: dict, finish: str, req: dict) -> dict:
    """The Anthropic message nonstop makes of a whole Chat Completions reply."""
    reply = {"id": "c", "object": "chat.completion", "model": "m",
             "choices": [{"index": 0, "message": message, "finish_reason": finish}]}

    async def whole(request: web.Request) -> web.Response:
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", whole)
    res, _ = await _send(await serve(app), req=req, api="openai")
    assert isinstance(res, Reply)
    return orjson.loads(b"".join([c async for c in res.body]))


WRITE = {"name": "Write", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                                          "required": ["path"]}}
TEXT_CALL = {**LONG, "tools": [WRITE]}


@pytest.mark.parametrize("text,finish,stop", [
    # Cut by nonstop's lowered limit inside the arguments: text, and the end of the turn
    # (the cap is nonstop's; Claude Code would fail the turn on max_tokens).
    ('<tool_call>\n{"name": "Write", "arguments": {"path": "a.txt", "content": "li', "length", "end_turn"),
    ('<tool_call>\n{"name": "Write", "arguments": {"path": "a.txt"', "length", "end_turn"),
    # Cut after the arguments were whole: the call stands.
    ('<tool_call>\n{"name": "Write", "arguments": {"path": "a.txt"}', "length", "tool_use"),
    # The model stopped with the arguments open: closing them is the repair.
    ('<tool_call>\n{"name": "Write", "arguments": {"path": "a.txt"', "stop", "tool_use"),
    # The server named no finish_reason: why it ended is unknown, so it reads as cut.
    ('<tool_call>\n{"name": "Write", "arguments": {"path": "a.txt"', None, "end_turn"),
])
async def test_a_call_written_as_text_that_the_limit_cut_inside_its_arguments_is_never_run(serve, text, finish, stop):
    body = _chunk({"role": "assistant"}) + _chunk({"content": text}) + _chunk({}, finish) + b"data: [DONE]\n\n"
    res, out, _ = await _stream_from(await serve(_sse_app("/v1/chat/completions", body)), "openai", TEXT_CALL)
    assert wirecheck.check_anthropic_stream(out).outcome == "ok", out[-300:]
    assert f'"stop_reason":"{stop}"'.encode() in out
    assert (b'"type":"tool_use"' in out) == (stop == "tool_use")

    msg = await _whole_chat_reply(serve, {"role": "assistant", "content": text}, finish, TEXT_CALL)
    assert msg["stop_reason"] == stop
    assert [b["type"] for b in msg["content"]] == (["tool_use"] if stop == "tool_use" else ["text"])


async def test_a_server_that_has_counted_is_asked_again_after_a_count_that_timed_out(serve, monkeypatch):
    monkeypatch.setattr(local_anthropic, "COUNT_TIMEOUT", 0.5)
    monkeypatch.setattr(local_anthropic, "FIRST_COUNT_TIMEOUT", 20.0)  # (only the known counter's applies)
    # Busy once (a queue behind a long generation).
    got, calls, _ = await _counts_slow_once(serve, slow_call=2, counts=3, hang=30)
    assert got[0] == 7 and got[1] != 7 and got[2] == 7 and len(calls) == 3


async def test_a_model_list_with_null_data_is_still_a_healthy_server(serve):
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": None})

    cfg = parse_config({"local": [{"name": "box", "url": await serve(_app(_answers, models=models)), "api": "anthropic"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        assert await asyncio.wait_for(backend.check_health(), 10) is True
    assert backend.state.healthy


def test_an_overflow_that_names_no_sizes_still_reads_as_over_the_window():
    assert local_module.context_overflow(OLLAMA) == (0, 0)
    assert local_module.context_overflow(VLLM) == (8000, 4096)  # the prompt, not prompt + max_tokens


@pytest.mark.parametrize("text,sizes", [
    ("This model's maximum context length is 4096 tokens. However, your request has 5000 input tokens. "
     "Please reduce the length of the input messages.", (5000, 4096)),
    ("'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is 4096 tokens "
     "and your request has 2778 input tokens (8000 > 4096 - 2778).", (2778, 4096)),
    ("This model's maximum context length is 4096 tokens. However, you requested 1000 output tokens and your prompt "
     "contains 3500 input tokens, for a total of 4500 tokens.", (3500, 4096)),
    ("This model's maximum prompt length is 3000 tokens. However, your request has 3100 prompt tokens. "
     "Please reduce the length of the prompt.", (3100, 3000)),
], ids=["vllm-input", "vllm-max-tokens", "vllm-0.19", "vllm-max-prompt-length"])
def test_vllms_overflow_wordings_name_the_prompt_and_the_window(text, sizes):
    assert local_module.context_overflow(orjson.dumps({"object": "error", "message": text, "code": 400}).decode()) == sizes


@pytest.mark.parametrize("api,path", [("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")])
@pytest.mark.parametrize("max_tokens,stop", [(20, "max_tokens"), (32000, "end_turn")])  # the client's limit; nonstop's
async def test_a_call_written_as_text_that_the_runaway_guard_cut_is_never_run(serve, api, path, max_tokens, stop):
    """A server that ignores max_tokens while it writes a call's arguments as text: the
    guard that ends it is a cut like the server's own limit, so the call stays text."""
    opening = '<tool_call>\n{"name": "Write", "arguments": {"path": "a.txt", "content": "'
    app = _endless_text(api, path, opening, "more words " * 10)
    res, out, took = await _stream_from(await serve(app), api, {**TEXT_CALL, "max_tokens": max_tokens})
    assert wirecheck.check_anthropic_stream(out).outcome == "ok", out[-300:]
    assert took < 10 and b'"type":"tool_use"' not in out
    assert f'"stop_reason":"{stop}"'.encode() in out


async def test_a_request_nested_deeper_than_json_tools_write_is_the_clients_error(serve):
    # orjson reads 1024 levels but writes 255: a tool schema nested 300 deep got past the
    # door, and cannot be sent on. That is the request's fault (a 400), not nonstop's.
    deep = orjson.loads('{"type":"object","properties":{"a":' + '{"items":' * 300 + '{}' + '}' * 300 + '}}')
    req = {**REQUEST, "tools": [{"name": "f", "input_schema": deep}]}

    async def never(request: web.Request) -> web.Response:
        raise AssertionError("nothing is sent")

    cfg = parse_config({"local": [{"name": "box", "url": await serve(_app(never)), "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        with pytest.raises(UnreadableRequest, match="nested too deeply"):
            await backend.send_request(req, stream=True)
        assert backend.state.inflight == 0


async def test_a_pinged_stream_that_ends_leaves_no_cycle_behind():
    # The end of the source comes back as a task's StopAsyncIteration: raised in the relay's
    # frame, its traceback would hold that frame, whose locals hold the task that holds it.
    import gc

    from nonstop.backends.local import _with_pings

    async def source():
        yield b"a"
        await asyncio.sleep(0.05)
        yield b"b"

    gc.collect()
    gc.disable()
    try:
        out = [chunk async for chunk in _with_pings(source(), 0.01)]
        assert out[0] == b"a" and out[-1] == b"b" and len(out) > 2  # pings in the silence
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_a_pinged_stream_passes_on_its_sources_error_and_closes_a_source_it_leaves():
    from nonstop.backends.local import _PING, _with_pings

    closed: list[str] = []

    async def failing():
        try:
            yield b"a"
            await asyncio.sleep(0.03)
            raise ValueError("cut")
        finally:
            closed.append("failing")

    seen: list[bytes] = []
    with pytest.raises(ValueError, match="cut"):
        async for chunk in _with_pings(failing(), 0.01):
            seen.append(chunk)
    assert seen[0] == b"a" and _PING in seen[1:] and closed == ["failing"]

    async def slow():
        try:
            yield b"a"
            await asyncio.sleep(10)
            yield b"b"
        finally:
            closed.append("slow")

    gen = _with_pings(slow(), 0.01)
    assert await gen.__anext__() == b"a"
    assert await gen.__anext__() == _PING  # silent: the read goes on, a ping comes out
    started = asyncio.get_running_loop().time()
    await gen.aclose()  # the client left: the pending read is cancelled, the source closed
    assert closed == ["failing", "slow"] and asyncio.get_running_loop().time() - started < 1


@pytest.mark.parametrize(("status", "body", "every_request"), [
    (400, {"error": "No models loaded. Please load a model in the developer page or use the `lms load` command."}, True),
    (400, {"error": "model 'qwen2.5-coder:1.5b' not found, try pulling it first"}, True),
    (400, {"object": "error", "message": "The model `qwen` does not exist.", "code": 400}, True),
    (422, {"error": 'model "qwen" is not loaded'}, True),
    (400, {"error": "Unknown model: qwen"}, True),
    (404, {"error": "Not Found"}, True),
    (401, {"error": {"message": "Invalid API Key"}}, True),
    # About this request only, though they mention a model:
    (400, {"error": {"message": "1 validation error for ChatCompletionRequest: input_value='why is the model "
                                "not found in my code?'"}}, False),
    (400, {"error": "the model called a tool that is not available"}, False),
    (400, {"error": {"message": "the request exceeds the available context size, try increasing it"}}, False),
    (400, {"error": "model 'qwen' does not support tools"}, False),
])
def test_a_refusal_of_every_request_is_told_from_one_of_this_request(status: int, body: dict, every_request: bool) -> None:
    """cannot_serve (which demotes the backend) says yes only to a refusal that no other
    request would escape: the model or the endpoint not there, a key refused."""
    assert local_module.cannot_serve(status, orjson.dumps(body).decode()) is every_request


ANTHROPIC_WHOLE = {"id": "msg_w", "type": "message", "role": "assistant", "model": "m", "stop_reason": "tool_use",
                   "content": [{"type": "text", "text": "Reading it."},
                               {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "a.py"}}],
                   "usage": {"input_tokens": 40, "output_tokens": 9}}
OPENAI_WHOLE = {"id": "c", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": "Reading it.",
                    "tool_calls": [{"id": "call_1", "type": "function",
                                    "function": {"name": "Read", "arguments": '{"file_path": "a.py"}'}}]}}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}}
READ_TOOL = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}


@pytest.mark.parametrize("late", [False, True], ids=["in-time", "after-the-stream-began"])
@pytest.mark.parametrize("api,path,doc", [("anthropic", "/v1/messages", ANTHROPIC_WHOLE),
                                          ("openai", "/v1/chat/completions", OPENAI_WHOLE)])
async def test_a_server_that_ignores_stream_and_answers_whole_is_streamed_from_its_answer(
        serve, monkeypatch, api, path, doc, late):
    if late:  # its head comes after the client's stream began (message_start and pings)
        monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.05)

    async def whole(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.2 if late else 0)
        return web.json_response(doc)

    app = web.Application()
    app.router.add_post(path, whole)
    req = {**REQUEST, "tools": [READ_TOOL]}
    res, out, _ = await _stream_from(await serve(app), api, req)
    assert isinstance(res, Reply) and res.stream, res
    v = wirecheck.check_anthropic_stream(out)
    assert v.outcome == "ok", (v, out[-400:])
    assert v.events.count("message_start") == 1
    events = [(n, orjson.loads(d)) for n, d in wirecheck.parse_sse(out)[0]]
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "text_delta")
    assert text == "Reading it."
    [call] = [d["content_block"] for n, d in events if n == "content_block_start" and d["content_block"]["type"] == "tool_use"]
    assert call["name"] == "Read" and call["input"] == {}  # the input comes as a delta, as Claude Code reads it
    args = "".join(d["delta"]["partial_json"] for n, d in events
                   if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert orjson.loads(args) == {"file_path": "a.py"}
    end = next(d for n, d in events if n == "message_delta")
    assert end["delta"]["stop_reason"] == "tool_use" and end["usage"]["output_tokens"] == 9
    assert res.usage.complete and res.usage.output_tokens == 9 and not res.usage.error
