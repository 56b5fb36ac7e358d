"""Instructions per request, counted by valgrind: a measure the machine's noise barely moves.

    python benchmarks/instructions.py                  nonstop and the bare forwarder, JSON and stream
    python benchmarks/instructions.py --variants       also nonstop with the log off, and the forwarder + outline
    python benchmarks/instructions.py --rev REV        also nonstop at git revision REV
    python benchmarks/instructions.py --requests 400   more requests per target (200 by default)
    python benchmarks/instructions.py --opcodes        Python bytecodes per request instead, by function
    python benchmarks/instructions.py --only paced     streams whose cloud paces its deltas (one a read)
    python benchmarks/instructions.py --only failover  a 429 each time, then the local answer (nonstop only)
    python benchmarks/instructions.py --only stream --concurrency 64 --cache
                                                       64 streams at once, with valgrind's simulated
                                                       caches and branch predictors

Timings on these machines scatter by up to 2x from day to day, and two identical processes
differ by up to 125 µs of CPU a request for a whole run, so a change of 20 µs cannot be
seen in minutes. The number of instructions a process executes for the same requests
barely scatters: repeated runs agree within 0.05 % for the forwarder and within 0.7 % for
nonstop, whose timers fire by the clock while valgrind slows it. This runs each target under
callgrind (valgrind's instruction counter), warms it up with 30 requests, zeroes the
counters, sends N requests one at a time (concurrency 1 unless --concurrency; JSON, then
in a fresh process streamed), dumps the counters and divides: the instructions of every
thread of the process (the event loop's and the request log's writer) per request.

Instructions are not time. C code that scans bytes (the outline's msgspec decode, the
regexes that read a stream) runs several instructions per cycle; Python's interpreter
runs fewer. So this says where nonstop's own work is and whether a change shrank it, not
how many microseconds it costs: benchmarks/run.py says that, against the same forwarder.

The targets, each a real process on the fake upstream (benchmarks/upstream.py, which
sends the cloud's quota headers): nonstop in the default configuration (request log on,
one [[local]] backend), the bare forwarder (forwarder.py), and with --variants nonstop
with `[log] enabled = false` and the forwarder decoding each request's outline. The table
gives each target's instructions per request, its ratio to the forwarder's, and where
they run (the interpreter, libc, the C extensions). Prints it and writes
benchmarks/results/<date>-instructions.md and .json.

With --opcodes, each target runs under benchmarks/opcount.py instead of valgrind, and
what is counted is the Python bytecodes each function executes (as exact, and far more
specific): the table gives them per request by package, and nonstop's own functions
that execute the most. Fewer bytecodes is not always less time either: a loop replaced
by `map` and `zip` in C executes fewer bytecodes and can take longer.

--concurrency N sends the requests N at a time (the warm-up too, at least 2N of them), as
run.py's 64-stream rounds do. --cache has callgrind simulate the caches and the branch
predictors as well (`--cache-sim=yes --branch-sim=yes`, several times slower): per
request, the first-level instruction and data cache misses, the last-level misses, and
the mispredicted conditional and indirect branches, beside the instructions. The
simulation is valgrind's model of this CPU's caches, not the CPU: it says which target
makes the caches and the predictors work harder, and by how much against the forwarder,
where time at a given instruction count goes (docs/performance.md, "Where the time goes").

Processes run with PYTHONHASHSEED=0: with a random seed, dict and set collisions differ
between processes, and so do the counts (by about 1 %).

Needs valgrind (`apt install valgrind`) unless --opcodes; exits 2 without it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    HERE,
    ROOT,
    free_port,
    machine,
    revision_source,
    source_fingerprint,
    start,
    start_upstream,
    wait_http,
    write_unique,
)
from loadgen import body_for  # noqa: E402
from payload import CLAUDE_CODE_HEADERS  # noqa: E402
from report import machine_line  # noqa: E402
from run import ANTHROPIC_LOCAL, DEFAULT_LOCAL, PROBE_EVERY_REQUEST, nonstop_config  # noqa: E402

WARMUP = 30
# nonstop's functions listed with --opcodes.
TOP = 25
PATH = "/v1/messages?beta=true"
# Where the instructions run, by the file callgrind names for them.
PLACES = (("the interpreter", "libpython"), ("libc", "libc.so"), ("msgspec (the outline)", "msgspec"),
          ("aiohttp's C parts", "aiohttp"), ("uvloop and libuv", "uvloop"), ("httptools", "httptools"),
          ("SQLite", "sqlite"), ("orjson", "orjson"), ("multidict and yarl", "multidict"),
          ("multidict and yarl", "yarl"))


def count(name: str, target: dict[str, Any], up: dict[str, str], mode: str, n: int, work: Path,
          opcodes: bool = False, concurrency: int = 1, cache: bool = False) -> dict[str, Any]:
    """One target, one fresh process under the meter (callgrind, or opcount.py): what it
    executes per request. `mode`: "json", "stream" (the deltas come as fast as the cloud
    writes them: a few reads a stream) or "paced" (PACED_DELTAS deltas, each its own read,
    as a model's pace sends them) or "failover" (streamed: the cloud answers each request
    with a subscription-limit 429 whose reset is past, `default_cooldown = 0`, so every
    request probes it and fails over to the local server, as run.py's failover rounds)."""
    stream = mode != "json"
    folder = work / f"{name}-{mode}"
    folder.mkdir()
    port = free_port()
    out = folder / ("opcodes.json" if opcodes else "callgrind.out")
    if opcodes:
        meter = [sys.executable, str(HERE / "opcount.py"), str(out)]
    else:
        meter = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
                 "--separate-threads=no", *(CACHE_SIM if cache else ()), sys.executable]
    env = {"NONSTOP_STATE_DIR": str(folder / "state"), "PYTHONHASHSEED": "0"}
    if target["kind"] == "forwarder":
        argv = [str(HERE / "forwarder.py"), "--listen", f"127.0.0.1:{port}", "--upstream", up["ok"]]
        argv += ["--outline"] if target.get("outline") else []
        env["PYTHONPATH"] = str(ROOT / "src")
        health = "/_stats"
    else:
        cfg = folder / "config.toml"
        failover = mode == "failover"
        cfg.write_text(nonstop_config(port, folder / "state", up["limit-past" if failover else "ok"],
                                      (ANTHROPIC_LOCAL if failover else DEFAULT_LOCAL).format(url=up["local"]),
                                      cloud_extra=PROBE_EVERY_REQUEST if failover else "", log=target.get("log", True)))
        argv = ["-m", "nonstop", "serve", "--config", str(cfg)]
        env["PYTHONPATH"] = str(target.get("source") or ROOT / "src")
        health = "/health"
    p = start(name, meter + argv, env=env, workdir=folder)
    try:
        wait_http(p, f"http://127.0.0.1:{port}{health}", timeout=300)
        if opcodes:
            asyncio.run(_drive(f"http://127.0.0.1:{port}{PATH}", mode, n,
                               lambda: os.kill(p.pid, signal.SIGUSR1), lambda: os.kill(p.pid, signal.SIGUSR2),
                               concurrency))
            for _ in range(600):  # opcount.py renames the whole file into place
                if out.exists():
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"{name}: opcount.py wrote no counts\n{p.tail()}")
            counted = {_short(k): v for k, v in json.loads(out.read_text()).items()}
            total = sum(counted.values())
            return {"target": name, "stream": stream, "mode": mode, "requests": n, "per_request": total / n,
                    "functions": {k: v / n for k, v in counted.items()}}
        asyncio.run(_drive(f"http://127.0.0.1:{port}{PATH}", mode, n, lambda: _control("-z", p.pid), lambda: None,
                           concurrency))
        _control("-d", p.pid)
        dumps = sorted(folder.glob("callgrind.out.*"), key=os.path.getmtime)
        if not dumps:
            raise RuntimeError(f"{name}: callgrind wrote no dump\n{p.tail()}")
        places = by_place(dumps[-1])
        events = totals(dumps[-1]) if cache else {}
    finally:
        p.stop(timeout=60)
    total = sum(places.values())
    row = {"target": name, "stream": stream, "mode": mode, "requests": n, "per_request": total / n,
           "places": {k: v / n for k, v in places.items()}}
    if cache:
        row["simulated"] = {k: v / n for k, v in simulated(events).items()}
    return row


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True, timeout=120)


