"""Candidate fixes for nonstop's hot path, measured by `run.py --variants`.

Benchmark-only: run.py starts extra nonstop processes with this folder on PYTHONPATH and
NONSTOP_CANDIDATES=<comma list>; Python imports this module at start-up and patches the
named functions before nonstop serves. nonstop itself is not changed. Each patch is the
smallest version of a change proposed in docs/performance.md:

  batch_log        Store.log_request: hand rows to the writer thread in bursts every
                   100 ms instead of one at a time (fewer thread wake-ups and GIL
                   hand-offs; one transaction per burst).
  quiet_log        the per-request log line at DEBUG instead of INFO (it is formatted and
                   run through the redaction regexes on every request).
  fast_public      RequestRow.public() without dataclasses.asdict (asdict deep-copies).
  release_request  App.messages: drop the request body and its parsed form once a reply
                   is chosen, so that an open stream does not keep ~50 KB of JSON and its
                   Python objects alive while it relays.
"""

from __future__ import annotations

import os

FLAGS = set(filter(None, os.environ.get("NONSTOP_CANDIDATES", "").split(",")))


def _batch_log() -> None:
    import asyncio

    from nonstop.store import db

    def log_request(self, row) -> None:
        buf = self.__dict__.setdefault("_burst", [])
        buf.append(row)
        if len(buf) == 1:
            asyncio.get_running_loop().call_later(0.1, self._flush_burst)

    def _flush_burst(self) -> None:
        buf, self._burst = self._burst, []
        for row in buf:
            self._q.put(("request", row))

    db.Store.log_request = log_request
    db.Store._flush_burst = _flush_burst


def _quiet_log() -> None:
    import logging

    from nonstop.server import run

    original = run.setup_logging

    def setup_logging(level: int = logging.INFO) -> None:
        original(level)
        logging.getLogger("nonstop").setLevel(logging.WARNING)

    run.setup_logging = setup_logging


def _fast_public() -> None:
    import dataclasses

    from nonstop.store import db

    names = tuple(f.name for f in dataclasses.fields(db.RequestRow) if f.name not in ("request_body", "response_body"))

    def public(self) -> dict:
        return {n: getattr(self, n) for n in names}

    db.RequestRow.public = public


def _release_request() -> None:
    import inspect
    import sys
    import time

    import orjson

    from nonstop.server import app
    from nonstop.server.asgi import send_bytes
    from nonstop.wire.errors import anthropic_error

    source = inspect.getsource(app.App.messages)
    expected = ("clean_history_for_cloud", "AnthropicWriter()", "continue_locally")
    if not all(marker in source for marker in expected) or source.count("await") != 4:
        print("candidates: App.messages has changed; release_request not applied", file=sys.stderr)
        return

    original = app.App.messages

    async def messages(self, scope, receive, send) -> None:
        recovery = getattr(self.cfg, "recovery", None)
        if recovery is not None and recovery.continue_locally:
            # Mid-stream recovery needs the request while the reply streams.
            await original(self, scope, receive, send)
            return
        got = await self._read_json(scope, receive, send)
        if got is None:
            return
        body, req = got
        del got
        problem = app.validate_messages_request(req)
        if problem:
            await send_bytes(send, 400, anthropic_error(400, problem, "invalid_request_error"))
            return
        ctx = self._context(scope, body, req, "/v1/messages")
        del body
        cloud_body = None
        cleaned = app.clean_history_for_cloud(req)
        if cleaned is not None:
            cloud_body = orjson.dumps(cleaned)
        del cleaned
        ctx.row.overhead_ms = (time.perf_counter() - ctx.t0) * 1000
        self.gw.inflight += 1
        try:
            outcome = await self.gw.run(ctx, cloud_body=cloud_body)
            # A reply is chosen and nothing needs the request again: let it go while
            # the reply streams.
            del cloud_body, req
            ctx.body, ctx.req = b"", {}
            await self._commit(ctx, outcome, receive, send, app.AnthropicWriter())
        finally:
            self.gw.inflight -= 1

    app.App.messages = messages


_PATCHES = {"batch_log": _batch_log, "quiet_log": _quiet_log, "fast_public": _fast_public,
            "release_request": _release_request}

for _flag in sorted(FLAGS):
    _PATCHES[_flag]()
