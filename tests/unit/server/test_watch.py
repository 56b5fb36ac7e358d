"""A local backend's background readings survive whatever its server answers: an odd reply
is read as no reading, and an error in one pass never ends the watch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import nonstop.server.runtime as runtime_module
from nonstop.backends import server_report
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.routing.backend_state import ServerReport
from nonstop.server.runtime import Runtime


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


async def test_an_error_in_one_pass_does_not_end_the_watch(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setattr(runtime_module, "TICK", 0.01)
    calls = {"identify": 0, "health": 0}

    async def identify(session, base):
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