def _short(key: str) -> str:
    """A function's key without the folders every one shares: `nonstop/...` for nonstop's
    code (this tree's or another revision's src/), `aiohttp/...` for a package,
    `asyncio/...` for the standard library."""
    if key.startswith(str(HERE) + "/"):
        return "benchmarks/" + key[len(str(HERE)) + 1:]
    for cut in ("site-packages/", "/src/", "/lib/python3."):
        if cut in key:
            key = key.split(cut, 1)[1]
            return key.split("/", 1)[1] if cut == "/lib/python3." else key
    return key


# The paced mode's stream: a delta every 5 ms (the fake cloud's shortest pace) for 0.1 s.
PACED = {"x-fake-mode": "slow", "x-fake-interval": "0.005", "x-fake-hold": "0.1"}
PACED_DELTAS = 20


async def _drive(url: str, mode: str, n: int, begin: Callable[[], None], end: Callable[[], None],
                 concurrency: int = 1) -> None:
    stream = mode != "json"
    body = body_for("large", stream)  # the load generator's bytes (compact JSON, as clients send)
    headers = {**CLAUDE_CODE_HEADERS, "content-type": "application/json", **(PACED if mode == "paced" else {})}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(100, concurrency))) as session:
        async def one() -> None:
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200 or (stream and b"message_stop" not in data):
                    raise RuntimeError(f"{url}: {resp.status} {data[:300]!r}")

        async def some(k: int) -> None:  # k requests, `concurrency` at a time (1: one after another)
            left = iter(range(k))

            async def client() -> None:
                for _ in left:
                    await one()
            await asyncio.gather(*(client() for _ in range(min(concurrency, k))))

        await some(max(WARMUP, 2 * concurrency))
        # The warm-up's deferred work is done before the count starts, and the measured
        # requests' before it ends: their rows reach SQLite within the log's interval
        # (store/db.py FLUSH_EVERY, 0.5 s) and the time a batch takes under the meter.
        await asyncio.sleep(2.0)
        await asyncio.to_thread(begin)
        await asyncio.sleep(0.3)
        await some(n)
        await asyncio.sleep(2.0)
        end()


