"""When nonstop asks an Anthropic-format local server (llama-server) to count a request:
in "auto", only when the count could change what is sent (whether the request is fitted,
how far max_tokens is lowered), and one such request in RECOUNT_EVERY all the same."""

from __future__ import annotations

import math

import aiohttp
import orjson
import pytest
from aiohttp import web

import nonstop.backends.local_anthropic as local_anthropic
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config


def _request(chars: int) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 32000,
            "messages": [{"role": "user", "content": "word " * (chars // 5)}]}


def _counting_app(counted: list[int]) -> web.Application:
    async def counts(request: web.Request) -> web.Response:
        body = await request.read()
        counted.append(len(body) // 4)  # about four bytes a token, as a real tokenizer
        return web.json_response({"input_tokens": counted[-1]})

    app = web.Application()
    app.router.add_post("/v1/messages/count_tokens", counts)
    return app


async def _counts(serve, local: dict, req: dict, times: int) -> tuple[list[int], list[int], object]:
    """The server's counts and what count_tokens gave, for `times` requests."""
    counted: list[int] = []
    cfg = parse_config({"local": [{"name": "box", "url": await serve(_counting_app(counted)), "api": "anthropic", **local}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        got = [await backend.count_tokens(backend.local_request(req)) for _ in range(times)]
    return counted, got, backend


async def test_a_request_far_inside_the_window_is_counted_once_then_estimated(serve):
    req = _request(4000)  # about 1,100 tokens in a 32k window
    counted, got, backend = await _counts(serve, {"context_window": 32768}, req, local_anthropic.RECOUNT_EVERY + 1)
    # The first request is counted (the server's scale is not known yet); the next
    # RECOUNT_EVERY - 1 are estimated in the server's tokens; then one is counted again.
    assert len(counted) == 2
    assert got[0] == got[-1] == counted[0]
    estimate = backend.estimate(backend.local_request(req))  # type: ignore[attr-defined]
    assert got[1:-1] == [estimate] * (local_anthropic.RECOUNT_EVERY - 1)
    assert abs(estimate - counted[0]) <= 0.02 * counted[0]  # the estimate, scaled to the server's tokens


async def test_a_request_the_count_could_change_is_counted_every_time(serve):
    # 4096 window, 1024 kept for the answer: a prompt of about 2,500 tokens grown by
    # COUNT_MARGIN leaves less than max_tokens free, so each count may lower it.
    req = _request(10000)
    counted, got, backend = await _counts(serve, {"context_window": 4096}, req, 5)
    local_req = backend.local_request(req)  # type: ignore[attr-defined]
    n = backend.estimate(local_req)  # type: ignore[attr-defined]
    assert 4096 - math.ceil(n * local_anthropic.COUNT_MARGIN) < local_req["max_tokens"]
    assert len(counted) == 5 and got == counted


@pytest.mark.parametrize("mode", ["server", "estimate"])
async def test_server_and_estimate_mean_always_and_never(serve, mode):
    counted, got, _ = await _counts(serve, {"context_window": 32768, "count_tokens": mode}, _request(4000), 4)
    assert len(counted) == (4 if mode == "server" else 0)


async def test_an_uncounted_request_is_sent_with_its_whole_max_tokens(serve):
    """A request not counted is sent as a counted one would be: fitted not at all, and
    its max_tokens untouched (the estimate leaves all of it free)."""
    counted: list[int] = []
    sent: list[dict] = []

    async def messages(request: web.Request) -> web.Response:
        sent.append(orjson.loads(await request.read()))
        return web.json_response({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                  "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                                  "usage": {"input_tokens": 3, "output_tokens": 1}})

    app = _counting_app(counted)
    app.router.add_post("/v1/messages", messages)
    cfg = parse_config({"local": [{"name": "box", "url": await serve(app), "api": "anthropic", "context_window": 32768}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        for _ in range(3):
            await backend.send_request(_request(4000), stream=False)
    assert len(counted) == 1 and len(sent) == 3
    assert [s["max_tokens"] for s in sent] == [4096] * 3
    assert sent[0]["messages"] == sent[2]["messages"]
