"""When nonstop asks a local server to count a request (backends/local.py
LocalBackend._uncounted): in count_tokens = "auto", a request that fits a window with its
whole answer, even were the estimate 1.5x short, goes without the count's round trip; one
the server then finds over its window after all is counted, fitted and sent again."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from nonstop.backends import local as local_module
from nonstop.backends.base import Reply, TooLong
from nonstop.backends.local import COUNT_MARGIN
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config

MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [{"type": "text", "text": "ok"}],
           "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}


def _text(node: Any) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, dict):
        return "".join(_text(v) for v in node.values())
    if isinstance(node, list):
        return "".join(_text(v) for v in node)
    return ""


def _tokens(body: dict) -> int:
    """The server's tokenizer: one token for each digit (Llama 3 and Qwen read digits one
    at a time, so numbers, hashes and tables of figures run dense) and each character
    outside ASCII (as CJK text reads), one for every 3.5 other characters (as English
    and code read)."""
    text = _text({"system": body.get("system"), "messages": body.get("messages")})
    dense = sum(1 for ch in text if ord(ch) > 127 or ch.isdigit())
    return max(1, int((len(text) - dense) / 3.5) + dense)


# Text nonstop's estimate reads short: 20,000 digits, about 5,700 tokens by the estimate,
# 20,000 by the server.
DENSE = "0123456789" * 2000


class Server:
    """A llama-server-like local server with a window, that counts and refuses what is over it."""

    def __init__(self, window: int, refuse_after: float = 0.0) -> None:
        self.window = window
        self.refuse_after = refuse_after  # seconds of prompt processing before a refusal
        self.counts: list[int] = []
        self.sent: list[int] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages/count_tokens", self.count)
        app.router.add_post("/v1/messages", self.messages)
        return app

    async def count(self, request: web.Request) -> web.Response:
        n = _tokens(await request.json(loads=orjson.loads))
        self.counts.append(n)
        return web.json_response({"input_tokens": n})

    async def messages(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        n = _tokens(body)
        self.sent.append(n)
        if n > self.window:
            await asyncio.sleep(self.refuse_after)
            return web.json_response(status=400, data={"error": {
                "code": 400, "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error", "n_prompt_tokens": n, "n_ctx": self.window}})
        if body.get("stream"):
            return web.Response(body=STREAM, content_type="text/event-stream")
        return web.json_response(MESSAGE)


def _sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


STREAM = b"".join([
    _sse("message_start", {"message": {**MESSAGE, "content": [], "stop_reason": None}}),
    _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    _sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "ok"}}),
    _sse("content_block_stop", {"index": 0}),
    _sse("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
    _sse("message_stop", {}),
])


def _request(history: str = "", latest: str = "which file holds the parser?") -> dict:
    messages: list[dict] = []
    if history:
        messages += [{"role": "user", "content": history}, {"role": "assistant", "content": "noted"}]
    messages.append({"role": "user", "content": latest})
    return {"model": "claude-sonnet-4-5", "max_tokens": 2000, "system": "You are a coding agent.", "messages": messages}


async def _run(serve, server: Server, requests: list[dict], *, stream: bool = False, **local: Any) -> list[Any]:
    cfg = parse_config({"local": [{"name": "box", "url": await serve(server.app()), "api": "anthropic",
                                   "context_window": server.window, "max_output_tokens": 2000, **local}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        out = []
        for r in requests:
            res = await asyncio.wait_for(backend.send_request(dict(r), stream=stream), 20)
            if isinstance(res, Reply):  # read to its end, as a client would
                got = b"".join([chunk async for chunk in res.body])
                assert (b"message_stop" if stream else b'"end_turn"') in got
                assert b"event: error" not in got, got
                assert got.count(b"event: message_start") == (1 if stream else 0)
            out.append(res)
        return out


async def test_a_request_well_inside_the_window_is_counted_only_until_the_scale_is_known(serve):
    server = Server(32768)
    res = await _run(serve, server, [_request("some code " * 300)] * 3)
    assert all(isinstance(r, Reply) and r.status == 200 for r in res)
    assert len(server.counts) == 1  # the first request taught how the server's tokens compare
    assert len(server.sent) == 3


async def test_a_request_that_could_need_the_room_is_counted_every_time(serve):
    server = Server(8192)
    # About 4,300 tokens: with 2,000 kept for the answer it fits, but not with the margin.
    req = _request("some code " * 1500)
    assert 8192 - COUNT_MARGIN * server_tokens(req) < 2000 < 8192 - server_tokens(req)
    res = await _run(serve, server, [req] * 3)
    assert all(isinstance(r, Reply) and r.status == 200 for r in res)
    assert len(server.counts) == 3


async def test_count_tokens_server_asks_every_time(serve):
    server = Server(32768)
    res = await _run(serve, server, [_request("some code " * 300)] * 3, count_tokens="server")
    assert all(isinstance(r, Reply) for r in res)
    assert len(server.counts) == 3


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_text_the_estimate_reads_short_is_counted_and_fitted_after_the_server_refuses_it(serve, stream):
    server = Server(16384)
    english = _request("some code " * 300)
    wide = _request(DENSE)
    res = await _run(serve, server, [english, wide], stream=stream)
    assert not isinstance(res[1], TooLong)
    assert isinstance(res[1], Reply) and res[1].status == 200
    # The wide request went once uncounted and was refused as over the window; then it
    # was counted, fitted (its old turns dropped), counted again, and sent inside the window.
    assert len(server.sent) == 3 and server.sent[1] > server.window >= server.sent[2]
    assert len(server.counts) == 3 and server.counts[1] > server.window >= server.counts[2] == server.sent[2]


async def test_a_refusal_that_comes_after_the_stream_began_is_counted_fitted_and_sent_again(serve, monkeypatch):
    """The same, where the server took longer than COMMIT_AFTER to refuse (prompt
    processing on a CPU): the client's stream has begun, with pings, and the answer to
    the counted and fitted request continues it, rather than a context-overflow error."""
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.05)
    server = Server(16384, refuse_after=0.3)
    res = await _run(serve, server, [_request("some code " * 300), _request(DENSE)], stream=True)
    assert isinstance(res[1], Reply) and res[1].status == 200 and res[1].usage.error == ""
    assert "sent again" in res[1].usage.note and res[1].backend == "box"
    assert len(server.sent) == 3 and server.sent[1] > server.window >= server.sent[2]
    assert len(server.counts) == 3 and server.counts[2] == server.sent[2]


def server_tokens(req: dict) -> int:
    return _tokens(req)


CHAT = {"id": "c1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
CHAT_STREAM = (b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
               b'"delta":{"role":"assistant","content":"ok"},"finish_reason":null}]}\n\n'
               b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
               b'"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
               b"data: [DONE]\n\n")


class OpenAIServer:
    """A vLLM-like server: no way to count, a window, and vLLM's words for a prompt over it."""

    def __init__(self, window: int, message: str, *, report: bool = False, truncate: bool = False) -> None:
        self.window = window  # as nonstop is told
        self.limit = window  # as the server keeps it
        self.message = message  # with {n} for the prompt's size and {ctx} for the window
        self.report = report  # the answer's usage gives the prompt's real size
        self.truncate = truncate  # as Ollama: a prompt over the window is cut to it, silently
        self.sent: list[int] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        n = _tokens({"messages": body["messages"]})
        self.sent.append(n)
        if self.truncate:
            n = min(n, self.limit)
        elif n + body.get("max_tokens", 0) > self.limit:
            return web.json_response(status=400, data={"object": "error", "type": "BadRequestError", "code": 400,
                                                       "message": self.message.format(n=n, ctx=self.window,
                                                                                      out=body.get("max_tokens", 0))})
        prompt = b'"prompt_tokens":%d' % (n if self.report else 3)
        if body.get("stream"):
            return web.Response(body=CHAT_STREAM.replace(b'"prompt_tokens":3', prompt), content_type="text/event-stream")
        return web.json_response({**CHAT, "usage": {**CHAT["usage"], "prompt_tokens": n if self.report else 3}})


