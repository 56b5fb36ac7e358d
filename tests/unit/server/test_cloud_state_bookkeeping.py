"""A change of the cloud's state takes effect at once (the next plan sees it); its
bookkeeping (the disk, the metrics, the log line, the dashboard's events) follows three
turns of the event loop later, while the request that changed it waits on its backend."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nonstop.config import parse_config
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.routing.view import CloudState
from nonstop.server.runtime import Runtime
from tests.support.clock import Clock

T0 = 1_800_000_000.0
LIMIT = Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 3600, "usage limit (five_hour)", 429)


def _runtime(tmp_path: Path) -> Runtime:
    return Runtime(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}), clock=Clock(T0))


def _switches(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(("switched to", "probing the cloud"))]


async def test_a_change_is_planned_on_at_once_and_said_three_turns_later(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="nonstop")
    rt = _runtime(tmp_path)
    events = rt.bus.subscribe()
    quota = rt.clouds.state("")
    quota.begin_probe()
    quota.record_failure(LIMIT)
    assert rt.clouds.view("").state is CloudState.OUT  # the next plan reads it now
    rt.clock.advance(5)  # type: ignore[attr-defined]
    assert _switches(caplog) == [] and events.empty()
    for _ in range(2):  # the tasks this step started (its request sent on) run first
        await asyncio.sleep(0)
        assert _switches(caplog) == [] and events.empty()
    await asyncio.sleep(0)
    # Both changes said, each as it was when it happened, and one status for the turn.
    lines = _switches(caplog)
    assert len(lines) == 2 and lines[0].startswith("probing the cloud")
    assert lines[1].startswith("switched to local: cloud out until")
    got = [events.get_nowait() for _ in range(events.qsize())]
    assert [e["type"] for e in got] == ["switch", "status"] and got[0]["to"] == "local"
    assert got[0]["ts"] == T0  # when it switched, not when it was said
    assert rt.metrics.switches.labels("local")._value.get() == 1
    for _ in range(3):
        await asyncio.sleep(0)
    assert events.empty() and len(_switches(caplog)) == 2  # said once


async def test_what_is_due_when_the_server_stops_is_said_and_saved(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="nonstop")
    rt = _runtime(tmp_path)
    saved: list[str] = []
    rt.clouds._save = lambda: saved.append(rt.clouds.accounts.current().state.value)  # type: ignore[method-assign]
    rt.clouds.state("").record_failure(LIMIT)
    await rt.clouds.stop()  # before the loop's next turn
    assert _switches(caplog)[0].startswith("switched to local") and saved[0] == "out"


def test_outside_an_event_loop_a_change_is_said_at_once(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="nonstop")
    rt = _runtime(tmp_path)
    rt.clouds.state("").record_failure(LIMIT)
    assert _switches(caplog)[0].startswith("switched to local")


def test_an_account_let_go_takes_its_metrics_with_it() -> None:
    # A client sending a new key on every request: the accounts are bounded, and so are the
    # metrics' series (one a key, with the quota headers every reply carries).
    from nonstop.config import parse_config
    from nonstop.routing.accounts import MAX_ACCOUNTS
    from nonstop.server.cloud_state import CloudStates
    from nonstop.server.events import EventBus
    from nonstop.server.metrics import Metrics

    metrics = Metrics()
    clouds = CloudStates(parse_config({}), clock=lambda: 1_800_000_000.0, metrics=metrics, bus=EventBus(),
                         store=None, spawn=lambda c: c.close())
    headers = {"anthropic-ratelimit-unified-5h-utilization": "0.42", "anthropic-ratelimit-unified-7d-utilization": "0.17"}
    for i in range(MAX_ACCOUNTS + 100):
        clouds.observe(clouds.account_for(f"sk-flood-{i}"), headers)
    assert len(clouds.accounts.states) <= MAX_ACCOUNTS
    series = [line for line in metrics.render().decode().splitlines() if line.startswith("nonstop_account_quota_utilization{")]
    assert 0 < len(series) <= 2 * MAX_ACCOUNTS
