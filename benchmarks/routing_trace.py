"""Does conserving quota keep the main conversation on the cloud longer?

Replays simulated day-long traces of Claude Code work (request times, workload classes,
token sizes) through nonstop's real pipeline, planner, quota state and forecast, in
process, with a simulated clock. The cloud is the metered model of a subscription's 5-hour
and 7-day windows (tests/support/quota_model.py): every answer it serves costs tokens, and
a full window refuses with the documented 429 and its reset time. The local backend always
answers.

Each trace runs twice: with the default conservation (background work and subagents go
local first while a window is forecast to run out before its reset) and without it. The
report says how long the main thread kept the cloud, and how many requests of each class
went local.

    python benchmarks/routing_trace.py [--days 3] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import orjson  # noqa: E402

from nonstop.backends.base import Attempt, Exchange, Reply, single  # noqa: E402
from nonstop.config import LocalBackendConfig, parse_config  # noqa: E402
from nonstop.routing.backend_state import BackendState  # noqa: E402
from nonstop.routing.classify import classify_response  # noqa: E402
from nonstop.routing.plan import Step  # noqa: E402
from nonstop.routing.view import Capabilities  # noqa: E402
from nonstop.server.pipeline import Pipeline, RequestContext  # noqa: E402
from nonstop.server.runtime import Runtime  # noqa: E402
from nonstop.store.db import RequestRow  # noqa: E402
from nonstop.wire.tool_ids import backend_tag  # noqa: E402
from tests.support.quota_model import QuotaModel  # noqa: E402

HOUR = 3600.0
# Two main-thread requests further apart than this are not one stretch of work.
WORK_GAP = 15 * 60.0


# --- the trace -------------------------------------------------------------------------------


@dataclass(order=True)
class Event:
    at: float
    workload: str = field(compare=False)
    input_tokens: int = field(compare=False)
    output_tokens: int = field(compare=False)


def day_trace(rng: random.Random, day_start: float) -> list[Event]:
    """One working day: 09:00-12:30 and 13:30-18:30, user turns every few minutes, each
    followed by a tool loop; a title for each new session, subagent bursts now and then,
    compaction when a session's context grows past 150k tokens."""
    events: list[Event] = []
    for start_h, end_h in ((9.0, 12.5), (13.5, 18.5)):
        t = day_start + start_h * HOUR
        end = day_start + end_h * HOUR
        context = 0
        while t < end:
            if context == 0:  # a new session: the quota check and a title
                context = rng.randint(18_000, 26_000)
                events.append(Event(t, "background", 50, 1))
                events.append(Event(t + 2, "background", rng.randint(2_000, 4_000), 30))
            loop = 1 + int(rng.expovariate(1 / 4))
            tt = t
            for _ in range(loop):
                out = rng.randint(150, 1_200)
                events.append(Event(tt, "main", context, out))
                context += out + rng.randint(500, 4_000)  # the answer and a tool result
                tt += rng.uniform(4, 20)
            if rng.random() < 0.15:  # a subagent explores
                sub = rng.randint(12_000, 20_000)
                for _ in range(rng.randint(8, 20)):
                    events.append(Event(tt, "subagent", sub, rng.randint(200, 800)))
                    sub += rng.randint(1_000, 3_000)
                    tt += rng.uniform(3, 8)
            if rng.random() < 0.3:  # a summary of the turn
                events.append(Event(tt, "background", rng.randint(3_000, 6_000), 60))
            if context > 150_000:
                events.append(Event(tt + 1, "compaction", context, 4_000))
                context = rng.randint(25_000, 35_000)
            if rng.random() < 0.08:
                context = 0  # the user starts a new session
            t = max(tt, t) + rng.expovariate(1 / 240)
    return sorted(events)


def trace(days: int, seed: int) -> tuple[list[Event], float]:
    rng = random.Random(seed)
    start = dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp()
    events = [e for d in range(days) for e in day_trace(rng, start + d * 86400)]
    return events, start


