"""Finding, reading and running local servers at their edges: a llama-server still
loading, an Ollama with an embedding model loaded, model names without their tag, a
server listing several models or none, a cancelled reading, an embedded server that
keeps failing or cannot write its log."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from nonstop.backends import embedded as embedded_module
from nonstop.backends import server_report
from nonstop.backends.discovery import probe_server
from nonstop.config import parse_config
from nonstop.routing.backend_state import ServerReport
from nonstop.server import autoconfig
from tests.unit.backends.test_embedded import Fake, until

# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """An aiohttp app on a loopback port (its base URL back), torn down quickly even while
    a handler still hangs."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def json_answer(body: Any, status: int = 200) -> Callable[[web.Request], Any]:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return handler


# --- discovery: a llama-server still loading its model -----------------------------------


def loading_llama_server_app() -> web.Application:
    """llama-server while it loads its model: its middleware lets /models, /v1/models and
    /api/tags through (meta is null until the model is loaded), answers "/" with the
    loading page (503 HTML), and every other path with 503 "Loading model"."""
    path = "/models/Qwen2.5-Coder-14B-Instruct-Q4_K_M.gguf"

    async def models(_: web.Request) -> web.Response:
        return web.json_response({
            "models": [{"name": path, "model": path}],
            "object": "list",
            "data": [{"id": path, "object": "model", "created": 1767225600, "owned_by": "llamacpp", "meta": None}],
        })

    async def loading(request: web.Request) -> web.Response:
        if request.path == "/" or request.path.endswith(".html"):
            return web.Response(text="<html>Loading model</html>", status=503, content_type="text/html")
        return web.json_response(
            {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, status=503)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/models", models)
    app.router.add_route("*", "/{tail:.*}", loading)
    return app


async def test_a_llama_server_still_loading_is_found_as_llama_server(serve: Any, session: aiohttp.ClientSession) -> None:
    """A llama-server still loading its model (/props answers 503, /v1/models says owned_by
    llamacpp) is found as llama-server, its window a guess its own reading replaces later."""
    url = await serve(loading_llama_server_app())
    d = await probe_server(session, url, 1.0)
    assert d is not None
    assert (d.kind, d.api) == ("llamacpp", "anthropic")


# --- discovery: Ollama ------------------------------------------------------------------


def ollama_with_embedder_loaded() -> web.Application:
    """An Ollama with a chat model and an embedding model pulled; a RAG tool keeps the
    embedding model loaded, the chat model is not loaded."""

    async def show(request: web.Request) -> web.Response:
        body = await request.json()
        if body["model"].startswith("nomic-embed-text"):
            return web.json_response({"parameters": "", "capabilities": ["embedding"],
                                      "model_info": {"nomic-bert.context_length": 2048}})
        return web.json_response({"parameters": "num_ctx 32768", "capabilities": ["completion", "tools"],
                                  "model_info": {"qwen3.context_length": 262144}})

    app = web.Application()
    app.router.add_get("/api/version", json_answer({"version": "0.14.2"}))
    app.router.add_get("/api/tags", json_answer({"models": [
        {"name": "qwen3-coder:30b", "model": "qwen3-coder:30b", "details": {"family": "qwen3moe"}},
        {"name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest", "details": {"family": "nomic-bert"}},
    ]}))
    app.router.add_get("/api/ps", json_answer({"models": [
        {"name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest", "context_length": 2048},
    ]}))
    app.router.add_post("/api/show", show)
    return app


async def test_ollama_does_not_pick_a_loaded_embedding_model_to_chat_with(
        serve: Any, session: aiohttp.ClientSession) -> None:
    """An Ollama whose only loaded model is an embedding model (a RAG tool keeps it) chats with
    a pulled model that can (its /api/show capabilities say "completion")."""
    url = await serve(ollama_with_embedder_loaded())
    d = await probe_server(session, url, 1.0)
    assert d is not None and d.kind == "ollama"
    assert d.model == "qwen3-coder:30b"


def ollama_loaded_with_tag(ctx: int) -> web.Application:
    """An Ollama whose llama3.2 (pulled as llama3.2:latest) is loaded with an `ctx`-token
    context (OLLAMA_CONTEXT_LENGTH), and whose Modelfile sets no num_ctx."""
    app = web.Application()
    app.router.add_get("/api/version", json_answer({"version": "0.14.2"}))
    app.router.add_get("/api/tags", json_answer({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]}))
    app.router.add_get("/api/ps", json_answer({"models": [
        {"name": "llama3.2:latest", "model": "llama3.2:latest", "context_length": ctx,
         "expires_at": "2099-01-01T00:00:00Z", "size_vram": 3_000_000_000},
    ]}))
    app.router.add_post("/api/show", json_answer({
        "parameters": "stop <|eot_id|>", "capabilities": ["completion", "tools"],
        "model_info": {"llama.context_length": 131072}}))
    return app


