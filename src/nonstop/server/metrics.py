"""Prometheus metrics, one registry per gateway (so tests can run several)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from nonstop.routing.view import WindowForecast
from nonstop.store.db import RequestRow

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
STATE_VALUES = {"serving": 0, "out": 1, "probing": 2}


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("nonstop_requests", "Requests by backend and outcome", ["backend", "outcome"], registry=r)
        self.failovers = Counter("nonstop_failovers", "Requests that left the cloud, by reason", ["reason"], registry=r)
        self.ttfb = Histogram("nonstop_time_to_first_byte_seconds", "Time to first byte sent to the client", ["backend"], buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("nonstop_request_duration_seconds", "Total request time", ["backend"], buckets=_LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("nonstop_added_latency_seconds", "Time nonstop itself adds (parsing, routing, relaying the head)", buckets=_OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter("nonstop_tokens", "Tokens served", ["backend", "direction"], registry=r)
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
        self.fit_saved = Counter("nonstop_fit_tokens_saved", "Tokens the fitting tiers removed to fit a local window, by tier", ["backend", "tier"], registry=r)
        self.repairs = Counter("nonstop_tool_call_repairs", "Tool calls a local model wrote as text: repaired (by form) or left as text (not_repaired)", ["backend", "kind"], registry=r)
        self.routes = Counter("nonstop_route_decisions", "Requests by workload class, chosen backend and the rule that chose it", ["workload", "backend", "rule"], registry=r)
        # The labelled children each request updates, looked up once per label values:
        # prometheus_client's labels() takes a lock and converts every value each time.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*values)
            if len(self._children) < 4096:  # label values come from a few backends and rules
                self._children[key] = child
        return child

    def observe(self, row: RequestRow) -> None:
        backend = row.backend or "none"
        child = self._child
        child(self.requests, backend, row.outcome).inc()
        if row.reason:
            child(self.failovers, row.reason.split(":", 1)[0]).inc()
        steps = row.route.get("steps") if row.route else None
        if steps and row.backend:
            rule = next((s["rule"] for s in steps if s["target"] == row.backend), "")
            child(self.routes, row.workload or "-", backend, rule or "-").inc()
        if row.notes:
            for t in row.notes.get("fit", ()):
                if t["before"] > t["after"]:
                    child(self.fit_saved, backend, t["tier"]).inc(t["before"] - t["after"])
            for rep in row.notes.get("repairs", ()):
                child(self.repairs, backend, rep["kind"]).inc()
        if row.ttfb_ms is not None:
            child(self.ttfb, backend).observe(row.ttfb_ms / 1000)
        if row.total_ms is not None:
            child(self.latency, backend).observe(row.total_ms / 1000)
        if row.overhead_ms is not None:
            self.overhead.observe(row.overhead_ms / 1000)
        if row.input_tokens:
            child(self.tokens, backend, "input").inc(row.input_tokens)
        if row.output_tokens:
            child(self.tokens, backend, "output").inc(row.output_tokens)

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

    def set_forecast(self, conserving: bool, windows: Sequence[WindowForecast]) -> None:
        self.conserving.set(1 if conserving else 0)
        for w in windows:
            self.runs_out.labels(w.window).set(w.runs_out or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
