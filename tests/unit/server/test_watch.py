"""A local backend's background readings: they describe the model the backend is
configured with, replace a window that discovery only guessed, keep a backend that keeps
failing its requests demoted longer each time though its health check passes, and survive
whatever its server answers (an odd reply is read as no reading, an error in one pass
never ends the watch)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

import nonstop.server.runtime as runtime_module
from nonstop.backends import server_report
from nonstop.backends.registry import make_local_backend
from nonstop.config import LocalBackendConfig, parse_config
from nonstop.routing.backend_state import ServerReport
from nonstop.server import autoconfig
from nonstop.server.runtime import Runtime
from tests.support.clock import Clock
from tests.support.fake_ollama import MODEL, ollama_app
from tests.support.inprocess import local_runtime, readings_due
from tests.support.stalls import stalling

INF = float("inf")


@pytest.mark.parametrize("ps", [{"models": 5}, {"models": {"name": "m"}}, {"models": [5, "m", None]}, [1, 2], "x"])
async def test_an_ollama_load_reading_of_the_wrong_shape_is_no_reading(serve, ps):
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(ps)

    app.router.add_get("/api/ps", answer)
    url = await serve(app)
    async with aiohttp.ClientSession() as session:
        r = await server_report.read_load(session, url, "ollama", {}, ServerReport(kind="ollama", model="m"))
    assert not r.loaded


def llamacpp_load_app() -> web.Application:
    app = web.Application()

    async def props(_: web.Request) -> web.Response:
        return web.json_response({"default_generation_settings": {"n_ctx": 4096}, "total_slots": 2})

    async def slots(_: web.Request) -> web.Response:
        return web.json_response([{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}])

    app.router.add_get("/props", props)
    app.router.add_get("/slots", slots)
    return app


@pytest.mark.parametrize("how", ["head", "body"])
@pytest.mark.parametrize(("kind", "make_app", "path"), [
    ("llamacpp", llamacpp_load_app, "/props"), ("llamacpp", llamacpp_load_app, "/slots"),
    ("ollama", lambda: ollama_app(load_seconds=0), "/api/ps")])
async def test_a_load_reading_that_stalls_costs_only_its_short_timeout(serve, monkeypatch, kind, make_app, path,
                                                                       how):
    """The frequent readings of a server's load (llama-server /props and /slots, Ollama
    /api/ps) give up on a server that takes the connection and stalls, its head or its
    body, after LOAD_TIMEOUT: what was known before stands."""
    monkeypatch.setattr(server_report, "LOAD_TIMEOUT", 0.3)
    url = await serve(stalling(make_app(), {path}, how))
    known = ServerReport(kind=kind, context_window=8192, model=MODEL)
    started = asyncio.get_running_loop().time()
    async with aiohttp.ClientSession() as session:
        r = await server_report.read_load(session, url, kind, {}, known)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert r.context_window in (4096, 8192) and r.model == MODEL


async def test_an_error_in_one_pass_does_not_end_the_watch(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setattr(runtime_module, "TICK", 0.01)
    calls = {"identify": 0, "health": 0}

    async def identify(session, base, **_):
        calls["identify"] += 1
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(server_report, "identify", identify)
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "embedded": {"mode": "never"},
                        "discovery": {"enabled": False}, "local": [{"name": "box", "url": "http://127.0.0.1:9"}]})
    rt = Runtime(cfg)
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)

        async def health() -> bool:
            calls["health"] += 1
            return True

        monkeypatch.setattr(backend, "check_health", health)
        rt.local_session = session
        watch = asyncio.ensure_future(rt._watch(backend))
        await asyncio.sleep(0.3)
        assert not watch.done(), watch
        watch.cancel()
    assert calls["identify"] == 1 and calls["health"] >= 1  # the next pass went on
    assert sum("reading box failed" in r.getMessage() for r in caplog.records) == 1  # said once, not every pass


async def test_a_discovered_ollama_is_planned_with_the_window_it_really_runs(serve, tmp_path: Path) -> None:
    """Discovery guesses Ollama's stock 4096 for a model that is not loaded yet; once it is
    loaded, the window the server reports (32768 with OLLAMA_CONTEXT_LENGTH=32768) is the
    one requests are fitted to, so tools and history are not cut to fit 4k."""
    url = await serve(ollama_app(load_seconds=0, default_num_ctx=32768))
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                        "discovery": {"ports": [urlsplit(url).port]}, "embedded": {"mode": "never"}})
    async with aiohttp.ClientSession() as session:
        found = await autoconfig.auto_backends(cfg, session, have_configured=False)
        assert [(b.name, b.context_window) for b in found.backends] == [("ollama", 4096)]  # the guess
        rt = local_runtime(tmp_path, session, found.backends, guessed=found.guessed_windows)
        b = rt.locals[0]
        async with session.post(url + "/api/generate", json={"model": MODEL}) as resp:  # a client loads it
            assert resp.status == 200
        await rt._watch_once(b, None, readings_due())
    assert b.state.report.context_window == 32768
    assert b.window() == 32768


async def test_a_loaded_ollama_window_is_never_planned_above_the_trained_context(serve, tmp_path: Path) -> None:
    """Ollama runs a model with at most the context it was trained on, whatever
    OLLAMA_CONTEXT_LENGTH asks (qwen2.5-coder:7b: 32768 tokens): a larger size in its
    reading of the loaded model is not one nonstop fits requests to."""
    url = await serve(ollama_app(load_seconds=0, default_num_ctx=65536))
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                        "discovery": {"ports": [urlsplit(url).port]}, "embedded": {"mode": "never"}})
    async with aiohttp.ClientSession() as session:
        found = await autoconfig.auto_backends(cfg, session, have_configured=False)
        rt = local_runtime(tmp_path, session, found.backends, guessed=found.guessed_windows)
        b = rt.locals[0]
        async with session.post(url + "/api/generate", json={"model": MODEL}) as resp:
            assert resp.status == 200
        await rt._watch_once(b, None, readings_due())
    assert b.window() == 32768


async def test_a_configured_ollama_backend_is_read_as_its_own_model(serve, tmp_path: Path) -> None:
    """On an Ollama with several models pulled, a backend's readings describe the model it
    is configured with (its name, its Modelfile's window, its tools), not whichever model
    the server lists first, so status, planning and warm-up see the model that serves."""
    url = await serve(ollama_app(load_seconds=0, others=["llama3.2:3b"], modelfile_ctx=32768))
    async with aiohttp.ClientSession() as session:
        rt = local_runtime(tmp_path, session, [LocalBackendConfig(name="qwen", url=url, model=MODEL,
                                                                  context_window=32768)])
        b = rt.locals[0]
        await rt._watch_once(b, None, readings_due())
    assert (b.state.model, b.state.report.context_window, b.window(), b.capabilities().tools) == (
        MODEL, 32768, 32768, True)


def broken_model_app(hits: list[str]) -> web.Application:
    """A server whose model list answers but whose every generation fails: Ollama with a
    model too large for the machine, llama-server whose chat template throws, vLLM whose
    engine died."""

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "qwen2.5-coder:32b", "object": "model"}]})

    async def messages(_: web.Request) -> web.Response:
        hits.append("messages")
        return web.json_response({"error": "model requires more system memory (21.3 GiB) than is available "
                                           "(15.1 GiB)"}, status=500)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/messages", messages)
    return app


REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
ONLY_PROBES = {"identify": INF, "health": INF, "load": INF}  # no readings but the demotion's own probe


async def thirty_seconds_of_requests(rt: Runtime, b: Any, clock: Clock) -> None:
    """A user request every 2.5 s for 30 s, sent to `b` whenever it is first in the plan
    (not demoted: the request goes to it before any other), the demotion's probe run
    whenever it is due."""
    for _ in range(12):
        if not b.state.demoted:
            await b.send_request(REQUEST, stream=False)
        clock.advance(2.5)
        await rt._watch_once(b, None, ONLY_PROBES)


async def test_a_backend_that_keeps_failing_its_requests_stays_demoted_longer_each_time(serve, tmp_path: Path) -> None:
    """A health check that passes restores a demoted backend but keeps its count of failed
    requests, so a backend whose every request fails waits longer each time before it is
    tried first again, instead of making every request pay for it first."""
    hits: list[str] = []
    url = await serve(broken_model_app(hits))
    clock = Clock(1_800_000_000.0)
    async with aiohttp.ClientSession() as session:
        rt = local_runtime(tmp_path, session, [LocalBackendConfig(name="big", url=url, model="qwen2.5-coder:32b",
                                                                  count_tokens="estimate")], clock=clock)
        await thirty_seconds_of_requests(rt, rt.locals[0], clock)
    assert len(hits) <= 6, f"{len(hits)} of 12 requests went first to a backend that failed every one"


REFUSALS = {
    "ollama, the model removed": (404, {"error": "model 'qwen2.5-coder:32b' not found"}),
    "vllm, another model served": (404, {"object": "error", "message": "The model `qwen2.5-coder:32b` does not exist.",
                                         "type": "NotFoundError", "param": None, "code": 404}),
    "lm studio, nothing loaded": (400, {"error": "No models loaded. Please load a model in the developer page or use "
                                                 "the `lms load` command."}),
    "a key it does not take": (401, {"error": {"message": "Invalid API Key", "type": "authentication_error"}}),
}


def refusing_app(hits: list[str], refusal: tuple[int, dict], serving: list[bool]) -> web.Application:
    """A server that lists its model (its probe and health check pass) but refuses every
    generation the way `refusal` says, until `serving` holds True."""

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "qwen2.5-coder:32b", "object": "model"}]})

    async def messages(_: web.Request) -> web.Response:
        hits.append("messages")
        if serving[0]:
            return web.json_response({"id": "msg_1", "type": "message", "role": "assistant", "model": "q",
                                      "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                                      "usage": {"input_tokens": 5, "output_tokens": 1}})
        return web.json_response(refusal[1], status=refusal[0])

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/messages", messages)
    return app


@pytest.mark.parametrize("refusal", list(REFUSALS.values()), ids=list(REFUSALS))
async def test_a_backend_that_refuses_its_model_is_demoted_like_one_that_errs_and_comes_back(
        serve, tmp_path: Path, refusal: tuple[int, dict]) -> None:
    """A discovered server that answers its probe and its health check but refuses every
    request (its model gone, another one loaded, nothing loaded, a key it does not take)
    is demoted as a server that answers 500 is: requests go to the other backends first,
    and it is tried first again less and less often. Once it serves again, it is restored."""
    hits: list[str] = []
    serving = [False]
    url = await serve(refusing_app(hits, refusal, serving))
    clock = Clock(1_800_000_000.0)
    async with aiohttp.ClientSession() as session:
        rt = local_runtime(tmp_path, session, [LocalBackendConfig(name="ollama", url=url, model="qwen2.5-coder:32b",
                                                                  count_tokens="estimate")], clock=clock)
        b = rt.locals[0]
        await thirty_seconds_of_requests(rt, b, clock)
        assert len(hits) <= 6, f"{len(hits)} of 12 requests went first to a backend that refused every one"
        assert b.state.failures >= 2

        serving[0] = True  # the model is back
        clock.advance(60)
        await rt._watch_once(b, None, ONLY_PROBES)
        assert not b.state.demoted and b.state.healthy
        await b.send_request(REQUEST, stream=False)
    assert (b.state.demoted, b.state.failures) == (False, 0)
