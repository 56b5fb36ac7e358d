"""Turning a run's measurements into the results file: targets, tables, profile summaries."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from statistics import median
from typing import Any

# (name, limit, unit, lower_is_better). The headline numbers are nonstop's in its default
# configuration (request log on, one [[local]] backend), against the bare forwarder
# (benchmarks/forwarder.py: the same server and client libraries, doing nothing else) and
# against calling the upstream directly, in the same interleaved rounds.
TARGETS = [
    ("over the bare forwarder: added TTFB p50, c=1, JSON, 50 KB", 0.15, "ms", True),
    ("over the bare forwarder: added TTFB p99, c=1, JSON, 50 KB", 0.5, "ms", True),
    ("64 unpaced streams: TTFB p99, nonstop / forwarder", 1.5, "x", True),
    ("64 unpaced streams: CPU per request, nonstop / forwarder", 1.5, "x", True),
    ("64 paced streams: added TTFB p99 over direct", 5.0, "ms", True),
    ("idle RSS after start", 60.0, "MB", True),
    ("memory per open stream", 32.0, "KB", True),
    ("memory growth after warm-up", 1.0, "MB", True),
    ("relaying a local stream: added to its total time (p50)", 1.0, "%", True),
    ("relaying a local stream: token rate lost (p50)", 1.0, "%", True),
    ("request log: CPU per request, log on − off", 30.0, "µs", True),
    ("planning (facts + view + plan), p50, default configuration", 20.0, "µs", True),
    ("planning (facts + view + plan), p50, four local backends", 20.0, "µs", True),
    ("not regressed against the published run's code: TTFB p50, c=1, JSON, this − baseline", 0.1, "ms", True),
    ("not regressed against the published run's code: TTFB p50, c=1, stream, this − baseline", 0.1, "ms", True),
    ("throughput through nonstop, JSON, small request and response", 1500.0, "req/s", False),
    ("failover: added beyond the 429's round trip (p50, stream)", 2.0, "ms", True),
    ("OpenAI -> Anthropic translation, one core", 50_000.0, "events/s", False),
]
HIGHER_IS_BETTER = frozenset(name for name, _, _, lower in TARGETS if not lower)


PEERS = frozenset({"litellm", "litellm-passthrough", "spillway"})


def _lat(results: dict[str, Any], stream: bool, c: int) -> dict[str, Any] | None:
    for row in results.get("latency", []):
        if row["stream"] is stream and row["concurrency"] == c:  # the saturating sweep
            return row["targets"]
    return None


def _paired(results: dict[str, Any], stream: bool, c: int) -> dict[str, Any] | None:
    """nonstop and the forwarder pooled over every pair of processes that ran the scenario
    (run.py forwarder_pairs); runs before 2026-12-01 had one pair: the latency sweep's."""
    for row in (results.get("pairs") or {}).get("scenarios", []):
        if row["stream"] is stream and row["concurrency"] == c:
            return row["targets"]
    return _lat(results, stream, c)


def _added(t: dict[str, Any] | None, key: str, target: str = "nonstop", base: str = "direct") -> float | None:
    if not t or target not in t or base not in t:
        return None
    return t[target][key] - t[base][key]


def _quotient(t: dict[str, Any] | None, key: str, sub: str | None = None) -> float | None:
    if not t or "nonstop" not in t or "forwarder" not in t:
        return None
    a, b = t["nonstop"][key], t["forwarder"][key]
    if sub is not None:
        a, b = a.get(sub), b.get(sub)
    return a / b if a is not None and b else None


def against_baseline(t: dict[str, Any] | None) -> float | None:
    """This code's TTFB p50 minus the baseline revision's, in the same rounds: the median of
    the round-by-round differences (each round of one next to a round of the other), so a
    drift of the machine over the run cancels. Identical code differs by up to ~0.1 ms."""
    if not t or "baseline" not in t or "nonstop" not in t:
        return None
    diffs = [a - b for a, b in zip(t["nonstop"]["round_ttfb_p50"], t["baseline"]["round_ttfb_p50"], strict=False)]
    return median(diffs) if diffs else None


def _log_on(targets: dict[str, Any]) -> dict[str, Any]:
    # Runs before 2026-11-29 15:59 compared the main instance; later ones a fresh one.
    return targets["nonstop-log-on"] if "nonstop-log-on" in targets else targets["nonstop"]


def log_cost(results: dict[str, Any]) -> float | None:
    """(log on − log off) CPU per request: the mean over every round of every log scenario
    where both were driven at once (every round the same number of requests, so this is
    all the CPU of the log-on instances over all their requests minus the log-off ones');
    in older runs, whose rounds took turns and counted clock ticks, the median."""
    diffs = _log_diffs(results)
    if not diffs:
        return None
    return sum(diffs) / len(diffs) if (results.get("log_method") or {}).get("together") else median(diffs)


def _log_diffs(results: dict[str, Any]) -> list[float]:
    diffs = []
    for sc in results.get("log_cost") or []:
        on, off = _log_on(sc["targets"]).get("cpu_rounds"), sc["targets"]["nonstop-log-off"].get("cpu_rounds")
        if on and off:
            diffs += [a - b for a, b in zip(on, off, strict=False) if a is not None and b is not None]
    return diffs


