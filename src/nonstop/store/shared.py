"""Quota state shared by several nonstop instances through Redis (`[shared] redis_url`).

One instance that meets a usage limit tells the others, so none of them spends a request
discovering it again; when one sees the cloud back, all switch back. The latest snapshot
lives at `<prefix>quota` (read at start-up); changes are published on
`<prefix>events`. Redis is optional: without it each instance keeps its own state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("nonstop")


class SharedState:
    def __init__(self, url: str, prefix: str, apply: Callable[[dict[str, Any]], None]):
        import redis.asyncio as redis

        self.client = redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.key = prefix + "quota"
        self.channel = prefix + "events"
        self.origin = secrets.token_hex(8)
        self.apply = apply
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()
        self._last: asyncio.Task | None = None

    async def start(self) -> dict[str, Any] | None:
        """Subscribe, and return the fleet's current snapshot (if any)."""
        raw = await self.client.get(self.key)
        self._task = asyncio.ensure_future(self._listen())
        if raw:
            with contextlib.suppress(ValueError):
                doc = orjson.loads(raw)
                return doc.get("snapshot") if isinstance(doc, dict) else None
        return None

    async def _listen(self) -> None:
        while True:
            try:
                async with self.client.pubsub() as ps:
                    await ps.subscribe(self.channel)
                    async for msg in ps.listen():
                        if msg.get("type") != "message":
                            continue
                        try:
                            doc = orjson.loads(msg["data"])
                        except (ValueError, TypeError):
                            continue
                        if isinstance(doc, dict) and doc.get("origin") != self.origin and isinstance(doc.get("snapshot"), dict):
                            self.apply(doc["snapshot"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost connection must not stop the gateway
                log.warning("shared state: %s; retrying in 2 s", type(exc).__name__)
                await asyncio.sleep(2)

    def publish(self, snapshot: dict[str, Any]) -> None:
        payload = orjson.dumps({"origin": self.origin, "snapshot": snapshot})
        # In order: a "probing" published after the "serving" that followed it would
        # take the other instances out again.
        prev = self._last
        task = asyncio.ensure_future(self._after(prev, payload))
        self._last = task
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _after(self, prev: asyncio.Task | None, payload: bytes) -> None:
        if prev is not None:
            with contextlib.suppress(Exception):
                await prev
        await self._publish(payload)

    async def _publish(self, payload: bytes) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(self.key, payload)
                pipe.publish(self.channel, payload)
                await pipe.execute()
        except Exception as exc:
            log.warning("shared state: publish failed (%s)", type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for t in list(self._pending):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 2)
        with contextlib.suppress(Exception):
            await self.client.aclose()
