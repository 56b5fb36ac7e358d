"""The fleet's Redis client, without a Redis: what it does when Redis flaps."""

from __future__ import annotations

import asyncio

from nonstop.store.shared import SharedState


async def test_a_reconcile_that_meets_a_lost_redis_is_logged_and_tried_again(monkeypatch, caplog):
    calls: list[int] = []

    async def reconcile() -> None:
        calls.append(1)
        raise ConnectionError("Error while reading from 127.0.0.1:6379 : (104, 'Connection reset by peer')")

    shared = SharedState("redis://127.0.0.1:1/0", "test:", apply=lambda *a: None, info=dict, on_reconnect=reconcile)

    async def ping() -> bool:
        return True

    monkeypatch.setattr(shared.client, "ping", ping)
    shared._tasks.add(asyncio.ensure_future(asyncio.sleep(3600)))  # started: it reconciles on return
    try:
        assert await shared._check() is True  # Redis answers again: a reconcile is spawned
        spawned = [t for t in shared._tasks if not t.get_coro().__qualname__.startswith("sleep")]
        await asyncio.gather(*spawned)  # it must not end in an exception (logged as a traceback)
        assert calls == [1] and shared.available is False
        assert any("reconciling with Redis" in r.getMessage() for r in caplog.records)
        assert await shared._check() is True and len(calls) == 1  # the next check reconciles again
        await asyncio.gather(*[t for t in shared._tasks if not t.get_coro().__qualname__.startswith("sleep")])
        assert calls == [1, 1]
    finally:
        for t in shared._tasks:
            t.cancel()
        await shared.client.aclose()
