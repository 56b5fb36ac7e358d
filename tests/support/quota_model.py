"""A subscription's usage windows, as the simulated cloud meters them.

Two windows, 5 hours and 7 days, each with a token budget. Every answered request adds
its weighted tokens to both; utilization is used / budget. A window starts with the
first request after the previous one ended (as subscription windows do) and resets when
its time is up. A request that finds a window full is refused with the documented
`429 rate_limit_error` and the unified headers naming the claim and the reset.

Used by the fake cloud's "metered" mode (tests/support/fake_cloud.py) and, in process,
by the routing trace runner (benchmarks/routing_trace.py). Pure: the caller passes the time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FIVE_HOURS = 5 * 3600.0
SEVEN_DAYS = 7 * 86400.0
# Output costs more than input; cache reads almost nothing (a rough shape of real pricing).
OUTPUT_WEIGHT = 5.0


@dataclass
class Window:
    name: str
    length: float
    budget: float
    start: float | None = None
    used: float = 0.0

    def roll(self, now: float) -> None:
        if self.start is not None and now >= self.start + self.length:
            self.start, self.used = None, 0.0

    def resets(self, now: float) -> float:
        return (self.start if self.start is not None else now) + self.length

    def utilization(self) -> float:
        return self.used / self.budget if self.budget else 0.0


@dataclass
class QuotaModel:
    five_hour_budget: float = 2_000_000.0
    seven_day_budget: float = 30_000_000.0
    windows: list[Window] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.windows:
            self.windows = [Window("five_hour", FIVE_HOURS, self.five_hour_budget),
                            Window("seven_day", SEVEN_DAYS, self.seven_day_budget)]

    def full(self, now: float) -> Window | None:
        """The window that refuses a request now, if any."""
        for w in self.windows:
            w.roll(now)
        return next((w for w in self.windows if w.utilization() >= 1.0), None)

    def charge(self, now: float, input_tokens: int, output_tokens: int) -> None:
        cost = input_tokens + OUTPUT_WEIGHT * output_tokens
        for w in self.windows:
            w.roll(now)
            if w.start is None:
                w.start = now
            w.used += cost

    def headers(self, now: float) -> dict[str, str]:
        """The anthropic-ratelimit-unified-* headers a reply carries at `now`."""
        five, seven = self.windows
        full = self.full(now)
        worst = max(five.utilization(), seven.utilization())
        status = "rejected" if full else ("allowed_warning" if worst >= 0.8 else "allowed")
        h = {
            "anthropic-ratelimit-unified-status": status,
            "anthropic-ratelimit-unified-5h-utilization": f"{five.utilization():.4f}",
            "anthropic-ratelimit-unified-7d-utilization": f"{seven.utilization():.4f}",
            "anthropic-ratelimit-unified-5h-reset": str(int(five.resets(now))),
            "anthropic-ratelimit-unified-7d-reset": str(int(seven.resets(now))),
        }
        if full is not None:
            h["anthropic-ratelimit-unified-representative-claim"] = full.name
            h["anthropic-ratelimit-unified-reset"] = str(int(full.resets(now)))
            h["retry-after"] = str(max(1, int(full.resets(now) - now)))
        return h