async def test_identify_reads_the_loaded_window_of_a_model_configured_without_its_tag(
        serve: Any, session: aiohttp.ClientSession) -> None:
    """A model configured without its tag (llama3.2) is the loaded llama3.2:latest: its
    loaded window is read."""
    url = await serve(ollama_loaded_with_tag(8192))
    report = await server_report.identify(session, url, timeout=1.0, model="llama3.2")
    assert report is not None and report.kind == "ollama"
    assert report.context_window == 8192


async def test_read_load_sees_a_loaded_model_configured_without_its_tag(
        serve: Any, session: aiohttp.ClientSession) -> None:
    """The same for the periodic load reading: the model shows as loaded, with its window."""
    url = await serve(ollama_loaded_with_tag(8192))
    known = ServerReport(kind="ollama", context_window=None, model="llama3.2")
    r = await server_report.read_load(session, url, "ollama", {}, known)
    assert r.loaded is True
    assert r.context_window == 8192


async def test_a_server_report_reads_no_count_from_a_boolean_or_a_broken_number(
        serve: Any, session: aiohttp.ClientSession) -> None:
    """`true` is an int to Python, but no server means a one-token window or one slot by
    it; a metric line of 1e999 is no count of requests either (it raised OverflowError)."""
    app = web.Application()
    app.router.add_get("/props", json_answer({"default_generation_settings": {"n_ctx": True}, "total_slots": True,
                                              "endpoint_slots": False}))
    url = await serve(app)
    r = await server_report.read_load(session, url, "llamacpp", {}, ServerReport(kind="llamacpp"))
    assert (r.context_window, r.slots) == (None, None)

    app = web.Application()
    app.router.add_get("/api/ps", json_answer({"models": [{"name": "llama3.2:latest", "context_length": True}]}))
    url = await serve(app)
    r = await server_report.read_load(session, url, "ollama", {}, ServerReport(kind="ollama", model="llama3.2"))
    assert r.loaded is True and r.context_window is None

    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_running 1e999\nvllm:num_requests_waiting 2\n")

    app.router.add_get("/metrics", metrics)
    url = await serve(app)
    r = await server_report.read_load(session, url, "vllm", {}, ServerReport(kind="vllm"))
    assert r.busy_slots is None


# --- discovery: a generic OpenAI-compatible server with several models --------------------


async def test_a_configured_model_is_the_one_described_on_a_generic_openai_server(
        serve: Any, session: aiohttp.ClientSession) -> None:
    """On an OpenAI-format server that lists several models, the configured one is described
    (its id, its window), not the first listed."""
    url = await serve(_multi_model_app())
    d = await probe_server(session, url, 1.0, model="qwen-coder-128k")
    assert d is not None and d.kind == "openai"
    assert (d.model, d.context_window) == ("qwen-coder-128k", 131072)


def _multi_model_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/models", json_answer({"object": "list", "data": [
        {"id": "tiny-4k", "object": "model", "owned_by": "local", "context_length": 4096},
        {"id": "qwen-coder-128k", "object": "model", "owned_by": "local", "context_length": 131072},
    ]}))
    return app


