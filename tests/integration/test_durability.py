"""What survives a crash and what a clean stop promises: kill -9 in the middle of load
leaves the quota state and the request log intact; SIGTERM lets the streams in flight
finish (up to drain_timeout) and exits with status 0."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from nonstop.server import runtime
from tests.support import procs, rawhttp, wirecheck
from tests.support.config import nonstop_config
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01"}


def config(cloud_url: str, local_url: str, **settings) -> str:
    return nonstop_config(
        cloud_url, cloud={"first_byte_timeout": 3.0, "error_cooldown": 0.5},
        local=[{"name": "local", "url": local_url, "model": "local-model", "connect_timeout": 1.0}], **settings,
    )


def db_facts(state: Path) -> tuple[int, str, dict | None]:
    """(request rows, integrity_check, the saved quota state)."""
    conn = sqlite3.connect(f"file:{state / 'nonstop.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        saved = conn.execute("SELECT value FROM state WHERE key = 'quota'").fetchone()
    finally:
        conn.close()
    return rows, integrity, json.loads(saved[0]) if saved else None


class Load:
    """Background clients sending requests until stopped; counts completed ones."""

    def __init__(self, url: str, threads: int = 8):
        self.url = url
        self.stop = threading.Event()
        self.done: list[float] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                rawhttp.request("POST", self.url + "/v1/messages", {**MESSAGE, "stream": (i + n) % 2 == 0}, HEADERS, timeout=10)
                self.done.append(time.monotonic())
            except OSError:
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def test_kill_9_mid_load_keeps_quota_state_and_request_log(cloud, recorder_proc, nonstop_factory, tmp_path):
    state = tmp_path / "state"
    cfg = config(cloud.url, recorder_proc.url)
    ns = nonstop_factory(cfg, state_dir=state)
    for _ in range(5):
        assert rawhttp.request("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)[1]["x-nonstop-backend"] == "cloud"
    procs.set_mode(cloud, "subscription_limit", reset_in=3600)
    assert rawhttp.request("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)[1]["x-nonstop-backend"] == "local"
    until = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["cloud"]["until"]
    assert until and until > time.time() + 3000
    procs.set_mode(cloud, "ok")
    confirmed = 6
    for cycle in range(3):
        with Load(ns.url) as load:
            time.sleep(1.5 + 0.4 * cycle)
            settled = [t for t in load.done if t < time.monotonic() - 1.0]
            ns.stop(signal.SIGKILL)
            assert ns.proc.returncode == -signal.SIGKILL
        assert load.done, "no request completed under load"
        confirmed += len(settled)
        rows, integrity, saved = db_facts(state)
        assert integrity == "ok"
        assert rows >= confirmed, f"cycle {cycle}: {rows} rows, but {confirmed} requests had finished a second before the kill"
        assert saved is not None and saved["state"] == "out" and abs(saved["until"] - until) < 1
        before = len(procs.cloud_requests(cloud))
        ns = nonstop_factory(cfg, state_dir=state)
        status = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["cloud"]
        assert status["state"] == "out" and abs(status["until"] - until) < 1, status
        _, h, _ = rawhttp.request("POST", ns.url + "/v1/messages", MESSAGE, HEADERS)
        assert h["x-nonstop-backend"] == "local", "after a restart the cloud was used before its reset time"
        assert len(procs.cloud_requests(cloud)) == before
        confirmed = max(confirmed, rows) + 1
    ns.stop()
    rows, integrity, _ = db_facts(state)
    assert integrity == "ok" and rows >= confirmed


def test_learned_first_byte_deadlines_survive_kill_9(cloud, recorder_proc, nonstop_factory, tmp_path):
    state = tmp_path / "state"
    cfg = config(cloud.url, recorder_proc.url)
    ns = nonstop_factory(cfg, state_dir=state)
    for _ in range(6):  # streams: what they take to start is learned (a non-streamed answer's time is not)
        assert rawhttp.request("POST", ns.url + "/v1/messages", {**MESSAGE, "stream": True}, HEADERS)[1][
            "x-nonstop-backend"] == "cloud"
    learned = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["cloud"]["first_byte_deadlines"]
    assert learned
    time.sleep(runtime.DEADLINES_SAVE_EVERY + 1.5)  # saved while they change, then written by the log's writer
    ns.stop(signal.SIGKILL)
    ns = nonstop_factory(cfg, state_dir=state)
    again = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["cloud"]["first_byte_deadlines"]
    assert again == learned


def _refused(ns: procs.Proc, served: list[int]) -> bool:
    try:
        served.append(rawhttp.request("POST", ns.url + "/v1/messages", MESSAGE, HEADERS, timeout=3)[0])
    except OSError:
        return True
    return False


def _streams_in_flight(ns: procs.Proc, n: int) -> tuple[list, list[threading.Thread]]:
    """n streams opened in threads, once nonstop counts them all in flight; each thread
    appends its rawhttp.Reply (or the OSError it met) to the list."""
    results: list = []

    def run() -> None:
        try:
            results.append(rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": True},
                                            headers=HEADERS, timeout=60))
        except OSError as exc:
            results.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    _wait_inflight(ns, n)
    return results, threads


def _verdicts(results: list, threads: list[threading.Thread]) -> list[tuple[rawhttp.Reply, wirecheck.Verdict]]:
    """Each stream's reply and what the checker makes of it, once all have ended."""
    for t in threads:
        t.join(10)
    assert len(results) == len(threads)
    for r in results:
        assert not isinstance(r, Exception), r
    return [(r, wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=True)) for r in results]


