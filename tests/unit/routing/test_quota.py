"""QuotaState driven by a fake clock: serving -> out -> probe -> serving."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.config import CloudConfig
from nonstop.routing.classify import FailureKind, Verdict, classify_response, parse_retry_after
from nonstop.routing.plan import hhmm
from nonstop.routing.quota import (
    BREAKER_THRESHOLD,
    LONGEST_OUT,
    PROBE_TIMEOUT,
    CloudState,
    QuotaState,
)
from tests.support.clock import Clock

T0 = 1_750_000_000.0
CFG = CloudConfig(default_cooldown=300.0, error_cooldown=15.0, credit_recheck=1800.0)
U = "anthropic-ratelimit-unified-"


class Changes:
    def __init__(self) -> None:
        self.calls: list[tuple[CloudState, CloudState, str]] = []
        self._last = CloudState.SERVING

    def __call__(self, q: QuotaState, why: str) -> None:
        self.calls.append((self._last, q.state, why))
        self._last = q.state

    @property
    def whys(self) -> list[str]:
        return [w for _, _, w in self.calls if w]


def make(clock: Clock | None = None, cfg: CloudConfig = CFG) -> tuple[QuotaState, Clock, Changes]:
    clock = clock or Clock(T0)
    changes = Changes()
    return QuotaState(cfg, clock=clock, on_change=changes), clock, changes


def v(kind: FailureKind, until: float | None = None, detail: str = "") -> Verdict:
    return Verdict(kind, True, until, detail or kind.value)


def route(q: QuotaState) -> str:
    """What the planner and the executor do with the cloud's view: use the cloud, probe
    it (an explicit step), or stay local."""
    view = q.view()
    if view.state is CloudState.SERVING:
        return "cloud"
    if view.probe_due:
        q.begin_probe()
        return "probe"
    return "local"


def test_asking_never_changes_the_state() -> None:
    q, clock, changes = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 60))
    clock.advance(61)
    before = (q.state, q.until, len(changes.calls))
    for _ in range(5):
        assert q.view().probe_due
    assert (q.state, q.until, len(changes.calls)) == before


def test_probe_now_lets_the_next_request_probe() -> None:
    q, _, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 7200))
    assert route(q) == "local"
    q.probe_now()
    assert route(q) == "probe"
    assert route(q) == "local"
    q2, _, changes = make()
    q2.probe_now()  # serving: nothing to do
    assert q2.state is CloudState.SERVING and changes.calls == []


# --- the main cycle ---------------------------------------------------------------------


def test_starts_serving() -> None:
    q, _, changes = make()
    assert q.state is CloudState.SERVING
    assert route(q) == "cloud"
    assert route(q) == "cloud"
    assert changes.calls == []


def test_out_until_deadline_then_one_probe_then_serving() -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 3600, "usage limit (five_hour)"))
    assert q.state is CloudState.OUT
    assert q.until == T0 + 3600
    assert q.reason == "subscription_limit"
    assert q.detail == "usage limit (five_hour)"

    for step in (0, 1, 1800, 1798):
        clock.advance(step)
        assert route(q) == "local"
    clock.advance(1)  # exactly the deadline
    assert clock.now == T0 + 3600
    assert route(q) == "probe"
    assert q.state is CloudState.PROBING
    # concurrent callers while the probe is out
    assert [route(q) for _ in range(5)] == ["local"] * 5
    clock.advance(10)
    assert route(q) == "local"

    q.record_success()
    assert q.state is CloudState.SERVING
    assert q.until == 0.0
    assert q.reason == ""
    assert route(q) == "cloud"


def test_probe_failure_goes_out_again() -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 60))
    clock.advance(60)
    assert route(q) == "probe"
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, clock.now + 600))
    assert q.state is CloudState.OUT
    assert q.until == clock.now + 600
    assert route(q) == "local"
    clock.advance(600)
    assert route(q) == "probe"


@pytest.mark.parametrize("kind", [FailureKind.OVERLOADED, FailureKind.SERVER_ERROR, FailureKind.BAD_RESPONSE])
def test_a_single_blip_during_a_probe_goes_out(kind: FailureKind) -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 60))
    clock.advance(60)
    assert route(q) == "probe"
    q.record_failure(v(kind))
    assert q.state is CloudState.OUT
    assert q.until == clock.now + CFG.error_cooldown


def test_auth_error_during_a_probe_goes_out_for_error_cooldown() -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 60, "usage limit"))
    clock.advance(60)
    assert route(q) == "probe"
    q.record_failure(v(FailureKind.AUTH))
    assert q.state is CloudState.OUT
    assert q.until == clock.now + CFG.error_cooldown
    assert q.reason == "subscription_limit"  # the reason the cloud went out stays


def test_request_shaped_400_during_a_probe_lets_the_next_request_probe() -> None:
    """A 400 about the request says nothing about the cloud's capacity: no cooldown."""
    q, clock, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 60, "usage limit"))
    clock.advance(60)
    assert route(q) == "probe"
    q.record_failure(v(FailureKind.CLIENT_ERROR))
    assert q.state is CloudState.OUT
    assert q.reason == "subscription_limit"
    assert route(q) == "probe"


