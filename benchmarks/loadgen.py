"""The load generator: an aiohttp client in its own process, driven by JSON lines.

run.py starts one and sends it commands on stdin; each answer is one JSON line on stdout.

    {"op": "run", "url": "http://127.0.0.1:9100", "path": "/v1/messages?beta=true",
     "payload": "large" | "small" | "openai", "stream": true, "concurrency": 16,
     "requests": 2000, "warmup": 64, "max_seconds": 60, "headers": {...}, "stagger": 0}
      -> {"ttfb": [ms...], "total": [ms...], "wall": s, "errors": n, "error_sample": "...",
          "backends": {"cloud": n, ...}}
      with "count_deltas": true, also each stream's content deltas ("deltas") and their
      rate after the first byte ("rates", deltas per second)
    {"op": "hold", "url": ..., "streams": 200, "hold": 60}   open slow streams, answer once
      -> {"opened": n}                                        every one has its first byte
    {"op": "release"} -> {"released": n}
    {"op": "quit"}

Every request has a timeout and every round a request count and a time limit.
Time to first byte is measured to the first body bytes (for a stream: the first event
chunk), time to completion to the end of the body.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from payload import (  # noqa: E402
    CLAUDE_CODE_HEADERS,
    claude_code_request,
    small_request,
    to_openai_chat,
)

BODIES: dict[tuple[str, bool], bytes] = {}
DELTA = b"event: content_block_delta"


def body_for(kind: str, stream: bool) -> bytes:
    key = (kind, stream)
    if key not in BODIES:
        if kind == "large":
            req = claude_code_request(stream=stream)
        elif kind == "small":
            req = small_request(stream=stream)
        elif kind == "openai":
            req = to_openai_chat(claude_code_request(stream=stream))
        else:
            raise ValueError(f"unknown payload {kind!r}")
        BODIES[key] = orjson.dumps(req)
    return BODIES[key]


async def run(cmd: dict[str, Any]) -> dict[str, Any]:
    url = cmd["url"].rstrip("/") + cmd.get("path", "/v1/messages?beta=true")
    stream = bool(cmd.get("stream"))
    body = body_for(cmd.get("payload", "large"), stream)
    headers = {**CLAUDE_CODE_HEADERS, **cmd.get("headers", {})}
    concurrency = int(cmd["concurrency"])
    total_requests = int(cmd["requests"])
    warmup = int(cmd.get("warmup", concurrency))
    max_seconds = float(cmd.get("max_seconds", 60))
    expect = int(cmd.get("expect_status", 200))
    ttfb: list[float] = []
    total: list[float] = []
    # With "count_deltas": each stream's content deltas per second after its first byte.
    count = bool(cmd.get("count_deltas"))
    rates: list[float] = []
    deltas: list[int] = []
    backends: dict[str, int] = {}
    errors = 0
    error_sample = ""
    issued = 0
    began = time.perf_counter()

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=float(cmd.get("timeout", 30)))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                     skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def one(record: bool) -> None:
            nonlocal errors, error_sample
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    first = await resp.content.readany()
                    t1 = time.perf_counter()
                    tail = first
                    n = first.count(DELTA) if count else 0
                    while True:
                        chunk = await resp.content.readany()
                        if not chunk:
                            break
                        if count:
                            n += (tail[-len(DELTA) + 1 :] + chunk).count(DELTA)
                        tail = (tail + chunk)[-400:]
                    t2 = time.perf_counter()
                    ok = resp.status == expect and (not stream or resp.status != 200 or b"message_stop" in tail
                                                    or b"[DONE]" in tail)
                    if record:
                        b = resp.headers.get("x-nonstop-backend", "-")
                        backends[b] = backends.get(b, 0) + 1
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if record:
                    errors += 1
                    error_sample = error_sample or f"{type(exc).__name__}: {exc}"[:300]
                return
            if not record:
                return
            if not ok:
                errors += 1
                error_sample = error_sample or f"HTTP {resp.status}: {tail[-200:]!r}"
                return
            ttfb.append(round((t1 - t0) * 1000, 4))
            total.append(round((t2 - t0) * 1000, 4))
            if count:
                deltas.append(n)
                rates.append(round(n / (t2 - t1), 3) if t2 > t1 else 0.0)

        # Warm-up: open the connections and let both sides settle; not recorded.
        sem = asyncio.Semaphore(concurrency)

        async def warm() -> None:
            async with sem:
                await one(False)

        await asyncio.gather(*(warm() for _ in range(warmup)))

        deadline = time.monotonic() + max_seconds

        stagger = float(cmd.get("stagger", 0))

        async def worker(k: int) -> None:
            nonlocal issued
            if stagger:
                # Spread the clients' start times so that long requests do not arrive in
                # synchronized bursts (real sessions are not in step).
                await asyncio.sleep(stagger * k / concurrency)
            while issued < total_requests and time.monotonic() < deadline:
                issued += 1
                await one(True)

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - start
    return {"ttfb": ttfb, "total": total, "rates": rates, "deltas": deltas, "wall": wall, "elapsed": time.perf_counter() - began, "errors": errors, "error_sample": error_sample,
            "issued": issued, "backends": backends}


class Holder:
    """Slow streams held open (memory per open stream)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task] = []
        self.session: aiohttp.ClientSession | None = None

    async def hold(self, cmd: dict[str, Any]) -> dict[str, Any]:
        url = cmd["url"].rstrip("/") + cmd.get("path", "/v1/messages?beta=true")
        n = int(cmd["streams"])
        hold = float(cmd.get("hold", 60))
        headers = {**CLAUDE_CODE_HEADERS, "x-fake-mode": "slow", "x-fake-hold": str(hold), "x-fake-interval": "1"}
        body = body_for(cmd.get("payload", "large"), True)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=hold + 30))
        opened = asyncio.Semaphore(0)
        failed: list[str] = []

        async def one() -> None:
            assert self.session is not None
            try:
                async with self.session.post(url, data=body, headers=headers) as resp:
                    await resp.content.readany()
                    opened.release()
                    while await resp.content.readany():
                        pass
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failed.append(f"{type(exc).__name__}: {exc}"[:200])
                opened.release()

        # One at a time: each is open (its first bytes are in) before the next is sent, so
        # that the gateway never holds more than one request being read and parsed, and
        # what its memory grows by is what the open streams hold.
        deadline = time.monotonic() + 120
        got = 0
        for _ in range(n):
            self.tasks.append(asyncio.ensure_future(one()))
            try:
                await asyncio.wait_for(opened.acquire(), timeout=max(0.1, deadline - time.monotonic()))
                got += 1
            except TimeoutError:
                break
        return {"opened": got - len(failed), "failed": len(failed), "error_sample": failed[0] if failed else ""}

    async def release(self) -> dict[str, Any]:
        n = len(self.tasks)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        if self.session is not None:
            await self.session.close()
            self.session = None
        return {"released": n}


async def main() -> None:
    loop = asyncio.get_running_loop()
    holder = Holder()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = orjson.loads(line)
        op = cmd.get("op")
        if op == "run":
            out = await run(cmd)
        elif op == "together":  # several targets driven at once, each by its own clients
            out = {"results": await asyncio.gather(*(run(c) for c in cmd["runs"]))}
        elif op == "hold":
            out = await holder.hold(cmd)
        elif op == "release":
            out = await holder.release()
        elif op == "quit":
            await holder.release()
            break
        else:
            out = {"error": f"unknown op {op!r}"}
        sys.stdout.buffer.write(orjson.dumps(out) + b"\n")
        sys.stdout.flush()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
