"""Forecasting when a quota window runs out, and conserving without flapping."""

from __future__ import annotations

import pytest

from nonstop.routing.forecast import EXIT_MARGIN, HW_MIN_TO_RESET, IDLE_GAP, QuotaForecast

T0 = 1_800_000_000.0
HOUR = 3600.0


def feed(f: QuotaForecast, readings: list[tuple[float, float]], resets: float) -> None:
    for t, u in readings:
        f.record(t, "5h", u, resets)
        f.update(t)


def steady(start: float, u0: float, per_hour: float, minutes: int, step_s: float = 60.0) -> list[tuple[float, float]]:
    return [(start + i * step_s, u0 + per_hour * i * step_s / HOUR) for i in range(int(minutes * 60 / step_s))]


def test_no_readings_no_forecast() -> None:
    f = QuotaForecast()
    assert f.view(T0) == ()
    assert not f.update(T0)


def test_steady_pace_forecasts_the_run_out_time() -> None:
    f = QuotaForecast()
    resets = T0 + 4 * HOUR
    feed(f, steady(T0, 0.40, 0.20, 40), resets)  # 20 %/h, 40 minutes
    (w,) = f.current
    assert w.method == "slope"
    last_t, last_u = steady(T0, 0.40, 0.20, 40)[-1]
    assert w.runs_out == pytest.approx(last_t + (1 - last_u) / 0.20 * HOUR, rel=1e-3)
    assert w.runs_out < resets
    assert f.conserving


def test_slow_pace_does_not_conserve() -> None:
    f = QuotaForecast()
    feed(f, steady(T0, 0.40, 0.05, 40), T0 + 2 * HOUR)
    (w,) = f.current
    assert w.runs_out is not None and w.runs_out > T0 + 2 * HOUR
    assert not f.conserving


def test_idle_gap_does_not_dilute_the_pace() -> None:
    f = QuotaForecast()
    resets = T0 + 4.5 * HOUR
    before = steady(T0, 0.30, 0.30, 20)
    after = steady(T0 + 2 * HOUR, before[-1][1], 0.30, 20)  # two idle hours, same pace after
    feed(f, before + after, resets)
    (w,) = f.current
    # The pace is 30 %/h while working; the gap counts as IDLE_GAP of "activity" at most,
    # where a fit over wall time would dilute it to under half.
    slope_per_hour = (1 - after[-1][1]) / ((w.runs_out - after[-1][0]) / HOUR)
    assert 0.24 <= slope_per_hour <= 0.33
    span_wall = (after[-1][0] - before[0][0]) / HOUR
    naive = (after[-1][1] - before[0][1]) / span_wall
    assert naive < 0.15
    assert IDLE_GAP < HOUR


def test_too_little_history_uses_the_high_water_mark() -> None:
    f = QuotaForecast(high_water=0.9)
    feed(f, [(T0, 0.91)], T0 + HOUR)
    assert f.current[0].method == "high-water"
    assert f.conserving
    g = QuotaForecast(high_water=0.9)
    feed(g, [(T0, 0.80)], T0 + HOUR)
    assert not g.conserving


def test_high_water_ignored_when_the_reset_is_minutes_away() -> None:
    f = QuotaForecast(high_water=0.9)
    feed(f, [(T0, 0.95)], T0 + HW_MIN_TO_RESET - 10)
    assert not f.conserving


def test_hysteresis_on_both_edges() -> None:
    f = QuotaForecast()
    resets = T0 + 3 * HOUR
    feed(f, steady(T0, 0.40, 0.25, 40), resets)
    assert f.conserving
    # The pace drops just enough that the forecast lands a little after the reset: still
    # within the exit margin, so it keeps conserving.
    t, u = steady(T0, 0.40, 0.25, 40)[-1]
    remaining_s = resets - t + EXIT_MARGIN / 2
    pace = (1 - u) / remaining_s  # per second
    later = [(t + i * 60, u + pace * i * 60) for i in range(1, 30)]
    feed(f, later, resets)
    assert f.conserving
    # A new window (reset moved, utilization low) ends it.
    feed(f, [(resets + 10, 0.02), (resets + 70, 0.02)], resets + 5 * HOUR)
    assert not f.conserving


def test_flat_usage_stops_conserving_once_below_the_band() -> None:
    f = QuotaForecast()
    resets = T0 + 3 * HOUR
    feed(f, steady(T0, 0.40, 0.25, 40), resets)
    assert f.conserving
    t, u = steady(T0, 0.40, 0.25, 40)[-1]
    feed(f, [(t + i * 60, u) for i in range(1, 200)], resets)
    assert not f.conserving


def test_new_window_clears_history() -> None:
    f = QuotaForecast()
    feed(f, steady(T0, 0.40, 0.25, 40), T0 + 3 * HOUR)
    feed(f, [(T0 + 3 * HOUR + 5, 0.01)], T0 + 8 * HOUR)
    assert len(f.windows["5h"].readings) == 1


def test_unchanged_readings_are_not_all_kept() -> None:
    f = QuotaForecast()
    for i in range(100):
        f.record(T0 + i, "5h", 0.5, T0 + HOUR)
    assert len(f.windows["5h"].readings) < 10


def test_snapshot_round_trip() -> None:
    f = QuotaForecast()
    feed(f, steady(T0, 0.40, 0.25, 40), T0 + 3 * HOUR)
    g = QuotaForecast()
    g.restore(f.snapshot())
    assert g.conserving
    assert g.current[0].runs_out == pytest.approx(f.current[0].runs_out, rel=1e-3)
    QuotaForecast().restore({"windows": {"5h": [["x"]]}, "resets": []})  # garbage is ignored
