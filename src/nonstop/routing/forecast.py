"""See the limit coming: when will each quota window run out at the current pace?

The cloud reports each window's utilization (0..1, can pass 1) and reset time on every
reply. For each window this keeps a short history and fits a least-squares slope over
the recent readings in *active* time: a gap between two readings longer than
`IDLE_GAP` counts as `IDLE_GAP`, so an hour away from the keyboard does not dilute the
pace (the forecast answers "if you keep working like this"). With too little history, a
utilization at or above the high-water mark, with the reset still some minutes away,
counts as "will run out".

`conserving` turns on when a window is forecast to run out before its reset and off only
when no window is (with margins on both edges), so routing never flaps.

Pure: the caller passes `now`; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nonstop.routing.view import WindowForecast

WINDOWS = {"5h": 5 * 3600.0, "7d": 7 * 86400.0}
IDLE_GAP = 300.0
MIN_READINGS = 3
# The readings used span at most this share of the window, in active time, and at least
# MIN_SPAN_SHARE of it before a slope is trusted.
LOOKBACK_SHARE = 0.2
MIN_SPAN_SHARE = 0.05
# Hysteresis: start conserving when the forecast says "out" at least ENTER_MARGIN before
# the reset; stop only when it says "out" no earlier than EXIT_MARGIN after the reset
# (or never), and utilization is below the high-water mark by HW_BAND.
ENTER_MARGIN = 0.0
EXIT_MARGIN = 900.0
HW_BAND = 0.05
# The high-water rule applies only while the reset is further away than this.
HW_MIN_TO_RESET = 300.0
MAX_READINGS = 256
# An unchanged reading is recorded at most this often (cloud replies come many a second).
SAME_VALUE_EVERY = 30.0


@dataclass
class _Window:
    name: str
    length: float
    resets: float | None = None
    # (active time, wall time, utilization)
    readings: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=MAX_READINGS))

    def add(self, now: float, utilization: float, resets: float | None) -> bool:
        """Record a reading; False when it adds nothing (the same value, recently)."""
        if resets is not None and self.resets is not None and resets > self.resets + 60:
            self.readings.clear()  # a new window began
        if resets is not None:
            self.resets = resets
        if self.readings:
            active, wall, last = self.readings[-1]
            if utilization < last - 0.2:
                self.readings.clear()  # a reset we were not told about
                active = wall = now
            elif utilization == last and now - wall < SAME_VALUE_EVERY:
                return False
            active += min(max(0.0, now - wall), IDLE_GAP)
        else:
            active = now
        self.readings.append((active, now, utilization))
        return True

    def slope(self) -> float | None:
        """Utilization per second of active time, or None with too little history."""
        if len(self.readings) < MIN_READINGS:
            return None
        newest = self.readings[-1][0]
        recent = [(a, u) for a, _, u in self.readings if newest - a <= self.length * LOOKBACK_SHARE]
        if len(recent) < MIN_READINGS or recent[-1][0] - recent[0][0] < self.length * MIN_SPAN_SHARE:
            return None
        n = len(recent)
        mean_t = sum(a for a, _ in recent) / n
        mean_u = sum(u for _, u in recent) / n
        var = sum((a - mean_t) ** 2 for a, _ in recent)
        if var <= 0:
            return None
        return sum((a - mean_t) * (u - mean_u) for a, u in recent) / var

    def forecast(self, now: float, high_water: float) -> WindowForecast:
        if not self.readings:
            return WindowForecast(self.name, None, self.resets)
        u = self.readings[-1][2]
        if self.resets is not None and now >= self.resets:
            return WindowForecast(self.name, None, self.resets)  # a new window: its use is not known yet
        slope = self.slope()
        if slope is not None:
            if u >= 1.0:
                return WindowForecast(self.name, u, self.resets, now, "slope")
            if slope <= 0:
                return WindowForecast(self.name, u, self.resets, None, "slope")
            return WindowForecast(self.name, u, self.resets, now + (1.0 - u) / slope, "slope")
        to_reset = (self.resets - now) if self.resets is not None else None
        if u >= high_water and (to_reset is None or to_reset > HW_MIN_TO_RESET):
            return WindowForecast(self.name, u, self.resets, now, "high-water")
        return WindowForecast(self.name, u, self.resets, None, "high-water")


@dataclass
class QuotaForecast:
    high_water: float = 0.9
    windows: dict[str, _Window] = field(default_factory=lambda: {n: _Window(n, s) for n, s in WINDOWS.items()})
    conserving: bool = False
    # The forecasts as of the last reading (recomputed when a reading is added, and when a
    # window they were made for has reset: `next_reset`).
    current: tuple[WindowForecast, ...] = ()
    next_reset: float = float("inf")

    def record(self, now: float, window: str, utilization: float | None, resets: float | None) -> bool:
        w = self.windows.get(window)
        if w is None or utilization is None:
            return False
        return w.add(now, utilization, resets)

    def quiet_until(self) -> float:
        """Until when a reading of each window's last value adds nothing (each window's
        last reading SAME_VALUE_EVERY on), while no other reading is recorded."""
        return min((w.readings[-1][1] + SAME_VALUE_EVERY for w in self.windows.values() if w.readings),
                   default=float("inf"))

    def view(self, now: float) -> tuple[WindowForecast, ...]:
        return tuple(w.forecast(now, self.high_water) for w in self.windows.values() if w.readings)

    def update(self, now: float) -> bool:
        """Recompute the forecasts and `conserving` (with hysteresis); True when
        `conserving` changed."""
        before = self.conserving
        forecasts = self._forecast(now)
        if not self.conserving:
            self.conserving = any(_runs_out_before_reset(f, ENTER_MARGIN) for f in forecasts)
        else:
            still = any(_runs_out_before_reset(f, -EXIT_MARGIN) for f in forecasts)
            high = any(f.utilization is not None and f.utilization >= self.high_water - HW_BAND
                       and (f.resets is None or f.resets > now) for f in forecasts)
            self.conserving = still or high
        return self.conserving != before

    def _forecast(self, now: float) -> tuple[WindowForecast, ...]:
        forecasts = self.current = self.view(now)
        self.next_reset = min((f.resets for f in forecasts if f.resets is not None and f.resets > now), default=float("inf"))
        return forecasts

    def snapshot(self) -> dict[str, object]:
        return {
            "conserving": self.conserving,
            "windows": {n: [list(r) for r in w.readings][-32:] for n, w in self.windows.items() if w.readings},
            "resets": {n: w.resets for n, w in self.windows.items() if w.resets is not None},
        }

    def restore(self, snap: object) -> None:
        if not isinstance(snap, dict):
            return
        self.conserving = bool(snap.get("conserving"))
        resets = snap.get("resets") if isinstance(snap.get("resets"), dict) else {}
        windows = snap.get("windows") if isinstance(snap.get("windows"), dict) else {}
        for name, w in self.windows.items():
            r = resets.get(name) if isinstance(resets, dict) else None
            w.resets = float(r) if isinstance(r, int | float) else w.resets
            rows = windows.get(name) if isinstance(windows, dict) else None
            if isinstance(rows, list):  # the snapshot's readings replace these (a live one: the fleet's)
                w.readings.clear()
                for row in rows:
                    if isinstance(row, list) and len(row) == 3 and all(isinstance(x, int | float) for x in row):
                        w.readings.append((float(row[0]), float(row[1]), float(row[2])))
        self._forecast(max((w.readings[-1][1] for w in self.windows.values() if w.readings), default=0.0))


def _runs_out_before_reset(f: WindowForecast, margin: float) -> bool:
    """Forecast to run out at least `margin` seconds before the reset (a negative margin:
    no later than that long after it)."""
    if f.runs_out is None:
        return False
    if f.resets is None:
        return True
    return f.runs_out <= f.resets - margin
