"""The warm-up policy in process: a fake clock, fake warm-up I/O through the Loads seam,
real backends' state. A case is "this cloud, these server readings, this time" in, "these
warm-ups, this warmth" out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nonstop.backends.local_anthropic import AnthropicLocalBackend
from nonstop.backends.warmup import Warmed
from nonstop.config import LocalBackendConfig
from nonstop.config.model import WarmupConfig
from nonstop.routing.backend_state import ServerReport
from nonstop.routing.view import CloudState, CloudView, WindowForecast
from nonstop.server.warmer import Loads, Warmer, warm_reason
from tests.support.fake_ollama import FAKE, MODEL, ollama_app
from tests.support.inprocess import local_runtime, readings_due

T0 = 1_800_000_000.0
CFG = WarmupConfig(at_utilization=0.8, keep_alive=600.0, touch_every=20.0)
SERVING = CloudView()
OUT = CloudView(state=CloudState.OUT)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def used(*utilizations: float | None) -> CloudView:
    return CloudView(windows=tuple(WindowForecast(w, u) for w, u in zip(("5h", "7d"), utilizations, strict=False)))


@pytest.mark.parametrize(("clouds", "reason"), [
    ([SERVING], ""),
    ([], ""),
    ([used(0.5, 0.3)], ""),
    ([used(None, None)], ""),
    ([used(0.79, None)], ""),
    ([used(0.5, 0.85)], "a quota window is 85% used"),
    ([CloudView(conserving=True)], "a quota window is forecast to run out before it resets"),
    ([OUT], "the cloud is out"),
    ([CloudView(state=CloudState.PROBING)], "the cloud is out"),
    # Several accounts: the strongest reason of any of them.
    ([SERVING, used(0.9), OUT], "the cloud is out"),
    ([used(0.9), CloudView(conserving=True)], "a quota window is forecast to run out before it resets"),
])
def test_when_to_warm(clouds: list[CloudView], reason: str) -> None:
    assert warm_reason(CFG, clouds) == reason


class FakeLoads(Loads):
    """Records each warm-up; answers from a script (ok by default), optionally held
    until the test lets it finish."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.answers: list[Warmed] = []
        self.gate: asyncio.Event | None = None
        self.running = 0
        self.most_at_once = 0

    async def _answer(self, kind: str, name: str, arg: Any = None) -> Warmed:
        self.calls.append((kind, name, arg))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return self.answers.pop(0) if self.answers else Warmed(True, 2.5)
        finally:
            self.running -= 1

    async def ollama(self, b: Any, model: str, keep_alive: float) -> Warmed:
        return await self._answer("ollama", b.name, (model, keep_alive))

    async def llamacpp(self, b: Any) -> Warmed:
        return await self._answer("llamacpp", b.name)

    async def embedded(self, server: Any) -> Warmed:
        return await self._answer("embedded", "embedded")


def backend(name: str, kind: str, clock: Clock, model: str = "") -> AnthropicLocalBackend:
    b = AnthropicLocalBackend(LocalBackendConfig(name=name, url="http://127.0.0.1:1", model=model),
                              None, clock=clock)  # type: ignore[arg-type]  # no request is sent
    b.state.reported(ServerReport(kind=kind, model=model))
    return b


class World:
    def __init__(self, *backends: tuple[str, str], embedded: Any = None) -> None:
        self.clock = Clock()
        self.clouds = [SERVING]
        self.loads = FakeLoads()
        self.backends = [backend(n, k, self.clock, model="qwen2.5-coder:7b" if k == "ollama" else "") for n, k in backends]
        self.warmer = Warmer(CFG, lambda: self.clouds, lambda: self.backends, self.loads, embedded=embedded,
                             clock=self.clock)

    def b(self, name: str) -> AnthropicLocalBackend:
        return next(b for b in self.backends if b.name == name)

    async def tick(self, advance: float = 0.0) -> None:
        """Move the clock, decide, and let the warm-ups finish (unless gated)."""
        self.clock.now += advance
        self.warmer.tick()
        for _ in range(5):
            await asyncio.sleep(0)

    def report(self, name: str, **fields: Any) -> None:
        b = self.b(name)
        b.state.reported(ServerReport(kind=b.state.report.kind, model=b.state.report.model, **fields))

    def kinds(self) -> list[str]:
        return [c[0] for c in self.loads.calls]


