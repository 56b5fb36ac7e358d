"""The cloud's state: serving, out until a deadline, or being probed.

A pure state machine with an injected clock. It never does I/O: the owner persists
`snapshot()` when `on_change` fires and restores it at start-up. Asking never changes
it: `view()` reports whether a probe is due, and `begin_probe()` starts one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nonstop.config import CloudConfig
from nonstop.routing.classify import LONGEST_OUT, FailureKind, Verdict, parse_epoch, parse_float
from nonstop.routing.forecast import QuotaForecast
from nonstop.routing.view import CloudState, CloudView

_H = "anthropic-ratelimit-unified-"

# Consecutive blips (overloaded, 5xx) before the cloud is skipped for error_cooldown.
BREAKER_THRESHOLD = 3
# A probe that has not reported back after this long no longer blocks the next one.
PROBE_TIMEOUT = 120.0


@dataclass
class Utilization:
    status: str = ""
    five_hour: float | None = None
    seven_day: float | None = None
    five_hour_reset: float | None = None
    seven_day_reset: float | None = None
    fallback_percentage: float | None = None
    overage_status: str = ""
    updated: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "5h": self.five_hour,
            "7d": self.seven_day,
            "5h_reset": self.five_hour_reset,
            "7d_reset": self.seven_day_reset,
            "fallback_percentage": self.fallback_percentage,
            "overage_status": self.overage_status,
            "updated": self.updated,
        }


@dataclass
class QuotaState:
    cfg: CloudConfig
    clock: Callable[[], float] = time.time
    on_change: Callable[[QuotaState, str], None] | None = None
    state: CloudState = CloudState.SERVING
    until: float = 0.0
    reason: str = ""
    detail: str = ""
    since: float = 0.0
    probe_started: float = 0.0
    blips: int = 0
    # When this state was last decided (a transition or a new deadline): a fleet keeps the
    # newer of two views.
    observed: float = 0.0
    # When the request whose outcome last moved the state was sent: an outcome of a
    # request sent before it is older news and moves nothing (a slow success of a
    # request sent before the limit does not bring the cloud back).
    basis: float = 0.0
    utilization: Utilization = field(default_factory=Utilization)
    forecast: QuotaForecast = field(default_factory=QuotaForecast)
    _serving_view: CloudView | None = field(default=None, init=False, repr=False, compare=False)
    # The quota headers last read in full, and until when the same headers would change
    # nothing but `updated` (see record_headers; restore() lets it go).
    _settled: tuple[tuple[str | None, ...], float] | None = field(default=None, init=False, repr=False, compare=False)

    # --- what the planner sees ---------------------------------------------------------

    def view(self) -> CloudView:
        # While the cloud serves, the view depends on no clock but the next reset of a
        # window the forecast was made for: the last one is reused while what it shows is
        # unchanged. (A window that reset is forecast again: conserving for it ends.)
        last, f = self._serving_view, self.forecast
        if f.next_reset <= (now := self.clock()) and f.update(now) and self.on_change is not None:
            self.on_change(self, "")
        if (self.state is CloudState.SERVING and last is not None and last.windows is f.current
                and last.conserving == f.conserving and last.until == self.until and last.reason == self.reason):
            return last
        now = self.clock()
        in_flight = self.state is CloudState.PROBING and now - self.probe_started < PROBE_TIMEOUT
        v = CloudView(
            state=CloudState.OUT if self.state is CloudState.PROBING and not in_flight else self.state,
            until=self.until,
            reason=self.reason,
            probe_due=self.state is not CloudState.SERVING and not in_flight and now >= self.until,
            probe_in_flight=in_flight,
            conserving=self.forecast.conserving,
            windows=self.forecast.current,
        )
        if v.state is CloudState.SERVING:
            self._serving_view = v
        return v

    # --- explicit steps ----------------------------------------------------------------

    def begin_probe(self) -> None:
        """This request checks whether the cloud is back; others stay local meanwhile."""
        self.probe_started = self.clock()
        self._set(CloudState.PROBING, self.until, self.reason, self.detail, "deadline passed; probing the cloud")

    def await_probe(self) -> None:
        """Another instance is checking whether the cloud is back: requests stay local
        until its answer reaches this one through the fleet (or PROBE_TIMEOUT passes).
        Kept to this instance and stamped with no new time: announced, it would be newer
        than a prober's answer given just before it, and the fleet would keep waiting for
        an answer it has already had."""
        if self.state is CloudState.SERVING:
            return
        self.probe_started = self.clock()
        self.state = CloudState.PROBING

    def probe_now(self) -> None:
        """Let the next request check the cloud now instead of at the deadline."""
        if self.state is CloudState.SERVING:
            return
        self.probe_started = 0.0
        self._set(CloudState.OUT, min(self.until, self.clock()), self.reason, self.detail, "")

    # --- what happened ---------------------------------------------------------------

    def record_success(self, sent: float | None = None) -> None:
        """The cloud answered a request sent at `sent` (None: a probe, or just now)."""
        if self.state is not CloudState.SERVING:
            if sent is not None and sent < self.basis:
                return  # sent before the "no" that took the cloud out: says nothing since
            self.basis = self.clock() if sent is None else sent
            self._set(CloudState.SERVING, 0.0, "", "", "the cloud answered; back on the cloud")
        self.blips = 0

    def record_failure(self, verdict: Verdict, sent: float | None = None) -> None:
        """The cloud refused (or failed) a request sent at `sent` (None: a probe, or just now)."""
        now = self.clock()
        if sent is not None and sent < self.basis and self.state is CloudState.SERVING:
            return  # the cloud answered a request sent after this one: an old "no"
        kind = verdict.kind
        if kind is FailureKind.CLIENT_ERROR:
            # The request was refused for its shape: nothing learned about capacity, so
            # the next request checks again (no cooldown).
            if self.state is CloudState.PROBING:
                self._set(CloudState.OUT, now, self.reason, self.detail, "probe inconclusive")
            return
        if kind is FailureKind.AUTH:
            if self.state is CloudState.PROBING:
                self._set(CloudState.OUT, now + self.cfg.error_cooldown, self.reason, self.detail, "probe inconclusive")
            return
        if kind in (FailureKind.OVERLOADED, FailureKind.SERVER_ERROR, FailureKind.BAD_RESPONSE):
            self.blips += 1
            if self.blips < BREAKER_THRESHOLD and self.state is CloudState.SERVING:
                return
            until = now + self.cfg.error_cooldown
        elif kind in (FailureKind.NETWORK, FailureKind.TIMEOUT):
            until = now + self.cfg.error_cooldown
        elif verdict.until is not None:
            until = verdict.until
        elif kind is FailureKind.CREDIT_EXHAUSTED:
            until = now + self.cfg.credit_recheck
        else:
            until = now + self.cfg.default_cooldown
        until = min(until, now + LONGEST_OUT)
        # The later deadline wins: a short throttle never shortens a usage-limit wait.
        if self.state is CloudState.OUT and self.until > until:
            self._set(CloudState.OUT, self.until, self.reason, self.detail, "")
            return
        if self.state is not CloudState.OUT:
            self.basis = max(self.basis, now if sent is None else sent)
        self._set(CloudState.OUT, until, kind.value, verdict.detail, "cloud out")

    def record_headers(self, headers: Mapping[str, str]) -> None:
        """Quota headers on any cloud response (success or not).

        The cloud sends them on every reply, and they change far less often: the same
        headers as the last ones read, before the forecast would take the same values
        again (SAME_VALUE_EVERY), would set every field to what it holds and add no
        reading. Then only `updated` moves, and they are not parsed again. Only this
        and restore() change the utilization and the forecast's readings."""
        status = headers.get(_H + "status")
        five = headers.get(_H + "5h-utilization")
        seven = headers.get(_H + "7d-utilization")
        if status is None and five is None and seven is None:
            return
        five_reset, seven_reset = headers.get(_H + "5h-reset"), headers.get(_H + "7d-reset")
        fb, overage = headers.get(_H + "fallback-percentage"), headers.get(_H + "overage-status")
        raw = (status, five, seven, five_reset, seven_reset, fb, overage)
        u = self.utilization
        now = self.clock()
        settled, f = self._settled, self.forecast
        if settled is not None and settled[0] == raw and now < settled[1]:
            u.updated = now
            return
        u.status = status or u.status
        u.five_hour = parse_float(five) if five is not None else u.five_hour
        u.seven_day = parse_float(seven) if seven is not None else u.seven_day
        u.five_hour_reset = parse_epoch(five_reset) or u.five_hour_reset
        u.seven_day_reset = parse_epoch(seven_reset) or u.seven_day_reset
        u.fallback_percentage = parse_float(fb) if fb is not None else u.fallback_percentage
        u.overage_status = overage if overage is not None else u.overage_status
        u.updated = now
        added = f.record(now, "5h", u.five_hour, u.five_hour_reset)
        added = f.record(now, "7d", u.seven_day, u.seven_day_reset) or added
        self._settled = (raw, f.quiet_until())
        if added and f.update(now) and self.on_change is not None:
            self.on_change(self, "")

    # --- persistence -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "until": self.until,
            "reason": self.reason,
            "detail": self.detail,
            "since": self.since,
            "observed": self.observed,
            "utilization": self.utilization.as_dict(),
            "forecast": self.forecast.snapshot(),
        }

    def restore(self, snap: Mapping[str, Any], *, live: bool = False) -> bool:
        """Take a snapshot's state: from disk at start-up, or (`live`) from another
        instance of the fleet right now. False, and nothing changed, when it holds no
        state that can be read."""
        if not isinstance(snap, Mapping):
            return False
        try:
            state = CloudState(snap.get("state", "serving"))
            until = float(snap.get("until") or 0.0)
        except (ValueError, TypeError):
            return False
        if until != until:  # NaN: written by something else; an infinite one is capped below
            until = 0.0
        until = min(until, self.clock() + LONGEST_OUT)
        if state is CloudState.PROBING:
            if live:  # another instance is probing now: wait for its answer
                self.probe_started = self.clock()
            else:  # a probe in flight when the process died is over: one new request probes
                state = CloudState.OUT
        self.state, self.until = state, until
        self._settled = None  # the utilization and the readings are the snapshot's now
        self.reason = str(snap.get("reason") or "")
        self.detail = str(snap.get("detail") or "")
        self.since = _number(snap.get("since")) or 0.0
        self.observed = _number(snap.get("observed")) or self.since
        self.basis = max(self.basis, self.observed)  # what was decided then outranks requests sent before
        u = snap.get("utilization") or {}
        if isinstance(u, Mapping):
            self.utilization = Utilization(
                status=str(u.get("status") or ""),
                five_hour=_number(u.get("5h")),
                seven_day=_number(u.get("7d")),
                five_hour_reset=_number(u.get("5h_reset")),
                seven_day_reset=_number(u.get("7d_reset")),
                fallback_percentage=_number(u.get("fallback_percentage")),
                overage_status=str(u.get("overage_status") or ""),
                updated=_number(u.get("updated")) or 0.0,
            )
        self.forecast.restore(snap.get("forecast"))
        return True

    def as_dict(self) -> dict[str, Any]:
        d = self.snapshot()
        d["now"] = self.clock()
        return d

    def _set(self, state: CloudState, until: float, reason: str, detail: str, why: str) -> None:
        changed = state is not self.state
        if changed or until != self.until:
            self.observed = self.clock()
        self.state, self.until, self.reason, self.detail = state, until, reason, detail
        if changed:
            self.since = self.observed
        if self.on_change is not None:
            self.on_change(self, why if changed else "")


def _number(value: Any) -> float | None:
    """A number from a snapshot (written by this process, an older one, or another
    instance of the fleet): anything else, or a non-finite one, is none."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
