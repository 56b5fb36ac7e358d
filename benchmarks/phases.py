"""Where one request's time goes inside nonstop, phase by phase (concurrency 1).

    python benchmarks/phases.py                          every scenario
    python benchmarks/phases.py --only failover          one (json, stream, failover, local)
    python benchmarks/phases.py --rev REV                also nonstop at git revision REV, interleaved
    python benchmarks/phases.py --mark nonstop.backends.local:LocalBackend.send   a function's entry and return too
    python benchmarks/phases.py --only json --trace      also what the loop runs while the upstream answers

run.py says how much nonstop adds to a request; this says where, on the request's own
timeline. nonstop (and, where the cloud answers, the bare forwarder beside it: the floor
the targets are read against) runs under benchmarks/phasemark.py, which notes for each
request, in µs after uvicorn read its head: when each upstream request was handed to
aiohttp (`cloud sent`, `local sent`), when its reply's head came back (`cloud head`,
`local head`), when the response's body began to go to the client (`out`) and when it
ended (`end`: for a stream, the whole relay after the first byte); around those, when
the server's socket first had the request's bytes (`arrived`, before the head), when
the reply's head and first bytes were handed to the socket (`written`), and the
client's own two: when it sent the request and when it read the first bytes (`client
sent`, `client first`; perf_counter is one clock for every process on Linux, so the
client's times sit on the server's timeline). The report gives
each phase's median offset and the median of each segment (the time since the phase
before it, request by request), beside each upstream's own round trip called directly
in the same rounds: what a `sent -> head` segment takes beyond that is aiohttp's own work
and the event loop's other business while the reply was on its way.

The scenarios, each on the fake upstream (benchmarks/upstream.py) with one
Anthropic-format local backend and the request log on, the 50 KB Claude Code request:
  json      the cloud answers (JSON)
  stream    the cloud answers (a stream of 30 deltas)
  failover  the cloud answers every request with a subscription-limit 429 whose reset is
            already past, `default_cooldown = 0` (run.py's failover rounds): every request
            probes the cloud, meets the 429, and is answered by the local server (stream)
  local     the cloud out (its first 429 names a reset an hour away): the local server
            answers (stream)

Each mark costs a few µs, so absolute offsets run a little above run.py's: compare two
codes (--rev) under the same marks. With --trace, every function the thread enters
between `sent` and `head` is listed too (phasemark.py's PHASEMARK_TRACE), and the report
gives each target's calls in that window and the calls one target makes there that the
others do not: whether a longer `sent -> head` is more work, or other callbacks the loop
ran meanwhile, or the same work run slower. Tracing slows every call: the times of a
traced run are not to be compared with an untraced one's. Prints the tables and writes
benchmarks/results/<date>-phases.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    HERE,
    ROOT,
    Proc,
    free_port,
    log_written,
    machine,
    percentile,
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
from run import ANTHROPIC_LOCAL, PROBE_EVERY_REQUEST, nonstop_config  # noqa: E402

PATH = "/v1/messages?beta=true"
WARMUP = 50
# scenario -> (the cloud's mode on the fake upstream, streamed, extra [cloud] settings, title)
SCENARIOS: dict[str, tuple[str, bool, str, str]] = {
    "json": ("ok", False, "", "The cloud answers (JSON)"),
    "stream": ("ok", True, "", "The cloud answers (a stream)"),
    "failover": ("limit-past", True, PROBE_EVERY_REQUEST,
                 "A subscription-limit 429 each time, then the local answer (stream)"),
    "local": ("limit", True, "", "The cloud out: the local answer (stream)"),
}


class Target:
    """One nonstop under phasemark.py, and what it noted so far."""

    def __init__(self, name: str, proc: Proc, url: str, out: Path):
        self.name, self.proc, self.url, self.out = name, proc, url, out
        self.ttfb: list[float] = []
        self.client: list[tuple[float, float]] = []  # each request's send and first bytes (perf_counter)

    def calls(self) -> list[list[str]]:
        """With --trace: the functions entered in each upstream request's `sent -> head`."""
        path = self.out.with_name(self.out.name + ".calls")
        return json.loads(path.read_text()) if path.exists() else []

    def noted(self) -> list[dict[str, float]]:
        """The phases noted, with the client's own two (`client sent`, `client first`)
        where the counts agree: perf_counter is one clock for every process here."""
        got = json.loads(self.out.read_text()) if self.out.exists() else []
        if len(got) == len(self.client):
            for req, (sent, first) in zip(got, self.client, strict=True):
                at = req.pop("at", None)
                if at is not None:
                    req["client sent"] = round((sent - at) * 1e6, 1)
                    req["client first"] = round((first - at) * 1e6, 1)
        return got