@pytest.mark.parametrize("kind", [FailureKind.AUTH, FailureKind.CLIENT_ERROR])
def test_auth_and_client_errors_never_take_a_serving_cloud_out(kind: FailureKind) -> None:
    q, _, changes = make()
    for _ in range(BREAKER_THRESHOLD + 2):
        q.record_failure(v(kind))
    assert q.state is CloudState.SERVING
    assert route(q) == "cloud"
    assert changes.calls == []


def test_stale_probe_lets_the_next_request_probe() -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.THROTTLE, T0 + 10))
    clock.advance(10)
    assert route(q) == "probe"
    clock.advance(PROBE_TIMEOUT - 1)
    assert route(q) == "local"
    clock.advance(1)
    assert route(q) == "probe"
    assert route(q) == "local"


# --- deadlines ------------------------------------------------------------------------------


def test_later_deadline_wins() -> None:
    q, _, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 3600))
    q.record_failure(v(FailureKind.THROTTLE, T0 + 5))
    assert q.until == T0 + 3600
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 7200))
    assert q.until == T0 + 7200


def test_short_throttle_never_shortens_usage_limit_even_without_deadline() -> None:
    q, _, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 3600))
    q.record_failure(v(FailureKind.THROTTLE))  # default_cooldown, still shorter
    assert q.until == T0 + 3600
    q.record_failure(v(FailureKind.NETWORK))
    assert q.until == T0 + 3600


def test_kept_deadline_keeps_its_reason() -> None:
    q, _, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 3600, "usage limit (five_hour)"))
    q.record_failure(v(FailureKind.THROTTLE, T0 + 5, "rate limited"))
    assert q.until == T0 + 3600
    assert q.reason == "subscription_limit"
    assert q.detail == "usage limit (five_hour)"


@pytest.mark.parametrize(
    ("verdict", "expected_until"),
    [
        (v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 999), T0 + 999),
        (v(FailureKind.API_KEY_LIMIT, T0 + 42), T0 + 42),
        (v(FailureKind.SPEND_LIMIT, T0 + 86400), T0 + 86400),
        (v(FailureKind.THROTTLE, T0 + 7), T0 + 7),
        (v(FailureKind.SUBSCRIPTION_LIMIT), T0 + CFG.default_cooldown),
        (v(FailureKind.THROTTLE), T0 + CFG.default_cooldown),
        (v(FailureKind.API_KEY_LIMIT), T0 + CFG.default_cooldown),
        (v(FailureKind.SPEND_LIMIT), T0 + CFG.default_cooldown),
        (v(FailureKind.CREDIT_EXHAUSTED), T0 + CFG.credit_recheck),
        (v(FailureKind.NETWORK), T0 + CFG.error_cooldown),
        (v(FailureKind.TIMEOUT), T0 + CFG.error_cooldown),
        # a deadline on a network verdict is ignored: network blips use error_cooldown
        (v(FailureKind.NETWORK, T0 + 9999), T0 + CFG.error_cooldown),
    ],
    ids=[
        "subscription", "api-key", "spend", "throttle", "subscription-no-deadline",
        "throttle-no-deadline", "api-key-no-deadline", "spend-no-deadline", "credit",
        "network", "timeout", "network-ignores-deadline",
    ],
)
def test_first_failure_deadline(verdict: Verdict, expected_until: float) -> None:
    q, _, _ = make()
    q.record_failure(verdict)
    assert q.state is CloudState.OUT
    assert q.until == expected_until
    assert q.reason == verdict.kind.value
    assert route(q) == "local"


