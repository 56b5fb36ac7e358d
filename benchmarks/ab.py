"""This code against another revision, in the same interleaved concurrency-1 rounds.

    python benchmarks/ab.py --rev 92a6cf6 [--json | --stream] [--requests 500] [--rounds 10] [--pairs 1]
    python benchmarks/ab.py --rev 92a6cf6 --failover [--requests 400] [--rounds 6]
    python benchmarks/ab.py --rev 92a6cf6 --paced [--requests 384] [--rounds 6]

Starts the fake upstream, the bare forwarder, nonstop as it is and nonstop at REV (its
src/ from `git archive`), both in the default configuration, and measures them in
interleaved rounds, the order flipping every round. Prints the table and writes it to
benchmarks/results/<date>-ab-<rev>.md. A full run compares against the published run's
revision in four rounds; this takes more rounds of one scenario, for when those four
cannot tell a change of the code from the machine's noise.

--pairs N repeats the rounds on N fresh pairs of processes (this code and REV, started in
alternating order) and pools them. Two processes of the same code differ by several
percent for their whole life (their place on the cores, their hash seed): a change of a
few percent is read on several pairs, not one.

--failover compares the failover path instead: both codes behind a cloud that answers
every request with a subscription-limit 429, and a local server, one target at a time in
interleaved rounds, as run.py measures the failover. (Driven at once, the two gateways,
the fake cloud and the clients keep both cores busy: the failover's wait on the cloud is
no longer idle, as it is when run.py measures it.)

--paced compares the two under 64 streams at a model's pace (run.py's paced round: a
delta every 25 ms for 1 s, the clients started 1/64 s apart), where the work is the
relay of each read rather than the request: TTFB and CPU per stream, with the
forwarder in the same rounds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402
from harness import median, source_fingerprint, write_unique  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the git revision to compare with")
    p.add_argument("--json", action="store_true", help="only JSON rounds")
    p.add_argument("--stream", action="store_true", help="only stream rounds")
    p.add_argument("--requests", type=int, help="requests per target per round (500; --paced: 384 streams)")
    p.add_argument("--rounds", type=int, default=10, help="rounds (per pair of processes)")
    p.add_argument("--pairs", type=int, default=1, help="fresh pairs of processes, the rounds on each (not with --failover)")
    p.add_argument("--failover", action="store_true", help="the failover path (rounds one target at a time)")
    p.add_argument("--paced", action="store_true", help="64 streams at a model's pace instead of concurrency 1")
    a = p.parse_args()
    if a.requests is None and not a.paced:
        a.requests = 500
    bench = R.Bench(argparse.Namespace(smoke=True, long=False, growth_requests=0, peers=False, profile=False,
                                       variants=False, only_log=False, baseline=a.rev))
    pairs = f" on each of {a.pairs} fresh pairs of processes (this code and {a.rev}, pooled)" if a.pairs > 1 else ""
    lines = [f"# nonstop against {a.rev}, concurrency 1, {dt.datetime.now().isoformat(timespec='seconds')}", "",
             f"{a.rounds} interleaved rounds of {a.requests} requests per target{pairs} (50 KB Claude Code-shaped); "
             "TTFB in ms; CPU in µs per request (the gateway process, all threads).", ""]
    try:
        bench.setup()
        if a.failover:
            lines = failover(bench, a)
            return 0 if lines else 1
        names = ["forwarder", "nonstop", *bench.start_baseline()]
        if "baseline" not in names:
            print("the baseline did not start: " + "; ".join(bench.results["notes"]), file=sys.stderr)
            return 1
        src = bench.results["baseline"]["source"]["sha256"]
        code = f"Code: this tree's src (sha256 {source_fingerprint()['sha256']}…) against {a.rev} (sha256 {src}…)."
        lines[2] += " " + code
        if a.paced:
            paced(bench, a, names, code)
            return 0
        lines += ["| mode | target | TTFB p50 | TTFB p99 | rounds' TTFB p50 | CPU µs/req |", "|---|---|---|---|---|---|"]
        diffs = {}
        modes = [True] if a.stream else [False] if a.json else [False, True]
        raw: dict[bool, dict[str, list[dict]]] = {stream: {n: [] for n in names} for stream in modes}
        for k in range(a.pairs):
            if k:
                fresh_pair(bench, k)
            for stream in modes:
                for r in range(a.rounds):  # interleaved, the order flipping every round
                    for n in (names if r % 2 == 0 else names[::-1]):
                        raw[stream][n].append(bench.measure(n, stream=stream, concurrency=1, requests=a.requests))
        for stream in modes:
            res = {n: R.summarize(raw[stream][n]) for n in names}  # pooled over the rounds of every pair
            mode = "stream" if stream else "json"
            for n in names:
                t = res[n]
                lines.append(f"| {mode} | {n} | {t['ttfb_p50']:.3f} | {t['ttfb_p99']:.3f} | "
                             f"{', '.join(f'{x:.3f}' for x in t['round_ttfb_p50'])} | {t['cpu_us_per_request']['target']:,.0f} |")
            per = [x - y for x, y in zip(res["nonstop"]["round_ttfb_p50"], res["baseline"]["round_ttfb_p50"], strict=True)]
            diffs[mode] = (res["nonstop"]["ttfb_p50"] - res["baseline"]["ttfb_p50"], median(per))
        lines.append("")
        for mode, (pooled, per_round) in diffs.items():
            lines.append(f"- {mode}: this − {a.rev}, TTFB p50 {pooled:+.3f} ms pooled, {per_round:+.3f} ms median of rounds")
    finally:
        bench.stop_all()
    write(lines, a.rev, "-stream" if a.stream else "-json" if a.json else "")
    return 0


def fresh_pair(bench: R.Bench, k: int) -> None:
    """Stop nonstop and the baseline and start both again (the order alternating), as the
    targets of the same names."""
    for n in ("nonstop", "baseline"):
        proc = bench.main if n == "nonstop" else bench.targets[n]["proc"]
        proc.stop()
    src = bench.baseline_source(bench.results["baseline"]["rev"])
    assert src is not None
    order = ["baseline", "nonstop"] if k % 2 else ["nonstop", "baseline"]
    for n in order:
        p = bench.start_nonstop(f"{n}-{k}", bench.up["ok"], source=src if n == "baseline" else None)
        bench.targets[n] = {**bench.targets[n], "url": p.url, "pid": p.pid, "proc": p}
        if n == "nonstop":
            bench.main = p


def failover(bench: R.Bench, a: argparse.Namespace) -> list[str]:
    src = bench.baseline_source(a.rev)
    if src is None:
        print("; ".join(bench.results["notes"]), file=sys.stderr)
        return []
    procs = {"this": bench.start_failover("failover-this"), a.rev: bench.start_failover("failover-base", source=src)}
    for n, p in procs.items():
        bench.targets[n] = {"url": p.url, "path": "/v1/messages?beta=true", "pid": p.pid}
    names = list(procs)
    lines = [f"# nonstop against {a.rev}, the failover path, {dt.datetime.now().isoformat(timespec='seconds')}", "",
             f"Both behind a cloud that answers every request with a subscription-limit 429 (its reset already "
             f"past, `default_cooldown = 0`: every request probes, meets the 429 and fails over to the local "
             f"server), one after the other in {a.rounds} interleaved rounds of {a.requests} requests each, one at a "
             f"time (as run.py measures the failover). Code: "
             f"this tree's src (sha256 {source_fingerprint()['sha256']}…) against {a.rev} "
             f"(sha256 {source_fingerprint(src.parent)['sha256']}…). CPU in µs per request (all threads); TTFB in ms.", "",
             "| mode | round | CPU, this | CPU, " + a.rev + " | this − " + a.rev + " | TTFB p50, this | TTFB p50, " + a.rev + " |",
             "|---|---|---|---|---|---|---|"]
    summary = []
    for stream in ([True] if a.stream else [False] if a.json else [False, True]):
        mode = "stream" if stream else "json"
        for n in names:  # warm-up
            bench.measure(n, stream=stream, concurrency=1, requests=min(100, a.requests))
        diffs, ttfb = [], {n: [] for n in names}
        for r in range(a.rounds):  # one at a time, interleaved, the order flipping every round
            res = {n: bench.measure(n, stream=stream, concurrency=1, requests=a.requests)
                   for n in (names if r % 2 == 0 else names[::-1])}
            x, y = (res[n]["cpu_us_per_request"]["target"] for n in names)
            diffs.append(x - y)
            for n in names:
                ttfb[n] += res[n]["ttfb"]
            p50 = [R.percentile(res[n]["ttfb"], 50) for n in names]
            lines.append(f"| {mode} | {r + 1} | {x:,.0f} | {y:,.0f} | {x - y:+,.0f} | {p50[0]:.3f} | {p50[1]:.3f} |")
        pooled = [R.percentile(ttfb[n], 50) for n in names]
        summary.append(f"- {mode}: this − {a.rev}, CPU per request {sum(diffs) / len(diffs):+,.1f} µs mean of rounds "
                       f"(from {min(diffs):+,.0f} to {max(diffs):+,.0f}); TTFB p50 pooled {pooled[0]:.3f} against "
                       f"{pooled[1]:.3f} ms ({(pooled[0] - pooled[1]) * 1000:+,.0f} µs)")
    lines += ["", *summary]
    write(lines, a.rev, "-failover")
    return lines


def paced(bench: R.Bench, a: argparse.Namespace, names: list[str], code: str) -> list[str]:
    """Both codes and the forwarder under 64 paced streams, interleaved, the order flipping
    every round."""
    n = a.requests or 384
    head = [f"# nonstop against {a.rev}, 64 paced streams, {dt.datetime.now().isoformat(timespec='seconds')}", "",
            f"{a.rounds} interleaved rounds of {n} streams per target, 64 at a time, each a text delta every "
            f"{R.PACED['x-fake-interval']} s for {R.PACED['x-fake-hold']} s (run.py's paced round). "
            f"{code} TTFB in ms; CPU in µs per stream (the gateway process, all threads).", "",
            "| target | TTFB p50 | TTFB p99 | rounds' TTFB p99 | CPU µs/stream | rounds' CPU |", "|---|---|---|---|---|---|"]
    raw: dict[str, list[dict]] = {m: [] for m in names}
    for r in range(a.rounds):
        for m in (names if r % 2 == 0 else names[::-1]):
            raw[m].append(bench.measure(m, stream=True, concurrency=64, requests=n, headers=R.PACED, stagger=1.0))
    res = {m: R.summarize(raw[m]) for m in names}
    cpu = {m: [x["cpu_us_per_request"]["target"] for x in raw[m]] for m in names}
    for m in names:
        t = res[m]
        p99s = [R.percentile(x["ttfb"], 99) for x in raw[m]]
        head.append(f"| {m} | {t['ttfb_p50']:.3f} | {t['ttfb_p99']:.3f} | {', '.join(f'{x:.2f}' for x in p99s)} | "
                    f"{t['cpu_us_per_request']['target']:,.0f} | {', '.join(f'{x:,.0f}' for x in cpu[m])} |")
    this, base, fwd = (res[m]["cpu_us_per_request"]["target"] for m in ("nonstop", "baseline", "forwarder"))
    head += ["", f"- CPU per stream: this − {a.rev} {this - base:+,.0f} µs ({this / base - 1:+.1%}); "
                 f"÷ the forwarder: this {this / fwd:.2f}x, {a.rev} {base / fwd:.2f}x",
             f"- TTFB p99: this {res['nonstop']['ttfb_p99']:.2f} ms, {a.rev} {res['baseline']['ttfb_p99']:.2f} ms, "
             f"the forwarder {res['forwarder']['ttfb_p99']:.2f} ms"]
    print("\n".join(head))
    write(head, a.rev, "-paced")
    return head


def write(lines: list[str], rev: str, mode: str) -> None:
    write_unique(f"ab-{rev}{mode}", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