def relay_cost(results: dict[str, Any]) -> tuple[float | None, float | None]:
    """(% added to a local stream's total time, % of its token rate lost), at p50."""
    lr = (results.get("local_relay") or {}).get("targets")
    if not lr:
        return None, None
    d, v = lr["paced-direct"], lr["paced-nonstop"]
    added = (v["total_p50"] / d["total_p50"] - 1) * 100 if d["total_p50"] else None
    lost = (1 - v["rate_p50"] / d["rate_p50"]) * 100 if d.get("rate_p50") else None
    return added, lost


def failover_added(targets: dict[str, dict[str, Any]]) -> float:
    """What a failover adds beyond the 429's own round trip and the local server's own
    first byte, both measured directly (p50s)."""
    return (targets["nonstop-failover"]["ttfb_p50"] - targets["cloud-429"]["total_p50"]
            - targets["local-direct"]["ttfb_p50"])


def measured_values(results: dict[str, Any]) -> list[float | None]:
    json1 = _paired(results, False, 1)
    s64 = _paired(results, True, 64)
    paced = (results.get("paced") or {}).get("targets")
    small = (results.get("throughput_small") or {}).get("targets", {}).get("nonstop")
    mem = results.get("memory", {})
    fo = (results.get("failover") or {}).get("stream", {}).get("targets")
    failover = failover_added(fo) if fo else None
    tr = (results.get("translation") or {}).get("translator", {})
    plan = (results.get("inprocess") or {}).get("plan") or {}
    relay_added, relay_lost = relay_cost(results)
    return [
        _added(json1, "ttfb_p50", base="forwarder"),
        _added(json1, "ttfb_p99", base="forwarder"),
        _quotient(s64, "ttfb_p99"),
        _quotient(s64, "cpu_us_per_request", "target"),
        _added(paced, "ttfb_p99"),
        mem.get("idle_rss_start_mb"),
        (mem.get("streams") or {}).get("per_stream_kb"),
        (mem.get("growth") or {}).get("growth_mb"),
        relay_added,
        relay_lost,
        log_cost(results),
        (plan.get("serving_1") or {}).get("p50_us"),
        (plan.get("serving_4") or {}).get("p50_us"),
        against_baseline(_lat(results, False, 1)),
        against_baseline(_lat(results, True, 1)),
        small["rps"] if small else None,
        failover,
        tr.get("chunks_per_s"),
    ]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for (name, limit, unit, lower), value in zip(TARGETS, measured_values(results), strict=True):
        if name.startswith("not regressed") and "baseline" not in results:
            continue  # a run without a baseline (smoke, --baseline none, older files)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append({"name": name, "limit": limit, "unit": unit, "value": None, "met": False,
                        "verdict": "not measured"})
            continue
        met = value <= limit if lower else value >= limit
        if met:
            verdict = "met"
        elif lower:
            verdict = f"missed by {_fmt(value - limit, 4)} {unit} ({value / limit:.2f}x the limit)" if limit else "missed"
        else:
            verdict = f"missed by {_fmt(limit - value)} {unit} ({value / limit:.0%} of the target)"
        out.append({"name": name, "limit": limit, "unit": unit, "value": value, "met": met, "verdict": verdict})
    return out


