"""Discovery against small in-process servers, each imitating one kind of local server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nonstop.backends.discovery import (
    DiscoveredServer,
    describe,
    discover,
    probe_server,
    to_backend_config,
)
from nonstop.config import DiscoveryConfig
from tests.support.stalls import stalling

SMOL = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"


# --- imitations of each kind -------------------------------------------------------------


def answer(body: Any, status: int = 200) -> Callable[[web.Request], Any]:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return handler


def llamacpp_app(*, jinja: bool = True, renders_tools: bool = True) -> web.Application:
    async def props(_: web.Request) -> web.Response:
        return web.json_response({
            "default_generation_settings": {"n_ctx": 8192, "params": {}},
            "total_slots": 2,
            "model_path": SMOL,
            "model_alias": SMOL,
            "chat_template": "{{ messages }}",
            "chat_template_caps": {"supports_tool_calls": renders_tools, "supports_tools": renders_tools},
        })

    async def models(_: web.Request) -> web.Response:
        entry = {"id": SMOL, "object": "model", "owned_by": "llamacpp", "meta": {"n_ctx": 8192}}
        return web.json_response({"object": "list", "data": [entry], "models": [{"name": SMOL}]})

    async def apply_template(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("tools") and not jinja:
            return web.json_response(
                {"error": {"code": 500, "message": "tools param requires --jinja flag"}}, status=500
            )
        names = [t["function"]["name"] for t in body.get("tools", [])] if renders_tools else []
        return web.json_response({"prompt": f"<|im_start|>user hi {' '.join(names)}"})

    app = web.Application()
    app.router.add_get("/props", props)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/apply-template", apply_template)
    app.router.add_get("/health", answer({"status": "ok"}))
    return app


def ollama_app(*, version: str = "0.14.2", num_ctx: int | None = None, loaded_ctx: int | None = None,
               trained: int = 262144) -> web.Application:
    async def hang(_: web.Request) -> web.Response:
        # Ollama has been seen to hang on paths it does not know.
        await asyncio.sleep(30)
        return web.Response(status=404)

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [
            {"name": "qwen3-coder:30b", "model": "qwen3-coder:30b"},
            {"name": "llama3.2:3b", "model": "llama3.2:3b"},
        ]})

    async def ps(_: web.Request) -> web.Response:
        if loaded_ctx is None:
            return web.json_response({"models": []})
        return web.json_response({"models": [
            {"name": "llama3.2:3b", "model": "llama3.2:3b", "context_length": loaded_ctx}
        ]})

    async def show(request: web.Request) -> web.Response:
        body = await request.json()
        params = f"num_ctx {num_ctx}\nstop <|im_end|>" if num_ctx else "stop <|im_end|>"
        return web.json_response({
            "parameters": params,
            "model_info": {"general.architecture": "qwen3", "qwen3.context_length": trained},
            "capabilities": ["completion", "tools"] if body["model"].startswith("qwen") else ["completion"],
        })

    app = web.Application()
    app.router.add_get("/api/version", answer({"version": version}))
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_route("*", "/{tail:.*}", hang)
    return app


def lmstudio_app(*, native: bool = True, loaded: bool = True) -> web.Application:
    async def unexpected(request: web.Request) -> web.Response:
        # LM Studio answers unknown paths with 200 and an error string.
        return web.json_response({"error": f"Unexpected endpoint or method. ({request.method} {request.path})"})

    async def v0_models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "text-embedding-nomic", "type": "embeddings", "state": "not-loaded", "max_context_length": 2048},
            {"id": "qwen2.5-7b-instruct", "type": "llm", "state": "not-loaded", "max_context_length": 32768},
            {"id": "qwen3-coder-30b", "type": "llm", "state": "loaded", "max_context_length": 262144,
             "loaded_context_length": 65536, "capabilities": ["tool_use"]} if loaded else
            {"id": "qwen3-coder-30b", "type": "llm", "state": "not-loaded", "max_context_length": 262144,
             "capabilities": ["tool_use"]},
        ]})

    async def messages(_: web.Request) -> web.Response:
        return web.json_response(
            {"type": "error", "error": {"type": "invalid_request_error", "message": "model: required"}},
            status=400,
        )

    app = web.Application()
    app.router.add_get("/api/v0/models", v0_models)
    app.router.add_get("/v1/models", answer({"data": [{"id": "qwen3-coder-30b"}]}))
    if native:
        app.router.add_post("/v1/messages", messages)
    app.router.add_route("*", "/{tail:.*}", unexpected)
    return app


def vllm_app() -> web.Application:
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "Qwen/Qwen2.5-Coder-7B-Instruct", "object": "model", "owned_by": "vllm", "max_model_len": 32768}
        ]})

    app = web.Application()
    app.router.add_get("/version", answer({"version": "0.6.3"}))
    app.router.add_get("/v1/models", models)
    return app


def openai_app() -> web.Application:
    app = web.Application()
    app.router.add_get(
        "/v1/models",
        answer({"object": "list", "data": [{"id": "local-model", "object": "model"}]}),
    )
    return app


def html_app() -> web.Application:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<html><body>router login</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    return app


def bad_json_app() -> web.Application:
    async def broken(_: web.Request) -> web.Response:
        return web.Response(body=b'{"data": [', content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", broken)
    return app


# --- fixtures ---------------------------------------------------------------------------


class Served:
    def __init__(self, url: str, port: int, seen: list[dict[str, str]]):
        self.url, self.port, self.seen = url, port, seen


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, port: int = 0) -> Served:
        seen: list[dict[str, str]] = []

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            seen.append({k.lower(): v for k, v in request.headers.items()})
            return await handler(request)

        app.middlewares.append(record)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        runners.append(runner)
        bound = runner.addresses[0][1]
        return Served(f"http://127.0.0.1:{bound}", bound, seen)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., Any]]:
    """A TCP server with a custom connection handler: junk bytes, or silence."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Callable[..., Any]) -> int:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await handler(reader, writer)

        server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for w in writers:
        w.close()
    for s in servers:
        s.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x00\xffSSH-2.0-OpenSSH_9.6\r\n\x13\x37garbage" * 20)
    await writer.drain()
    writer.close()


