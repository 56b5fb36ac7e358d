"""Small ASGI helpers: reading a bounded body, sending whole responses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from nonstop.aio import Deadline

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BadBody(Exception):
    """A request body nonstop cannot take, with the status and words to answer it."""

    def __init__(self, status: int, message: str, etype: str):
        super().__init__(message)
        self.status, self.message, self.etype = status, message, etype


class BodyTooLarge(BadBody):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the {limit} byte limit (max_body_bytes)", "request_too_large")
        self.limit = limit


class ClientGone(Exception):
    pass


@dataclass(frozen=True)
class BodyPace:
    """How fast a request body must arrive once its head is complete: all of it within
    `timeout` seconds, plus one second for every `min_rate` bytes received. A body that
    keeps to `min_rate` is never cut; one that trickles is, whatever size it declares."""

    timeout: float = 10.0
    min_rate: int = 16 * 1024

    def allowed(self, received: int) -> float:
        return self.timeout + received / self.min_rate


class BodyTimeout(Exception):
    def __init__(self, pace: BodyPace, received: int, declared: str):
        self.pace = pace
        self.received = received
        self.declared = declared

    def __str__(self) -> str:
        of = f" of {self.declared}" if self.declared.isdigit() else ""
        return (f"the request body did not arrive in time: {self.received}{of} bytes after "
                f"{self.pace.allowed(self.received):.1f} s (a body gets body_timeout = {self.pace.timeout:g} s, "
                f"plus a second for every body_min_rate = {self.pace.min_rate} bytes)")


# The scope keys read_body uses: the pace the application set for this request, and a
# mark that the body has been read to its end (the connection can then be kept alive).
BODY_PACE = "nonstop.body_pace"
BODY_READ = "nonstop.body_read"
# The request-log row a front door made for the request (server/doors/base.py), so that a
# failure no relay recorded is still logged (App.last_guard).
REQUEST_ROW = "nonstop.row"
# The request's connection, set by nonstop's own HTTP protocol (server/head_guard.py).
CONNECTION = "nonstop.connection"
# Where the token that let a request in came from: "header", "query" or "cookie".
TOKEN_VIA = "nonstop.token_via"
# The request's head as nonstop reads it (backends/head.py), and its content-length as
# sent ("" when absent), both read by the application once (App._check_head, after the
# size check).
HEAD = "nonstop.head"
CONTENT_LENGTH = "nonstop.content_length"
DEFAULT_PACE = BodyPace()


class Connection:
    """What the HTTP protocol tells a request about its connection (`scope[CONNECTION]`):
    whether it is lost, and whom to call when it is. A relay learns that its client left
    from this, instead of a task of its own waiting on `receive()`. Under another server
    the key is absent, and the relay starts that task."""

    __slots__ = ("lost", "on_lost")

    def __init__(self) -> None:
        self.lost = False
        self.on_lost: Callable[[], None] | None = None

    def connection_lost(self) -> None:
        self.lost = True
        call, self.on_lost = self.on_lost, None
        if call is not None:
            call()


def header(scope: Scope, name: bytes, default: str = "") -> str:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return default


async def read_body(scope: Scope, receive: Receive, limit: int, *, coded: bool = False) -> bytes:
    """The whole request body, at most `limit` bytes (BodyTooLarge), arriving at the
    scope's pace (BodyTimeout), or ClientGone. `coded`: a body sent with a content coding
    (gzip, ...) is taken as it is, to pass on; otherwise it is refused (a 415), as one
    nonstop reads."""
    declared = scope.get(CONTENT_LENGTH)
    if declared is None:  # not read by the application (another server's scope)
        declared = header(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    head = scope.get(HEAD)
    if not coded and head is not None and head.coding:  # read as JSON: compressed, it would read as garbage
        raise BadBody(415, f"the request body is sent with content-encoding {head.coding!r}, which nonstop does not "
                           "read; send it uncompressed", "invalid_request_error")
    pace: BodyPace = scope.get(BODY_PACE) or DEFAULT_PACE
    started = asyncio.get_running_loop().time()
    chunks: list[bytes] = []
    size = 0
    try:
        # One timer for the whole body: each chunk moves the deadline for the next.
        with Deadline(started + pace.allowed(0)) as deadline:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = msg.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge(limit)
                    chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
                deadline.when = started + pace.allowed(size)
    except TimeoutError:
        raise BodyTimeout(pace, size, declared) from None
    scope[BODY_READ] = True
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json_body(scope: Scope, receive: Receive, limit: int) -> tuple[bytes, Any]:
    """The whole body and its JSON, or BadBody when it is over `limit` (413) or not JSON
    (400); BodyTimeout and ClientGone as for read_body."""
    body = await read_body(scope, receive, limit)
    return body, parse_json_body(body)


def parse_json_body(body: bytes) -> Any:
    """The body's JSON, or BadBody (400) when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadBody(400, f"the request body is not valid JSON: {exc}", "invalid_request_error") from None


async def send_bytes(
    send: Send, status: int, body: bytes, content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, data: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send_bytes(send, status, orjson.dumps(data), extra=extra)