# --- the simulated world ---------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MeteredCloud:
    """The cloud as a backend: answers while the quota model allows, charging each answer."""

    name = "cloud"

    def __init__(self, model: QuotaModel, clock: Clock, rt: Runtime):
        self.model, self.clock, self.rt = model, clock, rt
        self.current: Event | None = None

    def capabilities(self) -> Capabilities:
        return Capabilities(api="cloud")

    async def send(self, ex: Exchange, step: Step) -> Attempt:
        now = self.clock()
        full = self.model.full(now)
        headers = self.model.headers(now)
        self.rt.observe_headers(headers)
        if full is not None:
            body = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "usage limit"}})
            verdict = classify_response(429, headers, body, now)
            assert verdict is not None
            return verdict
        assert self.current is not None
        self.model.charge(now, self.current.input_tokens, self.current.output_tokens)
        verdict = classify_response(200, self.model.headers(now), b"", now)
        return Reply(200, [], single(b"{}"), "cloud", False, verdict=verdict)


class LocalModel:
    def __init__(self, clock: Clock) -> None:
        self.name = "local"
        self.cfg = LocalBackendConfig(name="local", url="http://127.0.0.1:1", context_window=262_144)
        self.state = BackendState("local", Capabilities(context_window=262_144), tag=backend_tag("local"), clock=clock)

    def capabilities(self) -> Capabilities:
        return self.state.capabilities()

    def window(self) -> int:
        return self.cfg.context_window

    async def send(self, ex: Exchange, step: Step) -> Attempt:
        return Reply(200, [], single(b"{}"), "local", False)


_MODELS = {"background": "claude-haiku-4-5", "main": "claude-opus-4-5", "subagent": "claude-sonnet-4-5",
           "compaction": "claude-opus-4-5"}
_HINTS = {"subagent": "subagent", "compaction": "compaction"}


def request_for(e: Event) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
    req = {"model": _MODELS[e.workload], "max_tokens": 1 if e.input_tokens <= 50 else 8000,
           "messages": [{"role": "user", "content": "quota" if e.input_tokens <= 50 else "work"}]}
    headers = [(b"x-claude-code-request-class", _HINTS[e.workload].encode())] if e.workload in _HINTS else []
    return req, headers


# --- running it ------------------------------------------------------------------------------------


@dataclass
class Result:
    served: dict[str, dict[str, int]]
    main_local_minutes: float
    main_first_local: list[float]
    out_windows: int


async def replay(events: list[Event], start: float, conserve: bool, budget_5h: float, budget_7d: float) -> Result:
    clock = Clock(start)
    settings = {"state_dir": tempfile.mkdtemp(prefix="nonstop-trace-"), "log": {"enabled": False},
                "routing": {"conserve": ["background", "subagent"] if conserve else []}}
    rt = Runtime(parse_config(settings), clock=clock)
    cloud = MeteredCloud(QuotaModel(budget_5h, budget_7d), clock, rt)
    rt.use_backends([LocalModel(clock)], cloud=cloud)  # type: ignore[list-item,arg-type]
    pipeline = Pipeline(rt)
    served: dict[str, dict[str, int]] = {}
    main_local = 0.0
    first_local: list[float] = []
    outs = 0
    was_out = False
    last_main: tuple[float, str] | None = None
    for e in events:
        clock.now = e.at
        cloud.current = e
        req, headers = request_for(e)
        body = orjson.dumps(req)
        ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", headers, body, req, False)
        out = await pipeline.run(RequestContext(ex, RequestRow(ts=e.at), time.perf_counter()))
        backend = out.reply.backend if out.reply is not None else "none"
        served.setdefault(e.workload, {}).setdefault(backend, 0)
        served[e.workload][backend] += 1
        out_now = rt.quota.state.value != "serving"
        if out_now and not was_out:
            outs += 1
        was_out = out_now
        if e.workload == "main":
            # Working time on a local model: from a local main answer to the next main
            # request, when they belong to one stretch of work.
            if last_main is not None and last_main[1] != "cloud" and e.at - last_main[0] <= WORK_GAP:
                main_local += e.at - last_main[0]
            if backend != "cloud" and (last_main is None or last_main[1] == "cloud"):
                first_local.append(e.at)
            last_main = (e.at, backend)
    return Result(served, main_local / 60, first_local, outs)


