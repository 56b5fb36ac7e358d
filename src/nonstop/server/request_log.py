"""One record per request: the SQLite log, the metrics, the dashboard's live feed and a
console line, all fed from the same row, with secrets redacted first.

The row goes to the SQLite writer at once. What the process shows of it (the metrics, the
dashboard's feed, the console line) is done for a batch of rows together (SHOW_ROWS of
them, or those of the last SHOW_EVERY seconds), with one console write: done a request at
a time, on caches the request itself has just filled, it cost about 50 µs a request;
done a batch at a time, a few. Whatever reads them (/metrics, the dashboard,
the status) brings them up to date first (`flush()`), and so does a stop."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from nonstop.redact import may_hold_secret, redact
from nonstop.server.events import EventBus
from nonstop.server.metrics import Metrics
from nonstop.store.db import RequestRow, Store
from nonstop.wire.anthropic import token_count

log = logging.getLogger("nonstop")
RECENT = 200
# How much of an error a row keeps, and how much of it is read to redact it first.
ERROR_KEPT = 500
ERROR_READ = 8000
# Rows are shown a batch at a time: as soon as SHOW_ROWS wait, once a reply is out (its
# client, with its answer complete, waits for nothing), and at the latest SHOW_EVERY
# seconds after the first of them. A batch run by a timer can land while a request is in
# flight: batches of 0.1 s at concurrency 1 (~90 rows) put 0.4 ms on the p99.
SHOW_ROWS = 16
SHOW_EVERY = 0.1


class RequestLog:
    def __init__(self, store: Store | None, metrics: Metrics, bus: EventBus):
        self.store = store
        self.metrics = metrics
        self.bus = bus
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._seq = 0
        self._rows: list[RequestRow] = []  # recorded, not yet counted or shown
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    @property
    def recent(self) -> deque[dict[str, Any]]:
        """The last RECENT rows as the dashboard shows them, up to date."""
        self.flush()
        return self._recent

    def record(self, row: RequestRow) -> None:
        # Upstream error messages can quote what the client sent, keys included.
        if row.error:
            # Redacted, then cut: cut first, a key across the cut would keep a prefix too
            # short for the patterns to know it.
            row.error = redact(row.error[:ERROR_READ])[:ERROR_KEPT]
        if row.reason:
            row.reason = redact(row.reason)
        # The client's own words, where a key may be pasted: looked at together, as most
        # hold nothing a secret comes with.
        if may_hold_secret(f"{row.model}\n{row.client}\n{row.session_id}"):
            row.model, row.client, row.session_id = redact(row.model), redact(row.client), redact(row.session_id)
        # Counts come from servers: what a counter or SQLite cannot hold counts as unknown.
        row.input_tokens = token_count(row.input_tokens) or 0
        row.output_tokens = token_count(row.output_tokens) or 0
        if self.store is not None:
            self.store.log_request(row)
        self._rows.append(row)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # recorded outside the event loop: shown at once
            self.flush()
            return
        if self._timer is None or self._timer_loop is not loop:  # (a timer of a loop gone never fires)
            self._timer = loop.call_later(SHOW_EVERY, self.flush)
            self._timer_loop = loop

    def after_reply(self) -> None:
        """A reply has gone out whole: show the rows waiting if they make a batch."""
        if len(self._rows) >= SHOW_ROWS:
            self.flush()

    def flush(self) -> None:
        """Count, show and announce the rows recorded since the last time."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows, self._rows = self._rows, []
        if not rows:
            return
        lines = []
        console = log.isEnabledFor(logging.INFO)
        for row in rows:
            try:
                self.metrics.observe(row)
                self._seq += 1
                pub = row.public()
                pub["seq"] = self._seq
                self._recent.append(pub)
                if self.bus:
                    self.bus.publish({"type": "request", "row": pub})
                if console:
                    lines.append(_line(row))
            except Exception:  # one row that cannot be shown does not hide the others
                log.exception("showing request %s failed", row.request_id)
        if lines:
            # One record for the batch, a line per request (server/run.py's format gives
            # each its time and level). Made here rather than by log.info(), which would
            # walk the stack for the caller's file and line (the format has neither).
            log.handle(log.makeRecord(
                log.name, logging.INFO, __file__, 0, "\n".join(lines), (), None, func="record",
                extra={"redacted": True, "lines": True},  # its free-text fields were redacted by record()
            ))


def _line(row: RequestRow) -> str:
    return (f"{row.request_id} {row.path} {'stream' if row.stream else 'json'} model={row.model or '-'} "
            f"class={row.workload or '-'} backend={row.backend or '-'} outcome={row.outcome} status={row.status}"
            f"{f' reason={row.reason!r}' if row.reason else ''} ttfb={_ms(row.ttfb_ms)} total={_ms(row.total_ms)} "
            f"in={row.input_tokens} out={row.output_tokens}{f' error={row.error!r}' if row.error else ''}")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}ms"