def by_place(path: Path) -> dict[str, int]:
    """A callgrind dump's instructions (self cost), summed by the object file that ran them."""
    objects: dict[str, str] = {}
    place: collections.Counter[str] = collections.Counter()
    current = ""
    skip = False
    name = re.compile(r"\((\d+)\)(?: (.*))?")
    with open(path) as fh:
        for line in fh:
            if line.startswith("ob="):
                m = name.match(line[3:].strip())
                if m:
                    if m.group(2) is not None:
                        objects[m.group(1)] = m.group(2)
                    current = objects.get(m.group(1), "")
                else:
                    current = line[3:].strip()
            elif line.startswith("cob="):
                m = name.match(line[4:].strip())
                if m and m.group(2) is not None:
                    objects[m.group(1)] = m.group(2)
            elif line.startswith("calls="):
                skip = True  # the next cost line is the call's inclusive cost, not this function's
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    place[_place(current)] += int(parts[1])
    return dict(place)


# callgrind's options for --cache, and what its events are called in the table.
CACHE_SIM = ("--cache-sim=yes", "--branch-sim=yes")
SIMULATED = (("I1 misses", ("I1mr",)), ("D1 misses", ("D1mr", "D1mw")), ("LL misses", ("ILmr", "DLmr", "DLmw")),
             ("conditional branches mispredicted", ("Bcm",)), ("indirect branches mispredicted", ("Bim",)))


def totals(path: Path) -> dict[str, int]:
    """A callgrind dump's totals, by event (its `events:` and `totals:` lines)."""
    names: list[str] = []
    values: list[int] = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith("totals:"):
                values = [int(v) for v in line.split()[1:]]
    return dict(zip(names, values, strict=False))


