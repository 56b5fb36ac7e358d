"""Fault-injection soak: many requests through nonstop while the cloud misbehaves at
random and the local backend is killed and restarted.

    python tests/soak/soak.py --requests 10000 --concurrency 32

Starts the fake cloud (mode `random`, seeded), the recording local stand-in and nonstop
with short deadlines, then drives requests through both front doors (Anthropic
/v1/messages and OpenAI /v1/chat/completions), streaming and not. Every response is
checked by tests/support/wirecheck.py. Meanwhile other clients, from their own loopback
addresses, send request heads and bodies slowly, in part or not at all. Afterwards
nonstop is stopped with SIGTERM and its request log is counted. Writes
test-artifacts/soak-report.md and .json; exits 1 on any violation (a hang, a malformed or
truncated response, a 5xx of nonstop's own making, a lost log row, a slow client held past
its deadline, growing file descriptors or memory, a leaked credential).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import signal
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.soak.slow_clients import SlowClients  # noqa: E402
from tests.support import procs, rawhttp, wirecheck  # noqa: E402
from tests.support.config import nonstop_config  # noqa: E402
from tests.support.fake_cloud import RANDOM_EXTRA, RANDOM_POOL  # noqa: E402

CLOUD_SETTINGS = {
    "connect_timeout": 1.0,
    "first_byte_timeout": 2.0,
    # The learned first-byte deadline: four times the usual, never under half a second
    # (the fake cloud answers in milliseconds), so `late_first_byte` runs past it.
    "first_byte_floor": 0.5,
    "first_byte_multiplier": 4.0,
    "idle_timeout": 5.0,
    "error_cooldown": 0.5,
    "default_cooldown": 1.0,
    "credit_recheck": 1.0,
}
# Short deadlines for request heads and bodies, for the slow clients.
HEAD_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
# The longest any request may take with these settings: a cloud attempt (connect + first
# byte), then a stream that goes silent (idle), plus room for the local answer.
DEADLINE_BOUND = CLOUD_SETTINGS["connect_timeout"] + CLOUD_SETTINGS["first_byte_timeout"] + CLOUD_SETTINGS["idle_timeout"] + 4.0
# Fault parameters that keep every fault short, so the cloud keeps being retried.
# late_by: past the learned first-byte deadline (0.5 s, plus up to connect_timeout for
# a cold connection: 1.5 s) and short of first_byte_timeout's (3 s).
FAULT_PARAMS = {"hang_for": 8, "late_by": 2.5, "reset_in": 1, "retry_after": 1, "api_key_retry_after": 1, "regain_in": 1,
                "no_log": True}
# The faults the reliability work added to the mix: each must be injected in a run.
NEW_FAULTS = ("json_cut_empty", "json_cut_half", "json_empty", "json_garbled", "json_not_message", "json_stall_body",
              "midstream_overloaded", "error_after_content", "late_first_byte")
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-5-5")
# Share of requests sent to a real llama-server when --llama is given (it is slow: keep it small).
LLAMA_SHARE = 0.0
DOORS = (("anthropic", True, 45), ("anthropic", False, 20), ("openai", True, 20), ("openai", False, 15))


@dataclass
class Options:
    requests: int = 10000
    concurrency: int = 32
    seed: int = 20240601
    deadline: float = 20.0
    warmup: int = 0  # 0: a tenth of the requests, at most 500
    kill_every: float = 4.0
    down_for: float = 1.0
    settle: float = 16.0
    # After `settle`, wait up to this much longer for idle upstream connections to be
    # reaped (aiohttp closes them 15-30 s after their last use), so that only leaks remain.
    max_settle: float = 30.0
    fd_slack: int = 16
    rss_slack_mb: float = 40.0
    max_seconds: float = 1800.0
    # Longest stretch of the run allowed without one request reaching the cloud: every
    # fault here clears within ~2 s, so a longer gap means the cloud stopped being retried.
    max_cloud_gap: float = 10.0
    llama: bool = False
    # Connections held at a time by clients that send their request slowly or not at all.
    slow_clients: int = 6
    extra_faults: tuple[str, ...] = RANDOM_EXTRA
    exclude_faults: tuple[str, ...] = ()
    out: Path = ROOT / "test-artifacts" / "soak-report.md"


@dataclass
class Result:
    i: int
    door: str
    stream: bool
    status: int = 0
    backend: str = ""
    outcome: str = ""
    problem: str = ""
    seconds: float = 0.0
    failover: str = ""  # the kind of failure the cloud attempt met (x-nonstop-failover's first word)
    own_5xx: bool = False  # a 5xx that says nonstop itself failed


@dataclass
class Report:
    options: dict[str, Any]
    machine: dict[str, Any]
    started: float = 0.0
    duration_s: float = 0.0
    requests: int = 0
    warmup: int = 0
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    backends: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    local_restarts: int = 0
    failovers: dict[str, int] = field(default_factory=dict)
    server_errors: dict[str, int] = field(default_factory=dict)
    slow_clients: dict[str, Any] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)
    first_byte_deadlines: dict[str, float] = field(default_factory=dict)
    timeouts_s: dict[str, float] = field(default_factory=dict)
    cloud_requests: int = 0
    deck: list[str] = field(default_factory=list)  # the fake cloud's faults, dealt once per len(deck) requests
    longest_cloud_gap_s: float = 0.0
    latency_s: dict[str, float] = field(default_factory=dict)
    lost: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    fd: dict[str, int] = field(default_factory=dict)
    fd_detail: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    log_rows: int = 0
    log_rows_expected: int = 0
    integrity: str = ""
    exit_code: int | None = None
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


def machine() -> dict[str, Any]:
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = line.split(":", 1)[1].strip()
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "cpu": cpu, "memory": mem,
    }


def soak_config(cloud_url: str, local_url: str, llama_url: str = "") -> str:
    """Two views of the recording stand-in (its Anthropic and its OpenAI endpoints, so both
    local code paths run), and optionally a real llama-server for a sliver of the traffic."""
    recorder = {"url": local_url, "model": "soak-local", "context_window": 32768, "max_output_tokens": 256,
                "connect_timeout": 1.0, "idle_timeout": 5.0}
    local = [{"name": "recorder", **recorder}, {"name": "recorder-openai", **recorder, "api": "openai"}]
    routes = {"claude-opus-*": "recorder-openai", "*": "recorder"}
    if llama_url:
        local.append({"name": "llama", "url": llama_url, "model": "smollm2", "context_window": 2048,
                      "max_output_tokens": 16, "connect_timeout": 1.0})
        routes = {"*-via-llama": "llama", **routes}
    return nonstop_config(cloud_url, cloud=CLOUD_SETTINGS, local=local, routes=routes, drain_timeout=10.0,
                          ping_interval=2.0, head_timeout=HEAD_TIMEOUT, body_timeout=BODY_TIMEOUT)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def fd_breakdown(pid: int, roles: dict[int, str]) -> dict[str, int]:
    """What the open descriptors are: files, pipes, and TCP sockets by state and peer."""
    kinds: Counter = Counter()
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
        else:
            kinds[target.split(":")[0] if ":" in target else "file"] += 1
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[9] not in inodes:
                    continue
                inodes.discard(parts[9])
                local_port = int(parts[1].rsplit(":", 1)[1], 16)
                remote_port = int(parts[2].rsplit(":", 1)[1], 16)
                peer = roles.get(remote_port) or ("client" if roles.get(local_port) == "nonstop" else str(remote_port))
                kinds[f"tcp {_TCP_STATES.get(parts[3], parts[3])} {peer}"] += 1
    if inodes:
        kinds["other sockets"] += len(inodes)
    return dict(sorted(kinds.items()))


async def settled_fds(pid: int, roles: dict[int, str], settle: float, max_settle: float) -> tuple[int, dict[str, int]]:
    """The descriptor count once idle upstream connections have been reaped (or the
    wait is over)."""
    await asyncio.sleep(settle)
    deadline = time.monotonic() + max_settle
    while True:
        detail = fd_breakdown(pid, roles)
        pooled = sum(v for k, v in detail.items() if k.startswith("tcp ESTABLISHED ") and not k.endswith("client"))
        if pooled <= 2 or time.monotonic() >= deadline:
            return fd_count(pid), detail
        await asyncio.sleep(1.0)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def failover_kind(reason: str) -> str:
    """The kind of a failover reason: the failure's name ("timeout: ..."), or the first
    words of a planner's reason ("out until ...")."""
    named = re.match(r"[a-z_]+(?=:)", reason)
    return named.group(0) if named else " ".join(reason.split()[:2])