async def silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


def assert_no_credentials(seen: list[dict[str, str]]) -> None:
    assert seen, "the server was never asked"
    for headers in seen:
        for name in ("authorization", "x-api-key", "cookie", "x-nonstop-token"):
            assert name not in headers


# --- classification ---------------------------------------------------------------------


async def test_llamacpp(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(llamacpp_app())
    d = await probe_server(session, s.url, 1.0)
    assert d is not None
    assert (d.kind, d.api, d.url) == ("llamacpp", "anthropic", s.url)
    assert d.models == [SMOL] and d.model == SMOL
    assert d.context_window == 8192  # per slot, not the total
    assert d.tools is True
    assert_no_credentials(s.seen)


async def test_llamacpp_without_jinja_cannot_call_tools(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(llamacpp_app(jinja=False))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and d.kind == "llamacpp"
    assert d.tools is False
    assert any("--jinja" in n for n in d.notes)


async def test_llamacpp_template_that_drops_tools(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(llamacpp_app(renders_tools=False))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and d.tools is False


async def test_url_with_v1_suffix_is_the_base(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(llamacpp_app())
    d = await probe_server(session, s.url + "/v1/", 1.0)
    assert d is not None and d.url == s.url


async def test_ollama_default_context_is_flagged(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(ollama_app())
    started = time.monotonic()
    d = await probe_server(session, s.url, 2.0)
    # Identified without waiting on the paths Ollama hangs on.
    assert time.monotonic() - started < 1.0
    assert d is not None
    assert (d.kind, d.api) == ("ollama", "anthropic")
    assert d.models == ["qwen3-coder:30b", "llama3.2:3b"]
    assert d.model == "qwen3-coder:30b"
    assert d.context_window == 4096
    assert d.tools is True
    assert any("OLLAMA_CONTEXT_LENGTH=32768" in n and "num_ctx" in n for n in d.notes)
    assert_no_credentials(s.seen)


async def test_ollama_num_ctx_and_loaded_model(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(ollama_app(num_ctx=32768))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and d.context_window == 32768
    assert not any("OLLAMA_CONTEXT_LENGTH" in n for n in d.notes)

    s = await serve(ollama_app(num_ctx=32768, loaded_ctx=65536))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None
    assert d.model == "llama3.2:3b"  # the one already in memory
    assert d.context_window == 65536
    assert d.tools is False


async def test_ollama_is_planned_with_the_window_it_will_really_use(serve: Any, session: aiohttp.ClientSession) -> None:
    """Ollama cuts a prompt longer than its context silently, so the window nonstop fits
    requests to must never exceed the one Ollama will give nonstop's requests (which set
    no num_ctx): a Modelfile's num_ctx above the model's trained context is cut down to
    it by Ollama, as is a loaded model's; and before 0.6.7 its default was 2048, not 4096."""
    s = await serve(ollama_app(num_ctx=32768, trained=8192))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and (d.context_window, d.window_guessed) == (8192, False)
    assert any("num_ctx 32768" in n and "8192" in n for n in d.notes)

    s = await serve(ollama_app(num_ctx=32768, loaded_ctx=65536, trained=40960))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and d.context_window == 40960

    s = await serve(ollama_app(version="0.6.5"))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and (d.api, d.context_window, d.window_guessed) == ("openai", 2048, True)
    s = await serve(ollama_app(version="0.6.7"))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and (d.context_window, d.window_guessed) == (4096, True)

    s = await serve(ollama_app(trained=2048))  # a model trained on less than the default
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and d.context_window == 2048


async def test_old_ollama_uses_openai_api(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(ollama_app(version="0.12.6", num_ctx=32768))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and (d.kind, d.api) == ("ollama", "openai")


async def test_lmstudio(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(lmstudio_app())
    d = await probe_server(session, s.url, 1.0)
    assert d is not None
    assert (d.kind, d.api) == ("lmstudio", "anthropic")
    assert d.models == ["qwen2.5-7b-instruct", "qwen3-coder-30b"]  # no embedding models
    assert d.model == "qwen3-coder-30b"
    assert d.context_window == 65536
    assert d.tools is True
    assert_no_credentials(s.seen)


async def test_lmstudio_with_nothing_loaded_is_planned_with_the_window_it_will_load_with(
        serve: Any, session: aiohttp.ClientSession) -> None:
    """LM Studio loads a model on first use with its default context length (4096 unless
    the user set another), not the trained maximum it lists: planning with 262,144 tokens
    would send requests the loaded model cannot hold. The window is a guess, which a
    reading of the loaded model replaces, and the user is told how to load it larger."""
    s = await serve(lmstudio_app(loaded=False))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and d.model == "qwen2.5-7b-instruct"
    assert (d.context_window, d.window_guessed) == (4096, True)
    assert any("lms load qwen2.5-7b-instruct --context-length 32768" in n for n in d.notes)
    d = await probe_server(session, s.url, 1.0, "qwen3-coder-30b")  # the configured one, not loaded either
    assert d is not None and (d.model, d.context_window, d.window_guessed) == ("qwen3-coder-30b", 4096, True)


async def test_old_lmstudio_uses_openai_api(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(lmstudio_app(native=False))
    d = await probe_server(session, s.url, 1.0)
    assert d is not None and (d.kind, d.api) == ("lmstudio", "openai")


async def test_vllm(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(vllm_app())
    d = await probe_server(session, s.url, 1.0)
    assert d is not None
    assert (d.kind, d.api, d.model, d.context_window) == (
        "vllm", "openai", "Qwen/Qwen2.5-Coder-7B-Instruct", 32768
    )
    assert d.tools is None
    assert_no_credentials(s.seen)


async def test_generic_openai(serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(openai_app())
    d = await probe_server(session, s.url, 1.0)
    assert d is not None
    assert (d.kind, d.api, d.models, d.context_window, d.tools) == (
        "openai", "openai", ["local-model"], None, None
    )


# --- nothing there ------------------------------------------------------------------------


async def test_closed_port(session: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    assert await probe_server(session, f"http://127.0.0.1:{closed_port()}", 1.0) is None
    assert time.monotonic() - started < 0.5


async def test_garbage_bytes(raw_server: Any, session: aiohttp.ClientSession) -> None:
    port = await raw_server(junk)
    started = time.monotonic()
    assert await probe_server(session, f"http://127.0.0.1:{port}", 1.0) is None
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("make_app", [html_app, bad_json_app])
async def test_non_json_answers(make_app: Any, serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(make_app())
    assert await probe_server(session, s.url, 1.0) is None


async def test_silent_port_is_bounded_by_timeout(raw_server: Any, session: aiohttp.ClientSession) -> None:
    port = await raw_server(silence)
    started = time.monotonic()
    assert await probe_server(session, f"http://127.0.0.1:{port}", 0.3) is None
    assert time.monotonic() - started < 0.8


async def test_discover_probes_all_ports_at_once(
    serve: Any, raw_server: Any, session: aiohttp.ClientSession
) -> None:
    llama = await serve(llamacpp_app())
    ollama = await serve(ollama_app(num_ctx=32768))
    ports = (
        closed_port(),
        await raw_server(junk),
        await raw_server(silence),
        llama.port,
        await raw_server(silence),
        ollama.port,
        await raw_server(silence),
    )
    started = time.monotonic()
    found = await discover(DiscoveryConfig(ports=ports, timeout=0.5), session)
    elapsed = time.monotonic() - started
    assert [d.kind for d in found] == ["llamacpp", "ollama"]
    assert elapsed < 1.2  # concurrently: not one timeout per silent port


async def test_discover_with_nothing_listening(session: aiohttp.ClientSession) -> None:
    cfg = DiscoveryConfig(ports=(closed_port(), closed_port()), timeout=0.3)
    assert await discover(cfg, session) == []


# --- servers that stall on what they say about themselves ---------------------------------


def llamacpp_loading_app() -> web.Application:
    """A llama-server as it lists itself: /v1/models with its model's trained context
    (`n_ctx_train`), not the window it runs, which only /props says."""
    app = web.Application()
    app.router.add_get("/props", answer({"default_generation_settings": {"n_ctx": 4096}, "total_slots": 1}))
    app.router.add_get("/v1/models", answer({"object": "list", "data": [
        {"id": "qwen", "object": "model", "owned_by": "llamacpp", "meta": {"n_ctx_train": 131072}}]}))
    return app


@pytest.mark.parametrize("how", ["head", "body"])
async def test_an_ollama_that_stalls_on_api_show_is_used_with_its_default_window_said(
        how: str, serve: Any, session: aiohttp.ClientSession) -> None:
    """An Ollama that takes the connection for /api/show and never answers (or answers the
    head and stalls the body) holds discovery no longer than its timeout. Its model is
    used, with the window Ollama gives a model whose Modelfile says nothing, and the log
    line says that this size is assumed, and why."""
    s = await serve(stalling(ollama_app(), {"/api/show"}, how))  # type: ignore[arg-type]
    started = time.monotonic()
    d = await probe_server(session, s.url, 0.5)
    assert time.monotonic() - started < 1.0
    assert d is not None and (d.kind, d.model) == ("ollama", "qwen3-coder:30b")
    assert (d.context_window, d.window_guessed) == (4096, True)
    assert any("/api/show" in n and "4096" in n for n in d.notes), d.notes
    assert "context 4096 (assumed" in describe(d)
    assert to_backend_config(d).context_window == 4096


@pytest.mark.parametrize("how", ["head", "body"])
async def test_a_llama_server_that_stalls_on_props_is_used_with_the_window_said(
        how: str, serve: Any, session: aiohttp.ClientSession) -> None:
    """A llama-server whose /props stalls is still found (its /v1/models says what it is),
    within the timeout; the window nonstop plans with until /props answers is the one the
    log line names, not "unknown"."""
    s = await serve(stalling(llamacpp_loading_app(), {"/props"}, how))  # type: ignore[arg-type]
    started = time.monotonic()
    d = await probe_server(session, s.url, 0.5)
    assert time.monotonic() - started < 1.0
    assert d is not None and (d.kind, d.model, d.window_guessed) == ("llamacpp", "qwen", True)
    planned = to_backend_config(d).context_window
    assert f"context {planned} (assumed" in describe(d)
    assert any("/props" in n and str(planned) in n for n in d.notes), d.notes


async def test_lm_studio_that_stalls_on_its_model_list_is_planned_with_its_load_default(
        serve: Any, session: aiohttp.ClientSession) -> None:
    """LM Studio (port 1234) whose /api/v0/models stalls: the window it will load a model
    with is unknown, so nonstop plans with LM Studio's default load length, not a larger
    generic guess, and says so."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 1234))
        except OSError:
            pytest.skip("port 1234 is in use here")
    s = await serve(stalling(lmstudio_app(), {"/api/v0/models"}, "body"), 1234)
    started = time.monotonic()
    d = await probe_server(session, s.url, 0.5)
    assert time.monotonic() - started < 1.0
    assert d is not None and (d.kind, d.context_window, d.window_guessed) == ("lmstudio", 4096, True)
    assert "context 4096 (assumed" in describe(d)
    assert any("/api/v0/models" in n for n in d.notes), d.notes


@pytest.mark.parametrize("how", ["head", "body"])
async def test_vllm_that_stalls_on_its_model_list_is_not_waited_for(
        how: str, serve: Any, session: aiohttp.ClientSession) -> None:
    s = await serve(stalling(vllm_app(), {"/v1/models"}, how))  # type: ignore[arg-type]
    started = time.monotonic()
    assert await probe_server(session, s.url, 0.5) is None
    assert time.monotonic() - started < 1.0


# --- turning a finding into a backend -----------------------------------------------------


def test_to_backend_config() -> None:
    d = DiscoveredServer("llamacpp", "http://127.0.0.1:8080", "anthropic", [SMOL], SMOL, 8192, True)
    b = to_backend_config(d)
    assert (b.name, b.url, b.api, b.model) == ("llamacpp-8080", "http://127.0.0.1:8080", "anthropic", SMOL)
    assert (b.context_window, b.max_output_tokens) == (8192, 2048)

    big = to_backend_config(DiscoveredServer("ollama", "http://127.0.0.1:11434", "anthropic", context_window=131072), "mine")
    assert (big.name, big.context_window, big.max_output_tokens) == ("mine", 131072, 4096)

    unknown = to_backend_config(DiscoveredServer("openai", "http://127.0.0.1:8000", "openai"))
    assert (unknown.api, unknown.context_window, unknown.max_output_tokens) == ("openai", 8192, 2048)


def test_describe() -> None:
    d = DiscoveredServer("llamacpp", "http://127.0.0.1:8080", "anthropic", [SMOL], SMOL, 8192, True)
    assert describe(d) == (
        "llama.cpp at http://127.0.0.1:8080: model SmolLM2-135M-Instruct.Q4_1.gguf, context 8192, tools yes"
    )
    v = DiscoveredServer("vllm", "http://127.0.0.1:8000", "openai", ["m"], "m")
    assert describe(v) == ("vLLM at http://127.0.0.1:8000: model m, context 8192 (assumed: the server does not "
                           "say), tools unknown, OpenAI API")