def harness_errors(results: dict[str, Any]) -> list[str]:
    """Problems that make the numbers untrustworthy (as opposed to missed targets)."""
    errs = []
    paced = results.get("paced")
    rows = results.get("latency", []) + ([{**paced, "concurrency": "64 paced"}] if paced else [])
    rows += [{**sc, "concurrency": f"{sc['concurrency']} (log cost)"} for sc in results.get("log_cost") or []]
    for row in rows:
        for name, t in row["targets"].items():
            # A peer's failed requests are a finding about the peer (shown in its rows).
            if t["errors"] and name not in PEERS:
                errs.append(f"latency {'stream' if row['stream'] else 'json'} c={row['concurrency']} {name}: "
                            f"{t['errors']} failed requests, e.g. {t['error_sample']}")
    relay = results.get("local_relay")
    if relay:
        for name, t in relay["targets"].items():
            if t["errors"]:
                errs.append(f"local relay {name}: {t['errors']} failed, e.g. {t['error_sample']}")
    if "error" in (results.get("inprocess") or {}):
        errs.append("in-process measurements: " + results["inprocess"]["error"][:300])
    for section in ("failover", "local_path"):
        for kind, block in (results.get(section) or {}).items():
            if isinstance(block, dict) and "targets" in block:
                for name, t in block["targets"].items():
                    if t["errors"]:
                        errs.append(f"{section} {kind} {name}: {t['errors']} failed, e.g. {t['error_sample']}")
    g = (results.get("memory") or {}).get("growth") or {}
    if g.get("errors"):
        errs.append(f"memory growth run: {g['errors']} failed requests")
    s = (results.get("memory") or {}).get("streams") or {}
    if s and s.get("failed"):
        errs.append(f"held streams: {s['failed']} failed: {s.get('error_sample')}")
    if "error" in (results.get("translation") or {}):
        errs.append("translation: " + results["translation"]["error"][:300])
    return errs


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "—"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A Markdown table: the header, its rule, a line per row, and a blank line."""
    return [_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows), ""]


def _row(cells: list[str]) -> str:
    return "|" + "".join(f" {c} |" if c else " |" for c in cells)


def _pair(p50: float | None, p99: float | None) -> str:
    return f"{_fmt(p50)} / {_fmt(p99)}"


def _over(t: dict[str, Any], base: dict[str, Any] | None, what: str = "ttfb") -> str:
    """This target minus the base at p50 / p99 ("—" for the base itself)."""
    if base is None:
        return "—"
    return _pair(t[f"{what}_p50"] - base[f"{what}_p50"], t[f"{what}_p99"] - base[f"{what}_p99"])


def _cpu(t: dict[str, Any], key: str = "target") -> float | None:
    return t["cpu_us_per_request"].get(key)


def render(results: dict[str, Any]) -> str:
    sections = (_header, _targets_table, _latency, _pairs, _paced, _throughput_small, _log_cost, _memory, _inprocess,
                _failover, _local_path, _local_relay, _translation, _variants, _peers, _profile, _notes, _how_run)
    return "\n".join(line for section in sections for line in section(results))


def _header(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    L = [f"# nonstop benchmarks, {results['date']} ({results['mode']})", ""]
    mhz = f" at {float(m['cpu_mhz']):,.0f} MHz" if m.get("cpu_mhz") else ""
    L.append(f"Machine: {m['cpu']}{mhz}, {m['cores']} cores, {m['memory_mb']:,} MB RAM, Linux {m['kernel']}, "
             f"Python {m['python']}; load average at start {m['load_at_start']}. "
             f"Packages: {', '.join(f'{k} {v}' for k, v in m['packages'].items())}.")
    src = results.get("source")
    if src:
        L.append(f"Code: src/nonstop, {src['files']} files, sha256 {src['sha256']}…, newest change "
                 f"{src['newest_change']}.")
    base = results.get("baseline")
    if base:
        L.append(f"Baseline: nonstop at revision {base['rev']} (sha256 {base['source']['sha256']}…), run beside "
                 "this code in the concurrency-1 rounds, to tell a change of the code from a change of the machine.")
    L.append(f"Run: {results['started']} to {results.get('finished', '?')}; load average at the end "
             f"{results.get('load_at_end', '?')}. "
             "Everything on 127.0.0.1; the load generator, the fake upstream and the gateways are separate "
             "processes sharing the same cores, so absolute numbers include that contention; "
             "A/B rounds are interleaved and compared inside this run.")
    return [*L, ""]


def _targets_table(results: dict[str, Any]) -> list[str]:
    rows = []
    for t in results.get("targets_met", []):
        op = "≥" if t["name"] in HIGHER_IS_BETTER else "≤"
        rows.append([t["name"], f"{op} {_fmt(t['limit'])} {t['unit']}", f"{_fmt(t['value'])} {t['unit']}",
                     "**met**" if t["met"] else "**" + t["verdict"] + "**"])
    return ["## Targets", "", *_table(["target", "limit", "measured", "result"], rows)]


def _vs(t: dict[str, Any], base: dict[str, Any] | None, what: str = "ttfb") -> tuple[str, str]:
    """(added p50 / p99, ratio p50 / p99) of t over base; dashes for the base itself."""
    if base is None or t is base:
        return "—", "—"
    ratio = f"{_ratio(t[what + '_p50'], base[what + '_p50'])} / {_ratio(t[what + '_p99'], base[what + '_p99'])}"
    return _over(t, base, what), ratio


def _cpu_ratio(t: dict[str, Any], base: dict[str, Any] | None) -> str:
    a, b = _cpu(t), _cpu(base) if base is not None else None
    return _ratio(a, b) if base is not None and t is not base and a and b else "—"


def _latency(results: dict[str, Any]) -> list[str]:
    lat = results.get("latency", [])
    if not lat:
        return []
    rows = []
    for row in lat:
        d = row["targets"]["direct"]
        f = row["targets"].get("forwarder")
        for name, t in row["targets"].items():
            over_d, _ = _vs(t, None if name == "direct" else d)
            over_f, ratio_f = _vs(t, None if name in ("direct", "forwarder") else f)
            total_f, _ = _vs(t, None if name in ("direct", "forwarder") else f, "total")
            rows.append(["stream" if row["stream"] else "json", str(row["concurrency"]), name, _fmt(t["ttfb_p50"]),
                         _fmt(t["ttfb_p99"]), over_d, over_f, ratio_f, _fmt(t["total_p50"]), _fmt(t["total_p99"]),
                         total_f, f"{t['rps']:,.0f}", _fmt(_cpu(t)),
                         _cpu_ratio(t, None if name in ("direct", "forwarder") else f),
                         _fmt(t["cpu_share"].get("target"), 2), _fmt(_cpu(t, "upstream")), _fmt(t.get("others_cores"), 2),
                         str(t["errors"])])
    return [
        "## Latency and throughput: 50 KB Claude Code-shaped requests", "",
        "Times in ms. *over direct* / *over forwarder* = this target minus direct (or minus the bare "
        "forwarder) at the same percentile; *÷ forwarder* = this target / the forwarder. TTFB = time to the "
        "first body bytes; total = time to the end of the body. Concurrency 1 is one session; 64 clients "
        "back to back against an upstream that answers at once find the ceiling of the slowest process "
        "(queueing, not work per request; the paced round below is the realistic one). req/s is the median "
        "over rounds (closed loop). CPU µs/req is the gateway process's utime+stime per request (all "
        "threads); upstream µs/req is the fake upstream's own cost in the same rounds.", "",
        *_table(["mode", "conc.", "target", "TTFB p50", "TTFB p99", "TTFB over direct p50 / p99",
                 "TTFB over forwarder p50 / p99", "TTFB ÷ forwarder p50 / p99", "total p50", "total p99",
                 "total over forwarder p50 / p99", "req/s", "CPU µs/req", "CPU ÷ forwarder", "CPU (cores)",
                 "upstream µs/req", "other load (cores)", "errors"], rows),
        "*other load*: cores kept busy by processes outside the benchmark during the round "
        "(from /proc/stat), i.e. the noise the round ran in.", "",
    ]


def _pairs(results: dict[str, Any]) -> list[str]:
    pairs = results.get("pairs")
    if not pairs:
        return []
    rows = []
    for row in pairs["scenarios"]:
        kind = f"{'stream' if row['stream'] else 'json'} c={row['concurrency']}"
        for i, p in enumerate(row["per_pair"]):
            p50, p99 = p["ttfb_p50"], p["ttfb_p99"]
            added = f"{_fmt(p50['nonstop'] - p50['forwarder'])} / {_fmt(p99['nonstop'] - p99['forwarder'])}"
            rows.append([kind, "main" if i == 0 else f"fresh {i}", added,
                         _ratio(p["ttfb_p99"]["nonstop"], p["ttfb_p99"]["forwarder"]),
                         f"{_fmt(p['cpu_us_per_request']['nonstop'])} / {_fmt(p['cpu_us_per_request']['forwarder'])}",
                         _ratio(p["cpu_us_per_request"]["nonstop"], p["cpu_us_per_request"]["forwarder"]),
                         str(p["errors"])])
        n, f = row["targets"]["nonstop"], row["targets"]["forwarder"]
        rows.append([kind, f"**pooled ({len(row['per_pair'])})**", f"**{_over(n, f)}**",
                     f"**{_ratio(n['ttfb_p99'], f['ttfb_p99'])}**", f"**{_fmt(_cpu(n))} / {_fmt(_cpu(f))}**",
                     f"**{_cpu_ratio(n, f)}**", str(n["errors"] + f["errors"])])
    return [
        "## nonstop against the bare forwarder, pair by pair", "",
        f"The targets' comparisons with the forwarder, on {pairs['pairs']} pairs of processes: the main pair "
        "(its rounds of the sweep above) and fresh ones started for this, in alternating order, "
        f"{pairs['rounds_per_pair']} interleaved rounds each. Two processes of the same code differ by several "
        "per cent for their whole life, so one pair's ratio carries that pair's draw; the targets read the "
        "pooled rows (percentiles over every request of every pair, the median of every round's CPU per "
        "request).", "",
        *_table(["scenario", "pair", "TTFB over forwarder p50 / p99 (ms)", "TTFB p99 ÷ forwarder",
                 "CPU µs/req nonstop / forwarder", "CPU ÷ forwarder", "errors"], rows),
    ]


def _paced(results: dict[str, Any]) -> list[str]:
    paced = results.get("paced")
    if not paced:
        return []
    d = paced["targets"]["direct"]
    f = paced["targets"].get("forwarder")
    rows = []
    for name, t in paced["targets"].items():
        over_d, _ = _vs(t, None if name == "direct" else d)
        over_f, _ = _vs(t, None if name in ("direct", "forwarder") else f)
        rows.append([name, _fmt(t["ttfb_p50"]), _fmt(t["ttfb_p99"]), over_d, over_f, _fmt(t["total_p50"]),
                     _fmt(t["total_p99"]), _over(t, None if name == "direct" else d, "total"), f"{t['rps']:,.1f}",
                     _fmt(_cpu(t)), _cpu_ratio(t, None if name in ("direct", "forwarder") else f),
                     _fmt(t["cpu_share"].get("target"), 2), _fmt(t.get("others_cores"), 2), str(t["errors"])])
    return [
        "## 64 concurrent streams at a model's pace", "",
        f"Each stream sends its head, then a text delta every {paced['interval_s'] * 1000:.0f} ms for "
        f"{paced['duration_s']:.0f} s; 64 clients, started 1/64 s apart, keep one stream each open back to back. Unlike the "
        "saturating rounds above (an upstream that answers instantly, so 64 clients measure queueing in "
        "whichever process is slowest), this measures what nonstop adds while it holds 64 live streams.", "",
        *_table(["target", "TTFB p50", "TTFB p99", "TTFB over direct p50 / p99", "TTFB over forwarder p50 / p99",
                 "total p50", "total p99", "total over direct p50 / p99", "streams/s", "CPU µs/stream",
                 "CPU ÷ forwarder", "CPU (cores)", "other load (cores)", "errors"], rows),
    ]


def _log_cost(results: dict[str, Any]) -> list[str]:
    lc = results.get("log_cost")
    if not lc:
        return []
    rows = []
    for sc in lc:
        on, off = _log_on(sc["targets"]), sc["targets"]["nonstop-log-off"]
        pairs = [a - b for a, b in zip(on.get("cpu_rounds") or [], off.get("cpu_rounds") or [], strict=False)]
        rows.append(["stream" if sc["stream"] else "json", str(sc["concurrency"]), _fmt(_cpu(on)), _fmt(_cpu(off)),
                     ", ".join(_fmt(x) for x in pairs), _fmt(median(pairs)) if pairs else "—",
                     _pair(on["ttfb_p50"], on["ttfb_p99"]), _pair(off["ttfb_p50"], off["ttfb_p99"]),
                     _fmt(on.get("others_cores"), 2)])
    method = results.get("log_method") or {}
    if method.get("together"):
        how = ("nonstop in its default configuration and the same with `[log] enabled = false`, both driven at once "
               "in every round (each by its own clients), so the two figures of a round come from the same seconds "
               f"of the machine; {method['rounds_per_pair']} round(s) of each kind on each of {method['pairs']} fresh "
               "pairs of instances, started in alternating order (two processes started alike differ by up to "
               "±17 µs). The difference of their CPU per request (all threads, to the nanosecond), round by round; "
               f"the target is checked on the mean of all of them: **{_fmt(log_cost(results))} µs** (their median: "
               f"{_fmt(median(_log_diffs(results)))} µs).")
    else:
        how = ("nonstop in its default configuration and the same with `[log] enabled = false`, in interleaved "
               "rounds; the difference of their CPU per request, round by round (a round of one against the round of "
               f"the other next to it). The target is checked on the median of all of them: **{_fmt(log_cost(results))} µs**. "
               + ("Both instances were started for these rounds." if any("nonstop-log-on" in sc["targets"] for sc in lc) else
                  "The log-on instance is the main one, which had served every earlier round; the log-off one was new."))
    L = ["## What the request log costs", "", how, "",
         *_table(["mode", "conc.", "CPU µs/req, log on", "CPU µs/req, log off", "on − off, per round",
                  "on − off, median", "TTFB p50 / p99, log on", "TTFB p50 / p99, log off", "other load (cores)"], rows)]
    th = method.get("threads_us_per_request")
    if th and "nonstop-log-on" in th and "nonstop-log-off" in th:
        on_t, off_t = th["nonstop-log-on"], th["nonstop-log-off"]
        L += [f"Per thread, over all these rounds (CPU µs per request, from schedstat): the event loop's thread "
              f"{_fmt(on_t['main'])} with the log, {_fmt(off_t['main'])} without (**{_fmt(on_t['main'] - off_t['main'])}**); "
              f"the other threads (the log's writer) {_fmt(on_t['other'])} with the log, {_fmt(off_t['other'])} without "
              f"(**{_fmt(on_t['other'] - off_t['other'])}**).", ""]
    lg = (results.get("inprocess") or {}).get("log")
    if lg:
        L += [f"Inside one process (`benchmarks/inprocess.py`): `RequestLog.record` for {lg['rows']:,} rows at "
              f"{lg['rows_per_s']:,.0f} a second, with the store and without, {lg['rounds']} rounds each: "
              f"**{_fmt(lg['cost_us'])} µs** of CPU (both threads) per row, until every row is on disk "
              f"(rounds: {', '.join(_fmt(x) for x in lg['cost_us_rounds'])}).", ""]
    return L


def _local_relay(results: dict[str, Any]) -> list[str]:
    lr = results.get("local_relay")
    if not lr:
        return []
    t = lr["targets"]
    rows = []
    for name in ("paced-direct", "paced-nonstop"):
        x = t[name]
        rows.append([results.get("labels", {}).get(name, name), _fmt(x["ttfb_p50"]), _fmt(x["ttfb_p99"]),
                     _fmt(x["total_p50"]), _fmt(x["total_p99"]), _fmt(x.get("rate_p50")), _fmt(x.get("deltas_p50")),
                     _fmt(_cpu(x)) if _cpu(x) else "—", str(x["errors"])])
    added, lost = relay_cost(results)
    return ["## A local model's stream, relayed", "",
            f"The cloud out; a local server that sends exactly {lr['deltas']} text deltas, one due every "
            f"{lr['interval_s'] * 1000:.0f} ms after its head (a model producing {1 / lr['interval_s']:.0f} tokens a "
            "second), called directly and through nonstop, one stream at a time, interleaved. *rate* = deltas per "
            "second at the client after its first byte.", "",
            *_table(["target", "TTFB p50", "TTFB p99", "total p50", "total p99", "rate p50 (deltas/s)", "deltas",
                     "nonstop CPU µs/stream", "errors"], rows),
            f"Through nonstop the stream took {_fmt(added)}% longer (p50) and its rate was {_fmt(lost)}% lower.", ""]


def _inprocess(results: dict[str, Any]) -> list[str]:
    ip = results.get("inprocess")
    if not ip or "plan" not in ip:
        return [] if not ip else [f"In-process measurements failed: {ip.get('error', '')[:500]}", ""]
    pl = ip["plan"]
    rows = []
    for key, label in (("serving_1", "default configuration (one local backend), cloud serving"),
                       ("serving_4", "four local backends, cloud serving"),
                       ("out_1", "default configuration, cloud out (plans local; sizes the request)"),
                       ("out_4", "four local backends, cloud out")):
        x = pl.get(key)
        if x:
            rows.append([label, x["first"], str(x["steps"]), _fmt(x["p50_us"]), _fmt(x["p99_us"]), _fmt(x["facts_p50_us"]),
                         _fmt(x["view_p50_us"]), _fmt(x["plan_p50_us"])])
    return ["## Planning, inside the process", "",
            f"`benchmarks/inprocess.py`: for the {pl['request_bytes']:,}-byte request and Claude Code's headers, "
            "`Pipeline.facts` (facts and account), `Runtime.view` and `plan()`, each request read afresh as the Anthropic door reads it (its outline), timed "
            "together and one by one; µs.", "",
            *_table(["configuration", "first step", "steps", "all p50", "all p99", "facts p50", "view p50", "plan p50"],
                    rows)]


def _throughput_small(results: dict[str, Any]) -> list[str]:
    small = results.get("throughput_small")
    if not small:
        return []
    rows = [[name, f"{t['rps']:,.0f}", ", ".join(f"{x:,.0f}" for x in t["rps_rounds"]), _fmt(t["ttfb_p50"]),
             _fmt(t["ttfb_p99"]), _fmt(_cpu(t)), _fmt(t["cpu_share"].get("target"), 2), _fmt(_cpu(t, "upstream")),
             _fmt(_cpu(t, "loadgen")), _fmt(t.get("others_cores"), 2), str(t["errors"])]
            for name, t in small["targets"].items()]
    L = ["## Throughput: small requests and responses (JSON, concurrency 64)", "",
         *_table(["target", "req/s (median)", "req/s per round", "TTFB p50", "TTFB p99", "CPU µs/req", "CPU (cores)",
                  "upstream µs/req", "load generator µs/req", "other load (cores)", "errors"], rows)]
    d = small["targets"].get("direct")
    if d:
        up_share = d["cpu_share"].get("upstream", 0)
        L += [f"The fake upstream is not the bottleneck: directly it served {d['rps']:,.0f} req/s using "
              f"{up_share:.2f} of a core ({_fmt(_cpu(d, 'upstream'))} µs per request).", ""]
    return L


def _memory(results: dict[str, Any]) -> list[str]:
    mem = results.get("memory", {})
    if not mem:
        return []
    L = ["## Memory (nonstop process, RSS from /proc)", ""]
    L.append(f"- idle after start: {_fmt(mem.get('idle_rss_start_mb'))} MB (the bare forwarder: "
             f"{_fmt(mem.get('forwarder_idle_rss_mb'))} MB); idle at the end of the run: "
             f"{_fmt(mem.get('idle_rss_end_mb'))} MB; peak (VmHWM) over the whole run: {_fmt(mem.get('peak_rss_mb'))} MB")
    s = mem.get("streams")
    if s:
        L.append(f"- open streams: {s['opened']} of {s['streams']} slow streams held open (one delta a second): "
                 f"RSS {_fmt(s['rss_before_mb'])} → {_fmt(s['rss_open_mb'])} MB, "
                 f"**{_fmt(s['per_stream_kb'])} KB per open stream**; {_fmt(s['rss_after_release_mb'])} MB after "
                 f"they closed; CPU while they trickled: {s['cpu_share_while_held']:.2f} of a core")
    fs = mem.get("forwarder_streams")
    if fs:
        L.append(f"- the bare forwarder, the same way: RSS {_fmt(fs['rss_before_mb'])} → {_fmt(fs['rss_open_mb'])} MB, "
                 f"{_fmt(fs['per_stream_kb'])} KB per open stream")
    bs = mem.get("baseline_streams")
    if bs:
        rev = results.get("baseline", {}).get("rev", "the baseline")
        L.append(f"- nonstop at {rev}, the same way: RSS {_fmt(bs['rss_before_mb'])} → {_fmt(bs['rss_open_mb'])} MB, "
                 f"{_fmt(bs['per_stream_kb'])} KB per open stream")
    g = mem.get("growth")
    if g:
        pts = ", ".join(f"{x['requests']:,}: {x['rss_mb']:.1f}" for x in g["samples"][:: max(1, len(g['samples']) // 10)])
        L.append(f"- growth: {g['requests']:,} requests (JSON and stream alternating, concurrency 32) in "
                 f"{g['seconds']:.0f} s; RSS after the first 10% {_fmt(g['rss_after_warmup_mb'])} MB, at the end "
                 f"{_fmt(g['rss_end_mb'])} MB (**{_fmt(g['growth_mb'])} MB**, "
                 f"{_fmt(g['bytes_per_request'])} bytes/request); samples (requests: MB): {pts}")
    return [*L, ""]


def _failover(results: dict[str, Any]) -> list[str]:
    fo = results.get("failover")
    if not fo:
        return []
    rows = []
    for kind in ("stream", "json"):
        b = fo.get(kind)
        if not b:
            continue
        t = b["targets"]
        c4, ld = t["cloud-429"], t["local-direct"]
        for name, label in (("nonstop-failover", kind), ("nonstop-failover-counted", f"{kind}, counted")):
            via = t.get(name)
            if via is None:  # results from before the counted variant
                continue
            add50 = via["ttfb_p50"] - c4["total_p50"] - ld["ttfb_p50"]
            add99 = via["ttfb_p99"] - c4["total_p99"] - ld["ttfb_p99"]
            headline = name == "nonstop-failover"
            mark = "**" if headline else ""
            rows.append([label, _pair(c4["total_p50"], c4["total_p99"]), _pair(ld["ttfb_p50"], ld["ttfb_p99"]),
                         _pair(via["ttfb_p50"], via["ttfb_p99"]), f"{mark}{_fmt(add50)}{mark} / {_fmt(add99)}",
                         _fmt(_cpu(via)), f"{b['cloud_429s_seen_by_nonstop']:,} / {b['requests_through_nonstop']:,}"
                         if headline else "(the same rounds)"])
    return [
        "## Failover cost: a subscription-limit 429, then the local answer (concurrency 1)", "",
        "The fake cloud answers every request with a subscription-limit 429 (`unified-status: rejected`, "
        "`representative-claim: five_hour`) whose `unified-reset` is one second in the past, and nonstop runs "
        "with `[cloud] default_cooldown = 0`, so every request probes the cloud, meets the 429 and fails over "
        "(see docs/performance.md for why both are needed). *failover added* = through-nonstop TTFB − the "
        "429's own round trip (direct) − the local server's own TTFB (direct), at p50 (and at p99, which "
        "overstates it: tails do not subtract). The default configuration's `count_tokens = \"auto\"` does not "
        "ask the local server to count a request this far inside its 32k window; the *counted* rows are a "
        "second instance with `count_tokens = \"server\"`, in the same rounds: what a request near its "
        "window pays for the count's round trip. The 429s are counted over both instances.", "",
        *_table(["mode", "429 round trip p50 / p99", "local direct TTFB p50 / p99", "through nonstop TTFB p50 / p99",
                 "failover added p50 / p99", "nonstop CPU µs/req", "429s nonstop met / requests it served"], rows),
        *_failover_sets(fo),
    ]


def _failover_sets(fo: dict[str, Any]) -> list[str]:
    """Each fresh pair of failover instances' own reading, when there were several."""
    sets = {kind: fo[kind].get("added_per_set") or [] for kind in ("stream", "json") if fo.get(kind)}
    if max((len(v) for v in sets.values()), default=0) < 2:
        return []
    return ["", f"The rounds ran on {len(next(iter(sets.values())))} fresh pairs of instances, one pair after the "
            "other, and the table pools them; each pair's own *failover added* p50: "
            + "; ".join(f"{kind} {', '.join(_fmt(x) for x in v)} ms" for kind, v in sets.items()) + "."]


