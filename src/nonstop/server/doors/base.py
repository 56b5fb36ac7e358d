"""What every front door shares: reading a bounded JSON body, and turning a request
into the context the pipeline and the relay work on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from nonstop.backends.base import Exchange
from nonstop.backends.head import head_of
from nonstop.server.asgi import (
    CONNECTION,
    HEAD,
    REQUEST_ROW,
    BadBody,
    ClientGone,
    Receive,
    Scope,
    Send,
    parse_json_body,
    read_body,
    read_json_body,
)
from nonstop.server.pipeline import Outcome, Pipeline, RequestContext
from nonstop.server.relay import Relay
from nonstop.server.runtime import Runtime
from nonstop.server.writers import Writer
from nonstop.store.db import RequestRow
from nonstop.wire.validate import MAX_MODEL_NAME

T = TypeVar("T")


class Door:
    def __init__(self, rt: Runtime, pipeline: Pipeline, relay: Relay):
        self.rt = rt
        self.cfg = rt.cfg
        self.pipeline = pipeline
        self.relay = relay

    async def run(self, ctx: RequestContext) -> Outcome | None:
        """The pipeline's answer for the request; None when its client left before one was
        chosen (nonstop's own server says when: `ctx.connection`). The work for it stops
        then (a cloud request or a local one is closed, its slot given back), and the row
        is logged as client_gone: no quota or local server is spent for nobody."""
        conn = ctx.connection
        if conn is None:  # another ASGI server: the relay watches from the first byte on
            return await self.pipeline.run(ctx)
        if conn.lost:
            self.relay.left(ctx)
            return None
        task = asyncio.current_task()
        left = False

        def client_left() -> None:
            nonlocal left
            left = True
            if task is not None:
                task.cancel()

        conn.on_lost = client_left
        try:
            return await self.pipeline.run(ctx)
        except asyncio.CancelledError:
            if not left or task is None:
                raise  # (a shutdown's cancel stays a cancel)
            task.uncancel()
            self.relay.left(ctx)
            return None
        finally:
            if conn.on_lost is client_left:
                conn.on_lost = None

    def context(self, scope: Scope, body: bytes, req: dict[str, Any], path: str, *, lazy: bool = False,
                **cloud: Any) -> RequestContext:
        """`lazy`: `req` is the request's outline (wire/outline.py), not the parsed
        request; the exchange parses `body` if a backend needs the whole request."""
        head = scope.get(HEAD) or head_of(scope["headers"])
        row = RequestRow(
            ts=time.time(), request_id=scope.get("nonstop.request_id", ""), path=path,
            client=head.client, session_id=head.session,
            model=str(req.get("model", ""))[:MAX_MODEL_NAME], stream=req.get("stream") is True,
            user=str(scope.get("nonstop.user", "")),
        )
        scope[REQUEST_ROW] = row
        ex = Exchange(
            method=scope["method"], path=path, raw_path=scope.get("raw_path") or scope["path"].encode(),
            query=scope.get("query_string", b""), headers=scope["headers"], head=head, body=body, req={} if lazy else req,
            stream=req.get("stream") is True, lazy=lazy, max_tokens=req.get("max_tokens"), **cloud,
        )
        return RequestContext(ex, row, time.perf_counter(), None, scope.get(CONNECTION))

    async def read(self, scope: Scope, receive: Receive, send: Send, writer: Writer, *, coded: bool = False) -> bytes | None:
        """The body, or None after answering a body over the limit in the client's protocol
        (or when the client left before sending it all). `coded`: a compressed body is
        taken, to pass on as it came (read_body)."""
        return await _answered(read_body(scope, receive, self.cfg.max_body_bytes, coded=coded), send, writer)

    async def read_json(self, scope: Scope, receive: Receive, send: Send, writer: Writer) -> tuple[bytes, Any] | None:
        """The body and its JSON, or None after answering the problem in the client's protocol."""
        return await _answered(read_json_body(scope, receive, self.cfg.max_body_bytes), send, writer)

    async def parse_json(self, body: bytes, send: Send, writer: Writer) -> tuple[Any] | None:
        """The body's JSON (in a 1-tuple, since JSON may be null), or None after answering
        that it is not JSON in the client's protocol."""
        return await _answered(_parsed(body), send, writer)


async def _answered(reading: Awaitable[T], send: Send, writer: Writer) -> T | None:
    """What `reading` gives, or None after answering a body nonstop cannot take (or when the
    client left before sending it all)."""
    try:
        return await reading
    except BadBody as exc:
        await writer.error(send, exc.status, exc.message, exc.etype)
    except ClientGone:
        pass
    return None


async def _parsed(body: bytes) -> tuple[Any]:
    return (parse_json_body(body),)
