"""Local models loaded before they are needed, and kept loaded while the cloud is out.

A model that is not loaded costs seconds to minutes on the first request, and that
request is the one the user waits for. The Warmer loads the local models in the
background once the cloud is about to stop serving:

    when     any account's cloud is out (or being probed), a quota window is forecast to
             run out (the forecast's `conserving`), or a window's utilization reaches
             [warmup] at_utilization; it keeps them warm for as long as that holds;
    Ollama   loads the model with a keep_alive, renewed halfway through it, so a model
             nonstop stops asking for lapses on its own;
    llama    wakes a sleeping llama-server, and touches it every touch_every seconds
             (sooner once it was seen to fall asleep between two touches);
    embedded starts the embedded llama-server if it is stopped, then as llama-server.

Each backend's `BackendState.warmth` says "cold", "warming" or "warm": the status
document's `local[]` entries and the dashboard show it. The runtime's readings of the
server (/props `is_sleeping`, Ollama /api/ps) set cold and warm; the Warmer sets warming
while a load is under way, and warm when it is done.

The runtime wires it with two calls: `spawn(warmer.run())` once the local backends exist,
and `warmer.nudge()` whenever a cloud state changes, so that a failover warms at once
rather than at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from nonstop.backends import warmup
from nonstop.backends.local import LocalBackend
from nonstop.backends.warmup import Starter, Warmed
from nonstop.config.model import WarmupConfig
from nonstop.routing.view import CloudState, CloudView

log = logging.getLogger("nonstop")
TICK = 0.5
# After a failed warm-up: 5 s, doubling to a minute.
RETRY = 5.0
RETRY_MAX = 60.0
# A server reading at most this old that says "cold" right after a warm-up is believed.
FRESH = 10.0


def warm_reason(cfg: WarmupConfig, clouds: Iterable[CloudView]) -> str:
    """Why the local models should be warm now, in words; "" when they need not be."""
    reason = ""
    for c in clouds:
        if c.state is not CloudState.SERVING:
            return "the cloud is out"
        if c.conserving:
            reason = "a quota window is forecast to run out before it resets"
        elif not reason:
            used = [w.utilization for w in c.windows if w.utilization is not None]
            if used and max(used) >= cfg.at_utilization:
                reason = f"a quota window is {max(used):.0%} used"
    return reason


@dataclass
class Warmth:
    """One backend's warm-up state."""

    warmed_at: float = 0.0  # clock() of the last warm-up that succeeded in this episode
    due: float = 0.0  # clock() when the next warm-up, renewal or touch is due
    failures: int = 0
    error: str = ""
    seconds: float | None = None  # how long the last load took
    touch_every: float = 0.0  # llama-server: the gap between touches
    loading: bool = False  # the task under way loads a cold model (not a renewal)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Loads:
    """The I/O of warming, one call per kind of server: the seam tests replace."""

    def __init__(self, session: aiohttp.ClientSession):
        self.session = session

    async def ollama(self, b: LocalBackend, model: str, keep_alive: float) -> Warmed:
        return await warmup.warm_ollama(self.session, b.base, model, keep_alive=keep_alive, headers=_auth(b))

    async def llamacpp(self, b: LocalBackend) -> Warmed:
        return await warmup.wake_llamacpp(self.session, b.base, headers=_auth(b))

    async def embedded(self, server: Starter) -> Warmed:
        return await warmup.start_embedded(server)


