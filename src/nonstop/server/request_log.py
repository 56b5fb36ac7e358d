"""One record per request: the SQLite log, the metrics, the dashboard's live feed and a
console line, all fed from the same row, with secrets redacted first."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from nonstop.redact import redact
from nonstop.server.events import EventBus
from nonstop.server.metrics import Metrics
from nonstop.store.db import RequestRow, Store
from nonstop.wire.anthropic import token_count

log = logging.getLogger("nonstop")
RECENT = 200
# How much of an error a row keeps, and how much of it is read to redact it first.
ERROR_KEPT = 500
ERROR_READ = 8000


class RequestLog:
    def __init__(self, store: Store | None, metrics: Metrics, bus: EventBus):
        self.store = store
        self.metrics = metrics
        self.bus = bus
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._seq = 0

    def record(self, row: RequestRow) -> None:
        # Upstream error messages can quote what the client sent, keys included.
        if row.error:
            # Redacted, then cut: cut first, a key across the cut would keep a prefix too
            # short for the patterns to know it.
            row.error = redact(row.error[:ERROR_READ])[:ERROR_KEPT]
        if row.reason:
            row.reason = redact(row.reason)
        for field in ("model", "client", "session_id"):  # the client's own words: a key pasted there
            value = getattr(row, field)
            if value and ("sk-" in value or "earer" in value or "oken" in value):
                setattr(row, field, redact(value))
        self._seq += 1
        # Counts come from servers: what a counter or SQLite cannot hold counts as unknown.
        row.input_tokens = token_count(row.input_tokens) or 0
        row.output_tokens = token_count(row.output_tokens) or 0
        self.metrics.observe(row)
        if self.store is not None:
            self.store.log_request(row)
        pub = row.public()
        pub["seq"] = self._seq
        self.recent.append(pub)
        if self.bus:
            self.bus.publish({"type": "request", "row": pub})
        if log.isEnabledFor(logging.INFO):
            # The record is made here rather than by log.info(), which would walk the
            # stack for the caller's file and line on every request (the format has neither).
            log.handle(log.makeRecord(
                log.name, logging.INFO, __file__, 0,
                "%s %s %s model=%s class=%s backend=%s outcome=%s status=%d%s ttfb=%s total=%s in=%d out=%d%s",
                (row.request_id, row.path, "stream" if row.stream else "json", row.model or "-", row.workload or "-",
                 row.backend or "-", row.outcome, row.status, f" reason={row.reason!r}" if row.reason else "",
                 _ms(row.ttfb_ms), _ms(row.total_ms), row.input_tokens, row.output_tokens,
                 f" error={row.error!r}" if row.error else ""),
                None, func="record",
                extra={"redacted": True},  # its free-text fields were redacted above
            ))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}ms"