def _local_path(results: dict[str, Any]) -> list[str]:
    lp = results.get("local_path")
    if not lp:
        return []
    labels = results.get("labels", {})
    rows = []
    for kind in ("stream", "json"):
        b = lp.get(kind)
        if not b:
            continue
        t = b["targets"]
        for name, base in (("local-direct", None), ("nonstop-local", "local-direct"),
                           ("openai-direct", None), ("nonstop-openai", "openai-direct")):
            x = t[name]
            cpu = _cpu(x)
            rows.append([kind, labels.get(name, name), _fmt(x["ttfb_p50"]), _fmt(x["ttfb_p99"]), _fmt(x["total_p50"]),
                         _fmt(x["total_p99"]), _over(x, t[base] if base else None), _fmt(cpu) if cpu else "—"])
        rows.append([kind, f"(cloud requests during these rounds: {b.get('cloud_requests_meanwhile')})", "", "", "", "", "", ""])
    return [
        "## The local path with the cloud already out (concurrency 1)", "",
        f"nonstop's cloud state during these rounds: `{lp.get('cloud_state')}`. The Anthropic-format local "
        "backend uses `count_tokens = \"auto\"`: after its first count, nonstop does not ask the server to "
        "count a request this far inside its 32k window (one near the window costs one more local round trip: "
        "see the failover table's *counted* rows); the OpenAI-format backend estimates. "
        "Added = through nonstop minus the same local server called directly.", "",
        *_table(["mode", "target", "TTFB p50", "TTFB p99", "total p50", "total p99", "added TTFB p50 / p99",
                 "nonstop CPU µs/req"], rows),
    ]


