"""A fleet through Redis: what sharing the cloud's state costs and how fast it travels.

    python benchmarks/fleet.py             the full run (about three minutes)
    python benchmarks/fleet.py --smoke     a short one

Three nonstop instances (A, B, C) in their default configuration plus `[shared] redis_url`
pointing at one real redis-server, a fourth without Redis, the fake upstream
(upstream.py) as the cloud and as their local server, all on 127.0.0.1. Measured:

- **propagation**: a fresh account (a new API key) gets a subscription-limit 429 on A.
  From the moment the upstream wrote that 429 (its clock; everything here shares one
  machine's clock) to the moment B's `/_nonstop/api/events` stream sends the status event
  in which that account is out: p50 and p99 over N accounts. Also from A's reply to its
  client to that event. Then B's next request for the account must not reach the cloud.
- **the request path with Redis on and off**: instance A and the instance without Redis,
  interleaved rounds of 50 KB JSON requests at concurrency 1 and 64 (the default
  configuration's cloud path; Redis is touched only on state changes, probes and local
  slots).
- **probes after a deadline**: a fresh account out until a reset two seconds away on all
  three instances; at the reset, three requests to each instance at once, the cloud slow
  to answer (1.5 s): how many of the nine reached the cloud (one probe is the design).

Writes results/<date>-fleet.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import hmac
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402
import run as bench  # noqa: E402
from harness import free_port, machine, percentile, source_fingerprint  # noqa: E402
from payload import CLAUDE_CODE_HEADERS, small_request  # noqa: E402

PREFIX = "nonstop:"


class Redis:
    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def label(redis_url: str, key: str) -> str:
    """The account label every instance of this fleet gives the key (nonstop's own rule:
    the salt comes from redis_url and key_prefix when none is configured)."""
    salt = hashlib.sha256(f"nonstop-accounts:{redis_url}:{PREFIX}".encode()).digest()
    return "key:" + hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()[:12]


class Events:
    """B's event stream: every status event, with the time it arrived and the accounts out."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, set[str]]] = []
        self.changed = asyncio.Event()

    async def follow(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url + "/_nonstop/api/events") as resp:
            event, data = "", []
            async for raw in resp.content:
                line = raw.rstrip(b"\r\n")
                if not line:
                    if event == "status" and data:
                        doc = orjson.loads(b"\n".join(data))
                        out = {a["account"] for a in doc.get("accounts", []) if a.get("state") == "out"}
                        self.seen.append((time.time(), out))
                        self.changed.set()
                    event, data = "", []
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data.append(line[5:].lstrip())

    async def first_out(self, account: str, since: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        i = since
        while time.monotonic() < deadline:
            while i < len(self.seen):
                at, out = self.seen[i]
                if account in out:
                    return at
                i += 1
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
        return None


def main_request() -> bytes:
    """A small request of the main class (a haiku model would be background work, which
    nonstop sends to a local backend first when it has one)."""
    return orjson.dumps({**small_request(), "model": "claude-sonnet-4-5"})


def headers_for(key: str, **extra: str) -> dict[str, str]:
    return {**CLAUDE_CODE_HEADERS, "x-api-key": key, **extra}


async def post(session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes) -> tuple[int, str, float]:
    async with session.post(url + "/v1/messages?beta=true", data=body, headers=headers) as resp:
        await resp.read()
        return resp.status, resp.headers.get("x-nonstop-backend", ""), time.time()


async def stats(session: aiohttp.ClientSession, upstream: str) -> dict[str, Any]:
    async with session.get(upstream + "/_stats") as resp:
        return orjson.loads(await resp.read())


async def propagation(urls: dict[str, str], upstream: str, redis_url: str, n: int) -> dict[str, Any]:
    body = main_request()
    rows = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        events = Events()
        follower = asyncio.ensure_future(events.follow(session, urls["B"]))
        await asyncio.sleep(0.5)
        for i in range(n):
            key = f"sk-ant-api03-fleet-propagation-{i:04d}-{time.time_ns()}"
            tag = f"prop-{i}"
            since = len(events.seen)
            status, backend, replied = await post(session, urls["A"], headers_for(
                key, **{"x-fake-mode": "limit", "x-bench-tag": tag}), body)
            arrived = await events.first_out(label(redis_url, key), since, timeout=10)
            limited = (await stats(session, upstream))["limited_at"].get(tag)
            b_status, b_backend, _ = await post(session, urls["B"], headers_for(key, **{"x-bench-tag": tag + "-b"}), body)
            counts = (await stats(session, upstream))["counts"]
            rows.append({"a_status": status, "a_backend": backend, "limited_at": limited, "a_replied": replied,
                         "b_event": arrived, "b_backend": b_backend, "b_status": b_status,
                         "b_cloud_requests": counts.get(f"tag {tag}-b", 0)})
        follower.cancel()
    ok = [r for r in rows if r["b_event"] is not None and r["limited_at"] is not None]
    from_429 = [(r["b_event"] - r["limited_at"]) * 1000 for r in ok]
    from_reply = [(r["b_event"] - r["a_replied"]) * 1000 for r in ok]
    return {
        "accounts": n, "seen": len(ok),
        "from_429_ms": {"p50": percentile(from_429, 50), "p99": percentile(from_429, 99), "max": max(from_429, default=None)},
        "from_reply_ms": {"p50": percentile(from_reply, 50), "p99": percentile(from_reply, 99)},
        "a_local": sum(1 for r in rows if r["a_backend"] not in ("cloud", "")),
        "b_local": sum(1 for r in rows if r["b_backend"] not in ("cloud", "")),
        "b_cloud_requests": sum(r["b_cloud_requests"] for r in rows),
        "rows": rows,
    }


async def probes(urls: dict[str, str], upstream: str, redis_url: str, n: int) -> dict[str, Any]:
    body = main_request()
    trials = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for i in range(n):
            key = f"sk-ant-api03-fleet-probe-{i:04d}-{time.time_ns()}"
            account = label(redis_url, key)
            await post(session, urls["A"], headers_for(key, **{"x-fake-mode": "limit", "x-fake-reset-in": "2",
                                                               "x-bench-tag": f"probe-{i}-429"}), body)
            until = 0.0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # every instance has the deadline
                found = []
                for url in urls.values():
                    async with session.get(url + "/_nonstop/api/status") as resp:
                        doc = orjson.loads(await resp.read())
                    found += [a for a in doc.get("accounts", []) if a["account"] == account and a["state"] == "out"]
                if len(found) == len(urls):
                    until = max(float(a.get("until") or 0) for a in found)
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(max(0.0, until - time.time()) + 0.05)
            tag = f"probe-{i}"
            results = await asyncio.gather(*(post(session, url, headers_for(
                key, **{"x-fake-delay": "1.5", "x-bench-tag": tag}), body) for url in urls.values() for _ in range(3)))
            counts = (await stats(session, upstream))["counts"]
            trials.append({"cloud_requests": counts.get(f"tag {tag}", 0),
                           "backends": [b for _, b, _ in results], "statuses": [s for s, _, _ in results]})
    return {"trials": n, "cloud_requests": [t["cloud_requests"] for t in trials],
            "exactly_one": sum(1 for t in trials if t["cloud_requests"] == 1), "detail": trials}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out-dir", help="where to write the results (default benchmarks/results)")
    args = p.parse_args()
    smoke = args.smoke
    results: dict[str, Any] = {"date": dt.date.today().isoformat(), "started": dt.datetime.now().isoformat(timespec="seconds"),
                               "mode": "smoke" if smoke else "full", "machine": machine(), "source": source_fingerprint(),
                               "notes": []}
    b = bench.Bench(argparse.Namespace(smoke=smoke, long=False, peers=False, profile=False, variants=False,
                                       growth_requests=0, out_dir=args.out_dir, strict=False))
    redis = Redis(b.work)
    try:
        b.start_upstream()
        b.lg = bench.LoadGen()
        shared = f'[shared]\nredis_url = "{redis.url}"\nkey_prefix = "{PREFIX}"\n'
        fleet = {name: b.start_nonstop(f"fleet-{name}", b.up["ok"], extra=shared) for name in ("A", "B", "C")}
        alone = b.start_nonstop("alone", b.up["ok"])
        urls = {name: p.url for name, p in fleet.items()}
        time.sleep(1.0)
        print("fleet: propagation", flush=True)
        results["propagation"] = asyncio.run(propagation(urls, b.up["ok"], redis.url, 10 if smoke else 100))
        print("fleet: probes after a deadline", flush=True)
        results["probes"] = asyncio.run(probes(urls, b.up["ok"], redis.url, 2 if smoke else 10))
        b.targets["redis-on"] = {"url": fleet["A"].url, "path": "/v1/messages?beta=true", "pid": fleet["A"].pid,
                                 "label": "nonstop with [shared] redis_url (instance A)"}
        b.targets["redis-off"] = {"url": alone.url, "path": "/v1/messages?beta=true", "pid": alone.pid,
                                  "label": "nonstop without Redis"}
        cost = []
        for stream, c in ((False, 1), (False, 64), (True, 64)):
            n = b.plan.requests[c]
            print(f"fleet: redis on/off, {'stream' if stream else 'json'} c={c} x{n} x{b.plan.rounds}", flush=True)
            cost.append({"stream": stream, "concurrency": c, "targets": b.rounds(
                ["redis-on", "redis-off"], b.plan.rounds, per_round=True, stream=stream, concurrency=c, requests=n)})
        results["redis_cost"] = cost
        results["config"] = fleet["A"].extra["config"]
    finally:
        results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        with open("/proc/loadavg") as fh:
            results["load_at_end"] = " ".join(fh.read().split()[:3])
        b.stop_all()
        redis.stop()
    out_dir = Path(args.out_dir) if args.out_dir else HERE / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = results["date"] + "-fleet" + ("-smoke" if smoke else "")
    (out_dir / f"{stem}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    md = render(results)
    (out_dir / f"{stem}.md").write_text(md)
    print(md)
    print(f"written: {out_dir / (stem + '.md')}")
    errors = [f"redis cost {name}: {t['errors']} failed" for sc in results.get("redis_cost", [])
              for name, t in sc["targets"].items() if t["errors"]]
    return 1 if errors else 0


def render(r: dict[str, Any]) -> str:
    f = report._fmt
    m = r["machine"]
    L = [f"# nonstop benchmarks: a fleet through Redis, {r['date']} ({r['mode']})", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']:,} MB RAM, Linux {m['kernel']}, Python {m['python']}; "
         f"load average {m['load_at_start']} at the start, {r.get('load_at_end', '?')} at the end. "
         f"Code: sha256 {r['source']['sha256']}…. Run: {r['started']} to {r.get('finished', '?')}. "
         "Three nonstop instances sharing one redis-server, a fourth without it, the fake upstream as "
         "cloud and local server; everything on 127.0.0.1.", ""]
    pr = r.get("propagation")
    if pr:
        a, rep_ = pr["from_429_ms"], pr["from_reply_ms"]
        L += ["## Propagation: a 429 on A, the state on B", "",
              f"{pr['accounts']} fresh accounts, one after the other; B's status event with the account out arrived "
              f"for {pr['seen']} of them.", "",
              *report._table(["from", "p50 ms", "p99 ms"], [
                  ["the upstream writing the 429 to A → B's status event", f(a["p50"]), f(a["p99"])],
                  ["A's reply to its client → B's status event", f(rep_["p50"]), f(rep_["p99"])]]),
              f"A answered {pr['a_local']} of {pr['accounts']} from its local backend after the 429; B then answered "
              f"{pr['b_local']} of {pr['accounts']} requests for those accounts locally, and the cloud saw "
              f"**{pr['b_cloud_requests']}** requests from B for them.", ""]
    cost = r.get("redis_cost")
    if cost:
        rows = []
        for sc in cost:
            on, off = sc["targets"]["redis-on"], sc["targets"]["redis-off"]
            pairs = [x - y for x, y in zip(on.get("cpu_rounds") or [], off.get("cpu_rounds") or [], strict=False)]
            rows.append(["stream" if sc["stream"] else "json", str(sc["concurrency"]), report._pair(on["ttfb_p50"], on["ttfb_p99"]),
                         report._pair(off["ttfb_p50"], off["ttfb_p99"]),
                         report._pair(on["ttfb_p50"] - off["ttfb_p50"], on["ttfb_p99"] - off["ttfb_p99"]),
                         f(report._cpu(on)), f(report._cpu(off)), f(percentile(pairs, 50)) if pairs else "—",
                         f(on.get("others_cores"), 2)])
        L += ["## The request path with Redis on and off", "",
              "50 KB Claude Code-shaped requests, interleaved rounds; times in ms, CPU in µs per request "
              "(on − off: the median of the round-by-round differences).", "",
              *report._table(["mode", "conc.", "TTFB p50 / p99, Redis on", "TTFB p50 / p99, off", "on − off p50 / p99",
                              "CPU on", "CPU off", "CPU on − off", "other load (cores)"], rows)]
    pb = r.get("probes")
    if pb:
        L += ["## Probes after a deadline, three instances", "",
              f"{pb['trials']} trials: an account out on all three instances until a reset two seconds away; at the "
              "reset, three requests to each instance at once, the cloud taking 1.5 s to answer. Cloud requests "
              f"per trial: {', '.join(str(x) for x in pb['cloud_requests'])}; exactly one in "
              f"**{pb['exactly_one']} of {pb['trials']}**.", ""]
    L += ["## How this was run", "", f"`python benchmarks/fleet.py{' --smoke' if r['mode'] == 'smoke' else ''}`. "
          "Instance A's config (ports vary):", "", "```toml", r.get("config", "").strip(), "```", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
