"""What the one parse of the request costs at concurrency 1, against the bare forwarder.

    python benchmarks/floor.py [--rounds 12] [--requests 500] [--stream] [--concurrency N] [--relay-reader]

nonstop decides each request (the planner's facts, history hygiene, validation) from its
outline: `nonstop.wire.outline`, a typed msgspec decode of the fields those read, which
skips the rest of the 50 KB body inside C. This starts the fake upstream, the bare
forwarder, the same forwarder with that one decode added (`forwarder.py --outline`) and
nonstop in its default configuration, and measures them in interleaved concurrency-1
rounds, the order flipping every round. The forwarder with the outline is a floor for any
gateway that decides per request from the body on this stack: what nonstop adds beyond it
is everything else nonstop does. With `--relay-reader`, the forwarder that reads its
replies' bodies as nonstop does (`forwarder.py --relay-reader`) runs too: the floor with
aiohttp's per-chunk work taken out as nonstop takes it out. `--concurrency` runs the rounds
with that many clients at once (64: the unpaced streams of the CPU target). Prints the table
and writes it to benchmarks/results/<date>-floor[-stream][-cN].md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402
from harness import (  # noqa: E402
    HERE,
    free_port,
    machine,
    median,
    source_fingerprint,
    start,
    wait_http,
    write_unique,
)
from report import machine_line  # noqa: E402

LABELS = {"direct": "the upstream, directly", "forwarder": "the bare forwarder",
          "outline": "the forwarder + the outline decode", "relay": "the forwarder + nonstop's reply reader",
          "nonstop": "nonstop, default configuration"}
# The forwarders this starts beside run.py's own: the flag each runs with.
VARIANTS = {"outline": "--outline", "relay": "--relay-reader"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    p.add_argument("--requests", type=int, default=500, help="requests per target per round")
    p.add_argument("--stream", action="store_true", help="streamed requests (JSON otherwise)")
    p.add_argument("--concurrency", type=int, default=1, help="clients at once")
    p.add_argument("--relay-reader", action="store_true", help="the forwarder reading replies as nonstop does, too")
    a = p.parse_args()
    bench = R.Bench(argparse.Namespace(smoke=True, long=False, growth_requests=0, peers=False, profile=False,
                                       variants=False, only_log=False, baseline="none"))
    mode = "stream" if a.stream else "json"
    names = [n for n in LABELS if n != "relay" or a.relay_reader]
    try:
        bench.setup()
        for n, flag in VARIANTS.items():
            if n not in names:
                continue
            port = free_port()
            folder = bench.work / f"forwarder-{n}"
            folder.mkdir()
            env = {"PYTHONPATH": str(HERE.parent / "src")}
            fwd = start(f"forwarder-{n}", [sys.executable, str(HERE / "forwarder.py"), "--listen", f"127.0.0.1:{port}",
                                           "--upstream", bench.up["ok"], flag], env=env, workdir=folder)
            bench.procs.append(fwd)
            fwd.url = f"http://127.0.0.1:{port}"
            wait_http(fwd, fwd.url + "/_stats", timeout=30)
            bench.targets[n] = {"url": fwd.url, "path": "/v1/messages?beta=true", "pid": fwd.pid}
        raw: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(a.rounds):
            for n in (names if r % 2 == 0 else names[::-1]):
                raw[n].append(bench.measure(n, stream=a.stream, concurrency=a.concurrency, requests=a.requests))
    finally:
        bench.stop_all()
    res = {n: R.summarize(raw[n]) for n in names}
    flags = (" --stream" if a.stream else "") + (f" --concurrency {a.concurrency}" if a.concurrency != 1 else "") + (
        " --relay-reader" if a.relay_reader else "")
    at_once = "one at a time" if a.concurrency == 1 else f"{a.concurrency} at once"
    lines = [f"# The floor of a deciding gateway, concurrency {a.concurrency}, {mode} ({dt.datetime.now().isoformat(timespec='seconds')})", "",
             f"`python benchmarks/floor.py{flags} --rounds {a.rounds} --requests {a.requests}`: "
             f"interleaved rounds of the 50 KB Claude Code-shaped request, {at_once}. "
             f"Code: src sha256 {source_fingerprint()['sha256']}…. {machine_line(machine())}.", "",
             "TTFB in ms; CPU in µs per request (the process, all threads; none for direct).", "",
             "| target | TTFB p50 | TTFB p99 | rounds' TTFB p50 | CPU µs/req |", "|---|---|---|---|---|"]
    for n in names:
        t = res[n]
        cpu = t["cpu_us_per_request"].get("target")
        lines.append(f"| {LABELS[n]} | {t['ttfb_p50']:.3f} | {t['ttfb_p99']:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in t['round_ttfb_p50'])} | {f'{cpu:,.0f}' if cpu else '-'} |")
    lines.append("")

    def added(b: str, over: str) -> str:
        per = [x - y for x, y in zip(res[b]["round_ttfb_p50"], res[over]["round_ttfb_p50"], strict=True)]
        return (f"{res[b]['ttfb_p50'] - res[over]['ttfb_p50']:+.3f} ms p50 pooled, {median(per):+.3f} ms the median "
                f"of rounds, {res[b]['ttfb_p99'] - res[over]['ttfb_p99']:+.3f} ms p99")

    def cpu_ratio(b: str, over: str) -> str:
        x, y = res[b]["cpu_us_per_request"].get("target"), res[over]["cpu_us_per_request"].get("target")
        return f"; CPU {x / y:.2f}x" if x and y else ""

    lines += [f"- the outline decode alone, over the forwarder: {added('outline', 'forwarder')}{cpu_ratio('outline', 'forwarder')}",
              f"- nonstop over the forwarder: {added('nonstop', 'forwarder')}{cpu_ratio('nonstop', 'forwarder')}",
              f"- nonstop over the forwarder with the outline: {added('nonstop', 'outline')}{cpu_ratio('nonstop', 'outline')}",
              f"- the forwarder over direct: {added('forwarder', 'direct')}"]
    if "relay" in names:
        lines += [f"- the forwarder reading as nonstop does, over the forwarder: {added('relay', 'forwarder')}"
                  f"{cpu_ratio('relay', 'forwarder')}",
                  f"- nonstop over the forwarder reading as nonstop does: {added('nonstop', 'relay')}{cpu_ratio('nonstop', 'relay')}"]
    errors = sum(res[n]["errors"] for n in names)
    if errors:
        lines.append(f"- errors: {errors} ({next(res[n]['error_sample'] for n in names if res[n]['errors'])})")
    write_unique(f"floor{'-stream' if a.stream else ''}{f'-c{a.concurrency}' if a.concurrency != 1 else ''}",
                 "\n".join(lines) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