def category(problem: str) -> str:
    head = problem.split(":", 1)[0]
    return re.sub(r"\d+", "N", head)[:90]


# --- the request mix ----------------------------------------------------------------------------


def pick_door(rng: random.Random) -> tuple[str, bool]:
    total = sum(w for _, _, w in DOORS)
    r = rng.uniform(0, total)
    for door, stream, w in DOORS:
        r -= w
        if r <= 0:
            return door, stream
    return DOORS[0][0], DOORS[0][1]


def build_request(i: int, door: str, stream: bool, rng: random.Random) -> tuple[str, dict[str, Any], dict[str, str]]:
    headers = {"content-type": "application/json", "user-agent": "nonstop-soak/1", "x-claude-code-session-id": f"soak-{i % 40}"}
    if rng.random() < 0.5:
        headers["x-api-key"] = procs.PLANTED_KEY
    else:
        headers["authorization"] = "Bearer " + procs.PLANTED_KEY
    model = rng.choice(MODELS)
    if LLAMA_SHARE and rng.random() < LLAMA_SHARE:
        model = "claude-haiku-4-5-via-llama"
    if door == "openai":
        body: dict[str, Any] = {"model": model, "stream": stream, "max_tokens": 64,
                                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"soak request {i}"}]}
        if stream and rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        return "/v1/chat/completions", body, headers
    headers["anthropic-version"] = "2023-06-01"
    body = {"model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": f"soak request {i}"}]}
    if rng.random() < 0.3:
        body["system"] = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
        body["tools"] = [{"name": "Read", "description": "read a file", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]
    if rng.random() < 0.2:
        body["messages"] = [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": [{"type": "text", "text": f"soak request {i}"}]},
        ]
    return "/v1/messages?beta=true", body, headers


async def one_request(session: aiohttp.ClientSession, base: str, i: int, rng: random.Random, deadline: float) -> Result:
    door, stream = pick_door(rng)
    path, body, headers = build_request(i, door, stream, rng)
    res = Result(i, door, stream)
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            async with session.post(base + path, data=json.dumps(body), headers=headers) as r:
                res.status = r.status
                res.backend = r.headers.get("x-nonstop-backend", "")
                res.failover = failover_kind(r.headers.get("x-nonstop-failover", ""))
                data = await r.read()
                ctype = r.headers.get("content-type", "")
    except TimeoutError:
        res.seconds = time.monotonic() - t0
        res.outcome, res.problem = "violation", f"hang: no complete response within the {deadline:.0f}s client deadline"
        return res
    except (aiohttp.ClientError, OSError) as exc:
        res.seconds = time.monotonic() - t0
        res.outcome, res.problem = "violation", f"transport: {type(exc).__name__}: {exc}"[:300]
        return res
    res.seconds = time.monotonic() - t0
    res.own_5xx = res.status >= 500 and b"nonstop failed" in data
    v = wirecheck.check(door, res.status, ctype, data, stream=stream)
    res.outcome, res.problem = v.outcome, v.problem if v.outcome == "violation" else ""
    if v.outcome == "violation":
        res.problem = f"{v.problem} [status {res.status}, backend {res.backend or '-'}, events {v.events[-6:]}]"
    return res


async def drive(base: str, start: int, count: int, concurrency: int, seed: int, deadline: float) -> list[Result]:
    results: list[Result] = []
    next_i = start
    end = start + count

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while next_i < end:
            i = next_i
            next_i += 1
            rng = random.Random(seed * 1_000_003 + i)
            results.append(await one_request(session, base, i, rng, deadline))

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


# --- local backend chaos ------------------------------------------------------------------------


class LocalChaos:
    """Kills the local backend (SIGKILL) now and then and starts it again on the same port."""

    def __init__(self, port: int, every: float, down_for: float, seed: int):
        self.port = port
        self.every = every
        self.down_for = down_for
        self.rng = random.Random(seed)
        self.proc: procs.Proc | None = None
        self.restarts = 0
        self.stopping = asyncio.Event()

    def start_local(self) -> None:
        self.proc = procs.start_recorder(self.port)

    async def run(self) -> None:
        wait = min(self.every, 0.05)  # the first kill comes at once, so even a short run has one
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)
            wait = self.every * self.rng.uniform(0.5, 1.5)
            if self.stopping.is_set():
                return
            assert self.proc is not None
            self.proc.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.proc.wait, 10)
            await asyncio.sleep(self.down_for * self.rng.uniform(0.3, 1.0))
            for _ in range(20):  # the port can take a moment to free up
                try:
                    await asyncio.to_thread(self.start_local)
                    break
                except RuntimeError:
                    await asyncio.sleep(0.2)
            self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


