"""Committing a reply to the client: the head with nonstop's own headers, the body as it
comes, the client going away mid-stream, shutdown, and one request-log row at the end.

The pipeline has decided everything before this runs. From the first byte on, an error
can no longer become a different response: a stream that cannot finish ends with a
well-formed error event in the client's protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nonstop.backends.base import Reply, Usage
from nonstop.config import Config
from nonstop.redact import redact
from nonstop.server.asgi import Receive, Send
from nonstop.server.pipeline import Outcome, RequestContext
from nonstop.server.request_log import RequestLog
from nonstop.server.writers import Writer
from nonstop.store.db import RequestRow

log = logging.getLogger("nonstop")


def safe_header(value: str) -> bytes:
    return redact(value).encode("ascii", "replace")[:300].replace(b"\r", b" ").replace(b"\n", b" ")


# x-nonstop-route for the routes seen before: the rules' own words and backend names, a
# few distinct ones, so each is redacted once rather than on every request.
_ROUTES: dict[str, bytes] = {}
_MAX_ROUTES = 1024


def route_header(route: str) -> bytes:
    value = _ROUTES.get(route)
    if value is None:
        value = safe_header(route)
        if len(_ROUTES) < _MAX_ROUTES:
            _ROUTES[route] = value
    return value


def stored_body(data: bytes) -> str:
    """A body for the opt-in request log: capped by the caller, secrets redacted."""
    return redact(data.decode("utf-8", "replace"))


def changes_of(u: Usage, row: RequestRow) -> list[str]:
    """What nonstop changed for a local model (fitting, repaired calls): kept in the
    row's notes, and said in words for the log."""
    notes: dict[str, Any] = {}
    words: list[str] = []
    if u.fitted is not None and u.fitted.tiers:
        notes["fit"] = [{"tier": t.tier, "before": t.before, "after": t.after} for t in u.fitted.tiers]
        saved = ", ".join(f"{t.tier} -{t.before - t.after}" for t in u.fitted.tiers if t.before > t.after)
        words.append(f"fitted to the local window ({saved} tokens)")
    if u.repairs:
        notes["repairs"] = [{"kind": r.kind, "tool": r.tool, "changes": list(r.changes)} for r in u.repairs]
        made = [r for r in u.repairs if r.repaired]
        if made:
            words.append("repaired " + ", ".join(f"{r.kind} call of {r.tool} ({'; '.join(r.changes)})" for r in made))
        if len(made) < len(u.repairs):
            words.append(f"{len(u.repairs) - len(made)} tool call(s) in text left as text")
    row.notes = notes or None
    return words


async def end_body(send: Send, body: bytes = b"") -> None:
    """The last body message of a reply that went out whole: empty, or the body's last
    chunk when it was held to go out with the end (see Usage.final)."""
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _no_chunks() -> AsyncIterator[bytes]:
    """The body of a reply whose client has already gone."""
    return
    yield b""


