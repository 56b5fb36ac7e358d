"""Prometheus metrics, one registry per gateway (so tests can run several).

The metrics every request updates (its count, times and tokens) are kept as plain numbers
and become Prometheus samples when /metrics is read (`PerRequest`, a collector of the
registry): prometheus_client's own counters and histograms take a lock and walk their
buckets in Python on every update, about 11 µs a request for these. The rest (gauges,
switches) change rarely and are prometheus_client's own."""

from __future__ import annotations

import contextlib
import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from nonstop.routing.view import WindowForecast
from nonstop.store.db import RequestRow

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
STATE_VALUES = {"serving": 0, "out": 1, "probing": 2}


# "out until 14:32 UTC (subscription_limit)": the planner's words for a cloud that is out.
_OUT_UNTIL = re.compile(r"^out until .*\(([a-z_]+)\)\s*$")


def reason_label(reason: str) -> str:
    """A failover reason as a label: its kind, never a time of day or a sentence."""
    m = _OUT_UNTIL.search(reason)
    if m is not None:
        return m.group(1)
    return reason.split(":", 1)[0][:60]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        per = PerRequest()
        self.requests = per.counter("nonstop_requests", "Requests by backend and outcome", ("backend", "outcome"))
        self.failovers = per.counter("nonstop_failovers", "Requests that left the cloud, by reason", ("reason",))
        self.ttfb = per.histogram("nonstop_time_to_first_byte_seconds", "Time to first byte sent to the client", ("backend",), _LATENCY_BUCKETS)
        self.latency = per.histogram("nonstop_request_duration_seconds", "Total request time", ("backend",), _LATENCY_BUCKETS)
        self.overhead = per.histogram("nonstop_added_latency_seconds", "Time nonstop itself adds (parsing, routing, relaying the head)", (), _OVERHEAD_BUCKETS)
        self.tokens = per.counter("nonstop_tokens", "Tokens served", ("backend", "direction"))
        self.fit_saved = per.counter("nonstop_fit_tokens_saved", "Tokens the fitting tiers removed to fit a local window, by tier", ("backend", "tier"))
        self.repairs = per.counter("nonstop_tool_call_repairs", "Tool calls a local model wrote as text: repaired (by form) or left as text (not_repaired)", ("backend", "kind"))
        self.routes = per.counter("nonstop_route_decisions", "Requests by workload class, chosen backend and the rule that chose it", ("workload", "backend", "rule"))
        r.register(per)
        self.cloud_state = Gauge("nonstop_cloud_state", "Cloud state: 0 serving, 1 out, 2 probing", registry=r)
        self.cloud_out_until = Gauge("nonstop_cloud_out_until_seconds", "Epoch seconds the cloud stays out (0 when serving)", registry=r)
        self.utilization = Gauge("nonstop_quota_utilization", "Quota utilization from the cloud's headers (0..1+)", ["window"], registry=r)
        self.local_up = Gauge("nonstop_local_backend_up", "Local backend health: 1 up, 0 down", ["backend"], registry=r)
        self.switches = Counter("nonstop_switches", "Switches between cloud and local", ["to"], registry=r)
        self.account_state = Gauge("nonstop_account_cloud_state", "Cloud state per account: 0 serving, 1 out, 2 probing", ["account"], registry=r)
        self.account_until = Gauge("nonstop_account_cloud_out_until_seconds", "Epoch seconds the cloud stays out, per account (0 when serving)", ["account"], registry=r)
        self.account_utilization = Gauge("nonstop_account_quota_utilization", "Quota utilization per account and window (0..1+)", ["account", "window"], registry=r)
        self.conserving = Gauge("nonstop_quota_conserving", "1 while a quota window is forecast to run out before it resets", registry=r)
        self.runs_out = Gauge("nonstop_quota_runs_out_seconds", "Epoch seconds a quota window is forecast to run out (0: not before its reset)", ["window"], registry=r)

    def observe(self, row: RequestRow) -> None:
        backend = row.backend or "none"
        self.requests.inc((backend, row.outcome))
        if row.reason:
            self.failovers.inc((reason_label(row.reason),))
        steps = row.route.get("steps") if row.route else None
        if steps and row.backend:
            rule = next((s["rule"] for s in steps if s["target"] == row.backend), "")
            self.routes.inc((row.workload or "-", backend, rule or "-"))
        if row.notes:
            for t in row.notes.get("fit", ()):
                if t["before"] > t["after"]:
                    self.fit_saved.inc((backend, t["tier"]), t["before"] - t["after"])
            for rep in row.notes.get("repairs", ()):
                self.repairs.inc((backend, rep["kind"]))
        key = (backend,)
        if row.ttfb_ms is not None:
            self.ttfb.observe(key, row.ttfb_ms / 1000)
        if row.total_ms is not None:
            self.latency.observe(key, row.total_ms / 1000)
        if row.overhead_ms is not None:
            self.overhead.observe((), row.overhead_ms / 1000)
        if row.input_tokens:
            self.tokens.inc((backend, "input"), row.input_tokens)
        if row.output_tokens:
            self.tokens.inc((backend, "output"), row.output_tokens)

    def set_cloud(self, state: str, until: float, five: float | None, seven: float | None) -> None:
        self.cloud_state.set(STATE_VALUES.get(state, 0))
        self.cloud_out_until.set(until if state != "serving" else 0)
        if five is not None:
            self.utilization.labels("5h").set(five)
        if seven is not None:
            self.utilization.labels("7d").set(seven)

    def set_account(self, account: str, state: str, until: float, five: float | None, seven: float | None) -> None:
        self.account_state.labels(account).set(STATE_VALUES.get(state, 0))
        self.account_until.labels(account).set(until if state != "serving" else 0)
        if five is not None:
            self.account_utilization.labels(account, "5h").set(five)
        if seven is not None:
            self.account_utilization.labels(account, "7d").set(seven)

    def forget_account(self, account: str) -> None:
        """An account nonstop let go of: its series go too."""
        for gauge, labels in ((self.account_state, (account,)), (self.account_until, (account,)),
                              (self.account_utilization, (account, "5h")), (self.account_utilization, (account, "7d"))):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def set_forecast(self, conserving: bool, windows: Sequence[WindowForecast]) -> None:
        self.conserving.set(1 if conserving else 0)
        for w in windows:
            self.runs_out.labels(w.window).set(w.runs_out or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# Label values come from a few backends, outcomes and rules; past this many series a
# metric takes no new ones (their requests are still counted in the others).
MAX_SERIES = 4096


class _Counter:
    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        if key in values:
            values[key] += amount
        elif len(values) < MAX_SERIES:
            values[key] = amount

    def family(self) -> Metric:
        f = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            f.add_metric(key, value)
        return f


class _Histogram:
    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: Sequence[float]) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, tuple(bounds)
        # Per label values: the count in each bucket (not cumulative; the last is +Inf), and the sum.
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        got = self.series.get(key)
        if got is None:
            if len(self.series) >= MAX_SERIES:
                return
            got = self.series[key] = ([0] * (len(self.bounds) + 1), [0.0])
        got[0][bisect_left(self.bounds, value)] += 1  # le: a value on a bound is in its bucket
        got[1][0] += value

    def family(self) -> Metric:
        f = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        les = [*(_le(b) for b in self.bounds), "+Inf"]
        for key, (counts, total) in self.series.items():
            running, buckets = 0, []
            for le, n in zip(les, counts, strict=True):
                running += n
                buckets.append((le, running))
            f.add_metric(key, buckets, total[0])
        return f


def _le(bound: float) -> str:
    return repr(float(bound))  # as prometheus_client writes a bucket's bound


class PerRequest(Collector):
    """The metrics each request updates, as plain numbers, made into samples when read."""

    def __init__(self) -> None:
        self._metrics: list[_Counter | _Histogram] = []

    def counter(self, name: str, doc: str, labels: tuple[str, ...]) -> _Counter:
        c = _Counter(name, doc, labels)
        self._metrics.append(c)
        return c

    def histogram(self, name: str, doc: str, labels: tuple[str, ...], bounds: Sequence[float]) -> _Histogram:
        h = _Histogram(name, doc, labels, bounds)
        self._metrics.append(h)
        return h

    def collect(self) -> Iterator[Metric]:
        for m in self._metrics:
            yield m.family()