def _wait_inflight(ns: procs.Proc, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["inflight"] >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} streams did not start")


def test_sigterm_lets_streams_in_flight_finish_then_exits_0(cloud, recorder_proc, nonstop_factory):
    words = " ".join(f"w{i}" for i in range(12))
    procs.set_mode(cloud, "slow", delay=0.25, text=words)  # each stream takes ~3 s
    ns = nonstop_factory(config(cloud.url, recorder_proc.url, drain_timeout=10.0))
    results, threads = _streams_in_flight(ns, 4)
    t0 = time.monotonic()
    ns.proc.send_signal(signal.SIGTERM)
    # No new work is accepted while draining: once nonstop has taken the signal in, a new
    # connection is refused while the streams are still running.
    served: list[int] = []  # requests sent before nonstop took the signal in are served
    wait_for(lambda: _refused(ns, served), 10, "a new request to be refused after SIGTERM")
    assert ns.proc.poll() is None and any(t.is_alive() for t in threads), "refused only once nonstop had exited"
    code = ns.proc.wait(20)
    took = time.monotonic() - t0
    for r, v in _verdicts(results, threads):
        assert v.outcome == "ok" and v.text == words, (v, r.body[-300:])
    assert took < 10.0, f"exit took {took:.1f}s"
    rows, integrity, _ = db_facts(ns.extra["state_dir"])
    assert rows == 4 + len(served) and integrity == "ok"
    assert code == 0, f"exit status after SIGTERM was {code}"


def test_sigterm_ends_streams_still_running_at_drain_timeout(cloud, recorder_proc, nonstop_factory):
    procs.set_mode(cloud, "endless_stream", hang_for=60, delay=0.1)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url, drain_timeout=2.0))
    results, threads = _streams_in_flight(ns, 2)
    t0 = time.monotonic()
    ns.proc.send_signal(signal.SIGTERM)
    code = ns.proc.wait(20)
    took = time.monotonic() - t0
    assert 2.0 - 0.5 < took < 2.0 + 6.0, f"exit took {took:.1f}s with drain_timeout 2"
    # The streams cut at the drain deadline end with a well-formed error, not a silent stop.
    for r, v in _verdicts(results, threads):
        assert v.outcome == "error", (v.problem, r.body[-300:])
    def upstream_streams() -> int:  # the cloud hears nonstop's connections close (a FIN takes a moment)
        return json.loads(rawhttp.request("GET", cloud.url + "/_fake/active")[2])["active"].get("endless_stream", 0)

    wait_for(lambda: upstream_streams() == 0, 3, "the upstream streams to end with nonstop")
    rows, integrity, _ = db_facts(ns.extra["state_dir"])
    assert rows == 2 and integrity == "ok"
    assert code == 0, f"exit status after SIGTERM was {code}"
