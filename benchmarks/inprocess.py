"""Two costs measured inside one process, where a network round trip cannot hide them.

    python benchmarks/inprocess.py                 both, printed as one JSON line
    python benchmarks/inprocess.py --only plan     the planner
    python benchmarks/inprocess.py --only log      the request log

**plan**: what deciding costs a request on the cloud path. For the 50 KB Claude Code-shaped
request and its headers as the Anthropic door gets them (the body's outline,
wire/outline.py, and the head the App read and kept, backends/head.py; reading them is not
timed): `Pipeline.facts` (the facts and the account), `Runtime.view`
and `plan()`, timed together and one by one, N times, on the default configuration (one
`[[local]]` backend) and on one with four; p50 and p99 in µs. Also with the cloud out,
where the plan is local and needs the request's size as a local model sees it.

**log**: what the request log costs per request. `RequestLog.record` for rows shaped like
the cloud path's (a route with its steps and skips), paced at about 1,000 a second, with
the SQLite store and without it (`[log] enabled = false`); the difference in this
process's CPU time (all threads: the event loop's and the writer's) per row, after every
row is on disk. The log line is not printed (no handler), so that only the store differs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from payload import CLAUDE_CODE_HEADERS, claude_code_request  # noqa: E402

from nonstop.backends.base import Exchange  # noqa: E402
from nonstop.backends.head import head_of, keep_head  # noqa: E402
from nonstop.backends.registry import make_local_backend  # noqa: E402
from nonstop.config import parse_config  # noqa: E402
from nonstop.routing.classify import FailureKind, Verdict  # noqa: E402
from nonstop.routing.plan import plan  # noqa: E402
from nonstop.server.pipeline import Pipeline  # noqa: E402
from nonstop.server.runtime import Runtime  # noqa: E402
from nonstop.store.db import RequestRow  # noqa: E402
from nonstop.wire.outline import outline  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q / 100))]


def _runtime(state: Path, backends: int, log: bool = False) -> Runtime:
    local = [{"name": f"local{i}" if i else "local", "url": f"http://127.0.0.1:{9 + i}"} for i in range(backends)]
    cfg = parse_config({"state_dir": str(state), "log": {"enabled": log}, "embedded": {"mode": "never"},
                        "discovery": {"enabled": False}, "local": local})
    rt = Runtime(cfg)
    rt.use_backends([make_local_backend(c, None) for c in cfg.local])  # type: ignore[arg-type]
    return rt


def _exchange(body: bytes) -> tuple[Exchange, dict[str, Any]]:
    """The exchange as the Anthropic door makes it (only the outline of the body is read),
    and what the facts are read from."""
    shape = outline(body)
    assert shape is not None
    headers = [(k.encode(), v.encode()) for k, v in CLAUDE_CODE_HEADERS.items()]
    # The head as the door hands it over: read by the App before the door runs, and
    # kept once the client's first request was let in (so not timed here, like the outline).
    head = head_of(headers)
    keep_head(head)
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"beta=true", headers, body, {}, shape.stream, lazy=True,
                  head=head)
    return ex, shape.facts


def time_plan(rt: Runtime, body: bytes, n: int) -> dict[str, Any]:
    pipeline = Pipeline(rt)
    whole, facts_t, view_t, plan_t = [], [], [], []
    clock = time.perf_counter_ns
    facts = view = p = None
    for _ in range(n):
        # The previous request is let go first: its facts hold its exchange, and freeing
        # that parsed 50 KB body is the end of a request, not planning the next one.
        facts = view = p = None
        ex, fields = _exchange(body)  # a fresh request each time: nothing is remembered between them
        t0 = clock()
        facts = pipeline.facts(ex, req=fields)
        t1 = clock()
        view = rt.view(facts.account)
        t2 = clock()
        p = plan(facts, view, rt.policy)
        if p.first is not None and p.first.target != "cloud" and not facts.size.known:
            _ = facts.size.local  # the pipeline measures before a local step
            p = plan(facts, view, rt.policy)
        t3 = clock()
        whole.append((t3 - t0) / 1000)
        facts_t.append((t1 - t0) / 1000)
        view_t.append((t2 - t1) / 1000)
        plan_t.append((t3 - t2) / 1000)
    assert p.first is not None
    return {"first": p.first.target, "steps": len(p.steps), "n": n,
            "p50_us": _pct(whole, 50), "p99_us": _pct(whole, 99),
            "facts_p50_us": _pct(facts_t, 50), "view_p50_us": _pct(view_t, 50), "plan_p50_us": _pct(plan_t, 50)}


async def bench_plan(n: int) -> dict[str, Any]:
    body = orjson.dumps(claude_code_request(stream=True))
    out: dict[str, Any] = {"request_bytes": len(body)}
    with tempfile.TemporaryDirectory() as tmp:
        for backends in (1, 4):
            rt = _runtime(Path(tmp), backends)
            time_plan(rt, body, 200)  # warm-up
            out[f"serving_{backends}"] = time_plan(rt, body, n)
            ex, fields = _exchange(body)
            account = Pipeline(rt).facts(ex, req=fields).account
            rt.clouds.state(account).record_failure(
                Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, time.time() + 3600, "bench"))
            out[f"out_{backends}"] = time_plan(rt, body, max(50, n // 20))
            await rt.stop()
    return out


def _row(route: dict[str, Any]) -> RequestRow:
    return RequestRow(
        ts=time.time(), request_id="req_nonstop_" + "0" * 24, path="/v1/messages", client="claude-cli/2.1.332 (external, cli)",
        session_id="6f1c2a9e-bench-4d3b-9c1e-000000000001", model="claude-sonnet-4-5", stream=True, backend="cloud",
        outcome="ok", status=200, stop_reason="end_turn", ttfb_ms=1.8, total_ms=2.4, overhead_ms=0.3,
        input_tokens=12850, output_tokens=31, workload="main", route=route,
    )


async def _record(rt: Runtime, rows: int, pace: float) -> float:
    """CPU seconds (all threads) for `rows` records, paced, until all are on disk."""
    store = rt.store
    if store is not None:
        await asyncio.to_thread(store.open)
    pipeline = Pipeline(rt)
    ex, fields = _exchange(orjson.dumps(claude_code_request(stream=True)))
    facts = pipeline.facts(ex, req=fields)
    route = plan(facts, rt.view(facts.account), rt.policy).as_dict()
    await asyncio.sleep(0.3)
    c0 = time.process_time()
    for i in range(rows):
        rt.request_log.record(_row(route))
        if i % 10 == 9:
            await asyncio.sleep(pace * 10)
    if store is not None:
        await asyncio.to_thread(store.flush, 30.0)
    used = time.process_time() - c0
    if store is not None:
        assert store.written >= rows, (store.written, rows)
        await asyncio.to_thread(store.close)
    return used


def bench_log(rows: int, rounds: int) -> dict[str, Any]:
    pace = 0.001
    on, off = [], []
    for r in range(rounds):
        for log in ((True, False) if r % 2 == 0 else (False, True)):
            with tempfile.TemporaryDirectory() as tmp:
                rt = _runtime(Path(tmp), 1, log=log)
                used = asyncio.run(_record(rt, rows, pace))
                (on if log else off).append(used / rows * 1e6)
    diffs = [a - b for a, b in zip(on, off, strict=True)]
    return {"rows": rows, "rounds": rounds, "rows_per_s": 1 / pace, "on_us": on, "off_us": off,
            "cost_us": statistics.median(diffs), "cost_us_rounds": diffs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("plan", "log"))
    p.add_argument("--n", type=int, default=5000, help="plans timed per configuration")
    p.add_argument("--rows", type=int, default=4000, help="rows per log round")
    p.add_argument("--rounds", type=int, default=4, help="log rounds (on and off, interleaved)")
    args = p.parse_args()
    out: dict[str, Any] = {}
    if args.only in (None, "plan"):
        logging.getLogger("nonstop").setLevel(logging.ERROR)
        out["plan"] = asyncio.run(bench_plan(args.n))
    if args.only in (None, "log"):
        out["log"] = bench_log(args.rows, args.rounds)
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()