VLLM = ("This model's maximum context length is {ctx} tokens. However, you requested {n} tokens "
        "({n} in the messages, {out} in the completion). Please reduce the length of the messages or completion.")


async def _run_openai(serve, server: OpenAIServer, requests: list[dict], *, stream: bool = False) -> list[Any]:
    cfg = parse_config({"local": [{"name": "box", "url": await serve(server.app()), "api": "openai", "model": "m",
                                   "context_window": server.window, "max_output_tokens": 2000}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        out = []
        for r in requests:
            res = await asyncio.wait_for(backend.send_request(dict(r), stream=stream), 20)
            if isinstance(res, Reply):
                got = b"".join([chunk async for chunk in res.body])
                assert (b"message_stop" if stream else b'"end_turn"') in got, got
                assert b"event: error" not in got, got
            out.append(res)
        return out


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_server_that_cannot_count_is_sent_the_request_fitted_by_the_size_it_named(serve, stream):
    """vLLM (and Ollama, LM Studio) cannot count: the estimate is all nonstop has, and it
    reads dense text short. The size the server names refusing the request is that
    request's own count: it is fitted by it and sent once more, inside the window."""
    server = OpenAIServer(16384, VLLM)
    res = await _run_openai(serve, server, [_request(DENSE)], stream=stream)
    assert isinstance(res[0], Reply) and res[0].status == 200, res[0]
    assert len(server.sent) == 2 and server.sent[0] > server.window
    assert server.sent[1] + 2000 <= server.window or server.sent[1] < server.window // 2


async def test_a_second_refusal_of_a_request_fitted_by_the_named_size_stands(serve):
    """Sent once more at most: a server that refuses the fitted request too (its window
    smaller than it says) gets no third try, and the client is told it is too long."""
    server = OpenAIServer(16384, VLLM)
    server.limit = 50  # refuses everything, naming a size above the estimate each time
    res = await _run_openai(serve, server, [_request(DENSE)])
    assert isinstance(res[0], TooLong) and res[0].named > 0
    assert len(server.sent) == 2


async def test_a_refusal_that_names_no_size_is_not_sent_again(serve):
    server = OpenAIServer(16384, "the prompt is too long for the context window")
    res = await _run_openai(serve, server, [_request(DENSE)])
    assert isinstance(res[0], TooLong) and res[0].named == 0
    assert len(server.sent) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_server_that_cannot_count_teaches_its_scale_by_the_usage_it_reports(serve, stream):
    """The prompt's size in an answer's usage is a count after the fact: a server that
    cannot count teaches by it how its tokens compare with the estimate, and the next
    request, larger, is fitted before it is sent instead of being refused first."""
    server = OpenAIServer(16384, VLLM, report=True)
    cfg = parse_config({"local": [{"name": "box", "url": await serve(server.app()), "api": "openai", "model": "m",
                                   "context_window": server.window, "max_output_tokens": 2000}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        for digits in (1000, 3000):  # ~10,000 tokens to the server, then ~30,000
            res = await asyncio.wait_for(backend.send_request(_request("0123456789" * digits), stream=stream), 20)
            assert isinstance(res, Reply) and res.status == 200, res
            b"".join([chunk async for chunk in res.body])
            if digits == 1000:
                assert backend.state.token_ratio is not None and backend.state.token_ratio > 3, backend.state.token_ratio
    assert len(server.sent) == 2, f"the larger request was refused first: {server.sent}"
    assert server.sent[1] + 2000 <= server.window


async def test_a_reported_prompt_near_the_window_or_below_the_estimate_teaches_nothing(serve):
    """Ollama cuts a prompt over its window silently and reports the cut size: a report
    near the window says nothing of the server's tokens. Nor does one below the estimate
    (a prompt cache some servers leave out of the count)."""
    server = OpenAIServer(16384, VLLM, report=True, truncate=True)
    res = await _run_openai(serve, server, [_request(DENSE + DENSE)])  # 40,000 tokens, cut to 16,384
    assert isinstance(res[0], Reply)
    cfg = parse_config({"local": [{"name": "box", "url": await serve(server.app()), "api": "openai", "model": "m",
                                   "context_window": server.window, "max_output_tokens": 2000}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        for r in (_request(DENSE + DENSE), _request("some code " * 300)):  # cut to the window; then English
            res = await asyncio.wait_for(backend.send_request(r, stream=False), 20)
            assert isinstance(res, Reply)
        assert backend.state.token_ratio is None, "a truncated prompt's size (or a smaller one) set the scale"