class Warmer:
    def __init__(self, cfg: WarmupConfig, clouds: Callable[[], Iterable[CloudView]],
                 backends: Callable[[], Sequence[LocalBackend]], loads: Loads, *,
                 embedded: Starter | None = None, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clouds = clouds
        self.backends = backends
        self.loads = loads
        self.embedded = embedded
        self.clock = clock
        self.reason = ""
        self.state: dict[str, Warmth] = {}
        self._nudged = asyncio.Event()
        # One model loads at a time: two loading at once compete for the disk and memory,
        # and the first backend in the user's order is the one needed first.
        self._loading = asyncio.Lock()

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        if not self.cfg.enabled:
            return
        try:
            while True:
                self.tick()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK):
                        await self._nudged.wait()
                self._nudged.clear()
        finally:
            for w in self.state.values():
                if w.task is not None:
                    w.task.cancel()

    def nudge(self) -> None:
        """Something changed (the cloud went out, a forecast turned): look now."""
        self._nudged.set()

    def tick(self) -> None:
        reason = warm_reason(self.cfg, self.clouds())
        if reason != self.reason:
            if reason and not self.reason:
                log.info("warming the local models: %s", reason)
            elif not reason:
                log.info("no longer keeping the local models warm: the cloud is serving")
                self.state = {name: w for name, w in self.state.items() if w.task is not None}
            self.reason = reason
        for b in self.backends():
            w = self.state.setdefault(b.name, Warmth(touch_every=self.cfg.touch_every))
            if w.task is not None:
                if w.loading:  # a reading of the server taken mid-load may have said "cold"
                    b.state.warmth = "warming"
                continue
            if not self.reason:
                continue
            job = self._job(b, w)
            if job is not None:
                w.task = asyncio.ensure_future(self._warm(b, w, job))

    # --- deciding ------------------------------------------------------------------------

    def kind(self, b: LocalBackend) -> str:
        """"embedded", "ollama", "llamacpp", or "" for a server that needs no warming
        (vLLM keeps its model loaded) or whose kind is not known yet."""
        if self.embedded is not None and b.name == "embedded":
            return "embedded"
        kind = b.state.report.kind
        return kind if kind in ("ollama", "llamacpp") else ""

    def _job(self, b: LocalBackend, w: Warmth) -> str | None:
        kind = self.kind(b)
        if not kind:
            return None
        now = self.clock()
        if now >= w.due:
            return kind
        if w.failures or not w.warmed_at:
            return None
        # The server's own reading, taken after the last warm-up, says the model went.
        r = b.state.report
        gone = r.sleeping is True if kind != "ollama" else r.loaded is False
        # A reading taken a second after the warm-up was surely asked for after it.
        if gone and r.at > w.warmed_at + 1.0 and now - r.at < FRESH:
            if kind != "ollama":
                # It fell asleep between two touches: touch it twice as often as that.
                w.touch_every = max(1.0, min(w.touch_every, (r.at - w.warmed_at) / 2))
            return kind
        return None

    # --- doing ---------------------------------------------------------------------------

    async def _warm(self, b: LocalBackend, w: Warmth, kind: str) -> None:
        w.loading = cold = b.state.warmth != "warm"
        try:
            if cold:
                b.state.warmth = "warming"
                async with self._loading:
                    done = await self._load(b, kind)
            else:
                done = await self._load(b, kind)
        finally:
            w.task, w.loading = None, False
        now = self.clock()
        if done.ok:
            self._warmed(b, w, kind, done, now, cold)
        else:
            self._failed(b, w, done, now)

    async def _load(self, b: LocalBackend, kind: str) -> Warmed:
        if kind == "ollama":
            model = b.cfg.model or b.state.report.model or b.state.model
            return await self.loads.ollama(b, model, self.cfg.keep_alive)
        if kind == "embedded":
            assert self.embedded is not None
            started = await self.loads.embedded(self.embedded)
            if not started.ok:
                return started
            woke = await self.loads.llamacpp(b)
            return Warmed(woke.ok, started.seconds + woke.seconds, woke.detail)
        return await self.loads.llamacpp(b)

    def _warmed(self, b: LocalBackend, w: Warmth, kind: str, done: Warmed, now: float, cold: bool) -> None:
        if cold:
            w.seconds = done.seconds
            if done.seconds >= 1.0:
                log.info("%s: model loaded in %.1fs", b.name, done.seconds)
        w.warmed_at, w.failures, w.error = now, 0, ""
        w.due = now + (self.cfg.keep_alive / 2 if kind == "ollama" else w.touch_every)
        b.state.warmth = "warm"

    def _failed(self, b: LocalBackend, w: Warmth, done: Warmed, now: float) -> None:
        if not w.failures:
            log.warning("%s: could not warm the model: %s", b.name, done.detail)
        w.failures += 1
        w.error = done.detail
        w.due = now + min(RETRY_MAX, RETRY * 2 ** min(w.failures - 1, 4))
        if b.state.warmth == "warming":
            b.state.warmth = "cold"

    # --- reading ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What the warmer is doing, for a status document."""
        return {
            "reason": self.reason,
            "backends": {name: {"warming": w.task is not None, "load_seconds": w.seconds,
                                "error": w.error, "failures": w.failures}
                         for name, w in self.state.items()},
        }


def _auth(b: LocalBackend) -> dict[str, str]:
    """The backend's own key, if it has one (never a cloud credential)."""
    return {k: v for k, v in b.headers().items() if k in ("x-api-key", "authorization")}