def _translation(results: dict[str, Any]) -> list[str]:
    tr = results.get("translation")
    if not tr:
        return []
    L = ["## OpenAI → Anthropic stream translation (one core)", ""]
    if "error" in tr:
        L.append(f"Not measured: {tr['error']}")
    else:
        a, p = tr["translator"], tr["pipeline"]
        L += [f"A {tr['chunks_per_stream']}-chunk stream (reasoning, text, a tool call in fragments, usage) → "
              f"{tr['anthropic_events_per_stream']} Anthropic events, process pinned to one core.", ""]
        L += _table(["what", "OpenAI chunks/s", "Anthropic events/s", "µs per chunk"], [
            ["`OpenAIStreamTranslator.feed` alone", f"{a['chunks_per_s']:,.0f}", f"{a['events_out_per_s']:,.0f}",
             _fmt(a["us_per_chunk"])],
            ["the backend's whole relay: SSE decode, JSON parse, translate, normalise, encode",
             f"{p['chunks_per_s']:,.0f}", f"{p['events_out_per_s']:,.0f}", _fmt(p["us_per_chunk"])],
        ])
        L.append("The time to first byte translation adds is in the local-path table above "
                 "(OpenAI-format local through nonstop vs direct).")
        an = tr.get("anthropic")
        if an:
            L += ["", f"An Anthropic-format local server's stream ({an['deltas_per_stream']} text deltas, "
                  f"{an['bytes_in_per_stream']:,} bytes) through the same relay, read whole, with the Claude Code "
                  f"request's tools offered (the text watched for calls written as text): "
                  f"{an['us_per_stream']:,.0f} µs a stream, {an['us_per_delta']:.2f} µs a delta."]
    return [*L, ""]