def test_cooldowns_come_from_config() -> None:
    cfg = CloudConfig(default_cooldown=11.0, error_cooldown=2.0, credit_recheck=77.0)
    for kind, until in [
        (FailureKind.THROTTLE, T0 + 11.0),
        (FailureKind.NETWORK, T0 + 2.0),
        (FailureKind.CREDIT_EXHAUSTED, T0 + 77.0),
    ]:
        q, _, _ = make(cfg=cfg)
        q.record_failure(v(kind))
        assert q.until == until


def test_network_skip_ends_after_error_cooldown() -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.NETWORK))
    assert route(q) == "local"
    clock.advance(CFG.error_cooldown - 0.001)
    assert route(q) == "local"
    clock.advance(0.001)
    assert route(q) == "probe"


def test_credit_exhausted_rechecks_after_credit_recheck() -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.CREDIT_EXHAUSTED))
    clock.advance(CFG.credit_recheck - 1)
    assert route(q) == "local"
    clock.advance(1)
    assert route(q) == "probe"


# --- the breaker ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [FailureKind.OVERLOADED, FailureKind.SERVER_ERROR, FailureKind.BAD_RESPONSE])
def test_blips_need_threshold_consecutive_failures(kind: FailureKind) -> None:
    q, clock, _ = make()
    for _ in range(BREAKER_THRESHOLD - 1):
        q.record_failure(v(kind))
        assert q.state is CloudState.SERVING
        assert route(q) == "cloud"
    q.record_failure(v(kind))
    assert q.state is CloudState.OUT
    assert q.until == clock.now + CFG.error_cooldown
    assert route(q) == "local"


def test_success_resets_the_blip_count() -> None:
    q, _, _ = make()
    for _ in range(BREAKER_THRESHOLD - 1):
        q.record_failure(v(FailureKind.OVERLOADED))
    q.record_success()
    for _ in range(BREAKER_THRESHOLD - 1):
        q.record_failure(v(FailureKind.SERVER_ERROR))
    assert q.state is CloudState.SERVING
    q.record_failure(v(FailureKind.SERVER_ERROR))
    assert q.state is CloudState.OUT


def test_breaker_recovers_through_a_probe() -> None:
    q, clock, _ = make()
    for _ in range(BREAKER_THRESHOLD):
        q.record_failure(v(FailureKind.OVERLOADED))
    clock.advance(CFG.error_cooldown)
    assert route(q) == "probe"
    q.record_success()
    assert q.state is CloudState.SERVING
    # the count starts over after recovery
    q.record_failure(v(FailureKind.OVERLOADED))
    assert q.state is CloudState.SERVING


def test_classified_529s_trip_the_breaker() -> None:
    q, _, _ = make()
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    for i in range(BREAKER_THRESHOLD):
        verdict = classify_response(529, {}, body, T0)
        assert verdict is not None
        q.record_failure(verdict)
        assert (q.state is CloudState.OUT) == (i == BREAKER_THRESHOLD - 1)


# --- record_headers -------------------------------------------------------------------------


def test_record_headers_parses_utilization() -> None:
    q, clock, _ = make()
    q.record_headers({
        U + "status": "allowed_warning",
        U + "5h-utilization": "0.91",
        U + "7d-utilization": "1.2",
        U + "5h-reset": str(int(T0 + 1000)),
        U + "7d-reset": str(int((T0 + 90000) * 1000)),  # ms epoch
        U + "fallback-percentage": "0.5",
        U + "overage-status": "rejected",
    })
    u = q.utilization
    assert u.status == "allowed_warning"
    assert u.five_hour == pytest.approx(0.91)
    assert u.seven_day == pytest.approx(1.2)  # can exceed 1
    assert u.five_hour_reset == T0 + 1000
    assert u.seven_day_reset == T0 + 90000
    assert u.fallback_percentage == pytest.approx(0.5)
    assert u.overage_status == "rejected"
    assert u.updated == clock.now
    d = u.as_dict()
    assert d["5h"] == pytest.approx(0.91)
    assert d["7d_reset"] == T0 + 90000


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "nan", "1e999"])
def test_record_headers_reads_no_utilization_from_a_number_that_is_not_finite(value: str) -> None:
    # float() takes them all, but no utilization is infinite: the header is broken, and
    # an infinite one would read as far past the limit (and show as "inf%").
    q, _, _ = make()
    q.record_headers({U + "status": "allowed", U + "5h-utilization": "0.4", U + "7d-utilization": "0.2"})
    q.record_headers({U + "status": "allowed", U + "5h-utilization": value, U + "7d-utilization": value,
                      U + "fallback-percentage": value})
    u = q.utilization
    assert (u.five_hour, u.seven_day, u.fallback_percentage) == (None, None, None)