async def test_nothing_is_warmed_while_the_cloud_serves() -> None:
    w = World(("ollama", "ollama"), ("llama", "llamacpp"))
    await w.tick()
    await w.tick(3600)
    assert w.loads.calls == []
    assert w.warmer.reason == ""


async def test_the_cloud_going_out_loads_each_model_and_shows_warming_then_warm() -> None:
    w = World(("ollama", "ollama"), ("llama", "llamacpp"))
    w.report("ollama", loaded=False)
    w.report("llama", sleeping=True)
    assert w.b("ollama").state.warmth == "cold"
    w.loads.gate = asyncio.Event()
    w.clouds = [OUT]
    await w.tick()
    assert w.warmer.reason == "the cloud is out"
    assert [b.state.warmth for b in w.backends] == ["warming", "warming"]
    # A reading of the server taken mid-load says "cold" again; the warmer keeps "warming".
    w.report("ollama", loaded=False)
    await w.tick(0.5)
    assert w.b("ollama").state.warmth == "warming"
    w.loads.gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert [b.state.warmth for b in w.backends] == ["warm", "warm"]
    assert w.loads.calls[0] == ("ollama", "ollama", ("qwen2.5-coder:7b", 600.0))
    assert sorted(w.kinds()) == ["llamacpp", "ollama"]
    assert w.warmer.describe()["backends"]["ollama"]["load_seconds"] == 2.5


async def test_one_model_loads_at_a_time_in_the_users_order() -> None:
    w = World(("first", "ollama"), ("second", "ollama"))
    w.report("first", loaded=False)
    w.report("second", loaded=False)
    w.clouds = [OUT]
    w.loads.gate = asyncio.Event()
    await w.tick()
    assert [c[1] for c in w.loads.calls] == ["first"]
    w.loads.gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert [c[1] for c in w.loads.calls] == ["first", "second"]
    assert w.loads.most_at_once == 1


async def test_ollama_keep_alive_is_renewed_halfway_while_the_cloud_is_out() -> None:
    w = World(("ollama", "ollama"))
    w.clouds = [OUT]
    await w.tick()
    assert len(w.loads.calls) == 1
    await w.tick(299)
    assert len(w.loads.calls) == 1
    w.loads.gate = asyncio.Event()
    await w.tick(1)  # 300 s: half of keep_alive
    assert len(w.loads.calls) == 2
    assert w.b("ollama").state.warmth == "warm"  # a renewal of a warm model is not "warming"
    w.loads.gate.set()
    await w.tick()


async def test_a_model_that_went_away_is_loaded_again_at_once() -> None:
    w = World(("ollama", "ollama"))
    w.clouds = [OUT]
    await w.tick()
    await w.tick(30)
    assert len(w.loads.calls) == 1
    w.report("ollama", loaded=False)  # evicted (another model took the memory)
    await w.tick()
    assert len(w.loads.calls) == 2
    assert w.b("ollama").state.warmth == "warm"


async def test_llamacpp_is_touched_and_touched_sooner_once_seen_asleep() -> None:
    w = World(("llama", "llamacpp"))
    w.clouds = [OUT]
    await w.tick()
    assert len(w.loads.calls) == 1
    await w.tick(19)
    assert len(w.loads.calls) == 1
    await w.tick(1)  # touch_every = 20
    assert len(w.loads.calls) == 2
    # It fell asleep 6 s after that touch (its --sleep-idle-seconds is shorter than 20).
    await w.tick(6)
    w.report("llama", sleeping=True)
    await w.tick()
    assert len(w.loads.calls) == 3
    assert w.warmer.state["llama"].touch_every == 3.0
    await w.tick(3)
    assert len(w.loads.calls) == 4