def start_target(name: str, scenario: str, up: dict[str, str], ports: dict[str, int], work: Path,
                 source: Path | None, functions: list[str], trace: bool = False) -> Target:
    """nonstop in the scenario's configuration (its code from `source`, else this tree),
    or with `name` "forwarder" the bare forwarder on the scenario's cloud."""
    mode, _, cloud_extra, _ = SCENARIOS[scenario]
    folder = work / f"{name}-{scenario}"
    folder.mkdir()
    port = free_port()
    out = folder / "phases.json"
    env = {"NONSTOP_STATE_DIR": str(folder / "state"), "PYTHONPATH": str(source or ROOT / "src"),
           "PHASEMARK_UPSTREAMS": f"cloud={ports[mode]},local={ports['local']}",
           "PHASEMARK_FUNCTIONS": " ".join(functions), "PHASEMARK_TRACE": "1" if trace else ""}
    if name == "forwarder":
        argv = [str(HERE / "forwarder.py"), "--listen", f"127.0.0.1:{port}", "--upstream", up[mode]]
        health = "/_stats"
    else:
        cfg = folder / "config.toml"
        cfg.write_text(nonstop_config(port, folder / "state", up[mode], ANTHROPIC_LOCAL.format(url=up["local"]),
                                      cloud_extra=cloud_extra))
        argv = ["-m", "nonstop", "serve", "--config", str(cfg)]
        health = "/health"
    p = start(name, [sys.executable, str(HERE / "phasemark.py"), str(out), *argv], env=env, workdir=folder)
    wait_http(p, f"http://127.0.0.1:{port}{health}", timeout=60)
    return Target(name, p, f"http://127.0.0.1:{port}{PATH}", out)