# Quota headers as a cloud sends them, reply after reply: mostly the same, now and then
# another utilization, reset, status; some without a window, one with a broken value.
_HEADERS = [
    {U + "status": "allowed", U + "5h-utilization": "0.40", U + "7d-utilization": "0.20",
     U + "5h-reset": str(int(T0 + 7200)), U + "7d-reset": str(int(T0 + 500000))},
    {U + "status": "allowed", U + "5h-utilization": "0.41", U + "7d-utilization": "0.20",
     U + "5h-reset": str(int(T0 + 7200)), U + "7d-reset": str(int(T0 + 500000))},
    {U + "status": "allowed_warning", U + "5h-utilization": "0.95", U + "7d-utilization": "0.21",
     U + "5h-reset": str(int(T0 + 7200)), U + "7d-reset": str(int(T0 + 500000)), U + "overage-status": "rejected"},
    {U + "status": "allowed", U + "5h-utilization": "0.05", U + "5h-reset": str(int(T0 + 25200))},
    {U + "status": "allowed", U + "7d-utilization": "0.22", U + "fallback-percentage": "0.5"},
    {U + "status": "allowed", U + "5h-utilization": "inf"},
    {"x-other": "1"},
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(len(_HEADERS))), st.sampled_from([0, 1, 5, 29, 30, 31, 600, 4000]),
                          st.booleans()), max_size=60))
def test_record_headers_read_again_changes_what_a_full_reading_changes(steps) -> None:
    # The same headers as the last ones are not parsed again (record_headers): every
    # state it leaves must be the one a full reading of every reply leaves.
    fast, clock, fast_changes = make()
    full, full_clock, full_changes = make()
    for i, dt, restore in steps:
        clock.advance(dt)
        full_clock.advance(dt)
        if restore:  # another instance's view, or a restart: the readings are replaced
            snap = fast.snapshot()
            fast.restore(snap, live=True)
            full.restore(snap, live=True)
        fast.record_headers(_HEADERS[i])
        full._settled = None  # read in full, every time
        full.record_headers(_HEADERS[i])
        assert fast.utilization == full.utilization
        assert fast.forecast.snapshot() == full.forecast.snapshot()
        assert fast.forecast.current == full.forecast.current
        assert fast.forecast.conserving == full.forecast.conserving
        assert fast_changes.calls == full_changes.calls


def test_the_same_headers_again_are_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import nonstop.routing.quota as quota

    q, clock, _ = make()
    q.record_headers(_HEADERS[0])
    parsed: list[object] = []
    monkeypatch.setattr(quota, "parse_float", lambda v: parsed.append(v) or float(v))
    clock.advance(5)
    q.record_headers(dict(_HEADERS[0]))
    assert parsed == [] and q.utilization.updated == clock.now
    q.record_headers(_HEADERS[1])  # another value: read
    assert parsed
    parsed.clear()
    clock.advance(31)  # the same value, but the forecast would take it again by now
    q.record_headers(_HEADERS[1])
    assert parsed


def test_record_headers_ignores_unrelated_headers() -> None:
    q, _, _ = make()
    q.record_headers({"content-type": "application/json", U + "fallback-percentage": "0.5"})
    assert q.utilization.updated == 0.0
    assert q.utilization.fallback_percentage is None


def test_record_headers_keeps_previous_values_for_missing_and_garbled() -> None:
    q, clock, _ = make()
    q.record_headers({U + "status": "allowed", U + "5h-utilization": "0.3", U + "7d-utilization": "0.2"})
    clock.advance(5)
    q.record_headers({U + "5h-utilization": "0.4"})
    assert q.utilization.status == "allowed"
    assert q.utilization.five_hour == pytest.approx(0.4)
    assert q.utilization.seven_day == pytest.approx(0.2)
    assert q.utilization.updated == clock.now
    q.record_headers({U + "5h-utilization": "lots"})
    assert q.utilization.five_hour is None
    q.record_headers({U + "7d-utilization": "nan"})
    assert q.utilization.seven_day is None