def _variants(results: dict[str, Any]) -> list[str]:
    va = results.get("variants")
    if not va:
        return []
    rows = []
    for sc in va["scenarios"]:
        t = sc["targets"]
        d, base = t["direct"], t["nonstop"]
        for name, x in t.items():
            cpu, bcpu = _cpu(x), _cpu(base)
            vs = f"{(cpu - bcpu) / bcpu:+.0%}" if cpu and bcpu and name != "nonstop" else "—"
            rows.append(["stream" if sc["stream"] else "json", str(sc["concurrency"]), sc["payload"],
                         va["labels"].get(name, name), _fmt(x["ttfb_p50"]), _fmt(x["ttfb_p99"]),
                         _over(x, None if name == "direct" else d), f"{x['rps']:,.0f}", _fmt(cpu) if cpu else "—", vs,
                         str(x["errors"])])
    return [
        "## Configurations beside the default one (`--variants`)", "",
        "The same interleaved rounds with nonstop configured otherwise: without the request log, and "
        "without a local backend (as the 2026-11-25 run was set up). They explain the default "
        "configuration's numbers; they do not replace them.", "",
        *_table(["mode", "conc.", "request", "target", "TTFB p50", "TTFB p99", "added TTFB p50 / p99", "req/s",
                 "CPU µs/req", "CPU vs nonstop", "errors"], rows),
    ]