async def test_a_failed_warm_up_is_retried_with_backoff_and_leaves_the_backend_cold() -> None:
    w = World(("ollama", "ollama"))
    w.report("ollama", loaded=False)
    w.clouds = [OUT]
    w.loads.answers = [Warmed(False, 0.1, "HTTP 404: model 'x' not found"), Warmed(False, 0.1, "again")]
    await w.tick()
    assert w.b("ollama").state.warmth == "cold"
    assert w.warmer.describe()["backends"]["ollama"]["error"] == "HTTP 404: model 'x' not found"
    await w.tick(4.9)
    assert len(w.loads.calls) == 1
    await w.tick(0.1)  # 5 s
    assert len(w.loads.calls) == 2
    await w.tick(9.9)
    assert len(w.loads.calls) == 2
    await w.tick(0.1)  # then 10 s; this one succeeds
    assert len(w.loads.calls) == 3
    assert w.b("ollama").state.warmth == "warm"
    assert w.warmer.state["ollama"].failures == 0


async def test_the_cloud_serving_again_stops_the_renewals() -> None:
    w = World(("ollama", "ollama"))
    w.clouds = [OUT]
    await w.tick()
    w.clouds = [SERVING]
    await w.tick(300)
    await w.tick(3600)
    assert len(w.loads.calls) == 1
    assert w.warmer.reason == ""
    # The next episode starts afresh.
    w.clouds = [CloudView(conserving=True)]
    await w.tick()
    assert len(w.loads.calls) == 2


async def test_servers_that_need_no_warming_are_left_alone() -> None:
    w = World(("vllm", "vllm"), ("unknown", ""))
    w.clouds = [OUT]
    await w.tick()
    assert w.loads.calls == []
    assert [b.state.warmth for b in w.backends] == ["", ""]


async def test_the_embedded_server_is_started_then_woken() -> None:
    server = object()
    w = World(("embedded", ""), embedded=server)
    w.clouds = [OUT]
    await w.tick()
    assert w.kinds() == ["embedded", "llamacpp"]
    assert w.b("embedded").state.warmth == "warm"


async def test_run_warms_at_a_nudge_and_cancels_its_loads_when_stopped() -> None:
    w = World(("ollama", "ollama"))
    w.loads.gate = asyncio.Event()
    task = asyncio.ensure_future(w.warmer.run())
    await asyncio.sleep(0.01)
    assert w.loads.calls == []
    w.clouds = [OUT]
    w.warmer.nudge()
    await asyncio.sleep(0.05)  # well under the tick: the nudge did it
    assert len(w.loads.calls) == 1
    load = w.warmer.state["ollama"].task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert load is not None and load.cancelled()


async def test_disabled_does_nothing() -> None:
    w = World(("ollama", "ollama"))
    w.warmer.cfg = WarmupConfig(enabled=False)
    w.clouds = [OUT]
    await asyncio.wait_for(w.warmer.run(), 1)
    assert w.loads.calls == []


async def test_the_warmer_does_not_reload_an_ollama_model_every_reading(serve, tmp_path: Path) -> None:
    """On an Ollama with several models pulled, the load readings follow the backend's own
    model, so once the warmer has loaded it the model reads as loaded: the keep-alive is
    renewed halfway through, not posted again at every reading, and the model shows warm."""
    app = ollama_app(load_seconds=0, others=["llama3.2:3b"])
    url = await serve(app)
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        rt = local_runtime(tmp_path, session, [LocalBackendConfig(name="qwen", url=url, model=MODEL)], clock=clock)
        b = rt.locals[0]
        warmer = Warmer(WarmupConfig(), lambda: [OUT], lambda: rt.locals, Loads(session), clock=clock)
        due = readings_due()
        known = await rt._watch_once(b, None, due)
        for _ in range(15):  # 30 s of the runtime's readings, the cloud out all along
            warmer.tick()
            for _ in range(100):
                await asyncio.sleep(0)
                if all(w.task is None for w in warmer.state.values()):
                    break
            await asyncio.sleep(0.01)
            clock.now += 2.0
            known = await rt._watch_once(b, known, due)
    loads = [c for c in app[FAKE].calls if c["path"] == "/api/generate"]
    assert len(loads) <= 2, f"{len(loads)} loads of a model that stayed loaded, in 30 s"
    assert b.state.warmth == "warm"