def test_record_headers_does_not_change_state() -> None:
    q, _, changes = make()
    q.record_headers({U + "status": "rejected", U + "5h-utilization": "1.0"})
    assert q.state is CloudState.SERVING
    assert changes.whys == []  # no switch; only the forecast changed (and is persisted)
    assert q.forecast.conserving and q.view().conserving


# --- persistence ----------------------------------------------------------------------------


def test_snapshot_restore_round_trip() -> None:
    q, clock, _ = make()
    q.record_headers({U + "status": "rejected", U + "5h-utilization": "1.01", U + "5h-reset": str(int(T0 + 50))})
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 3600, "usage limit (five_hour)"))
    snap = q.snapshot()

    r, _, _ = make(Clock(T0 + 10))
    r.restore(snap)
    assert r.state is CloudState.OUT
    assert r.until == T0 + 3600
    assert r.reason == "subscription_limit"
    assert r.detail == "usage limit (five_hour)"
    assert r.since == q.since
    assert r.utilization == q.utilization
    assert r.snapshot() == snap
    assert route(r) == "local"


def test_snapshot_is_plain_data() -> None:
    q, _, _ = make()
    q.record_failure(v(FailureKind.CREDIT_EXHAUSTED))
    assert orjson.loads(orjson.dumps(q.snapshot())) == q.snapshot()


def test_restore_of_probing_snapshot_allows_exactly_one_probe() -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 60))
    clock.advance(60)
    assert route(q) == "probe"
    snap = q.snapshot()
    assert snap["state"] == "probing"

    r, _, _ = make(Clock(clock.now + 1))
    r.restore(snap)
    assert r.state is CloudState.OUT
    assert route(r) == "probe"
    assert route(r) == "local"
    assert route(r) == "local"


@pytest.mark.parametrize(
    "snap",
    [
        {},
        {"state": "bogus", "until": 5},
        {"state": "out", "until": "tomorrow"},
    ],
    ids=["empty", "bad-state", "bad-until"],
)
def test_restore_of_garbage_leaves_a_usable_state(snap: dict) -> None:
    q, _, _ = make()
    q.restore(snap)
    assert q.state in (CloudState.SERVING, CloudState.OUT)
    assert route(q) in ("cloud", "probe")


@pytest.mark.parametrize("until", [float("inf"), float("nan"), 1e300, "1e400"])
def test_restore_of_a_deadline_past_any_calendar_is_capped(until: object) -> None:
    q, clock, _ = make()
    q.restore({"state": "out", "until": until, "reason": "subscription_limit"})
    assert q.until <= clock.now + LONGEST_OUT
    assert hhmm(q.until) and q.view() is not None


def test_a_reset_named_more_than_the_longest_window_ahead_is_not_believed() -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 10 * 365 * 86400))
    assert q.state is CloudState.OUT and q.until == clock.now + LONGEST_OUT


def test_hhmm_of_a_time_no_calendar_shows_is_a_phrase_not_an_error() -> None:
    assert hhmm(1e300) == "an unknown time" and hhmm(float("inf")) == "an unknown time"
    assert hhmm(0) == "00:00 UTC"
    assert hhmm(float("nan")) == "an unknown time" and hhmm(-1e300) == "an unknown time"


def test_hhmm_names_the_minute_a_time_falls_in_on_either_side_of_1970() -> None:
    # Times are remembered by their minute: every second of one minute names it.
    assert {hhmm(1_800_000_000.0 + s) for s in (0, 0.5, 59.999)} == {"08:00 UTC"}
    assert hhmm(1_800_000_060.0) == "08:01 UTC"
    assert hhmm(-61) == "23:58 UTC" and hhmm(-0.5) == "23:59 UTC"


def test_as_dict_includes_now() -> None:
    q, clock, _ = make()
    assert q.as_dict()["now"] == clock.now
    assert q.as_dict()["state"] == "serving"


# --- on_change ------------------------------------------------------------------------------