def simulated(events: dict[str, int]) -> dict[str, int]:
    """The simulated misses of a dump's totals, summed as the table shows them (SIMULATED)."""
    return {label: sum(events.get(e, 0) for e in parts) for label, parts in SIMULATED}


def _place(obj: str) -> str:
    full = obj.lower()
    return next((label for label, key in PLACES if key in full), "other")


def render(results: dict[str, Any]) -> str:
    opcodes = results["meter"] == "opcodes"
    unit = "bytecodes" if opcodes else "instructions"
    lines = [f"# {'Python bytecodes' if opcodes else 'Instructions'} per request"
             f" ({'benchmarks/opcount.py' if opcodes else 'callgrind'})", "",
             f"{results['started']}. {machine_line(results['machine'])}. Source {results['source']['sha256']} "
             f"({results['source']['files']} files, newest change {results['source']['newest_change']}).", "",
             f"Each target a fresh process on the fake upstream (PYTHONHASHSEED=0); {results['requests']} requests at "
             f"concurrency {results.get('concurrency', 1)} after {max(WARMUP, 2 * results.get('concurrency', 1))} "
             "unrecorded; every thread of the process counted. See benchmarks/instructions.py.", ""]
    titles = {"json": "JSON", "stream": "Streamed (30 deltas)",
              "paced": f"Streamed at a pace ({PACED_DELTAS} deltas, each its own read)",
              "failover": "Streamed, a subscription-limit 429 each time, then the local answer (30 deltas)"}
    for mode, title in titles.items():
        rows = [r for r in results["rows"] if r.get("mode", "stream" if r["stream"] else "json") == mode]
        if not rows:
            continue
        floor = next((r["per_request"] for r in rows if r["target"] == "forwarder"), None)
        lines += [f"## {title}, 50 KB Claude Code request", ""]
        if opcodes:
            lines += [f"| target | {unit} / request | vs the forwarder | nonstop's own | aiohttp | uvicorn | the rest |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
        else:
            lines += [f"| target | {unit} / request | vs the forwarder | interpreter | libc | msgspec | other C |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            ratio = f"{r['per_request'] / floor:.3f}x" if floor else "-"
            if opcodes:
                parts = _packages(r["functions"])
                cells = [parts["nonstop"], parts["aiohttp"], parts["uvicorn"], r["per_request"] - sum(parts.values())]
                lines.append(f"| {results['labels'][r['target']]} | {r['per_request']:,.0f} | {ratio} | "
                             + " | ".join(f"{c:,.0f}" for c in cells) + " |")
            else:
                pl = r["places"]
                interp, libc, ms = pl.get("the interpreter", 0), pl.get("libc", 0), pl.get("msgspec (the outline)", 0)
                other = r["per_request"] - interp - libc - ms
                lines.append(f"| {results['labels'][r['target']]} | {r['per_request'] / 1000:,.1f} k | {ratio} | "
                             f"{interp / 1000:,.1f} k | {libc / 1000:,.1f} k | {ms / 1000:,.1f} k | {other / 1000:,.1f} k |")
        lines.append("")
        if any("simulated" in r for r in rows):
            lines += _simulated_table(rows, results["labels"])
        own = next((r for r in rows if r["target"] == "nonstop"), None)
        if opcodes and own is not None:
            top = sorted(((k, v) for k, v in own["functions"].items() if k.startswith("nonstop/")), key=lambda kv: -kv[1])
            lines += [f"nonstop's own functions that execute the most, {unit} per request:", "",
                      "| function | bytecodes |", "|---|---:|"]
            lines += [f"| `{k}` | {v:,.0f} |" for k, v in top[:TOP]]
            lines.append("")
    return "\n".join(lines)


def _simulated_table(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """The --cache table: per request, instructions and each simulated miss, and each
    target's ratio to the forwarder's."""
    floor = next((r for r in rows if r["target"] == "forwarder"), None)
    heads = ["instructions", *(label for label, _ in SIMULATED)]
    lines = ["Simulated by valgrind (`--cache-sim=yes --branch-sim=yes`), per request; in brackets, "
             "the ratio to the forwarder's:", "",
             "| target | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for r in rows:
        values = [r["per_request"], *(r["simulated"][h] for h in heads[1:])]
        floors = [floor["per_request"], *(floor["simulated"][h] for h in heads[1:])] if floor else [0.0] * len(heads)
        cells = [f"{v:,.0f}" + (f" ({v / f:.2f}x)" if f else "") for v, f in zip(values, floors, strict=True)]
        lines.append(f"| {labels[r['target']]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _packages(functions: dict[str, float]) -> dict[str, float]:
    parts = {"nonstop": 0.0, "aiohttp": 0.0, "uvicorn": 0.0}
    for key, v in functions.items():
        top = key.split("/", 1)[0]
        if top in parts:
            parts[top] += v
    return parts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="measured requests per target (after a warm-up)")
    p.add_argument("--rev", help="also nonstop at this git revision")
    p.add_argument("--variants", action="store_true", help="also nonstop with the log off, the forwarder + outline")
    p.add_argument("--only", choices=("json", "stream", "paced", "failover"),
                   help="one mode only (paced and failover: only with it)")
    p.add_argument("--opcodes", action="store_true", help="Python bytecodes per request, by function (no valgrind)")
    p.add_argument("--concurrency", type=int, default=1, help="requests sent at once (1)")
    p.add_argument("--cache", action="store_true", help="also simulate the caches and branch predictors (valgrind)")
    a = p.parse_args()
    if a.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if a.cache and a.opcodes:
        p.error("--cache counts with valgrind; --opcodes does not use it")
    if not a.opcodes and (not shutil.which("valgrind") or not shutil.which("callgrind_control")):
        print("valgrind is not installed (apt install valgrind): nothing measured", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="nonstop-instructions-"))
    targets: dict[str, dict[str, Any]] = {
        "forwarder": {"kind": "forwarder", "label": "the bare forwarder"},
        "nonstop": {"kind": "nonstop", "label": "nonstop, default configuration"},
    }
    if a.variants:
        targets["outline"] = {"kind": "forwarder", "outline": True, "label": "the forwarder + the outline decode"}
        targets["nolog"] = {"kind": "nonstop", "log": False, "label": "nonstop, `[log] enabled = false`"}
    if a.rev:
        targets["rev"] = {"kind": "nonstop", "source": revision_source(a.rev, work / f"src-{a.rev}"), "label": f"nonstop at {a.rev}"}
    modes = [a.only] if a.only else ["json", "stream"]
    if a.only == "failover":  # the forwarder has no failover
        targets = {k: t for k, t in targets.items() if t["kind"] == "nonstop"}
    upstream, ports = start_upstream({"ok": "ok", "local": "ok", "limit-past": "limit-past"}, work)
    results: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                               "source": source_fingerprint(), "requests": a.requests, "rows": [],
                               "concurrency": a.concurrency,
                               "meter": "opcodes" if a.opcodes else "callgrind",
                               "labels": {k: t["label"] for k, t in targets.items()}}
    try:
        up = {k: f"http://127.0.0.1:{v}" for k, v in ports.items()}
        for mode in modes:
            for name, target in targets.items():
                t0 = time.monotonic()
                row = count(name, target, up, mode, a.requests, work, opcodes=a.opcodes,
                            concurrency=a.concurrency, cache=a.cache)
                results["rows"].append(row)
                print(f"{name} {mode}: {row['per_request']:,.0f} "
                      f"{'bytecodes' if a.opcodes else 'instructions'} a request "
                      f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    finally:
        upstream.stop()
    text = render(results)
    name = ("opcodes" if a.opcodes else "instructions") + (f"-{a.only}" if a.only in ("paced", "failover") else "")
    name += (f"-c{a.concurrency}" if a.concurrency > 1 else "") + ("-cache" if a.cache else "")
    md = write_unique(name, text)
    md.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
