"""What the one parse of the request costs at concurrency 1, against the bare forwarder.

    python benchmarks/floor.py [--rounds 12] [--requests 500] [--stream]

nonstop decides each request (the planner's facts, history hygiene, validation) from its
outline: `nonstop.wire.outline`, a typed msgspec decode of the fields those read, which
skips the rest of the 50 KB body inside C. This starts the fake upstream, the bare
forwarder, the same forwarder with that one decode added (`forwarder.py --outline`) and
nonstop in its default configuration, and measures them in interleaved concurrency-1
rounds, the order flipping every round. The forwarder with the outline is a floor for any
gateway that decides per request from the body on this stack: what nonstop adds beyond it
is everything else nonstop does. Prints the table and writes it to
benchmarks/results/<date>-floor[-stream].md.
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
          "outline": "the forwarder + the outline decode", "nonstop": "nonstop, default configuration"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    p.add_argument("--requests", type=int, default=500, help="requests per target per round")
    p.add_argument("--stream", action="store_true", help="streamed requests (JSON otherwise)")
    a = p.parse_args()
    bench = R.Bench(argparse.Namespace(smoke=True, long=False, growth_requests=0, peers=False, profile=False,
                                       variants=False, only_log=False, baseline="none"))
    mode = "stream" if a.stream else "json"
    try:
        bench.setup()
        port = free_port()
        folder = bench.work / "forwarder-outline"
        folder.mkdir()
        env = {"PYTHONPATH": str(HERE.parent / "src")}
        fwd = start("forwarder-outline", [sys.executable, str(HERE / "forwarder.py"), "--listen", f"127.0.0.1:{port}",
                                          "--upstream", bench.up["ok"], "--outline"], env=env, workdir=folder)
        bench.procs.append(fwd)
        fwd.url = f"http://127.0.0.1:{port}"
        wait_http(fwd, fwd.url + "/_stats", timeout=30)
        bench.targets["outline"] = {"url": fwd.url, "path": "/v1/messages?beta=true", "pid": fwd.pid}
        names = list(LABELS)
        raw: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(a.rounds):
            for n in (names if r % 2 == 0 else names[::-1]):
                raw[n].append(bench.measure(n, stream=a.stream, concurrency=1, requests=a.requests))
    finally:
        bench.stop_all()
    res = {n: R.summarize(raw[n]) for n in names}
    lines = [f"# The floor of a deciding gateway, concurrency 1, {mode} ({dt.datetime.now().isoformat(timespec='seconds')})", "",
             f"`python benchmarks/floor.py{' --stream' if a.stream else ''} --rounds {a.rounds} --requests {a.requests}`: "
             f"interleaved rounds of the 50 KB Claude Code-shaped request, one at a time. "
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

    lines += [f"- the outline decode alone, over the forwarder: {added('outline', 'forwarder')}",
              f"- nonstop over the forwarder: {added('nonstop', 'forwarder')}",
              f"- nonstop over the forwarder with the outline: {added('nonstop', 'outline')}",
              f"- the forwarder over direct: {added('forwarder', 'direct')}"]
    errors = sum(res[n]["errors"] for n in names)
    if errors:
        lines.append(f"- errors: {errors} ({next(res[n]['error_sample'] for n in names if res[n]['errors'])})")
    write_unique(f"floor{'-stream' if a.stream else ''}", "\n".join(lines) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
