"""The one protocol every backend speaks, the cloud and each local kind alike, and what
an attempt gives back: a reply to commit, or a structured reason to move on.

    class Backend(Protocol):
        name: str
        def capabilities(self) -> Capabilities      # what it can take
        async def send(self, ex, step) -> Attempt   # one try; nothing reaches the client

The planner asks every backend the same questions (`capabilities()`, and the live
state in `state`); the pipeline calls `send()` with the request (`Exchange`) and the
plan's step, which says how to send it (a probe, fitted to a window, without thinking).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson

from nonstop.aio import Silence
from nonstop.backends.head import Head, head_of
from nonstop.routing.classify import Verdict
from nonstop.routing.view import Capabilities

if TYPE_CHECKING:
    from nonstop.routing.fit import Fitted
    from nonstop.routing.plan import Step
    from nonstop.wire.repair import Repair

# A reply read whole before its head goes to the client (any backend): at most this much.
MAX_WHOLE_BODY = 64 * 1024 * 1024
# A server's answer to nonstop's own questions (health, token counts, load, model facts).
MAX_SIDE_REPLY = 4 * 1024 * 1024


class ReplyTooLarge(aiohttp.ClientPayloadError):
    """A reply over the size nonstop reads (an aiohttp error, so that every handler of a
    broken reply handles it too)."""


def positive_int(value: Any) -> int | None:
    """A count or a size a server reported: a positive number (not a bool, not inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 2**63:
        return None
    return int(value)


async def read_capped(resp: aiohttp.ClientResponse, limit: int = MAX_SIDE_REPLY) -> bytes:
    """The whole body; ReplyTooLarge past `limit` bytes (a server that never stops
    sending does not fill memory within a timeout)."""
    data = await read_limited(resp, limit + 1)
    if len(data) > limit:
        raise ReplyTooLarge(f"the reply is larger than {limit} bytes")
    return data


def forget_tracebacks(exc: BaseException | None) -> None:
    """Drop the tracebacks of a handled `exc` and of the errors it came from. aiohttp
    keeps the error of a body cut mid-way on the response's stream, and with its
    traceback that error holds the frames it passed through, which hold the response: a
    reference cycle only the collector would free. Handled, the error needs no frames."""
    for _ in range(8):  # a chain is a few errors long (a loop in one cannot hold this)
        if exc is None:
            return
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


async def read_limited(resp: aiohttp.ClientResponse, limit: int, silence: Silence | None = None) -> bytes:
    """The body, or its first `limit` bytes (read one more to tell a body over a limit).
    `silence`, when given, bounds each read."""
    buf = bytearray()
    while len(buf) < limit:
        if silence is not None:
            silence.reading()
        chunk = await resp.content.read(min(65536, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


class UnreadableRequest(ValueError):
    """The whole request cannot be parsed, though its outline could (a number out of the
    range of a double, an integer over 64 bits, in a field the outline skips): the client
    is told, as for any invalid body."""


@dataclass
class Exchange:
    """One client request on its way to a backend. The cloud takes the client's bytes
    and headers (`cloud_body` when nonstop had to change them); a local backend reads
    only `req` and `stream`, never the headers or their reading (`head`), so cloud
    credentials cannot reach it."""

    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    req: dict[str, Any]
    stream: bool
    # What the cloud gets instead of path/body/extra headers (the OpenAI front door
    # translates; history hygiene rewrites local turns).
    cloud_path: bytes | None = None
    cloud_body: bytes | None = None
    cloud_headers: dict[str, str] | None = None
    # The account the client's credential belongs to (a salted hash, never the credential).
    account: str = ""
    # `req` is not parsed yet: the door read only the request's outline (wire/outline.py),
    # and request() parses `body` the first time a backend needs the whole request.
    lazy: bool = False
    # The headers as nonstop reads them (backends/head.py); read from `headers` when not given.
    head: Head | None = None
    # The request's max_tokens as sent (read by the door, parsed or outlined): how long a
    # non-streamed answer may take to write.
    max_tokens: Any = None

    def read_head(self) -> Head:
        """What nonstop reads from the request's headers (backends/head.py)."""
        if self.head is None:
            self.head = head_of(self.headers)
        return self.head

    def request(self) -> dict[str, Any]:
        """The whole parsed request, parsed now if the door did not need it."""
        if self.lazy:
            self.req = parse_request(self.body)
            self.lazy = False
        return self.req

    def request_later(self) -> Callable[[], dict[str, Any]]:
        """The whole request when asked, parsed then if it is not yet: it holds the body
        (or the parsed request), which the door lets the exchange itself go of."""
        if not self.lazy:
            req = self.req
            return lambda: req
        return partial(parse_request, self.body)


def parse_request(body: bytes) -> dict[str, Any]:
    """A request's body parsed (UnreadableRequest when it is not JSON)."""
    try:
        return orjson.loads(body) if body else {}
    except orjson.JSONDecodeError as exc:
        raise UnreadableRequest(f"the request body is not valid JSON: {exc}") from None


@dataclass
class Usage:
    """Filled in while a reply streams; read when the request is logged."""

    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str = ""
    error: str = ""
    complete: bool = False
    # Set by a body just before it yields its last chunk, when nothing after that chunk
    # waits on the network (the answer is complete and its upstream body read to the
    # end): the relay sends that chunk with the response's end, in one write.
    final: bool = False
    note: str = ""
    # perf_counter() times: the first content the backend produced, and the end.
    first_content: float | None = None
    ended: float | None = None
    # What nonstop changed for a local model: how the request was fitted to its window,
    # and the tool calls repaired from its text (or left as text).
    fitted: Fitted | None = None
    repairs: list[Repair] = field(default_factory=list)


@dataclass
class Reply:
    """A response ready to commit. `body` yields Anthropic-format bytes: SSE for streams,
    JSON otherwise. Nothing has been sent to the client yet."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[bytes]
    backend: str
    stream: bool
    usage: Usage = field(default_factory=Usage)
    close: Callable[[], Any] | None = None
    # A "no" that came with an answer (a 200 whose headers say the quota is now
    # rejected): the answer is served, and the state learns the deadline.
    verdict: Verdict | None = None
    # For the request log: what nonstop changed on the way (fitted, trimmed, repaired).
    note: str = ""
    # A local stream that another local backend may go on with while it has sent the
    # client no content (see LocalBackend._served).
    handover: bool = False
    # Set by the pipeline on such a stream: asked for another local stream when its
    # backend fails before any content. None: no other backend can take the message over.
    instead: Callable[[Verdict | TooLong], Awaitable[Reply | None]] | None = None


@dataclass(frozen=True)
class TooLong:
    """The request cannot fit this backend's window with room for output."""

    backend: str
    tokens: int
    window: int
    # The request's size as the server named it in its refusal (0: it named none, or it
    # was not sent).
    named: int = 0


Attempt = Reply | Verdict | TooLong


class Backend(Protocol):
    name: str

    def capabilities(self) -> Capabilities: ...

    async def send(self, ex: Exchange, step: Step) -> Attempt: ...


async def single(data: bytes) -> AsyncIterator[bytes]:
    """A body that is one chunk."""
    yield data


# How a stream of nonstop's own encoding (whole events) starts its message.
MESSAGE_START = b"event: message_start\n"


async def taken_over(reply: Reply, taken: Reply, why: str, body: AsyncIterator[bytes] | None = None) -> AsyncIterator[bytes]:
    """`taken`'s stream as the rest of `reply`'s: the client has its message_start
    already, so taken's own is left out (`body`: taken's stream as the client is to get
    it, when more than its start must go). The reply then names the backend that answered,
    closes as taken does, and carries taken's usage for the request log."""
    # The first backend's request is over: its slot goes back now, not when this ends.
    if reply.close is not None:
        reply.close()

    def close() -> None:  # whatever closes taken then: it may have been handed on in turn
        closing, taken.close = taken.close, None  # once: a splice's own end closes it too
        if closing is not None:
            closing()

    handed = reply.backend = taken.backend
    reply.close = close
    began = body is not None  # a body given is the stream as it is to go
    try:
        async for chunk in taken.body if body is None else body:
            if not began and MESSAGE_START in chunk:  # nonstop's own encoding: whole events
                at = chunk.index(MESSAGE_START)
                chunk, began = chunk[:at] + chunk[chunk.index(b"\n\n", at) + 2:], True
            if chunk:
                yield chunk
    finally:
        u = taken.usage
        reply.usage.__dict__.update(u.__dict__)
        reply.backend = taken.backend  # the last to take over, when taken was handed on too
        reply.usage.note = "; ".join(n for n in (f"{why}; handed to {handed}", u.note) if n)