# --- autoconfig: a server with no model to serve --------------------------------------------


class _FakeEmbedded:
    started = 0

    def __init__(self, cfg: Any, state_dir: Any, **_: Any) -> None:
        self.cfg = cfg

    def prepare(self) -> Any:
        from nonstop.config import LocalBackendConfig

        return LocalBackendConfig(name="embedded", url="http://127.0.0.1:9", model="SmolLM2-135M-Instruct.Q4_1",
                                  context_window=4096, max_output_tokens=64)

    async def start(self) -> Any:
        _FakeEmbedded.started += 1
        return self.prepare()

    async def stop(self) -> None:
        pass


async def test_an_openai_server_listing_no_model_does_not_replace_the_embedded_fallback(
        serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers /v1/models with no model (LocalAI with nothing installed) is not
    used, and the embedded server starts instead."""
    monkeypatch.setattr(embedded_module, "EmbeddedServer", _FakeEmbedded)
    monkeypatch.setattr(_FakeEmbedded, "started", 0)
    app = web.Application()
    app.router.add_get("/v1/models", json_answer({"object": "list", "data": []}))
    url = await serve(app)
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                        "discovery": {"ports": [urlsplit(url).port], "timeout": 1.0}, "embedded": {"mode": "auto"}})
    async with aiohttp.ClientSession() as session:
        out = await autoconfig.auto_backends(cfg, session, have_configured=False)
    assert [b.name for b in out.backends] == ["embedded"]
    assert _FakeEmbedded.started == 1


# --- server reports: cancellation -----------------------------------------------------------


async def test_cancelling_a_load_reading_cancels_it(serve: Any, session: aiohttp.ClientSession) -> None:
    """A load reading that is cancelled (a runtime stopping) raises CancelledError, not a
    report as if it had finished."""
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"default_generation_settings": {"n_ctx": 8192}, "total_slots": 1})

    app = web.Application()
    app.router.add_get("/props", hang)
    url = await serve(app)
    task = asyncio.ensure_future(server_report.read_load(session, url, "llamacpp", {}, ServerReport(kind="llamacpp")))
    try:
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()
        if not task.done():
            task.cancel()


# --- embedded server: restarts -----------------------------------------------------------------


async def test_restarts_back_off_after_a_long_healthy_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedded server that ran well and then keeps failing backs off from the first
    failure on (0.05, 0.1, 0.2, ... up to the maximum), not a restart every second forever."""
    monkeypatch.setattr(embedded_module, "STABLE_AFTER", 0.3)
    fake = Fake(tmp_path)
    server = fake.server(backoff_initial=0.05)
    await server.start()
    try:
        await asyncio.sleep(0.5)  # a long healthy run, as far as STABLE_AFTER is concerned
        fake.flag("crash")  # from now on every restart fails
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: server.restarts >= 4, timeout=15, what="repeated restarts")
        delays = [e.split("restarting in ")[1].split("s ")[0] for e in fake.events if "restarting in" in e]
        assert delays[:4] == ["0.05", "0.1", "0.2", "0.4"]
    finally:
        await server.stop()


# --- embedded server: an unwritable log ---------------------------------------------------------


async def test_an_unwritable_embedded_log_is_a_clear_refusal_not_a_traceback(
        tmp_path: Path) -> None:
    """An embedded server's log that cannot be written is a clear "no local model" line, and
    nonstop goes on without it, not a traceback."""
    fake = Fake(tmp_path)
    state = tmp_path / "state"
    (state / "embedded-llama.log").mkdir(parents=True)
    cfg = parse_config({"state_dir": str(state), "log": {"enabled": False},
                        "discovery": {"enabled": False},
                        "embedded": {"mode": "always", "server_path": str(fake.script),
                                     "model_path": str(fake.model), "ready_timeout": 10}})
    async with aiohttp.ClientSession() as session:
        out = await autoconfig.auto_backends(cfg, session, have_configured=False)
    try:
        assert out.embedded is None and out.backends == []
    finally:
        if out.embedded is not None:
            await out.embedded.stop()