def test_on_change_why_only_on_state_changes() -> None:
    q, clock, changes = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 60))  # serving -> out
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 120))  # out -> out (later deadline)
    q.record_failure(v(FailureKind.THROTTLE, T0 + 5))  # out -> out
    clock.advance(120)
    assert route(q) == "probe"  # out -> probing
    assert route(q) == "local"  # no call
    q.record_success()  # probing -> serving
    q.record_success()  # serving -> serving: no call

    for before, after, why in changes.calls:
        assert bool(why) == (before is not after), (before, after, why)
    transitions = [(b, a) for b, a, w in changes.calls if w]
    assert transitions == [
        (CloudState.SERVING, CloudState.OUT),
        (CloudState.OUT, CloudState.PROBING),
        (CloudState.PROBING, CloudState.SERVING),
    ]
    assert all(isinstance(w, str) and w.strip() for w in changes.whys)


def test_on_change_not_called_for_blips_below_threshold() -> None:
    q, _, changes = make()
    for _ in range(BREAKER_THRESHOLD - 1):
        q.record_failure(v(FailureKind.OVERLOADED))
    assert changes.calls == []
    q.record_failure(v(FailureKind.OVERLOADED))
    assert len(changes.whys) == 1


def test_since_marks_the_last_state_change() -> None:
    q, clock, _ = make()
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 600))
    assert q.since == T0
    clock.advance(5)
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, T0 + 900))
    assert q.since == T0  # same state: unchanged
    clock.advance(900)
    route(q)
    assert q.since == clock.now


# --- view ------------------------------------------------------------------------------------


def test_the_serving_view_is_reused_until_what_it_shows_changes() -> None:
    q, clock, _ = make()
    first = q.view()
    clock.advance(3600)
    assert q.view() is first  # serving: nothing in it depends on the clock
    q.record_headers({U + "5h-utilization": "0.5", U + "5h-reset": str(int(clock.now + 9000))})
    with_windows = q.view()
    assert with_windows is not first and [w.window for w in with_windows.windows] == ["5h"]
    q.record_failure(v(FailureKind.SUBSCRIPTION_LIMIT, clock.now + 600))
    out = q.view()
    assert out.state is CloudState.OUT and not out.probe_due
    clock.advance(600)
    assert q.view().probe_due  # out: made afresh, at the time asked


# --- deadlines read from a "no" ---------------------------------------------------------------


