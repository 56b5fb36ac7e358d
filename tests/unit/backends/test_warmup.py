"""The warm-up requests against small in-process servers: what each kind of server gets,
and every failure coming back as a value, never an exception."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nonstop.backends import warmup
from tests.support.fake_ollama import FAKE, MODEL, ollama_app


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("seconds", "value"), [(900.0, "900s"), (59.6, "60s"), (0.2, "1s")])
def test_keep_alive_is_a_duration_string(seconds: float, value: str) -> None:
    assert warmup.keep_alive_value(seconds) == value


async def test_ollama_loads_the_model_with_a_keep_alive_and_no_num_ctx(serve, session) -> None:
    app = ollama_app(load_seconds=0.3)
    base = await serve(app)
    done = await warmup.warm_ollama(session, base, MODEL, keep_alive=600)
    assert done.ok and done.seconds >= 0.3
    call = next(c for c in app[FAKE].calls if c["path"] == "/api/generate")
    # No prompt (a load only), and no num_ctx: nonstop's own requests cannot send one,
    # and Ollama reloads a model whose num_ctx differs from the request's.
    assert call["body"] == {"model": MODEL, "keep_alive": "600s", "stream": False}
    assert app[FAKE].loaded is not None


async def test_the_loaded_model_is_the_one_real_requests_find(serve, session) -> None:
    app = ollama_app(load_seconds=0.2)
    base = await serve(app)
    assert (await warmup.warm_ollama(session, base, MODEL, keep_alive=600)).ok
    async with session.post(base + "/v1/messages", json={"model": MODEL, "max_tokens": 8,
                                                         "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200
    assert app[FAKE].loads == 1  # the request reused the warm model: no second load


async def test_renewing_a_loaded_model_is_quick(serve, session) -> None:
    app = ollama_app(load_seconds=0.3)
    base = await serve(app)
    await warmup.warm_ollama(session, base, MODEL, keep_alive=600)
    again = await warmup.warm_ollama(session, base, MODEL, keep_alive=600)
    assert again.ok and again.seconds < 0.3
    assert app[FAKE].loads == 1


async def test_ollama_names_a_missing_model(serve, session) -> None:
    base = await serve(ollama_app(load_seconds=0))
    done = await warmup.warm_ollama(session, base, "nope:1b", keep_alive=600)
    assert not done.ok
    assert "HTTP 404" in done.detail and "model 'nope:1b' not found" in done.detail


async def test_ollama_without_a_model_sends_nothing(session) -> None:
    done = await warmup.warm_ollama(session, f"http://127.0.0.1:{closed_port()}", "", keep_alive=600)
    assert not done.ok and "set model" in done.detail


def llamacpp_app(completion_status: int = 200, seen: list[tuple[str, Any, str]] | None = None) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append((request.path, await request.json(), request.headers.get("authorization", "")))
        await asyncio.sleep(0.2)  # the model coming back from sleep
        if request.path == "/completion" and completion_status != 200:
            return web.json_response({"error": {"code": completion_status, "message": "Loading model",
                                                "type": "unavailable_error"}}, status=completion_status)
        return web.json_response({"tokens": [1]} if request.path == "/tokenize" else {"content": "", "stop": True})

    app = web.Application()
    app.router.add_post("/completion", handle)
    app.router.add_post("/tokenize", handle)
    return app


async def test_llamacpp_is_woken_with_an_empty_completion(serve, session) -> None:
    seen: list[tuple[str, Any, str]] = []
    done = await warmup.wake_llamacpp(session, await serve(llamacpp_app(seen=seen)),
                                      headers={"authorization": "Bearer local"})
    assert done.ok and done.seconds >= 0.2
    # A task on a slot (it restarts the idle clock), with nothing to read or write.
    assert seen == [("/completion", {"prompt": "", "n_predict": 0, "cache_prompt": True}, "Bearer local")]


async def test_llamacpp_that_refuses_an_empty_prompt_is_woken_with_a_tokenize(serve, session) -> None:
    seen: list[tuple[str, Any, str]] = []
    done = await warmup.wake_llamacpp(session, await serve(llamacpp_app(400, seen)))
    assert done.ok
    assert [s[0] for s in seen] == ["/completion", "/tokenize"]


async def test_llamacpp_error_message_is_read(serve, session) -> None:
    done = await warmup.wake_llamacpp(session, await serve(llamacpp_app(503)))
    assert not done.ok and "HTTP 503" in done.detail and "Loading model" in done.detail


async def test_a_server_that_is_down_is_a_failed_warm_up(session) -> None:
    done = await warmup.wake_llamacpp(session, f"http://127.0.0.1:{closed_port()}")
    assert not done.ok and "ClientConnectorError" in done.detail


async def test_a_load_that_takes_too_long_is_a_failed_warm_up(serve, session) -> None:
    async def completion(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"content": ""})

    app = web.Application()
    app.router.add_post("/completion", completion)
    done = await warmup.wake_llamacpp(session, await serve(app), timeout=0.2)
    assert not done.ok and "within 0.2s" in done.detail


class FakeEmbedded:
    def __init__(self, healthy: bool, error: Exception | None = None):
        self.healthy = healthy
        self.error = error
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        if self.error is not None:
            raise self.error
        self.healthy = True


async def test_embedded_is_started_only_when_stopped() -> None:
    running, stopped = FakeEmbedded(True), FakeEmbedded(False)
    assert (await warmup.start_embedded(running)).ok and running.starts == 0
    assert (await warmup.start_embedded(stopped)).ok and stopped.starts == 1


async def test_embedded_that_cannot_start_says_why() -> None:
    broken = FakeEmbedded(False, RuntimeError("llama-server was not found; install it\nmore"))
    done = await warmup.start_embedded(broken)
    assert not done.ok and done.detail == "llama-server was not found; install it"
