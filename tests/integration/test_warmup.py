"""Warm-up against real servers: a llama-server that really sleeps (--sleep-idle-seconds)
and a scripted Ollama process that takes its time to load and lets a model lapse after
its keep_alive.

The Warmer runs in the test's own loop with real backends, next to a stand-in for the
runtime's readings of each server (server_report.read_load every half second, fed to
BackendState.reported, as the runtime's _watch loop does), so warmth moves the way the
status document and the dashboard would show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from nonstop.backends import server_report
from nonstop.backends.local import LocalBackend
from nonstop.backends.registry import make_local_backend
from nonstop.config import LocalBackendConfig
from nonstop.config.model import WarmupConfig
from nonstop.routing.view import CloudState, CloudView
from nonstop.server.warmer import Loads, Warmer
from tests.integration.llama import LlamaServer, require_llama, start_llama_server
from tests.support import procs, rawhttp
from tests.support.fake_ollama import MODEL

pytestmark = pytest.mark.integration

SLEEP_AFTER = 2  # the llama-server's --sleep-idle-seconds
OLLAMA_LOAD = 2.0  # seconds the fake Ollama takes to load its model


# --- servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sleepy_llama() -> Any:
    """A llama-server that unloads its model after SLEEP_AFTER idle seconds. --no-slots:
    the runtime's load reading asks /slots, which wakes a sleeping server; here only the
    warmer may wake it."""
    require_llama()
    server = start_llama_server(ctx=2048, parallel=1,
                                extra_args=["--sleep-idle-seconds", str(SLEEP_AFTER), "--no-slots"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ollama() -> Any:
    port = procs.free_port()
    p = procs.start_python(["-m", "tests.support.fake_ollama", "--port", str(port), "--load-seconds", str(OLLAMA_LOAD)],
                           port, "/api/version", "fake-ollama")
    yield p
    p.stop()


@pytest.fixture
def fresh_ollama(ollama: procs.Proc) -> procs.Proc:
    rawhttp.request("POST", ollama.url + "/_fake/reset")
    return ollama


def is_sleeping(server: LlamaServer) -> bool:
    """/props answers without waking the server."""
    return bool(orjson.loads(rawhttp.request("GET", server.url + "/props")[2])["is_sleeping"])


def ollama_calls(p: procs.Proc) -> dict[str, Any]:
    return orjson.loads(rawhttp.request("GET", p.url + "/_fake/calls")[2])


def ollama_loaded(p: procs.Proc) -> bool:
    return bool(orjson.loads(rawhttp.request("GET", p.url + "/api/ps")[2])["models"])


async def until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `pred()` holds."""
    started = time.monotonic()
    while not pred():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# --- the runtime around the warmer ----------------------------------------------------------------