async def watch_load(stop: asyncio.Event) -> float:
    """The highest one-minute load average of the machine while requests run."""
    highest = os.getloadavg()[0]
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        highest = max(highest, os.getloadavg()[0])
    return highest


async def watch_cloud(cloud_url: str, stop: asyncio.Event) -> float:
    """The longest time, while requests run, in which no request reached the cloud."""
    last_total, last_change, longest = -1, time.monotonic(), 0.0
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            try:
                async with s.get(cloud_url + "/_fake/counts", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    total = sum((await r.json()).values())
            except (aiohttp.ClientError, TimeoutError):
                total = last_total
            now = time.monotonic()
            if total != last_total:
                last_total, last_change = total, now
            longest = max(longest, now - last_change)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
    return longest


# --- the run -----------------------------------------------------------------------------------


def count_rows(db: Path) -> tuple[int, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        n = conn.execute(
            "SELECT COUNT(*) FROM requests WHERE path IN ('/v1/messages', '/v1/chat/completions')"
        ).fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return int(n), str(integrity)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def soak(opts: Options) -> Report:
    report = Report(options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}, machine=machine())
    report.started = time.time()
    warmup = opts.warmup or max(1, min(500, opts.requests // 10))
    cloud = await asyncio.to_thread(procs.start_fake_cloud)
    chaos = LocalChaos(procs.free_port(), opts.kill_every, opts.down_for, opts.seed)
    ns: procs.Proc | None = None
    llama = None
    secrets_seen: list[str] = []
    try:
        await asyncio.to_thread(chaos.start_local)
        assert chaos.proc is not None
        llama_url = ""
        if opts.llama:
            from tests.integration.llama import start_llama_server

            global LLAMA_SHARE
            llama = await asyncio.to_thread(start_llama_server, None, 2048, 2)
            llama_url, LLAMA_SHARE = llama.url, 0.005
        ns = await asyncio.to_thread(procs.start_nonstop, soak_config(cloud.url, chaos.proc.url, llama_url))
        procs.set_mode(cloud, "random", seed=opts.seed, extra=list(opts.extra_faults),
                       exclude=list(opts.exclude_faults), **FAULT_PARAMS)
        pid = ns.proc.pid
        t_start = time.monotonic()

        results = await drive(ns.url, 0, warmup, opts.concurrency, opts.seed, opts.deadline)
        roles = {cloud.port: "cloud", chaos.port: "local", ns.port: "nonstop"}
        report.fd["before"], report.fd_detail["before"] = await settled_fds(pid, roles, opts.settle, opts.max_settle)
        report.rss_mb["before"] = round(rss_mb(pid), 1)

        slow = SlowClients(ns.port, HEAD_TIMEOUT, BODY_TIMEOUT, opts.slow_clients, opts.seed)
        report.load["before"] = round(os.getloadavg()[0], 2)
        chaos_task = asyncio.ensure_future(chaos.run())
        watch_task = asyncio.ensure_future(watch_cloud(cloud.url, chaos.stopping))
        load_task = asyncio.ensure_future(watch_load(chaos.stopping))
        slow_task = asyncio.ensure_future(slow.run())
        try:
            async with asyncio.timeout(opts.max_seconds):
                results += await drive(ns.url, warmup, opts.requests, opts.concurrency, opts.seed, opts.deadline)
        finally:
            chaos.stopping.set()
            slow.stopping.set()
            await chaos_task
            report.longest_cloud_gap_s = round(await watch_task, 1)
            report.load["max"] = round(await load_task, 2)
            report.slow_clients = asdict(await slow_task)
        report.local_restarts = chaos.restarts
        report.duration_s = round(time.monotonic() - t_start, 1)
        report.fd["after"], report.fd_detail["after"] = await settled_fds(pid, roles, opts.settle, opts.max_settle)
        report.rss_mb["after"] = round(rss_mb(pid), 1)
        report.faults = json.loads(rawhttp.request("GET", cloud.url + "/_fake/counts")[2])
        status = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status", timeout=30)[2])
        report.first_byte_deadlines = status.get("cloud", {}).get("first_byte_deadlines") or {}
        report.cloud_requests = sum(report.faults.values())
        report.deck = deck(opts)
        recorded = rawhttp.request("GET", chaos.proc.url + "/_recorded", timeout=30)[2]
        if procs.PLANTED_KEY.encode() in recorded:
            secrets_seen.append("the local backend received the client's key")

        report.exit_code = ns.stop(signal.SIGTERM, timeout=30)
        out = ns.output()
        if "Traceback" in out:
            report.examples.append({"problem": "traceback in nonstop's log", "log": out[out.index("Traceback"):][:2000]})
        if procs.PLANTED_KEY in out:
            secrets_seen.append("the key appeared in nonstop's output")
        db = Path(ns.extra["state_dir"]) / "nonstop.db"
        report.log_rows, report.integrity = count_rows(db)
        for f in Path(ns.extra["state_dir"]).rglob("*"):  # (folders in it too: listening/)
            if f.is_file() and procs.PLANTED_KEY.encode() in f.read_bytes():
                secrets_seen.append(f"the key appeared in {f.name}")
    finally:
        if ns is not None:
            ns.stop()
        chaos.stop()
        cloud.stop()
        if llama is not None:
            llama.stop()

    main = [r for r in results if r.i >= warmup]
    report.requests, report.warmup = len(main), warmup
    outcomes: dict[str, Counter] = {}
    for r in results:
        outcomes.setdefault(f"{r.door} {'stream' if r.stream else 'json'}", Counter())[r.outcome] += 1
    report.outcomes = {k: dict(v) for k, v in sorted(outcomes.items())}
    report.backends = dict(Counter(r.backend or "(none)" for r in results).most_common())
    report.failovers = dict(Counter(r.failover for r in results if r.failover).most_common())
    timed_out = [r.seconds for r in results if r.failover == "timeout"]
    report.timeouts_s = {"count": len(timed_out), "p50": round(percentile(timed_out, 0.5), 3),
                         "max": round(max(timed_out, default=0.0), 3)}
    report.server_errors = dict(Counter(
        f"{r.status} {'nonstop failed' if r.own_5xx else 'from ' + (r.backend or 'nonstop: no backend could answer')}"
        for r in results if r.status >= 500).most_common())
    report.statuses = dict(Counter(str(r.status) for r in results).most_common())
    lat = [r.seconds for r in results]
    report.latency_s = {k: round(v, 3) for k, v in {
        "p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95), "p99": percentile(lat, 0.99), "max": max(lat, default=0),
    }.items()}
    bad = [r for r in results if r.outcome == "violation"]
    report.lost = sum(1 for r in bad if r.problem.startswith(("hang", "transport")))
    report.violations = dict(Counter(category(r.problem) for r in bad).most_common())
    seen_cats: set[str] = set()
    for r in bad:
        c = category(r.problem)
        if c not in seen_cats:
            seen_cats.add(c)
            report.examples.append({"request": r.i, "door": r.door, "stream": r.stream, "problem": r.problem[:600]})
    report.log_rows_expected = len(results)
    report.checks = {
        "every response valid": not bad,
        "lost == 0": report.lost == 0,
        "no request outlived its deadline": not any(r.problem.startswith("hang") for r in bad),
        f"every request ended within nonstop's own deadlines ({DEADLINE_BOUND:.0f} s)": report.latency_s["max"] <= DEADLINE_BOUND,
        "one log row per request": report.log_rows == report.log_rows_expected,
        "request log integrity ok": report.integrity == "ok",
        "no traceback in nonstop's log": not any(e.get("problem") == "traceback in nonstop's log" for e in report.examples),
        "no 5xx of nonstop's own making": not any(r.own_5xx for r in results),
        "every slow client was closed within its deadline, with a 408 or nothing":
            not report.slow_clients.get("violations") and (opts.slow_clients == 0 or bool(report.slow_clients.get("counts"))),
        "file descriptors do not grow": report.fd["after"] - report.fd["before"] <= opts.fd_slack,
        "memory does not grow": report.rss_mb["after"] - report.rss_mb["before"] <= opts.rss_slack_mb,
        "no credential leaked": not secrets_seen,
        "faults were injected": sum(v for k, v in report.faults.items() if k != "ok") > 0,
        # The fake cloud deals its faults from a shuffled deck: a full deck holds every one.
        **({"every new fault was injected": all(report.faults.get(f) for f in NEW_FAULTS if f not in opts.exclude_faults)}
           if opts.extra_faults and report.cloud_requests >= len(report.deck) else {}),
        "the cloud kept being retried": report.longest_cloud_gap_s <= opts.max_cloud_gap,
    }
    for s in secrets_seen:
        report.examples.append({"problem": s})
    for problem in report.slow_clients.get("violations", [])[:10]:
        report.examples.append({"problem": "slow client: " + problem})
    return report


# --- the report --------------------------------------------------------------------------------


def render_markdown(r: Report) -> str:
    m = r.machine
    lines = [
        "# nonstop soak report", "",
        f"- when: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(r.started))}",
        f"- machine: {m['cpus']} CPU ({m['cpu'] or 'unknown'}), {m['memory']}, {m['platform']}, Python {m['python']}",
        f"- requests: {r.requests} (+ {r.warmup} warm-up) at concurrency {r.options['concurrency']}, seed {r.options['seed']}"
        + (f", faults left out: {', '.join(r.options['exclude_faults'])}" if r.options["exclude_faults"] else ""),
        f"- duration: {r.duration_s} s ({(r.requests + r.warmup) / r.duration_s if r.duration_s else 0:.0f} requests/s)",
        f"- local backend killed and restarted: {r.local_restarts} times",
        f"- requests that reached the fake cloud: {r.cloud_requests} (a full deck of faults: {len(r.deck)}); longest stretch without one: {r.longest_cloud_gap_s} s",
        f"- machine load (1-minute average, all processes): {r.load.get('before')} before, {r.load.get('max')} at most",
        f"- slow clients held at a time: {r.options['slow_clients']}",
        f"- result: **{'PASS' if r.ok else 'FAIL'}**", "",
        "## Checks", "", "| check | result |", "|---|---|",
        *[f"| {k} | {'ok' if v else '**FAILED**'} |" for k, v in r.checks.items()], "",
        "## Outcomes", "", "| front door | ok | error (well-formed) | violation |", "|---|---|---|---|",
        *[f"| {k} | {v.get('ok', 0)} | {v.get('error', 0)} | {v.get('violation', 0)} |" for k, v in r.outcomes.items()], "",
        f"- lost: {r.lost}",
        f"- served by: {', '.join(f'{k} {v}' for k, v in r.backends.items())}",
        f"- HTTP status: {', '.join(f'{k}: {v}' for k, v in r.statuses.items())}",
        f"- 5xx answers: {', '.join(f'{k}: {v}' for k, v in r.server_errors.items()) or 'none'}",
        f"- why the cloud did not answer (x-nonstop-failover): {', '.join(f'{k}: {v}' for k, v in r.failovers.items()) or 'always did'}",
        f"- learned first-byte deadlines at the end: {', '.join(f'{k}: {v} s' for k, v in r.first_byte_deadlines.items()) or 'none'}; "
        f"requests answered after a cloud timeout: {r.timeouts_s.get('count')}, whole request p50 {r.timeouts_s.get('p50')} s, "
        f"max {r.timeouts_s.get('max')} s",
        f"- latency (client side): p50 {r.latency_s.get('p50')} s, p95 {r.latency_s.get('p95')} s, "
        f"p99 {r.latency_s.get('p99')} s, max {r.latency_s.get('max')} s (deadline {r.options['deadline']} s)", "",
        "## Faults injected by the fake cloud (requests that reached it, by mode)", "",
        ", ".join(f"{k}: {v}" for k, v in sorted(r.faults.items(), key=lambda kv: -kv[1])) or "(none)", "",
        f"The faults the reliability work added: {', '.join(f'{f} {r.faults.get(f, 0)}' for f in NEW_FAULTS)}.", "",
        "## Slow clients (request heads and bodies sent slowly, in part or not at all)", "",
        "| kind | connections | answers | longest, s |", "|---|---|---|---|",
        *[f"| {k} | {n} | {', '.join(f'{a} {c}' for a, c in r.slow_clients.get('answers', {}).get(k, {}).items())} | "
          f"{r.slow_clients.get('longest_s', {}).get(k)} |" for k, n in sorted(r.slow_clients.get("counts", {}).items())], "",
        "## Resources of the nonstop process (after warm-up vs. at the end, both after idling "
        f"{r.options['settle']} s, and up to {r.options['max_settle']} s more for pooled upstream connections to close)", "",
        f"- open file descriptors: {r.fd.get('before')} -> {r.fd.get('after')}",
        f"  - before: {', '.join(f'{k} {v}' for k, v in r.fd_detail.get('before', {}).items())}",
        f"  - after: {', '.join(f'{k} {v}' for k, v in r.fd_detail.get('after', {}).items())}",
        f"- RSS: {r.rss_mb.get('before')} MB -> {r.rss_mb.get('after')} MB", "",
        "## Request log", "",
        f"- rows: {r.log_rows} of {r.log_rows_expected} requests; PRAGMA integrity_check: {r.integrity}",
        f"- exit code after SIGTERM: {r.exit_code}", "",
    ]
    if r.violations:
        lines += ["## Violations", "", "| kind | count |", "|---|---|", *[f"| {k} | {v} |" for k, v in r.violations.items()], ""]
    if r.examples:
        lines += ["## Examples", ""]
        for e in r.examples:
            lines.append("- " + json.dumps(e)[:1500])
        lines.append("")
    return "\n".join(lines)


def write_report(r: Report, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(r))
    out.with_suffix(".json").write_text(json.dumps({**asdict(r), "ok": r.ok}, indent=2))


def deck(opts: Options) -> list[str]:
    """The fake cloud's deck in mode random (its random_deck): each run of len(deck) cloud
    requests deals every one of these once."""
    return [m for m in RANDOM_POOL + list(opts.extra_faults) if m not in opts.exclude_faults]


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Options()
    p.add_argument("--requests", type=int, default=d.requests)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--deadline", type=float, default=d.deadline, help="client deadline per request, seconds")
    p.add_argument("--warmup", type=int, default=d.warmup, help="warm-up requests (default: a tenth, at most 500)")
    p.add_argument("--kill-every", type=float, default=d.kill_every, help="seconds between local backend kills")
    p.add_argument("--down-for", type=float, default=d.down_for)
    p.add_argument("--settle", type=float, default=d.settle, help="idle seconds before each resource sample")
    p.add_argument("--max-settle", type=float, default=d.max_settle, help="extra idle seconds allowed for pooled connections to close")
    p.add_argument("--fd-slack", type=int, default=d.fd_slack)
    p.add_argument("--rss-slack-mb", type=float, default=d.rss_slack_mb)
    p.add_argument("--max-seconds", type=float, default=d.max_seconds)
    p.add_argument("--max-cloud-gap", type=float, default=d.max_cloud_gap)
    p.add_argument("--llama", action="store_true", help="also send 0.5%% of requests to a real llama-server")
    p.add_argument("--slow-clients", type=int, default=d.slow_clients,
                   help="connections held at a time by clients that send slowly (0: none)")
    p.add_argument("--no-extra-faults", action="store_true", help="only the fake cloud's base random pool")
    p.add_argument("--exclude-faults", default="", help="comma-separated fake cloud modes to leave out")
    p.add_argument("--out", type=Path, default=d.out, help="markdown report; the .json goes beside it")
    a = p.parse_args(argv)
    return Options(
        requests=a.requests, concurrency=a.concurrency, seed=a.seed, deadline=a.deadline, warmup=a.warmup,
        kill_every=a.kill_every, down_for=a.down_for, settle=a.settle, max_settle=a.max_settle, fd_slack=a.fd_slack,
        rss_slack_mb=a.rss_slack_mb, max_seconds=a.max_seconds, max_cloud_gap=a.max_cloud_gap, llama=a.llama,
        slow_clients=a.slow_clients,
        extra_faults=() if a.no_extra_faults else RANDOM_EXTRA, out=a.out,
        exclude_faults=tuple(m for m in a.exclude_faults.split(",") if m),
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    report = asyncio.run(soak(opts))
    write_report(report, opts.out)
    print(render_markdown(report))
    print(f"report: {opts.out} and {opts.out.with_suffix('.json')}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