class Relay:
    def __init__(self, cfg: Config, request_log: RequestLog):
        self.cfg = cfg
        self.request_log = request_log

    async def commit(self, ctx: RequestContext, outcome: Outcome, receive: Receive, send: Send, writer: Writer) -> None:
        row = ctx.row
        reply = outcome.reply
        row.reason = outcome.reason if (reply is None or reply.backend != "cloud") else ""
        if outcome.plan is not None:
            row.workload = outcome.plan.workload.value
        t_head = time.perf_counter()
        route = route_header(outcome.route())
        # The row is recorded as soon as the response's last message is written, with no
        # await between the two: the event loop takes nothing else first, so a client that
        # reads the log as soon as its answer is complete finds the request there, and the
        # answer does not wait for its record.
        last: Callable[[], Awaitable[None]] | None = None
        try:
            if reply is None:
                row.backend, row.status, row.outcome, row.error = "", outcome.status, "error", outcome.message
                extra = [(b"x-nonstop-route", route)]
                if outcome.retry_after is not None:
                    extra.append((b"retry-after", b"%d" % outcome.retry_after))
                last = functools.partial(writer.error, send, outcome.status, outcome.message, outcome.etype,
                                         request_id=row.request_id, extra=extra)
                row.ttfb_ms = (time.perf_counter() - ctx.t0) * 1000
                return
            row.backend, row.status = reply.backend, reply.status
            extra = [(b"x-nonstop-backend", reply.backend.encode()), (b"x-nonstop-route", route)]
            if row.reason:
                extra.append((b"x-nonstop-failover", safe_header(row.reason)))
            gone, owed = await self._pump(ctx, reply, writer, extra, receive, send, t_head)
            if owed is not None:
                last = functools.partial(end_body, send, owed)
            row.backend = reply.backend  # a local stream can end on another local backend
            if not row.reason and reply.backend != "cloud":  # the cloud's stream, handed over mid-way
                row.reason = outcome.reason
            u = reply.usage
            row.input_tokens, row.output_tokens, row.stop_reason = u.input_tokens, u.output_tokens, u.stop_reason
            if gone:
                row.outcome, row.error = "client_gone", "the client disconnected"
            elif reply.status >= 400:
                row.outcome, row.error = "error", u.error
            elif u.error:
                row.outcome, row.error = "incomplete", u.error
            else:
                row.outcome = "ok"
            for note in (reply.note, u.note, *changes_of(u, row)):
                if note:
                    row.error = (row.error + "; " if row.error else "") + note
        finally:
            row.total_ms = (time.perf_counter() - ctx.t0) * 1000
            try:
                if last is not None:
                    await last()
            finally:  # recorded even if the last write fails or is cancelled
                # Nothing is awaited between the last write and the row: uvicorn's send does
                # not yield after it writes, so the loop runs nothing else first.
                try:
                    if outcome.plan is not None:  # made at the end: a stream does not hold it while it relays
                        row.route = outcome.plan.as_dict()
                finally:
                    self.request_log.record(row)
            self.request_log.after_reply()

    def left(self, ctx: RequestContext) -> None:
        """The row of a request whose client left before its answer started (Door.run)."""
        row = ctx.row
        row.outcome, row.error = "client_gone", "the client disconnected before its answer started"
        row.total_ms = (time.perf_counter() - ctx.t0) * 1000
        if ctx.facts is not None and not row.workload:
            row.workload = ctx.facts.workload.value
        self.request_log.record(row)
        self.request_log.after_reply()

    async def pump(self, ctx: RequestContext, reply: Reply, writer: Writer, extra: list[tuple[bytes, bytes]],
                   receive: Receive, send: Send, t_head: float) -> bool:
        """Send the reply; True if the client went away first (upstream work is then
        cancelled by closing the upstream response)."""
        gone, owed = await self._pump(ctx, reply, writer, extra, receive, send, t_head)
        if owed is not None:
            await end_body(send, owed)
        return gone

    async def _pump(self, ctx: RequestContext, reply: Reply, writer: Writer, extra: list[tuple[bytes, bytes]],
                    receive: Receive, send: Send, t_head: float) -> tuple[bool, bytes | None]:
        """Send the reply but its last body message; return whether the client went away
        first (upstream work is then cancelled by closing the upstream response) and that
        last message's bytes when it is still owed (it is, when the reply went out whole;
        None otherwise). They are empty, or the body's last chunk, held back to go out
        with the response's end in one write once the body says it is last
        (Usage.final): a stream's end then costs no write, and no wake-up of the client,
        of its own."""
        task = asyncio.current_task()
        gone = finished = False
        connection = watcher = None
        if reply.stream:
            def client_left() -> None:
                nonlocal gone
                if not finished:
                    gone = True
                    if task is not None:
                        task.cancel()

            connection = ctx.connection
            if connection is not None:  # nonstop's own server says when the client leaves
                if connection.lost:  # already: nothing is sent (a cancel might find no await to land on)
                    gone = True
                else:
                    connection.on_lost = client_left
            else:
                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    client_left()

                watcher = asyncio.ensure_future(watch())
        cap = self.cfg.log.body_cap_bytes
        capture: list[bytes] | None = [] if self.cfg.log.store_bodies else None
        captured = 0
        started = False
        last = b""  # the last bytes sent: has the stream already ended in its protocol?
        held: bytes | None = None  # the body's last chunk, to go out with the end
        usage = reply.usage
        try:
            async for chunk in writer.body(reply) if not gone else _no_chunks():
                if not chunk:
                    continue  # the head goes out with the first bytes, never alone
                if capture is not None and captured < cap:
                    capture.append(chunk[: cap - captured])
                    captured += len(capture[-1])
                if not started:
                    await send({"type": "http.response.start", "status": reply.status, "headers": writer.headers(reply) + extra})
                    reply.headers = []  # sent: a stream does not hold its head while it relays
                    started = True
                    now = time.perf_counter()
                    ctx.row.ttfb_ms = (now - ctx.t0) * 1000
                    if ctx.row.overhead_ms is not None:
                        ctx.row.overhead_ms += (now - t_head) * 1000
                if held is not None:  # more followed the chunk held as the last (a writer's own end)
                    await send({"type": "http.response.body", "body": held, "more_body": True})
                    last, held = held, None
                if usage.final:
                    held = chunk  # nothing after it waits: it goes out with the end
                    continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                last = chunk
            if not started and not gone:
                await send({"type": "http.response.start", "status": reply.status, "headers": writer.headers(reply) + extra})
                started = True
                ctx.row.ttfb_ms = (time.perf_counter() - ctx.t0) * 1000
            finished = True
        except asyncio.CancelledError:
            if task is not None:
                task.uncancel()
            if not gone:
                # Shutdown ran past drain_timeout: close the stream with a well-formed
                # error instead of cutting it silently.
                ctx.row.error = "nonstop shut down before the answer was complete"
                reply.usage.error = reply.usage.error or "shut down mid-stream"
                if started and reply.stream and not finished and (held or not writer.ended(last)):
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1):
                            await send({"type": "http.response.body", "more_body": False, "body": _ending(
                                writer, held, "nonstop is shutting down; the response is incomplete.", "overloaded_error")})
        except OSError:
            gone = True
        except Exception as exc:  # a fault of nonstop's own, mid-reply: end it well-formed
            log.exception("%s: relaying the reply failed", ctx.row.request_id)
            reply.usage.error = f"nonstop failed while relaying the reply ({type(exc).__name__})"
            message = f"nonstop failed while relaying the reply ({type(exc).__name__}); request {ctx.row.request_id}"
            with contextlib.suppress(Exception):
                if not started:
                    started = True
                    await writer.error(send, 500, message, "api_error", request_id=ctx.row.request_id)
                elif reply.stream and (held or not writer.ended(last)):
                    await send({"type": "http.response.body", "body": _ending(writer, held, message), "more_body": False})
                else:
                    await send({"type": "http.response.body", "body": held or b"", "more_body": False})
        finally:
            if capture is not None:
                ctx.row.response_body = stored_body(b"".join(capture))
                ctx.row.request_body = stored_body(ctx.ex.body[:cap])
            if watcher is not None:
                watcher.cancel()
            if connection is not None:
                connection.on_lost = None
            if reply.close is not None:
                with contextlib.suppress(Exception):
                    reply.close()
                # Closes hold their reply (to let go of what it holds): dropped once called,
                # the reply and its closes are freed by their counts, not by the collector.
                reply.close = None
            aclose = getattr(reply.body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        return gone, (held or b"") if finished and not gone else None


def _ending(writer: Writer, held: bytes | None, message: str, etype: str = "api_error") -> bytes:
    """The last bytes of a stream cut short by nonstop: the chunk held for the end, if
    any, and an error event unless that chunk already ended the stream."""
    if held and writer.ended(held):
        return held
    return (held or b"") + writer.stream_error(message, etype)