def _peers(results: dict[str, Any]) -> list[str]:
    pe = results.get("peers")
    if not pe:
        return []
    L = ["## Peers", ""]
    for name, info in pe.items():
        if "error" in info:
            L.append(f"- **{name}** ({info.get('spec', '')}): not measured. {info['error']}")
        else:
            extra = ""
            if "idle_rss_mb" in info:
                extra = (f"; idle RSS {_fmt(info['idle_rss_mb'])} MB, peak {_fmt(info.get('peak_rss_mb'))} MB "
                         "(process tree)")
            L.append(f"- **{name}** {info.get('version', '')}: {info.get('label', '')}{extra}. Its rows are in "
                     "the latency tables above.")
    return [*L, ""]


def _profile(results: dict[str, Any]) -> list[str]:
    prof = results.get("profile")
    if not prof:
        return []
    L = ["## Profile of nonstop (py-spy, 250 Hz, non-blocking, only samples holding the GIL)", "",
         "Own time: where the interpreter was when sampled; inclusive: share of samples with the function "
         "anywhere on the stack (the start-up chain left out). Samples are of threads holding the GIL, so "
         "the shares are of nonstop's CPU time, not of wall time.", ""]
    for name, p in prof.items():
        L += [f"### {name} ({p['samples']} samples; raw stacks in `{p['file']}`, not kept in git)", "",
              "By area (own time): " + ", ".join(f"{k} {v:.0%}" for k, v in p["areas"]), ""]
        rows = []
        for i in range(max(len(p["self"]), len(p["inclusive"]))):
            s = p["self"][i] if i < len(p["self"]) else ("", 0.0)
            c = p["inclusive"][i] if i < len(p["inclusive"]) else ("", 0.0)
            rows.append([f"{s[1]:.1%}", f"`{s[0]}`", "", f"{c[1]:.1%}", f"`{c[0]}`"])
        L += _table(["own time", "function", "", "inclusive", "function"], rows)
    return L