def body(etype: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_1"})


def test_a_short_throttle_on_a_subscription_whose_headers_say_allowed_is_not_a_usage_limit() -> None:
    """The unified headers come on every subscription reply, the representative claim
    included (docs/wire.md), and only `unified-status: rejected` says the 5-hour or weekly
    limit is hit. A short throttle on a subscription says `allowed`, names the claim and
    the window's reset hours away, and a `retry-after` of seconds: the cloud is out for
    those seconds, not until the window's reset."""
    headers = {
        U + "status": "allowed",
        U + "representative-claim": "five_hour",
        U + "reset": str(int(T0 + 4 * 3600)),
        U + "5h-reset": str(int(T0 + 4 * 3600)),
        U + "5h-utilization": "0.31",
        "retry-after": "10",
    }
    verdict = classify_response(429, headers, body("rate_limit_error", "Rate limited"), T0)
    assert verdict is not None and verdict.failover
    assert verdict.kind is not FailureKind.SUBSCRIPTION_LIMIT, verdict
    q, _, _ = make()
    q.record_failure(verdict)
    assert q.until <= T0 + 10, f"out for {(q.until - T0) / 3600:.1f} h after a 10 s throttle"


def test_a_spend_limit_date_already_past_does_not_make_every_request_probe() -> None:
    """The spend-limit 400 names when access returns. Right after that moment the cloud
    may still refuse (the limit is lifted with a delay, or the clocks differ): a date
    already past names no deadline, and the cloud is checked again after the cooldown,
    not by every request."""
    msg = "You have reached your specified API usage limits. You will regain access on 2025-06-15 at 00:00 UTC."
    assert datetime(2025, 6, 15, tzinfo=UTC).timestamp() < T0  # 15 hours ago
    verdict = classify_response(400, {}, body("invalid_request_error", msg), T0)
    assert verdict is not None and verdict.kind is FailureKind.SPEND_LIMIT
    q, clock, _ = make()
    q.record_failure(verdict)
    sent_to_cloud = 0
    for _ in range(10):  # ten requests over ten seconds, each refused the same way
        clock.advance(1)
        if route(q) == "probe":
            sent_to_cloud += 1
            q.record_failure(classify_response(400, {}, body("invalid_request_error", msg), clock.now))
    assert sent_to_cloud == 0, f"{sent_to_cloud} of 10 requests went to the cloud first to be refused again"


def test_an_absurd_reset_does_not_outweigh_a_plausible_retry_after() -> None:
    """A reset more than LONGEST_OUT ahead is a broken header: the claimed window's reset
    and `retry-after`, which agree on one hour, decide."""
    headers = {
        U + "status": "rejected",
        U + "representative-claim": "five_hour",
        U + "reset": str(int(T0 + 400 * 86400)),
        U + "5h-reset": str(int(T0 + 3600)),
        "retry-after": "3600",
    }
    verdict = classify_response(429, headers, body("rate_limit_error", "limit"), T0)
    assert verdict is not None and verdict.kind is FailureKind.SUBSCRIPTION_LIMIT
    q, _, _ = make()
    q.record_failure(verdict)
    assert q.until <= T0 + 3600 + 60, f"out for {(q.until - T0) / 86400:.1f} days (LONGEST_OUT {LONGEST_OUT / 86400:.0f})"


def test_a_retry_after_that_says_now_does_not_keep_the_cloud_out_for_the_default_cooldown() -> None:
    """`retry-after: 0` (or an HTTP date already past) says "retry now": the next
    request checks the cloud, as it would a second later with `retry-after: 1`, instead
    of waiting the 300 s a 429 that names no time gets."""
    one = classify_response(429, {"retry-after": "1"}, body("rate_limit_error", "Rate limited"), T0)
    zero = classify_response(429, {"retry-after": "0"}, body("rate_limit_error", "Rate limited"), T0)
    assert one is not None and zero is not None
    q1, _, _ = make()
    q1.record_failure(one)
    q0, _, _ = make()
    q0.record_failure(zero)
    assert q1.until == T0 + 1
    assert q0.until <= q1.until, f"retry-after 0: out {q0.until - T0:.0f} s; retry-after 1: out {q1.until - T0:.0f} s"


@pytest.fixture
def pacific_time() -> Iterator[None]:
    """The machine's local time zone is US Pacific (UTC-8 in January)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_a_retry_after_in_asctime_form_is_read_as_utc(pacific_time: None) -> None:
    """HTTP dates come in three forms, all UTC, and a recipient accepts all three (RFC
    9110 §5.6.7). The asctime form names no zone: it is read as UTC, not in the
    machine's zone (in California, one minute ahead would read as eight hours)."""
    asctime = time.asctime(time.gmtime(T0 + 60))  # "Sun Jun 15 15:07:40 2025"
    got = parse_retry_after(asctime, T0)
    assert got is not None
    assert got == pytest.approx(T0 + 60, abs=1), f"retry-after one minute ahead read as {(got - T0) / 3600:.2f} h ahead"


def test_outcomes_of_requests_sent_before_the_last_change_move_nothing() -> None:
    """An answer counts only if its request was sent no earlier than the one whose answer
    moved the state last; a probe's (sent=None) always counts; an old refusal still
    lengthens the wait while the cloud is out (the later deadline wins)."""
    from nonstop.config import CloudConfig
    from nonstop.routing.classify import FailureKind, Verdict
    from nonstop.routing.quota import QuotaState
    from nonstop.routing.view import CloudState

    now = [1000.0]
    q = QuotaState(CloudConfig(), clock=lambda: now[0])
    limit = Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, 5000.0, "usage limit (five_hour)", 429)
    q.record_failure(limit, sent=990.0)
    assert q.state is CloudState.OUT and q.basis == 990.0
    q.record_success(sent=980.0)  # sent before the limit's request
    assert q.state is CloudState.OUT
    weekly = Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, 9000.0, "usage limit (seven_day)", 429)
    q.record_failure(weekly, sent=985.0)  # old, but it knows of a later deadline
    assert q.until == 9000.0
    q.record_success()  # the probe
    assert q.state is CloudState.SERVING
    q.record_failure(limit, sent=995.0)  # sent before the probe
    assert q.state is CloudState.SERVING
    q.record_failure(limit, sent=now[0] + 1)
    assert q.state is CloudState.OUT
