"""The first local answer after a failover, from a cold and from a warmed local model.

    python benchmarks/warm_failover.py                    5 rounds of each, both servers
    python benchmarks/warm_failover.py --rounds 3 --ollama-load 20 --label slow-disk

nonstop runs as a real process in front of the fake cloud (tests/support/fake_cloud.py)
in subscription-limit mode, so every request is refused with a quota 429 and fails over
to the one local backend. Two local servers, one at a time:

    llama-server   the bundled SmolLM2-135M with --sleep-idle-seconds 2 (and --no-slots,
                   so that nonstop's load readings do not wake it): cold is asleep, its
                   model unloaded
    Ollama         the scripted Ollama (tests/support/fake_ollama.py), whose load takes
                   --ollama-load seconds, standing in for a 7B model read from disk:
                   cold is unloaded

Each round makes the model cold, then either sends the request at once (cold) or first
lets server/warmer.py warm it as it does when the cloud goes out (warm) and then sends
it. The request is small and streamed ("Reply with the word pong.", max_tokens 16), so
the time is the failover and the model's load, not prompt processing. Measured at the
client: the time to the first text delta and to the end of the answer. Rounds
alternate cold and warm. Writes results/<date>-warm-failover[-label].md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from harness import machine, median, source_fingerprint  # noqa: E402

from nonstop.backends import server_report  # noqa: E402
from nonstop.backends.registry import make_local_backend  # noqa: E402
from nonstop.config import LocalBackendConfig  # noqa: E402
from nonstop.config.model import WarmupConfig  # noqa: E402
from nonstop.routing.backend_state import ServerReport  # noqa: E402
from nonstop.routing.view import CloudState, CloudView  # noqa: E402
from nonstop.server.warmer import Loads, Warmer  # noqa: E402
from tests.integration.llama import start_llama_server  # noqa: E402
from tests.support import procs, rawhttp  # noqa: E402
from tests.support.config import nonstop_config  # noqa: E402
from tests.support.fake_ollama import MODEL  # noqa: E402

SLEEP_AFTER = 2
REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": True,
           "messages": [{"role": "user", "content": "Reply with the word pong."}]}


async def ask(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """One streamed request through nonstop: seconds to the first text delta and to the end."""
    started = time.perf_counter()
    first = None
    async with session.post(url + "/v1/messages", data=orjson.dumps(REQUEST), headers={
            "content-type": "application/json", "x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01"},
            timeout=aiohttp.ClientTimeout(total=600)) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:300]!r}")
        backend = r.headers.get("x-nonstop-backend", "")
        async for line in r.content:
            if first is None and line.startswith(b"data:") and b"text_delta" in line:
                first = time.perf_counter() - started
    return {"first_text": first if first is not None else float("nan"), "total": time.perf_counter() - started,
            "local": float(backend not in ("", "cloud"))}


async def warm(kind: str, cfg: LocalBackendConfig, session: aiohttp.ClientSession) -> float:
    """Warm the backend as the Warmer does once the cloud is out; seconds until warm. The
    server's kind is given, as the runtime knows it: identifying it again would wake a
    llama-server (/apply-template does)."""
    b = make_local_backend(cfg, session)
    known = ServerReport(kind=kind, model=cfg.model)
    warmer = Warmer(WarmupConfig(), lambda: [CloudView(state=CloudState.OUT)], lambda: [b], Loads(session))
    b.state.reported(await server_report.read_load(session, b.base, kind, b.headers(), known))
    started = time.perf_counter()
    task = asyncio.ensure_future(warmer.run())
    try:
        while True:
            w = warmer.state.get(b.name)
            if w is not None and w.failures:
                raise RuntimeError(f"warm-up failed: {w.error}")
            if w is not None and w.warmed_at and w.task is None and b.state.warmth == "warm":
                return time.perf_counter() - started
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def llama_sleeping(url: str) -> bool:
    return bool(orjson.loads(rawhttp.request("GET", url + "/props")[2]).get("is_sleeping"))


async def make_cold(kind: str, url: str) -> None:
    if kind == "ollama":
        rawhttp.request("POST", url + "/_fake/unload")
        return
    deadline = time.monotonic() + 60
    while not llama_sleeping(url):
        if time.monotonic() > deadline:
            raise RuntimeError("llama-server did not fall asleep")
        await asyncio.sleep(0.1)


async def measure(kind: str, server_url: str, gateway_url: str, backend: LocalBackendConfig,
                  rounds: int) -> list[dict[str, Any]]:
    rows = []
    async with aiohttp.ClientSession() as session:
        await ask(session, gateway_url)  # nonstop learns the cloud is out; the model gets loaded once
        for i in range(rounds * 2):
            warmed = i % 2 == 1
            await make_cold(kind, server_url)
            warm_s = await warm(kind, backend, session) if warmed else None
            row = await ask(session, gateway_url)
            row.update(kind=kind, warmed=warmed, warm_s=warm_s)
            rows.append(row)
            print(f"  {kind} {'warm' if warmed else 'cold'}: first text {row['first_text']:.2f}s, "
                  f"total {row['total']:.2f}s" + (f" (warm-up {warm_s:.2f}s before)" if warm_s else ""), flush=True)
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with procs.start_fake_cloud() as cloud:
        procs.set_mode(cloud, "subscription_limit")
        llama = start_llama_server(ctx=4096, parallel=1, extra_args=["--sleep-idle-seconds", str(SLEEP_AFTER), "--no-slots"])
        port = procs.free_port()
        ollama = procs.start_python(["-m", "tests.support.fake_ollama", "--port", str(port),
                                     "--load-seconds", str(args.ollama_load)], port, "/api/version", "fake-ollama")
        try:
            for kind, url, backend in [
                ("llamacpp", llama.url, LocalBackendConfig(name="local", url=llama.url, context_window=4096,
                                                           max_output_tokens=64)),
                ("ollama", ollama.url, LocalBackendConfig(name="local", url=ollama.url, model=MODEL,
                                                          context_window=4096, max_output_tokens=64)),
            ]:
                config = nonstop_config(cloud.url, local=[{"name": "local", "url": url, "model": backend.model,
                                                           "context_window": 4096, "max_output_tokens": 64}])
                with procs.start_nonstop(config) as ns:
                    rows += asyncio.run(measure(kind, url, ns.url, backend, args.rounds))
        finally:
            llama.stop()
            ollama.stop()
    return rows


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    m = machine()
    src = source_fingerprint()
    lines = [
        f"# The first local answer after a failover, cold and warmed ({dt.date.today()})",
        "",
        f"`python benchmarks/warm_failover.py --rounds {args.rounds} --ollama-load {args.ollama_load:g}`"
        + (f" (label {args.label})" if args.label else ""),
        "",
        f"Machine: {m.get('cpu', '')}, {m.get('cores', '')} cores. nonstop source: {src.get('sha256', '')[:12]}.",
        "",
        "| server | model | rounds | first text, median (min-max) | whole answer, median | warm-up beforehand, median |",
        "|---|---|---|---|---|---|",
    ]
    for kind, label in (("llamacpp", "llama-server, SmolLM2-135M asleep"),
                        ("ollama", f"Ollama (scripted), {args.ollama_load:g} s load")):
        for warmed in (False, True):
            sel = [r for r in rows if r["kind"] == kind and r["warmed"] == warmed]
            if not sel:
                continue
            first = [r["first_text"] for r in sel]
            total = [r["total"] for r in sel]
            warm_s = [r["warm_s"] for r in sel if r["warm_s"] is not None]
            lines.append(f"| {label} | {'warmed' if warmed else 'cold'} | {len(sel)} | "
                         f"{median(first):.2f} s ({min(first):.2f}-{max(first):.2f}) | {median(total):.2f} s | "
                         + (f"{median(warm_s):.2f} s |" if warm_s else "— |"))
    lines += ["", "Every answer came from the local backend: "
              + ("yes" if all(r["local"] for r in rows) else "NO (see the rounds)"), ""]
    lines += ["## Rounds", "", "| server | round | first text | whole answer | warm-up before |", "|---|---|---|---|---|"]
    seen: dict[str, int] = {}
    for r in rows:
        n = seen[r["kind"]] = seen.get(r["kind"], 0) + 1
        before = "" if r["warm_s"] is None else f"{r['warm_s']:.3f} s"
        lines.append(f"| {r['kind']} | {(n + 1) // 2} {'warm' if r['warmed'] else 'cold'} | {r['first_text']:.3f} s | "
                     f"{r['total']:.3f} s | {before} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds of each (cold and warm) per server")
    p.add_argument("--ollama-load", type=float, default=8.0, help="seconds the scripted Ollama takes to load")
    p.add_argument("--label", default="")
    args = p.parse_args()
    rows = run(args)
    out = HERE / "results" / f"{dt.date.today()}-warm-failover{'-' + args.label if args.label else ''}.md"
    out.write_text(render(rows, args))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
