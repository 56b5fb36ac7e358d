"""BackendState: what the planner sees of a local backend, and when that view is remade."""

from __future__ import annotations

from nonstop.routing.backend_state import REPORT_FRESH, BackendState, ServerReport
from nonstop.routing.view import Capabilities


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


def state() -> tuple[BackendState, Clock]:
    clock = Clock()
    return BackendState("local", Capabilities(context_window=8192, slots=2), clock=clock), clock


def test_the_view_is_kept_until_a_field_changes() -> None:
    s, clock = state()
    first = s.view()
    clock.now += 3600
    assert s.view() is first
    lease = s.lease()
    assert s.view().inflight == 1
    lease()
    assert s.view().inflight == 0
    s.failed("refused")
    assert s.view().demoted and s.view().demoted_why == "refused"
    s.score = 0.5
    assert s.view().score == 0.5


def test_a_server_reading_counts_only_while_fresh() -> None:
    s, clock = state()
    s.reported(ServerReport(kind="llamacpp", slots=2, busy_slots=2, context_window=4096))
    v = s.view()
    assert v.free_slots == 0 and v.busy and v.caps.context_window == 4096
    clock.now += REPORT_FRESH
    assert s.view().free_slots == 0
    clock.now += 0.5
    stale = s.view()
    assert stale.free_slots is None and not stale.busy  # the window stays: it is not load
    assert stale.caps.context_window == 4096


def test_other_instances_requests_count_only_while_fresh() -> None:
    s, clock = state()
    s.fleet_counted(3)
    assert s.view().inflight == 3
    clock.now += REPORT_FRESH + 0.5
    assert s.view().inflight == 0
