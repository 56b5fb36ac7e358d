"""The local backends nonstop sets up by itself when none is configured: the servers
discovery finds, or its own embedded llama-server."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from nonstop.backends import embedded as embedded_module
from nonstop.cli.status import backend_details
from nonstop.config import LocalBackendConfig, parse_config
from nonstop.routing.backend_state import ServerReport
from nonstop.server import autoconfig
from tests.support.fake_ollama import MODEL, ollama_app
from tests.support.inprocess import local_runtime
from tests.support.stalls import stalling

INF = float("inf")


def open_webui_app() -> web.Application:
    """Open WebUI (Ollama's usual web front end; `open-webui serve` and its Docker image
    listen on 8080): `GET /api/version` answers {"version", "deployment_id"} without a
    login, and every other GET is its single-page app's index.html."""

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.6.18", "deployment_id": ""})

    async def spa(request: web.Request) -> web.Response:
        if request.method != "GET":
            return web.json_response({"detail": "Method Not Allowed"}, status=405)
        return web.Response(text="<!doctype html><html><body><div id=app></div></body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/version", version)
    app.router.add_route("*", "/{tail:.*}", spa)
    return app


def ollama_with_no_models() -> web.Application:
    """An Ollama with no model pulled (just installed, or its models live under another
    user's OLLAMA_MODELS)."""
    return ollama_app(load_seconds=0, model="")


class FakeEmbedded:
    """Stands in for EmbeddedServer: starts at once, runs nothing."""

    started = 0

    def __init__(self, cfg: Any, state_dir: Any, **_: Any) -> None:
        self.cfg = cfg

    def prepare(self) -> LocalBackendConfig:
        return LocalBackendConfig(name="embedded", url="http://127.0.0.1:9", model="SmolLM2-135M-Instruct.Q4_1",
                                  context_window=4096, max_output_tokens=64)

    async def start(self) -> LocalBackendConfig:
        FakeEmbedded.started += 1
        return self.prepare()

    async def stop(self) -> None:
        pass


@pytest.mark.parametrize("make_app", [open_webui_app, ollama_with_no_models], ids=["open-webui", "ollama-no-models"])
async def test_a_server_with_no_model_to_serve_does_not_replace_the_embedded_fallback(
        serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_app: Any) -> None:
    """A discovered server that answers like Ollama but has no model to name in a request
    (Open WebUI on 8080, or an Ollama with nothing pulled) is not used, and nonstop starts
    its embedded llama-server: when the cloud runs out, a local model still answers."""
    monkeypatch.setattr(embedded_module, "EmbeddedServer", FakeEmbedded)
    monkeypatch.setattr(FakeEmbedded, "started", 0)
    url = await serve(make_app())
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                        "discovery": {"ports": [urlsplit(url).port], "timeout": 1.0}, "embedded": {"mode": "auto"}})
    async with aiohttp.ClientSession() as session:
        out = await autoconfig.auto_backends(cfg, session, have_configured=False)
    assert [(b.name, b.model) for b in out.backends] == [("embedded", "SmolLM2-135M-Instruct.Q4_1")]
    assert FakeEmbedded.started == 1


async def test_an_ollama_that_stalls_on_api_show_does_not_hold_start_up_and_its_window_is_said(
        serve, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Start-up asks a discovered Ollama about its model (/api/show); one that takes the
    connection and never finishes its answer holds start-up no longer than the discovery
    timeout. Its model is used with Ollama's default window, and the log, the status and
    the status line say that the size is assumed until the server says it."""
    url = await serve(stalling(ollama_app(load_seconds=0), {"/api/show"}, "body"))
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                        "discovery": {"ports": [urlsplit(url).port], "timeout": 0.5}, "embedded": {"mode": "never"}})
    caplog.set_level(logging.INFO, logger="nonstop")
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        found = await autoconfig.auto_backends(cfg, session, have_configured=False)
        assert time.monotonic() - started < 1.5
        assert [(b.name, b.model, b.context_window) for b in found.backends] == [("ollama", MODEL, 4096)]
        logged = caplog.text
        assert "context 4096 (assumed: Ollama's default; /api/show did not answer)" in logged
        assert "did not answer /api/show" in logged
        rt = local_runtime(tmp_path, session, found.backends, guessed=found.guessed_windows)
        entry = (await rt.status())["local"][0]
        assert (entry["window"], entry["window_assumed"]) == (4096, True)
        assert "4k window (assumed: the server has not said it yet)" in backend_details(entry)
        b = rt.locals[0]
        async with session.post(url + "/api/generate", json={"model": MODEL}) as resp:  # a client loads it
            assert resp.status == 200
        known = ServerReport(kind="ollama", model=MODEL)
        await rt._watch_once(b, known, {"identify": INF, "health": INF, "load": 0.0})  # /api/ps, not /api/show
        entry = (await rt.status())["local"][0]
    assert (entry["window"], entry["window_assumed"]) == (4096, False)
