"""A slow-header attack against nonstop: does it keep serving, and do its memory and file
descriptors stay bounded?

    python benchmarks/slow_heads.py                   500 attacking connections, 15 s per scenario
    python benchmarks/slow_heads.py --connections 200 --seconds 10 --label quick

nonstop runs as a real process in front of the fast fake upstream (upstream.py). An
attacker process opens the connections and, in each scenario, either trickles a request
head that never ends (one byte a second) or sends nothing at all; a connection the
server drops is opened again a second later, as a slowloris does. The scenarios:

    trickle, spread    the connections come from 50 source addresses (127.0.0.10-59),
                       10 each, so that a per-address limit does not apply
    trickle, one addr  all of them from 127.0.0.2
    silent, spread     as "spread", but no byte is ever sent

Meanwhile a probe on 127.0.0.1 sends a normal request (POST /v1/messages, small JSON,
on a fresh connection) every 100 ms and times the answer, and nonstop's open file
descriptors and RSS are read from /proc twice a second. The results go to
benchmarks/results/<date>-slow-heads[-<label>].md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from harness import (  # noqa: E402
    HERE,
    free_port,
    machine,
    median,
    percentile,
    rss_mb,
    source_fingerprint,
    start,
    wait_http,
)
from payload import small_request  # noqa: E402

SCENARIOS = {
    "trickle, spread": {"trickle": True, "addresses": [f"127.0.0.{i}" for i in range(10, 60)]},
    "trickle, one address": {"trickle": True, "addresses": ["127.0.0.2"]},
    "silent, spread": {"trickle": False, "addresses": [f"127.0.0.{i}" for i in range(10, 60)]},
}
HEAD_START = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Pad: "
REFUSED_WITHIN = 0.1  # a connection closed this soon after it opened counts as refused


# --- the attacker (its own process) ------------------------------------------------------------


async def _one(host: str, port: int, source: str, trickle: bool, until: float, seen: dict[str, Any]) -> None:
    """One attacking connection, opened again a second after each drop."""
    while time.monotonic() < until:
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            seen["connect_errors"] += 1
            await asyncio.sleep(1)
            continue
        seen["open"] += 1
        answer = b""
        try:
            if trickle:
                writer.write(HEAD_START[:1])
            sent = 1
            while time.monotonic() < until:
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), timeout=1.0)
                except TimeoutError:
                    if trickle:
                        writer.write(HEAD_START[sent:sent + 1] if sent < len(HEAD_START) else b"a")
                        sent += 1
                        await writer.drain()
                    continue
                answer = chunk
                break  # an answer (a 408) or the end of the connection: dropped
        except (ConnectionError, OSError):
            pass
        finally:
            seen["open"] -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if time.monotonic() >= until:
            return
        lived = time.monotonic() - opened
        seen["lifetimes"].append(round(lived, 3))
        kind = answer[:12].decode("latin-1") or "(closed)"
        seen["answers"][kind] = seen["answers"].get(kind, 0) + 1
        await asyncio.sleep(1)


async def _attack(host: str, port: int, connections: int, addresses: list[str], trickle: bool,
                  seconds: float) -> dict[str, Any]:
    seen: dict[str, Any] = {"open": 0, "connect_errors": 0, "lifetimes": [], "answers": {}, "open_series": []}
    until = time.monotonic() + seconds
    tasks = [asyncio.create_task(_one(host, port, addresses[i % len(addresses)], trickle, until, seen))
             for i in range(connections)]
    while time.monotonic() < until:
        await asyncio.sleep(0.5)
        seen["open_series"].append(seen["open"])
    await asyncio.gather(*tasks, return_exceptions=True)
    return seen


def attacker_main(args: argparse.Namespace) -> None:
    import uvloop

    addresses = args.addresses.split(",")
    seen = uvloop.run(_attack("127.0.0.1", args.port, args.connections, addresses, args.trickle, args.seconds))
    sys.stdout.buffer.write(orjson.dumps(seen) + b"\n")


# --- the probe and the /proc readings (this process) -------------------------------------------


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Watch:
    """Probes nonstop every 100 ms from 127.0.0.1 and reads its fds and RSS every 0.5 s,
    in a thread, until stopped."""

    def __init__(self, port: int, pid: int) -> None:
        self.port, self.pid = port, pid
        body = orjson.dumps(small_request())
        self.request = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                        b"anthropic-version: 2023-06-01\r\nx-api-key: sk-bench\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n" % (port, len(body))) + body
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.fds: list[int] = []
        self.rss: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.1):
            self._probe()
            tick += 1
            if tick % 5 == 0:
                self.fds.append(_fds(self.pid))
                self.rss.append(rss_mb(self.pid))

    def _probe(self) -> None:
        t0 = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(self.request)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                self.failures.append(data[:60].decode("latin-1") or "(closed)")
                return
            self.latencies.append((time.monotonic() - t0) * 1000)
        except OSError as exc:
            self.failures.append(type(exc).__name__)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        return {"probes": len(lat) + len(self.failures), "failures": len(self.failures),
                "failure_kinds": sorted(set(self.failures))[:5],
                "p50_ms": median(lat), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=float("nan")),
                "fds_max": max(self.fds, default=-1), "fds_median": median([float(x) for x in self.fds]),
                "fds_last": self.fds[-1] if self.fds else -1,
                "rss_max_mb": max(self.rss, default=0.0), "rss_last_mb": self.rss[-1] if self.rss else 0.0}


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="nonstop-bench-slowheads-"))
    up_port, ns_port = free_port(), free_port()
    upstream = start("upstream", [sys.executable, str(HERE / "upstream.py"), "--listen", f"127.0.0.1:{up_port}=ok"],
                     workdir=work)
    cfg = work / "config.toml"
    cfg.write_text(f'listen = "127.0.0.1:{ns_port}"\nstate_dir = "{work / "state"}"\n{args.extra}\n'
                   f'[cloud]\nurl = "http://127.0.0.1:{up_port}"\n'
                   '[embedded]\nmode = "never"\n[discovery]\nenabled = false\n')
    nonstop = start("nonstop", [sys.executable, "-m", "nonstop", "serve", "--config", str(cfg)],
                    env={"NONSTOP_STATE_DIR": str(work / "state")}, workdir=work)
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "source": source_fingerprint(), "label": args.label,
        "connections": args.connections, "seconds": args.seconds, "config": cfg.read_text(), "scenarios": {},
    }
    try:
        wait_http(upstream, f"http://127.0.0.1:{up_port}/_stats", timeout=30)
        wait_http(nonstop, f"http://127.0.0.1:{ns_port}/health", timeout=60)
        with Watch(ns_port, nonstop.pid) as w:  # warm-up, then the quiet baseline
            time.sleep(3)
        with Watch(ns_port, nonstop.pid) as w:
            time.sleep(5)
        results["baseline"] = w.summary()
        print("baseline:", results["baseline"], flush=True)
        for name, sc in SCENARIOS.items():
            results["scenarios"][name] = scenario(args, ns_port, nonstop.pid, sc)
            print(f"{name}:", {k: v for k, v in results["scenarios"][name].items() if k != "lifetimes"}, flush=True)
        results["nonstop_alive"] = nonstop.alive()
    finally:
        nonstop.stop()
        upstream.stop()
    results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    return results


def scenario(args: argparse.Namespace, port: int, pid: int, sc: dict[str, Any]) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--attacker", "--port", str(port), "--connections", str(args.connections),
            "--seconds", str(args.seconds), "--addresses", ",".join(sc["addresses"])]
    if sc["trickle"]:
        argv.append("--trickle")
    with Watch(port, pid) as w:
        out = subprocess_output(argv)
    during = w.summary()
    time.sleep(2)  # the attacker has closed its sockets: what does nonstop hold now?
    seen = orjson.loads(out)
    lifetimes = seen["lifetimes"]
    refused = sum(1 for t in lifetimes if t < REFUSED_WITHIN)
    dropped = [t for t in lifetimes if t >= REFUSED_WITHIN]
    series = seen["open_series"]
    return {
        "addresses": len(sc["addresses"]), "trickle": sc["trickle"],
        "held_max": max(series, default=0), "held_median": median([float(x) for x in series]),
        "drops": len(dropped), "refused": refused, "connect_errors": seen["connect_errors"],
        "lifetime_p50_s": median(dropped), "lifetime_max_s": max(dropped, default=float("nan")),
        "answers": seen["answers"], "during": during, "fds_after": _fds(pid), "rss_after_mb": rss_mb(pid),
    }


def subprocess_output(argv: list[str]) -> bytes:
    import subprocess

    return subprocess.run(argv, check=True, capture_output=True, timeout=600).stdout


# --- the results file ---------------------------------------------------------------------------


def render(r: dict[str, Any]) -> str:
    f = report._fmt
    m = r["machine"]
    L = [f"# Slow-header attack on nonstop, {r['date']}{' (' + r['label'] + ')' if r['label'] else ''}", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']:,} MB RAM, Linux {m['kernel']}, "
         f"Python {m['python']}; load average at start {m['load_at_start']}. "
         f"Packages: {', '.join(f'{k} {v}' for k, v in m['packages'].items())}.",
         f"Code: src/nonstop, {r['source']['files']} files, sha256 {r['source']['sha256']}…. "
         f"Run: {r['started']} to {r['finished']}.", "",
         f"{r['connections']} attacking connections per scenario for {r['seconds']:.0f} s (a dropped one is "
         "opened again a second later); a probe sends a normal request on a fresh connection from 127.0.0.1 "
         "every 100 ms; nonstop's fds and RSS are read twice a second. `python benchmarks/slow_heads.py` "
         "(see its docstring).", ""]
    b = r["baseline"]
    rows = [["no attack (baseline)", "—", "—", "—", "—", f(b["p50_ms"]), f(b["p99_ms"]), f(b["max_ms"]),
             f"{b['failures']} / {b['probes']}", f"{b['fds_max']} / {f(b.get('fds_median'))}", f(b["rss_max_mb"]),
             "—", "—"]]
    for name, s in r["scenarios"].items():
        d = s["during"]
        rows.append([name, str(s["addresses"]), f"{s['held_max']} / {f(s['held_median'])}",
                     f"{f(s['lifetime_p50_s'])} / {f(s['lifetime_max_s'])}", str(s["refused"]),
                     f(d["p50_ms"]), f(d["p99_ms"]), f(d["max_ms"]), f"{d['failures']} / {d['probes']}",
                     f"{d['fds_max']} / {f(d.get('fds_median'))}", f(d["rss_max_mb"]), str(s["fds_after"]),
                     f(s["rss_after_mb"])])
    L += report._table(["scenario", "source addresses", "attacking connections open, max / median",
                        "life of a dropped connection p50 / max (s)", "closed at once",
                        "probe p50 (ms)", "probe p99 (ms)", "probe max (ms)", "probe failures",
                        "nonstop fds max / median", "nonstop RSS max (MB)", "fds after", "RSS after (MB)"], rows)
    L.append("*attacking connections open*: as the attacker sees them (connected, not yet closed by nonstop), "
             "sampled twice a second; *closed at once*: closed within 0.1 s of opening; *fds after*, "
             "*RSS after*: 2 s after the attacker stopped.")
    L.append("")
    L.append("What the attacking connections read before the drop: " + "; ".join(
        f"{name}: {', '.join(f'{k!r} {v}' for k, v in s['answers'].items()) or 'nothing (never dropped)'}"
        for name, s in r["scenarios"].items()) + ".")
    L += ["", f"nonstop still running at the end: {'yes' if r.get('nonstop_alive') else 'no'}.", "",
          "nonstop's config:", "", "```toml", r["config"].strip(), "```", ""]
    return "\n".join(L)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--seconds", type=float, default=15.0, help="length of each scenario")
    p.add_argument("--label", default="", help="added to the results file's name")
    p.add_argument("--extra", default="", help="top-level TOML lines added to nonstop's config")
    p.add_argument("--out-dir", help="where to write the results (default benchmarks/results)")
    p.add_argument("--attacker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--addresses", help=argparse.SUPPRESS)
    p.add_argument("--trickle", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.attacker:
        attacker_main(args)
        return 0
    results = run(args)
    out = Path(args.out_dir) if args.out_dir else HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{results['date']}-slow-heads" + (f"-{args.label}" if args.label else "")
    (out / f"{stem}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    (out / f"{stem}.md").write_text(render(results))
    print(f"written: {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
