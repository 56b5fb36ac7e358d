"""The runtime's quality watch: a swapped model makes the old score stale (said once), and
with `[eval] auto` an idle backend is evaluated in the background, never a busy one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nonstop.backends.registry import make_local_backend
from nonstop.config import Config, EvalConfig, LocalBackendConfig, parse_config
from nonstop.quality.auto import EvalWatch
from nonstop.quality.identity import ModelIdentity
from nonstop.quality.results import latest_scores, save_result
from nonstop.quality.score import Scorecard
from nonstop.server.runtime import Runtime
from nonstop.store.db import RequestRow, Store
from tests.support.scripted_model import STATE, scripted_app


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    s = TestServer(scripted_app("perfect"), host="127.0.0.1")
    await s.start_server()
    yield s
    await s.close()


def setup(tmp_path: Path, server: TestServer | str, session: aiohttp.ClientSession, *, auto: bool,
          idle_after: float = 0.0, max_inflight: int = 0):
    url = server if isinstance(server, str) else f"http://127.0.0.1:{server.port}"
    cfg = Config(state_dir=tmp_path / "state", eval=EvalConfig(auto=auto, idle_after=idle_after),
                 local=(LocalBackendConfig("llama", url, context_window=8192, max_output_tokens=2048,
                                           max_inflight=max_inflight),))
    notes: list[str] = []
    return cfg, [make_local_backend(b, session) for b in cfg.local], EvalWatch(cfg, session, note=notes.append), notes


def stored(cfg: Config, model_path: str) -> None:
    ident = ModelIdentity("llama", server="llamacpp", name=model_path, quantisation="Q4_K_M", size_bytes=4_683_071_488)
    cats = dict.fromkeys(("tool_choice", "tool_input", "tool_loop", "stop", "format"), 0.8)
    save_result(cfg.state_dir / "nonstop.db", ident, Scorecard({**cats, "long_context": None}, 0.8), quick=False)


async def test_a_swapped_model_makes_the_score_stale_and_is_said_once(tmp_path: Path, server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        cfg, backends, watch, notes = setup(tmp_path, server, session, auto=False)
        stored(cfg, server.app[STATE]["model_path"])
        scores = await watch.check(backends)
        assert scores["llama"].stale is False and scores["llama"].for_routing == 0.8 and not notes
        server.app[STATE]["model_path"] = "/models/other-model-14b.Q5_K_M.gguf"
        scores = await watch.check(backends)
        await watch.check(backends)
    assert scores["llama"].stale and scores["llama"].for_routing is None
    assert len(notes) == 1 and "the model changed" in notes[0] and "run `nonstop eval`" in notes[0]
    assert watch.verdict("llama")["stale"] is True and watch.running is None


async def test_auto_evaluates_an_idle_backend_in_the_background(tmp_path: Path, server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        cfg, backends, watch, notes = setup(tmp_path, server, session, auto=True)
        assert await watch.check(backends) == {}
        assert watch.running is not None
        await watch.running
        scores = await watch.check(backends)
    assert scores["llama"].quick and scores["llama"].overall == 1.0 and not scores["llama"].stale
    assert watch.running.done() and "evaluating" in notes[0]
    assert latest_scores(cfg.state_dir / "nonstop.db")["llama"].overall == 1.0


async def test_auto_waits_while_the_backend_serves_or_the_cloud_is_out(tmp_path: Path, server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        cfg, backends, watch, _ = setup(tmp_path, server, session, auto=True, idle_after=300)
        store = Store(cfg.state_dir)
        store.open()
        store.log_request(RequestRow(ts=time.time() - 60, backend="llama", outcome="ok"))
        store.flush()
        store.close()
        await watch.check(backends)
        assert watch.running is None  # it served a request a minute ago
        _, backends2, watch2, _ = setup(tmp_path / "b", server, session, auto=True)
        await watch2.check(backends2, cloud_serving=False)
        assert watch2.running is None  # a local model may be the stand-in right now
        backends2[0].state.inflight = 1
        await watch2.check(backends2)
        assert watch2.running is None


async def test_auto_stops_without_storing_when_real_work_arrives(tmp_path: Path, server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        cfg, backends, watch, notes = setup(tmp_path, server, session, auto=True)
        await watch.check(backends)
        backends[0].state.inflight = 1  # a client request, before the first task goes out
        assert watch.running is not None
        await watch.running
        backends[0].state.inflight = 0
    assert "stopped" in notes[-1] and latest_scores(cfg.state_dir / "nonstop.db") == {}
    assert server.app[STATE]["answered"] == []


async def test_a_real_local_request_stops_the_background_eval_and_gets_its_slot(tmp_path: Path, serve: Any) -> None:
    """With `[eval] auto` the run stops, storing nothing, the moment a real request needs
    the backend, even while one of its tasks is at the server: the task is cancelled and
    its lease given back, so on a one-slot server (`max_inflight = 1`) the real request
    (background work or a subagent routed locally first) gets the slot instead of being
    refused."""
    app = scripted_app("perfect")
    inside, gate = asyncio.Event(), asyncio.Event()

    @web.middleware
    async def slow(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/messages":  # a task in flight on a CPU: it takes a while
            inside.set()
            await gate.wait()
        return await handler(request)

    app.middlewares.append(slow)
    url = await serve(app)
    async with aiohttp.ClientSession() as session:
        cfg, backends, watch, _ = setup(tmp_path, url, session, auto=True, max_inflight=1)
        rt = Runtime(parse_config({"state_dir": str(tmp_path / "gateway"), "log": {"enabled": False}}))
        rt.use_backends(backends)
        rt.evals = watch  # as Runtime.start wires it
        await watch.check(backends)
        running = watch.running
        assert running is not None
        try:
            await asyncio.wait_for(inside.wait(), 10)  # the first task is at the server
            taken = await rt.take_slot(backends[0])  # a real request arrives
        finally:
            gate.set()
            await asyncio.wait([running], timeout=30)
    assert taken is None, f"the real request was refused its slot: {taken}"
    assert running.cancelled() and latest_scores(cfg.state_dir / "nonstop.db") == {}  # the run stopped, storing nothing
