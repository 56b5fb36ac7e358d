"""Is a library the limit? The bare forwarder on other HTTP stacks, against nonstop's own.

    python benchmarks/stacks.py [--requests 1500] [--rounds 4]

nonstop is built on uvicorn (httptools, uvloop) and aiohttp's client, and the bare
forwarder (forwarder.py) on the same, so what the forwarder costs is the floor those
libraries set. This measures the same forwarder on the candidates that could lower that
floor, each one library swapped:

    uvicorn + aiohttp     nonstop's stack
    uvicorn + pyreqwest   the client: Rust's reqwest and hyper, on a tokio thread of its own
    granian + aiohttp     the server: Rust's hyper, calling the ASGI app on uvloop

and, in the same interleaved rounds, calling the fake upstream directly and nonstop in its
default configuration (the request log on, one [[local]] backend). Scenarios: the 50 KB
Claude Code request at concurrency 1, JSON and streamed (30 deltas), and 64 unpaced
streams. A library that cut the forwarder's time and CPU in every scenario would lower
nonstop's by as much; one that wins some and loses others is no replacement.

Prints the table and writes benchmarks/results/<date>-stacks.md and .json. Needs
pyreqwest and granian, which nonstop does not depend on (`pip install pyreqwest granian`
into the same environment); exits 2 without them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as R  # noqa: E402
from harness import (  # noqa: E402
    Proc,
    free_port,
    machine,
    median,
    percentile,
    rss_mb,
    start,
    wait_http,
    write_unique,
)

# (name, label): the forwarder's variants, after direct and before nonstop.
STACKS = [
    ("uvicorn+aiohttp", "nonstop's stack: the bare forwarder (forwarder.py)"),
    ("uvicorn+pyreqwest", "the same forwarder, pyreqwest as its client"),
    ("granian+aiohttp", "the same forwarder, granian as its server"),
]
SCENARIOS = [(False, 1), (True, 1), (True, 64)]


def start_stack(bench: R.Bench, name: str) -> Proc:
    port = free_port()
    folder = bench.work / name.replace("+", "-")
    folder.mkdir()
    server, client = name.split("+")
    if server == "granian":
        argv = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                "--port", str(port), "--loop", "uvloop", "--http", "1", "--workers", "1", "--runtime-mode", "st",
                "--no-ws", "--log-level", "warning", "forwarder:app"]
        env = {"FORWARDER_UPSTREAM": bench.up["ok"], "FORWARDER_CLIENT": client, "PYTHONPATH": str(HERE)}
    else:
        argv = [sys.executable, str(HERE / "forwarder.py"), "--listen", f"127.0.0.1:{port}",
                "--upstream", bench.up["ok"], "--client", client]
        env = {}
    p = start(name, argv, env=env, workdir=folder)
    bench.procs.append(p)
    p.url = f"http://127.0.0.1:{port}"
    wait_http(p, p.url + "/_stats", timeout=30)
    time.sleep(0.3)
    return p


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1500, help="requests per target per round (64 streams: twice)")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per scenario")
    a = p.parse_args()
    missing = [m for m in ("pyreqwest", "granian") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"needs {' and '.join(missing)}: pip install pyreqwest granian", file=sys.stderr)
        return 2
    bench = R.Bench(argparse.Namespace(smoke=True, long=False, growth_requests=0, peers=False, profile=False,
                                       variants=False, only_log=False, baseline=None))
    results: dict[str, Any] = {"date": dt.date.today().isoformat(), "started": dt.datetime.now().isoformat(timespec="seconds"),
                               "machine": machine(), "versions": {}, "scenarios": {}}
    for mod in ("uvicorn", "aiohttp", "pyreqwest", "granian"):
        results["versions"][mod] = version(mod)
    try:
        bench.setup()  # the fake upstream, the load generator, nonstop and nonstop's own forwarder
        bench.targets["uvicorn+aiohttp"] = bench.targets.pop("forwarder")
        for name, label in STACKS[1:]:
            proc = start_stack(bench, name)
            bench.targets[name] = {"url": proc.url, "path": "/v1/messages?beta=true", "pid": proc.pid, "label": label}
        names = ["direct"] + [n for n, _ in STACKS] + ["nonstop"]
        results["idle_rss_mb"] = {n: rss_mb(bench.targets[n]["pid"], with_children=True) for n in names[1:]}
        for stream, conc in SCENARIOS:
            key = f"{'stream' if stream else 'json'} c={conc}"
            print(f"== {key}", flush=True)
            per = {n: [] for n in names}
            for r in range(a.rounds):
                for n in (names if r % 2 == 0 else names[::-1]):
                    per[n].append(bench.measure(n, stream=stream, concurrency=conc,
                                                requests=a.requests * (2 if conc > 1 else 1)))
            results["scenarios"][key] = {n: _summary(rs) for n, rs in per.items()}
            for n in names:
                s = results["scenarios"][key][n]
                print(f"  {n:18s} TTFB p50 {s['ttfb_p50']:.3f} p99 {s['ttfb_p99']:.3f}  total p50 {s['total_p50']:.3f}"
                      f"  CPU {s['cpu_us']:.0f} µs/req  errors {s['errors']}", flush=True)
    finally:
        bench.stop_all()
    results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    path = write_unique("stacks", render(results))
    path.with_suffix(".json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 1 if any(s["errors"] for sc in results["scenarios"].values() for s in sc.values()) else 0


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ttfb = [x for r in rounds for x in r["ttfb"]]
    total = [x for r in rounds for x in r["total"]]
    return {"ttfb_p50": percentile(ttfb, 50), "ttfb_p99": percentile(ttfb, 99), "total_p50": percentile(total, 50),
            "cpu_us": median([r["cpu_us_per_request"].get("target", 0.0) for r in rounds]),
            "errors": sum(r["errors"] for r in rounds), "n": len(ttfb)}


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    v = results["versions"]
    lines = [f"# The forwarder on other HTTP stacks ({results['started']})", "",
             f"`python benchmarks/stacks.py` on {m.get('cores')} cores ({m.get('cpu')} at {m.get('cpu_mhz')} MHz), load average at start {m.get('load_at_start')}, Python {m.get('python')}; "
             f"uvicorn {v['uvicorn']}, aiohttp {v['aiohttp']}, pyreqwest {v['pyreqwest']}, granian {v['granian']}. "
             "Interleaved rounds, the order flipping every round; times in ms, CPU in µs a request "
             "(the target's processes, every thread). *÷ nonstop's stack*: this row / uvicorn+aiohttp's.", ""]
    base_name = STACKS[0][0]
    for key, rows in results["scenarios"].items():
        base = rows[base_name]
        lines += [f"## {key}", "", "| target | TTFB p50 | TTFB p99 | total p50 | CPU µs/req | TTFB p50 ÷ nonstop's stack "
                  "| total p50 ÷ nonstop's stack | CPU ÷ nonstop's stack | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, s in rows.items():
            ratio = n != "direct"
            lines.append(f"| {n} | {s['ttfb_p50']:.3f} | {s['ttfb_p99']:.3f} | {s['total_p50']:.3f} | "
                         f"{s['cpu_us']:.0f} | " + (f"{s['ttfb_p50'] / base['ttfb_p50']:.2f}x | {s['total_p50'] / base['total_p50']:.2f}x | "
                                                     f"{s['cpu_us'] / base['cpu_us']:.2f}x" if ratio else "— | — | —") + f" | {s['errors']} |")
        lines.append("")
    lines += ["Idle RSS (MB): " + ", ".join(f"{n} {mb:.1f}" for n, mb in results["idle_rss_mb"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