class Gateway:
    """The parts of the runtime the warmer lives with: the cloud's state, the backends,
    and the readings of each server that set cold and warm."""

    def __init__(self, session: aiohttp.ClientSession, cfgs: list[LocalBackendConfig], warmup: WarmupConfig):
        self.cloud = CloudView()
        self.backends: list[LocalBackend] = [make_local_backend(c, session) for c in cfgs]
        self.session = session
        self.warmer = Warmer(warmup, lambda: [self.cloud], lambda: self.backends, Loads(session))
        self.warmth: list[tuple[float, str, str]] = []  # (time, backend, warmth) at each change

    def go_out(self) -> None:
        self.cloud = CloudView(state=CloudState.OUT)
        self.warmer.nudge()

    def serve_again(self) -> None:
        self.cloud = CloudView()
        self.warmer.nudge()

    async def read_servers(self) -> None:
        known = {b.name: await server_report.identify(self.session, b.base) for b in self.backends}
        while True:
            for b in self.backends:
                k = known[b.name]
                if k is not None:
                    b.state.reported(await server_report.read_load(self.session, b.base, k.kind, b.headers(), k))
            await asyncio.sleep(0.5)

    async def record_warmth(self) -> None:
        last: dict[str, str] = {}
        while True:
            for b in self.backends:
                if b.state.warmth != last.get(b.name):
                    last[b.name] = b.state.warmth
                    self.warmth.append((time.monotonic(), b.name, b.state.warmth))
            await asyncio.sleep(0.02)

    def recorded(self, name: str) -> str | None:
        """The last warmth the recorder saw (it samples every 20 ms: the state itself may
        be a tick ahead)."""
        seen = self.seen(name)
        return seen[-1] if seen else None

    def seen(self, name: str) -> list[str]:
        """The warmth values a backend went through, repeats collapsed."""
        out: list[str] = []
        for _, n, w in self.warmth:
            if n == name and (not out or out[-1] != w):
                out.append(w)
        return out

    def stretches(self, name: str, value: str, since: float) -> list[float]:
        """How long each stretch of `value` lasted, from `since` (time.monotonic()) on."""
        mine = [(t, w) for t, n, w in self.warmth if n == name]
        out = []
        for (t, w), (t_next, _) in zip(mine, [*mine[1:], (time.monotonic(), "")], strict=True):
            if w == value and t >= since:
                out.append(t_next - t)
        return out


@contextlib.asynccontextmanager
async def gateway(cfgs: list[LocalBackendConfig], warmup: WarmupConfig) -> AsyncIterator[Gateway]:
    async with aiohttp.ClientSession() as session:
        g = Gateway(session, cfgs, warmup)
        tasks = [asyncio.ensure_future(c) for c in (g.read_servers(), g.record_warmth(), g.warmer.run())]
        try:
            yield g
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def llama_backend(server: LlamaServer) -> LocalBackendConfig:
    return LocalBackendConfig(name="llama", url=server.url, context_window=2048, max_output_tokens=64)


def ollama_backend(p: procs.Proc) -> LocalBackendConfig:
    return LocalBackendConfig(name="ollama", url=p.url, model=MODEL, context_window=4096, max_output_tokens=64)


# --- llama-server ---------------------------------------------------------------------------------


async def test_a_sleeping_llama_server_is_woken_when_the_cloud_goes_out(sleepy_llama: LlamaServer) -> None:
    await until(lambda: is_sleeping(sleepy_llama), 15, "llama-server to fall asleep")
    async with gateway([llama_backend(sleepy_llama)], WarmupConfig(touch_every=1.0)) as g:
        await until(lambda: g.backends[0].state.warmth == "cold", 10, "the reading to say cold")
        await asyncio.sleep(SLEEP_AFTER + 1)
        assert is_sleeping(sleepy_llama)  # the cloud serves: nothing wakes it
        g.go_out()
        await until(lambda: not is_sleeping(sleepy_llama), 15, "the warmer to wake llama-server")
        await until(lambda: g.backends[0].state.warmth == "warm", 5, "warmth to say warm")
        # Kept awake while the cloud is out: three times its idle time, and never asleep.
        for _ in range(int(SLEEP_AFTER * 3 / 0.25)):
            assert not is_sleeping(sleepy_llama)
            await asyncio.sleep(0.25)
        g.serve_again()
        await until(lambda: is_sleeping(sleepy_llama), SLEEP_AFTER + 10, "llama-server to sleep again")
        await until(lambda: g.recorded("llama") == "cold", 5, "warmth to say cold")
        seen = g.seen("llama")
        assert seen[0] == "" and "warm" in seen, seen


