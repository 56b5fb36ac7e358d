"""server/metrics: what /metrics says about the requests served, in Prometheus' format."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nonstop.server import metrics as metrics_module
from nonstop.server.metrics import Metrics
from nonstop.store.db import RequestRow


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _row(backend: str = "cloud", outcome: str = "ok", ttfb_ms: float | None = 1.0, **kw) -> RequestRow:
    return RequestRow(ts=1.0, request_id="r", backend=backend, outcome=outcome, ttfb_ms=ttfb_ms,
                      total_ms=ttfb_ms, **kw)


def test_requests_are_counted_by_backend_and_outcome_with_failovers_tokens_and_routes() -> None:
    m = Metrics()
    m.observe(_row(input_tokens=100, output_tokens=7, workload="code",
                   route={"steps": [{"target": "cloud", "rule": "default"}]}))
    m.observe(_row())
    m.observe(_row("llama", reason="subscription_limit: the 5-hour limit", input_tokens=5))
    m.observe(_row("", "error", None))
    s = _samples(m)
    assert s[("nonstop_requests_total", (("backend", "cloud"), ("outcome", "ok")))] == 2
    assert s[("nonstop_requests_total", (("backend", "llama"), ("outcome", "ok")))] == 1
    assert s[("nonstop_requests_total", (("backend", "none"), ("outcome", "error")))] == 1
    assert s[("nonstop_failovers_total", (("reason", "subscription_limit"),))] == 1
    assert s[("nonstop_tokens_total", (("backend", "cloud"), ("direction", "input")))] == 100
    assert s[("nonstop_tokens_total", (("backend", "cloud"), ("direction", "output")))] == 7
    assert s[("nonstop_tokens_total", (("backend", "llama"), ("direction", "input")))] == 5
    assert s[("nonstop_route_decisions_total", (("backend", "cloud"), ("rule", "default"), ("workload", "code")))] == 1


def test_times_go_into_cumulative_buckets_a_time_on_a_bound_in_that_bound() -> None:
    m = Metrics()
    for ms in (5.0, 7.0, 400_000.0):  # 5 ms is the first bound; 400 s is past the last
        m.observe(_row(ttfb_ms=ms))
    s = _samples(m)

    def bucket(le: str) -> float:
        return s[("nonstop_time_to_first_byte_seconds_bucket", (("backend", "cloud"), ("le", le)))]

    assert bucket("0.005") == 1 and bucket("0.01") == 2 and bucket("300.0") == 2 and bucket("+Inf") == 3
    assert s[("nonstop_time_to_first_byte_seconds_count", (("backend", "cloud"),))] == 3
    assert s[("nonstop_time_to_first_byte_seconds_sum", (("backend", "cloud"),))] == pytest.approx(400.012)


def test_the_time_nonstop_adds_has_one_series() -> None:
    m = Metrics()
    m.observe(_row(overhead_ms=0.2))
    m.observe(_row(overhead_ms=30.0))
    s = _samples(m)
    assert s[("nonstop_added_latency_seconds_bucket", (("le", "0.00025"),))] == 1
    assert s[("nonstop_added_latency_seconds_count", ())] == 2


def test_fitting_and_repairs_are_counted_per_backend() -> None:
    m = Metrics()
    m.observe(_row("llama", notes={"fit": [{"tier": "tool_results", "before": 900, "after": 400},
                                           {"tier": "history", "before": 10, "after": 10}],
                                   "repairs": [{"kind": "xml"}, {"kind": "not_repaired"}]}))
    s = _samples(m)
    assert s[("nonstop_fit_tokens_saved_total", (("backend", "llama"), ("tier", "tool_results")))] == 500
    assert ("nonstop_fit_tokens_saved_total", (("backend", "llama"), ("tier", "history"))) not in s
    assert s[("nonstop_tool_call_repairs_total", (("backend", "llama"), ("kind", "xml")))] == 1


def test_a_metric_takes_no_new_series_past_its_bound_and_still_counts_the_known_ones(monkeypatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_SERIES", 3)
    m = Metrics()
    for i in range(10):
        m.observe(_row(f"b{i}"))
    m.observe(_row("b0"))
    s = _samples(m)
    counted = {dict(labels)["backend"]: v for (name, labels), v in s.items() if name == "nonstop_requests_total"}
    assert counted == {"b0": 2, "b1": 1, "b2": 1}


def test_the_failover_label_is_the_kind_of_failure() -> None:
    from nonstop.server.metrics import reason_label

    assert reason_label("out until 14:32 UTC (rate_limited)") == "rate_limited"
    assert reason_label("subscription_limit: usage limit (five_hour)") == "subscription_limit"
    assert reason_label("overloaded") == "overloaded"
