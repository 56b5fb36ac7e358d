"""The embedded server as a standby: with nothing configured and servers discovery found,
it starts once every one of them has been down for [embedded] standby_after seconds (a
health check failing, or demoted by failed requests), joins them as the last local
backend, and is not started while any of them can serve, or when the user chose
otherwise."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

import nonstop.server.runtime as runtime_module
from nonstop.backends.embedded import EmbeddedUnavailable
from nonstop.backends.registry import make_local_backend
from nonstop.config import LocalBackendConfig, parse_config
from nonstop.server.runtime import Runtime
from tests.support.fake_ollama import ollama_app


class FakeEmbedded:
    """What the runtime asks of the embedded server, recorded."""

    def __init__(self, unavailable: str = "", faults: list[Exception] | None = None) -> None:
        self.why = unavailable
        self.faults = faults or []  # raised by prepare(), one a call, before it works
        self.begun = 0
        self.stopped = False
        self.on_moved: Any = None

    def prepare(self) -> LocalBackendConfig:
        if self.faults:
            raise self.faults.pop()
        if self.why:
            raise EmbeddedUnavailable(self.why)
        return LocalBackendConfig(name="embedded", url="http://127.0.0.1:9", api="anthropic", context_window=4096)

    def begin(self) -> asyncio.Future[None]:
        self.begun += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def until_ready(self) -> None:
        return None

    def unavailable(self) -> str:
        return ""

    async def stop(self) -> None:
        self.stopped = True


def _use(monkeypatch, fake: FakeEmbedded) -> FakeEmbedded:
    monkeypatch.setattr(runtime_module, "embedded_server", lambda cfg: fake)
    monkeypatch.setattr(runtime_module, "TICK", 0.01)
    return fake


@pytest.fixture
def embedded(monkeypatch) -> FakeEmbedded:
    return _use(monkeypatch, FakeEmbedded())


async def _one_down_watched(tmp_path: Path, session: aiohttp.ClientSession, caplog) -> Runtime:
    """A runtime whose one discovered server is down, once its standby watch has ended."""
    rt = _runtime(tmp_path, session, ["ollama"])
    rt.locals[0].state.health_checked(False, "connection refused")
    with caplog.at_level(logging.WARNING, logger="nonstop"):
        await asyncio.wait_for(rt._standby(0.05), 5)
    for t in list(rt._tasks):
        t.cancel()
    return rt


def _runtime(tmp_path: Path, session: aiohttp.ClientSession, names: list[str], **embedded: Any) -> Runtime:
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "embedded": embedded})
    rt = Runtime(cfg)
    rt.local_session = session
    rt.use_backends([make_local_backend(LocalBackendConfig(name=n, url=f"http://127.0.0.1:{9 + i}"), session)
                     for i, n in enumerate(names)])
    return rt


async def _settle(rt: Runtime, task: asyncio.Task[None], seconds: float) -> None:
    await asyncio.sleep(seconds)
    if not task.done():
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_starts_once_every_discovered_server_is_down_for_the_time(tmp_path, embedded, caplog) -> None:
    async with aiohttp.ClientSession() as session:
        rt = _runtime(tmp_path, session, ["ollama", "lmstudio"])
        ollama, lmstudio = rt.locals
        ollama.state.health_checked(False, "connection refused")
        lmstudio.state.failed("stream failed")  # demoted by a failed request, its health unknown
        started = asyncio.get_running_loop().time()
        with caplog.at_level(logging.WARNING, logger="nonstop"):
            await asyncio.wait_for(rt._standby(0.2), 5)
        assert asyncio.get_running_loop().time() - started >= 0.2
        assert [b.name for b in rt.locals] == ["ollama", "lmstudio", "embedded"]  # the last fallback
        assert rt.embedded is embedded and embedded.begun == 1
        assert rt.backend("embedded") is rt.locals[-1]
        assert rt.policy.order == ("ollama", "lmstudio", "embedded")
        assert "ollama, lmstudio down for 0 s: starting the embedded model" in caplog.text
        for t in list(rt._tasks):
            t.cancel()


async def test_not_while_one_of_them_can_serve(tmp_path, embedded) -> None:
    async with aiohttp.ClientSession() as session:
        rt = _runtime(tmp_path, session, ["ollama", "lmstudio"])
        ollama, lmstudio = rt.locals
        ollama.state.health_checked(False, "connection refused")
        lmstudio.state.health_checked(True)
        task = asyncio.ensure_future(rt._standby(0.05))
        await _settle(rt, task, 0.3)
        assert [b.name for b in rt.locals] == ["ollama", "lmstudio"] and embedded.begun == 0


async def test_a_server_not_checked_yet_is_not_down(tmp_path, embedded) -> None:
    async with aiohttp.ClientSession() as session:
        rt = _runtime(tmp_path, session, ["ollama"])
        task = asyncio.ensure_future(rt._standby(0.05))
        await _settle(rt, task, 0.3)
        assert embedded.begun == 0


async def test_the_time_counts_from_when_all_are_down_again(tmp_path, embedded) -> None:
    """A server that answers again in between starts the count over."""
    async with aiohttp.ClientSession() as session:
        rt = _runtime(tmp_path, session, ["ollama"])
        (ollama,) = rt.locals
        ollama.state.health_checked(False, "connection refused")
        task = asyncio.ensure_future(rt._standby(0.4))
        await asyncio.sleep(0.25)
        ollama.state.health_checked(True)
        await asyncio.sleep(0.1)
        ollama.state.health_checked(False, "connection refused")
        await asyncio.sleep(0.25)
        assert embedded.begun == 0  # 0.25 s down since, not 0.6
        await asyncio.wait_for(task, 5)
        assert embedded.begun == 1
        for t in list(rt._tasks):
            t.cancel()


async def test_no_embedded_model_to_stand_in_is_said_once(tmp_path, monkeypatch, caplog) -> None:
    _use(monkeypatch, FakeEmbedded(unavailable="llama-server is not installed"))
    async with aiohttp.ClientSession() as session:
        rt = await _one_down_watched(tmp_path, session, caplog)
        assert [b.name for b in rt.locals] == ["ollama"] and rt.embedded is None
        assert caplog.text.count("no embedded model can stand in: llama-server is not installed") == 1


async def test_a_fault_of_the_moment_is_tried_again(tmp_path, monkeypatch, caplog) -> None:
    """prepare() failing for a reason of the moment (no free port, out of descriptors)
    does not end the watch: it is tried again once the servers have been down as long."""
    fake = _use(monkeypatch, FakeEmbedded(faults=[OSError(24, "Too many open files")]))
    async with aiohttp.ClientSession() as session:
        rt = await _one_down_watched(tmp_path, session, caplog)
        assert "could not be prepared to stand in (OSError: [Errno 24] Too many open files); trying again later" \
            in caplog.text
        assert [b.name for b in rt.locals] == ["ollama", "embedded"] and fake.begun == 1


# --- when the runtime watches for it -----------------------------------------------------------


@pytest.mark.parametrize(("extra", "watched"), [
    ({}, True),
    ({"embedded": {"mode": "never"}}, False),
    ({"embedded": {"standby_after": 0}}, False),
])
async def test_watched_only_for_discovered_servers_in_auto_mode(serve, tmp_path, embedded, extra, watched) -> None:
    url = await serve(ollama_app(load_seconds=0))
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "cloud": {"url": "http://127.0.0.1:9"},
                        "discovery": {"ports": [urlsplit(url).port]}, **extra})
    rt = Runtime(cfg)
    await rt.start()
    try:
        assert [b.name for b in rt.locals] == ["ollama"]
        standby = [t for t in rt._tasks if "_standby" in repr(t.get_coro())]
        assert bool(standby) is watched
    finally:
        await rt.stop()


async def test_the_embedded_server_standing_in_stops_with_nonstop(serve, tmp_path, embedded) -> None:
    url = await serve(ollama_app(load_seconds=0))
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "cloud": {"url": "http://127.0.0.1:9"},
                        "discovery": {"ports": [urlsplit(url).port]}, "embedded": {"standby_after": 0.1}})
    rt = Runtime(cfg)
    await rt.start()
    try:
        (ollama,) = rt.locals

        async def gone() -> bool:  # the server has quit: its health checks fail from now on
            ollama.state.health_checked(False, "connection refused")
            return False

        ollama.check_health = gone  # type: ignore[method-assign]
        ollama.state.failed("connection refused")
        for _ in range(200):
            if rt.backend("embedded") is not None:
                break
            await asyncio.sleep(0.01)
        assert [b.name for b in rt.locals] == ["ollama", "embedded"] and embedded.begun == 1
        assert rt.warmer is not None and rt.warmer.embedded is embedded  # warmed like any embedded server
    finally:
        await rt.stop()
    assert embedded.stopped


async def test_not_watched_beside_configured_backends(tmp_path, embedded) -> None:
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "cloud": {"url": "http://127.0.0.1:9"},
                        "local": [{"name": "box", "url": "http://127.0.0.1:9"}]})
    rt = Runtime(cfg)
    await rt.start()
    try:
        assert not [t for t in rt._tasks if "_standby" in repr(t.get_coro())]
    finally:
        await rt.stop()
