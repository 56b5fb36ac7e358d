"""Shadow comparison (opt-in, `[shadow] sample = 0.05`): how often would the local model
have done what the cloud did, measured on the user's own work.

A sampled fraction of the requests the cloud answered is replayed on a local backend
once the client has its whole answer and every local backend is idle. The user's answer
is never delayed or changed, and nothing leaves the machine. The two answers are compared
mechanically (quality/compare.py: the same tool with a valid input, the same stop reason,
the length ratio, the latency) and stored in the request log, so `status` and the
dashboard can show agreement per workload class. Shadow work yields at once: a real local
request cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson

from nonstop.backends.base import Reply
from nonstop.quality.compare import Answer, StreamAnswer, answer_of_message, compare
from nonstop.wire.sse import JSONEventDecoder

if TYPE_CHECKING:
    from nonstop.server.runtime import Runtime

log = logging.getLogger("nonstop")
MAX_WAITING = 8  # sampled requests waiting for an idle backend; more are not sampled
POLL = 0.5


class Tap:
    """What the client received from the cloud, summarised as it passes (sampled only)."""

    def __init__(self, reply: Reply):
        self.started = time.perf_counter()
        self.ms = 0.0
        self.stream = reply.stream
        self._stream = StreamAnswer()
        self._decoder = JSONEventDecoder()
        self._whole: list[bytes] = []
        self.complete = False
        source = reply.body
        reply.body = self._through(source)

    async def _through(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in source:
            if self.stream:
                self._stream.feed([(ev.event, data) for ev, data in self._decoder.feed(chunk)])
            else:
                self._whole.append(chunk)
            yield chunk
        self.ms = (time.perf_counter() - self.started) * 1000
        self.complete = True

    def answer(self) -> Answer | None:
        if not self.complete:
            return None
        if self.stream:  # a stream that failed or ended early is no answer to compare with
            if not self._stream.whole:
                return None
            self._stream.answer.ms = self.ms
            return self._stream.answer
        try:
            doc = orjson.loads(b"".join(self._whole))
        except orjson.JSONDecodeError:
            return None
        return answer_of_message(doc, self.ms) if isinstance(doc, dict) else None


class Shadow:
    def __init__(self, rt: Runtime, *, rng: Callable[[], float] = random.random):
        self.rt = rt
        self.cfg = rt.cfg.shadow
        self.rng = rng
        self.waiting = 0
        self.running: set[asyncio.Task[Any]] = set()
        self.preempted = 0

    def sample(self) -> bool:
        """Whether to shadow this request. A yes takes one of the MAX_WAITING places at
        once (a burst of requests sampled together cannot pass the cap while their answers
        are still streaming); `after` keeps it until a backend is free, `drop` gives it
        back."""
        if self.cfg.sample > 0 and self.waiting < MAX_WAITING and self.rng() < self.cfg.sample:
            self.waiting += 1
            return True
        return False

    def drop(self) -> None:
        """A sampled request that will not be replayed (its answer never came whole, the
        request could not be read) gives its place back."""
        self.waiting -= 1

    def after(self, req: dict[str, Any], tap: Tap, workload: str, request_id: str) -> None:
        """The client has its answer: compare it with a local one, in the background. The
        request was sampled: its place is kept for the replay, or given back."""
        spawned = False
        try:
            cloud = tap.answer()
            if cloud is not None:
                self.rt.spawn(self._replay(req, cloud, workload, request_id))
                spawned = True
        finally:
            if not spawned:
                self.drop()

    def preempt(self) -> list[asyncio.Task[Any]]:
        """A real local request is coming: shadow work gives its slot back at once (the
        tasks cancelled, for the caller to wait on: a cancel lands at their next await)."""
        cancelled = []
        for task in list(self.running):
            if not task.done():
                task.cancel()
                self.preempted += 1
                cancelled.append(task)
        return cancelled

    async def _replay(self, req: dict[str, Any], cloud: Answer, workload: str, request_id: str) -> None:
        try:
            backend = await self._idle_backend()
        finally:
            self.waiting -= 1
        if backend is None:
            return
        task = asyncio.ensure_future(self._ask(backend, req))
        self.running.add(task)
        try:
            local = await task
        except asyncio.CancelledError:
            return
        finally:
            self.running.discard(task)
        if local is None:
            return
        result = compare(cloud, local, [t for t in req.get("tools") or [] if isinstance(t, dict)])
        if self.rt.store is not None:
            self.rt.store.log_shadow({"ts": time.time(), "request_id": request_id, "workload": workload,
                                      "backend": backend.name, **result.as_dict()})
        self.rt.bus.publish({"type": "status"})

    async def _idle_backend(self) -> Any:
        """The configured (or first) local backend, once nothing local is in flight;
        None if that does not happen within [shadow] wait seconds."""
        deadline = time.monotonic() + self.cfg.wait
        while time.monotonic() < deadline:
            candidates = [b for b in self.rt.locals if not self.cfg.backend or b.name == self.cfg.backend]
            if candidates and all(b.state.inflight == 0 for b in self.rt.locals) and self.rt.inflight == 0:
                usable = [b for b in candidates if b.state.healthy is not False and not b.state.demoted]
                if usable and not usable[0].state.view().busy:
                    return usable[0]
            await asyncio.sleep(POLL)
        return None

    async def _ask(self, backend: Any, req: dict[str, Any]) -> Answer | None:
        started = time.perf_counter()
        health = backend.state.health()
        try:
            res = await backend.send_request({**req, "stream": False}, stream=False)
            if not isinstance(res, Reply):
                return None
            raw = b"".join([c async for c in res.body])
        finally:
            # A replay is not streamed, so the whole answer must come within the head's
            # deadline: a replay that fails says nothing of how the backend serves real
            # requests, and must not demote it for them.
            if backend.state.failures > health[0]:
                backend.state.set_health(health)
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(raw)
            if isinstance(doc, dict):
                return answer_of_message(doc, (time.perf_counter() - started) * 1000)
        return None