async def test_a_llama_server_that_sleeps_between_touches_is_touched_sooner(sleepy_llama: LlamaServer) -> None:
    """touch_every longer than the server's idle time: it is seen asleep once, woken, and
    from then on touched often enough to stay awake."""
    async with gateway([llama_backend(sleepy_llama)], WarmupConfig(touch_every=30.0)) as g:
        g.go_out()
        await until(lambda: g.backends[0].state.warmth == "warm", 15, "the first wake")
        await until(lambda: is_sleeping(sleepy_llama), SLEEP_AFTER + 5, "the server to fall asleep once")
        await until(lambda: not is_sleeping(sleepy_llama), 5, "the warmer to wake it again")
        assert g.warmer.state["llama"].touch_every <= SLEEP_AFTER
        await asyncio.sleep(0.5)
        for _ in range(int(SLEEP_AFTER * 3 / 0.25)):
            assert not is_sleeping(sleepy_llama)
            await asyncio.sleep(0.25)


# --- Ollama -----------------------------------------------------------------------------------------


async def test_ollama_is_loaded_with_a_keep_alive_and_shows_warming_then_warm(fresh_ollama: procs.Proc) -> None:
    async with gateway([ollama_backend(fresh_ollama)], WarmupConfig(keep_alive=60.0)) as g:
        b = g.backends[0]
        await until(lambda: b.state.warmth == "cold", 5, "the reading to say cold")
        went_out = time.monotonic()
        g.go_out()
        took = await until(lambda: b.state.warmth == "warm", OLLAMA_LOAD + 10, "the model to load")
        assert took >= OLLAMA_LOAD - 0.2
        await until(lambda: g.recorded("ollama") == "warm", 2, "the recorder to see warm")
        seen = g.seen("ollama")
        assert seen[:3] == ["", "cold", "warming"] and seen[-1] == "warm", seen
        # A reading of /api/ps taken mid-load says "not loaded" (BackendState.reported sets
        # cold); the warmer says "warming" again within a tick.
        assert all(d < 0.8 for d in g.stretches("ollama", "cold", went_out + 0.1)), g.warmth
        assert ollama_loaded(fresh_ollama)
        generate = [c for c in ollama_calls(fresh_ollama)["calls"] if c["path"] == "/api/generate"]
        assert generate[0]["body"] == {"model": MODEL, "keep_alive": "60s", "stream": False}
        # The first real request finds the model loaded: no second load.
        status, _, _ = rawhttp.request("POST", fresh_ollama.url + "/v1/messages", {
            "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200
        assert ollama_calls(fresh_ollama)["loads"] == 1


async def test_ollama_keep_alive_is_renewed_while_out_and_lapses_after(fresh_ollama: procs.Proc) -> None:
    keep = 3.0  # under the configurable minimum, to keep the test short
    async with gateway([ollama_backend(fresh_ollama)], WarmupConfig(keep_alive=keep)) as g:
        g.go_out()
        await until(lambda: g.backends[0].state.warmth == "warm", OLLAMA_LOAD + 10, "the model to load")
        # Three keep_alives later it is still loaded, renewed about every keep/2 seconds.
        await asyncio.sleep(keep * 3)
        assert ollama_loaded(fresh_ollama)
        renewals = [c for c in ollama_calls(fresh_ollama)["calls"] if c["path"] == "/api/generate"]
        assert len(renewals) >= 5
        assert ollama_calls(fresh_ollama)["loads"] == 1
        g.serve_again()
        await until(lambda: not ollama_loaded(fresh_ollama), keep + 3, "the model to lapse")
        await until(lambda: g.backends[0].state.warmth == "cold", 3, "warmth to say cold")


async def test_a_model_evicted_while_out_is_loaded_again(fresh_ollama: procs.Proc) -> None:
    async with gateway([ollama_backend(fresh_ollama)], WarmupConfig(keep_alive=600.0)) as g:
        g.go_out()
        await until(lambda: g.backends[0].state.warmth == "warm", OLLAMA_LOAD + 10, "the model to load")
        await asyncio.sleep(1.5)
        rawhttp.request("POST", fresh_ollama.url + "/_fake/unload")
        await until(lambda: ollama_calls(fresh_ollama)["loads"] == 2, OLLAMA_LOAD + 10, "a second load")
        await until(lambda: g.backends[0].state.warmth == "warm", 5, "warm again")