def _notes(results: dict[str, Any]) -> list[str]:
    if not results.get("notes"):
        return []
    return ["## Notes", "", *(f"- {n}" for n in results["notes"]), ""]


def _how_run(results: dict[str, Any]) -> list[str]:
    flags = results["mode"].replace("full", "").replace("smoke", "--smoke").strip()
    L = ["## How this was run", "",
         f"`python benchmarks/run.py {flags}`".replace(" `", "`") + "; plan: " + ", ".join(
             f"{k}={v}" for k, v in results["plan"].items()) + ".", "",
         "nonstop's config for the main rounds (ports vary per run):", "",
         "```toml", results.get("nonstop_config", "").strip(), "```", ""]
    if results.get("failover_config"):
        L += ["The failover rounds' nonstop:", "", "```toml", results["failover_config"].strip(), "```", ""]
    return L


# --- py-spy raw output ---------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _split(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m.group("fn"), m.group("file")


def _short(path: str) -> str:
    """py-spy already shortens to the package part (nonstop/store/db.py, asyncio/tasks.py)."""
    for marker in ("site-packages/", "lib/python3.11/", "src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# The entry chain every sample of the main thread passes through: not informative.
_ENTRY = ("<frozen runpy>", "nonstop/__main__.py", "nonstop/cli/commands.py", "nonstop/server/run.py", "uvicorn/server.py",
          "uvicorn/_compat.py", "asyncio/runners.py", "threading.py")


def _area(path: str) -> str:
    p = _short(path)
    if "/" not in p:
        return p.rsplit(".", 1)[0] or "other"  # a standard-library module such as dataclasses.py
    top, rest = p.split("/", 1)
    if top == "nonstop":
        return "nonstop/" + rest.rsplit(".", 1)[0]
    return top


def summarize_profile(text: str, top: int = 25) -> dict[str, Any]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        names = []
        for f in frames:
            fn, path = _split(f)
            names.append((f"{fn} ({_short(path)})", path))
        if not names:
            continue
        own[names[-1][0]] += n
        areas[_area(names[-1][1])] += n
        for nm in {x[0] for x in names if not x[1].startswith(_ENTRY)}:
            incl[nm] += n
    t = max(total, 1)
    return {
        "samples": total,
        "self": [(k, v / t) for k, v in own.most_common(top)],
        "inclusive": [(k, v / t) for k, v in incl.most_common(top)],
        "areas": [(k, v / t) for k, v in areas.most_common(16)],
    }


def write_results(out_dir: str | None, name: str, results: dict[str, Any], text: str) -> Path:
    """`text` written as results/<date>-<name>[-<label>].md (or into `out_dir`); the path."""
    out = Path(out_dir) if out_dir else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / (f"{results['date']}-{name}" + (f"-{results['label']}" if results.get("label") else "") + ".md")
    path.write_text(text)
    print(f"wrote {path}")
    return path


def machine_line(m: dict[str, Any], *, python: bool = True) -> str:
    """"Machine: AMD EPYC, 2 cores, ... ; load average at start ..." from harness.machine()."""
    py = f", Python {m['python']}" if python else ""
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']:,} MB RAM, Linux {m['kernel']}{py}; "
            f"load average at start {m['load_at_start']}")