def budgets(events: list[Event]) -> tuple[float, float]:
    """A 5-hour budget that a busy morning uses up in about three and a half hours when
    everything goes to the cloud, and a 7-day one that three days do not exhaust."""
    morning = [e for e in events if e.at - events[0].at < 5 * HOUR]
    cost = sum(e.input_tokens + 5 * e.output_tokens for e in morning)
    return cost * 0.72, cost * 40


def render(days: int, seed: int, events: list[Event], runs: dict[str, Result]) -> str:
    classes = ("main", "subagent", "background", "compaction")
    lines = [
        f"# Routing trace: conservation on vs off ({dt.date.today().isoformat()})",
        "",
        f"{days} simulated working day(s) (seed {seed}), {len(events)} requests; the cloud is the "
        "metered subscription model in tests/support/quota_model.py, the local backend always answers.",
        "",
        "| | conservation on (default) | conservation off |",
        "|---|---|---|",
    ]
    on, off = runs["on"], runs["off"]

    def cell(r: Result, cls: str) -> str:
        s = r.served.get(cls, {})
        total = sum(s.values())
        local = total - s.get("cloud", 0)
        return f"{local} of {total} local"

    main_cloud_on = on.served.get("main", {}).get("cloud", 0)
    main_cloud_off = off.served.get("main", {}).get("cloud", 0)
    lines.append(f"| main-thread requests the cloud answered | {main_cloud_on} | {main_cloud_off} |")
    lines.append(f"| working minutes the main thread spent on a local model | {on.main_local_minutes:.0f} | {off.main_local_minutes:.0f} |")
    lines.append(f"| times the cloud went out | {on.out_windows} | {off.out_windows} |")
    for cls in classes:
        lines.append(f"| {cls} requests | {cell(on, cls)} | {cell(off, cls)} |")
    first = ", ".join(dt.datetime.fromtimestamp(t, dt.UTC).strftime("%a %H:%M") for t in on.main_first_local) or "never"
    first_off = ", ".join(dt.datetime.fromtimestamp(t, dt.UTC).strftime("%a %H:%M") for t in off.main_first_local) or "never"
    lines += ["", f"Main thread went local (on): {first}", f"Main thread went local (off): {first_off}", ""]
    return "\n".join(lines)


def summary(days: int, seeds: list[int]) -> str:
    lines = [
        f"## {len(seeds)} more traces of {days} day(s) each",
        "",
        "| seed | requests | main answered by the cloud (on / off) | main-thread minutes on local (on / off) | less time on local |",
        "|---|---|---|---|---|",
    ]
    for seed in seeds:
        events, start = trace(days, seed)
        b5, b7 = budgets(events)
        on = asyncio.run(replay(events, start, True, b5, b7))
        off = asyncio.run(replay(events, start, False, b5, b7))
        saved = 1 - on.main_local_minutes / off.main_local_minutes if off.main_local_minutes else 0.0
        lines.append(f"| {seed} | {len(events)} | {on.served['main'].get('cloud', 0)} / {off.served['main'].get('cloud', 0)} "
                     f"| {on.main_local_minutes:.0f} / {off.main_local_minutes:.0f} | {saved:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--seeds", default="1,2,3,4,5", help="more traces for the summary table")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    logging.getLogger("nonstop").setLevel(logging.ERROR)  # the switches are reported below
    events, start = trace(args.days, args.seed)
    b5, b7 = budgets(events)
    runs = {name: asyncio.run(replay(events, start, name == "on", b5, b7)) for name in ("on", "off")}
    text = render(args.days, args.seed, events, runs)
    text += "\n" + summary(args.days, [int(x) for x in args.seeds.split(",") if x.strip()])
    print(text)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{dt.date.today().isoformat()}-routing-trace.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