async def drive(url: str, stream: bool, n: int, ttfb: list[float] | None = None,
                client: list[tuple[float, float]] | None = None) -> None:
    """`n` requests one at a time; the time to the first body bytes of each, in ms, to
    `ttfb`, and when each was sent and its first bytes read to `client`."""
    body = body_for("large", stream)  # the load generator's bytes (compact JSON, as clients send)
    headers = {**CLAUDE_CODE_HEADERS, "content-type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.content.readany()
                first = time.perf_counter() - t0
                data += await resp.read()
            if resp.status >= 500 or (stream and resp.status == 200 and b"message_stop" not in data):
                raise RuntimeError(f"{url}: {resp.status} {data[:300]!r}")
            if ttfb is not None:
                ttfb.append(first * 1000)
            if client is not None:
                client.append((t0, t0 + first))


def noted_after(t: Target, before: float, timeout: float = 30.0) -> None:
    """Wait until phasemark.py has written its notes anew (after SIGUSR2)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if t.out.exists() and t.out.stat().st_mtime > before:
            return
        time.sleep(0.02)
    raise RuntimeError(f"{t.name}: phasemark.py wrote nothing\n{t.proc.tail()}")


def scenario_rounds(scenario: str, targets: list[Target], direct: dict[str, str], rounds: int, n: int) -> dict[str, Any]:
    _, stream, _, _ = SCENARIOS[scenario]
    for t in targets:
        asyncio.run(drive(t.url, stream, WARMUP))
    direct_ttfb: dict[str, list[float]] = {k: [] for k in direct}
    for r in range(rounds):  # interleaved, the order flipping every round
        for t in targets if r % 2 == 0 else targets[::-1]:
            os.kill(t.proc.pid, signal.SIGUSR1)
            time.sleep(0.05)
            asyncio.run(drive(t.url, stream, n, t.ttfb, t.client))
            before = time.time()
            time.sleep(0.01)
            os.kill(t.proc.pid, signal.SIGUSR2)
            noted_after(t, before)
            if t.name != "forwarder":
                # Its request log's last batch written now (a read waits for the writer),
                # not during the next target's turn, where it would take a core from it.
                why = log_written(t.url.split("/v1/", 1)[0])
                if why is not None:
                    print(f"  note: {t.name}: its request log could not be read ({why}); its last batch "
                          "may be written during the next target's turn", file=sys.stderr, flush=True)
        for name, url in direct.items():  # each upstream this scenario meets, called directly
            asyncio.run(drive(url + PATH, stream and name != "the 429", n // 2, direct_ttfb[name]))
    out: dict[str, Any] = {"targets": {t.name: {"ttfb_ms": t.ttfb, "requests": t.noted()} for t in targets},
                           "direct_ttfb_ms": direct_ttfb}
    traced = {t.name: t.calls() for t in targets}
    if any(traced.values()):  # (the lists themselves are not kept: megabytes a run)
        medians, differ = window_calls(traced)
        out["window"] = {"medians": medians, "differ": differ}
    return out


def phase_table(requests: list[dict[str, float]]) -> list[tuple[str, float, float]]:
    """(phase, median µs after the head, median µs since the phase before), the phases in
    the order of their medians; a segment is read request by request."""
    seen: dict[str, list[float]] = {}
    for req in requests:
        for k, v in req.items():
            seen.setdefault(k, []).append(v)
    order = sorted(seen, key=lambda k: (percentile(seen[k], 50), k != "head"))
    rows = []
    for i, k in enumerate(order):
        seg = [req[k] - req[order[i - 1]] for req in requests if i and k in req and order[i - 1] in req]
        rows.append((k, percentile(seen[k], 50), percentile(seg, 50) if seg else 0.0))
    return rows


def window_calls(targets: dict[str, list[list[str]]]) -> tuple[dict[str, float], list[tuple[str, dict[str, float]]]]:
    """From each target's traced windows (the functions entered in each `sent -> head`):
    the median number of calls in a window, and each function whose calls per window
    differ between the targets (by at least half a call), with its calls per window in
    each, the largest differences first."""
    medians = {n: percentile([len(w) for w in ws], 50) if ws else 0.0 for n, ws in targets.items()}
    rates: dict[str, dict[str, float]] = {}
    for n, ws in targets.items():
        for fn, k in collections.Counter(c for w in ws for c in w).items():
            rates.setdefault(fn, {})[n] = k / len(ws)
    differ = [(fn, {n: r.get(n, 0.0) for n in targets}) for fn, r in rates.items()]
    differ = [(fn, r) for fn, r in differ if max(r.values()) - min(r.values()) >= 0.5]
    differ.sort(key=lambda d: (-(max(d[1].values()) - min(d[1].values())), d[0]))
    return medians, differ


def render(results: dict[str, Any]) -> str:
    lines = ["# Where a request's time goes inside nonstop (benchmarks/phases.py)", "",
             f"{results['started']}. {machine_line(results['machine'])}. Source {results['source']['sha256']} "
             f"({results['source']['files']} files, newest change {results['source']['newest_change']})"
             + (f"; beside it nonstop at {results['rev']}." if results.get("rev") else "."), "",
             f"Concurrency 1, the 50 KB Claude Code request; {results['rounds']} interleaved rounds of "
             f"{results['requests']} requests per target after {WARMUP} unrecorded; times are medians (µs). "
             "*after the head*: since nonstop read the request's head (its 50 KB body follows); *segment*: since "
             "the phase before, request by request. `client sent` and `client first`: when the client sent the request and "
             "read the first bytes of the reply; `arrived`: when the server's socket first had the request's bytes; "
             "`written`: when the reply's head and first bytes were handed to the socket. Above each table, each upstream's own time to first byte, called "
             "directly in the same rounds: what its `sent -> head` segment takes beyond it is aiohttp's work and the "
             "event loop's other business. Marks cost a few µs each: compare codes under the same marks.", ""]
    for scenario, res in results["scenarios"].items():
        names = list(res["targets"])
        lines += [f"## {scenario}: {SCENARIOS[scenario][3]}", ""]
        ttfb = ", ".join(f"{results['labels'][n]} {percentile(res['targets'][n]['ttfb_ms'], 50):.3f} ms" for n in names)
        direct = ", ".join(f"{k} {percentile(v, 50):.3f} ms" for k, v in res["direct_ttfb_ms"].items())
        lines += [f"Time to first byte at the client (p50): {ttfb}. Directly: {direct}.", ""]
        tables = {n: phase_table(res["targets"][n]["requests"]) for n in names}
        order = [row[0] for row in tables[names[0]]]
        head = "| phase | " + " | ".join(f"{results['labels'][n]}: after the head | segment" for n in names) + " |"
        lines += [head, "|---|" + "---:|---:|" * len(names)]
        for phase in order:
            cells = []
            for n in names:
                row = next((r for r in tables[n] if r[0] == phase), None)
                cells += [f"{row[1]:,.0f}", f"{row[2]:,.0f}" if phase != "head" else "—"] if row else ["—", "—"]
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
        lines.append("")
        if "window" in res:
            medians, differ = res["window"]["medians"], res["window"]["differ"]
            lines += ["Traced (--trace; its times are slowed by the tracing): functions entered between `sent` and "
                      "`head`, per upstream request (median): "
                      + ", ".join(f"{results['labels'][n]} {medians[n]:,.0f}" for n in names) + ".", ""]
            if differ:
                lines += ["| called in the window | " + " | ".join(results["labels"][n] for n in names) + " |",
                          "|---|" + "---:|" * len(names)]
                lines += [f"| `{fn}` | " + " | ".join(f"{r[n]:.1f}" for n in names) + " |" for fn, r in differ[:30]]
            else:
                lines.append("The same functions, as often, in every target's window.")
            lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(SCENARIOS), help="one scenario")
    p.add_argument("--rev", help="also nonstop at this git revision, in the same rounds")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--requests", type=int, default=250, help="requests per target per round")
    p.add_argument("--mark", action="append", default=[], metavar="MODULE:QUALNAME",
                   help="also note this function's entry and return (repeatable)")
    p.add_argument("--trace", action="store_true",
                   help="also list what the thread runs between each upstream request's sent and head (slow)")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nonstop-phases-"))
    upstream, ports = start_upstream({"ok": "ok", "limit-past": "limit-past", "limit": "limit", "local": "ok"}, work)
    source = revision_source(a.rev, work / f"src-{a.rev}") if a.rev else None
    labels = {"nonstop": "this code", **({"rev": a.rev} if a.rev else {}), "forwarder": "the bare forwarder"}
    results: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                               "source": source_fingerprint(), "rev": a.rev, "rounds": a.rounds,
                               "requests": a.requests, "marks": a.mark, "trace": a.trace, "labels": labels, "scenarios": {}}
    try:
        up = {k: f"http://127.0.0.1:{v}" for k, v in ports.items()}
        for scenario in [a.only] if a.only else list(SCENARIOS):
            mode = SCENARIOS[scenario][0]
            names = [n for n in labels if n != "forwarder" or mode == "ok"]  # the forwarder has no failover
            targets = [start_target(n, scenario, up, ports, work, source if n == "rev" else None, a.mark, a.trace)
                       for n in names]
            try:
                direct = {"the cloud": up["ok"]} if mode == "ok" else {"the local server": up["local"]}
                if mode == "limit-past":
                    direct = {"the 429": up["limit-past"], **direct}
                t0 = time.monotonic()
                results["scenarios"][scenario] = scenario_rounds(scenario, targets, direct, a.rounds, a.requests)
                print(f"{scenario}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
            finally:
                for t in targets:
                    t.proc.stop()
    finally:
        upstream.stop()
    md = write_unique("phases" + (f"-{a.only}" if a.only else ""), render(results) + "\n")
    md.with_suffix(".json").write_text(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
