"""A deadline for the request head, and a cap on slow heads per client address.

uvicorn's httptools protocol waits for a request head without any deadline: a client that
opens a connection and sends nothing, or trickles its head a byte at a time, holds the
connection (its socket, its parser, its buffers) for as long as it likes. uvicorn's own
keep-alive timer does not help: it is armed only after a response, and the first byte of
the next request cancels it.

`HeadGuardedProtocol` closes that gap with a timer on each head still being read:

- a head must be complete within `head_timeout` seconds of the connection opening (or,
  on a kept-alive connection, of the next request's first byte); otherwise the client
  gets a 408 (or, if it sent nothing, just the close) and the connection is closed;
- a head still incomplete after `SLOW_AFTER` seconds is *slow*; at most
  `slow_heads_per_client` slow heads are held per client address: one more is closed
  (without an answer) when it turns slow, and while that many are held, a new connection
  from the address is closed at once;
- a head that grows past `MAX_HEAD_BYTES` is answered 431 and the connection closed, so a
  fast client cannot fill memory within the deadline either.

Counting only slow heads leaves a burst of ordinary connections alone: their heads arrive
in one packet and never become slow. The cost on the request path is one timer armed and
cancelled per connection (a new connection may send nothing at all); a request on a
kept-alive connection arms one only when its head arrives in more than one read.

The protocol also hands each response a transport that sends the head with the first
body bytes (`_Coalesced`): one system call, and one wake-up of the client, where uvicorn
makes two; and a cycle that writes that head with its checks made on all its headers at
once (`server/response_head.py`).
"""

from __future__ import annotations

from asyncio import AbstractEventLoop, TimerHandle, Transport
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from nonstop.server.asgi import CONNECTION, Connection
from nonstop.server.response_head import ResponseCycle
from nonstop.wire.errors import anthropic_error, openai_error

# A head still incomplete this long after it started counts against its address's limit.
SLOW_AFTER = 1.0
# The application answers heads over 64 KiB itself, in the client's own protocol; past
# this size the head is not even read to its end.
MAX_HEAD_BYTES = 256 * 1024


class SlowHeads:
    """Which connections, per client address, are slow to send their head."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._by_client: dict[str, set[object]] = {}

    def full(self, client: str) -> bool:
        return len(self._by_client.get(client, ())) >= self.per_client

    def add(self, client: str, conn: object) -> bool:
        """Count `conn` as slow; False (and not counted) when the address is at its limit."""
        if self.full(client):
            return False
        self._by_client.setdefault(client, set()).add(conn)
        return True

    def discard(self, client: str, conn: object) -> None:
        held = self._by_client.get(client)
        if held is not None:
            held.discard(conn)
            if not held:
                del self._by_client[client]

    def held(self, client: str) -> int:
        return len(self._by_client.get(client, ()))


def _closing_response(status: bytes, message: str, url: bytes = b"") -> bytes:
    """An answer the protocol gives before the application has the request (a head too
    large, late, or not HTTP), then closing: an error in the client's own protocol, by
    as much of the target as was read (OpenAI's on its door, else Anthropic's)."""
    code = int(status[:3])
    if url.startswith((b"/v1/chat/completions", b"/chat/completions")):
        body = openai_error(code, message)
    else:
        body = anthropic_error(code, message, "timeout_error" if code == 408 else "invalid_request_error")
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)) + body


class _Conn(Connection):
    """One connection as the guard sees it: its head being read, and (as a Connection, in
    each request's scope) whom to tell when it is lost. The protocol holds it in one
    attribute: uvicorn's own attributes nearly fill the key table its instances share,
    and six more would give every connection a dictionary of its own (about 1.3 KB)."""

    __slots__ = ("reading", "timer", "deadline", "slow", "begun", "size", "out")
    out: _Coalesced  # the transport responses write to, from connection_made on

    def __init__(self) -> None:
        super().__init__()
        self.reading = False  # from the connection, or a request's first byte, to the head's end
        self.timer: TimerHandle | None = None
        self.deadline = 0.0
        self.slow = False  # counted in slow_heads
        self.begun = False  # some bytes of the head have arrived
        self.size = 0  # bytes read while the head was incomplete


class _Coalesced:
    """The connection's transport as a response writes to it: a response's head goes out
    with its first body bytes, in one system call. uvicorn writes the head on its own as
    soon as the application starts the response, and the body right after it; one write
    instead of two halves the wake-ups of the client for a small reply. A head whose body
    does not follow in the same turn of the event loop goes out alone at its end."""

    __slots__ = ("transport", "loop", "head")

    def __init__(self, transport: Transport, loop: AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.head: bytes | None = None

    def hold_head(self) -> None:
        """The next write is a response's head. A head still held (a response whose body
        is late, while a pipelined request's head completes) goes out first: the bytes
        leave in the order they were written, whatever is held."""
        if self.head:
            self.flush()
        self.head = b""

    def write(self, data: bytes) -> None:
        head = self.head
        if head is None:
            self.transport.write(data)
        elif head:
            self.head = None
            self.transport.writelines((head, data))
        else:
            self.head = data
            self.loop.call_soon(self._late, data)

    def _late(self, head: bytes) -> None:
        """The end of the turn in which `head` was written: still held, it goes out alone.
        (Only that head: by now it may have gone with its body, and the next response on
        the connection may be waiting to hold its own.)"""
        if self.head is head:
            self.flush()

    def flush(self) -> None:
        head, self.head = self.head, None
        if head and not self.transport.is_closing():
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class HeadGuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline and a per-address cap on slow
    heads. Configure a subclass with `guarded_protocol()`."""

    head_timeout: ClassVar[float] = 5.0
    slow_heads: ClassVar[SlowHeads] = SlowHeads(32)
    _conn: _Conn

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self._conn = _Conn()
        super().connection_made(transport)
        self._conn.out = _Coalesced(transport, self.loop)
        if self.slow_heads.full(self._client_host()):
            transport.close()
            return
        self._conn.reading = True
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        head = self._conn
        head.begun = True
        # The next request on a kept-alive connection: its timer is armed only if this
        # read does not finish the head (see data_received), so a head that arrives whole
        # costs no timer at all.
        head.reading = True

    def on_headers_complete(self) -> None:
        self._end_head()
        self.scope[CONNECTION] = self._conn  # type: ignore[literal-required]
        super().on_headers_complete()
        if self.cycle is not None:
            out = self._conn.out
            out.hold_head()
            self.cycle.transport = out  # type: ignore[assignment]
            # The cycle uvicorn just made, as its subclass that writes the response's head
            # itself (server/response_head.py): same attributes, one method more.
            self.cycle.__class__ = ResponseCycle

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        head = self._conn
        if not head.reading or self.transport.is_closing():  # the head is complete, or refused
            return
        head.size += len(data)
        if head.size > MAX_HEAD_BYTES:
            self._end_head()
            self.transport.write(_closing_response(
                b"431 Request Header Fields Too Large", f"the request head is larger than {MAX_HEAD_BYTES} bytes", self._url()))
            self.transport.close()
        elif head.timer is None:
            self._arm()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses (a malformed line or header, both
        a length and chunked framing, a bad length...), in the client's protocol."""
        self._end_head()
        self.transport.write(_closing_response(
            b"400 Bad Request", "the request is not valid HTTP/1.1 (a malformed request line or header, "
                                "or a conflicting or invalid body length); nonstop could not read it", self._url()))
        self.transport.close()

    def _url(self) -> bytes:
        """As much of the request's target as was read (b"" before any)."""
        return getattr(self, "url", b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)
        self._conn.connection_lost()

    # --- the head's timer ---------------------------------------------------------------------

    def _client_host(self) -> str:
        return self.client[0] if self.client else ""

    def _arm(self) -> None:
        head = self._conn
        head.deadline = self.loop.time() + self.head_timeout
        head.timer = self.loop.call_later(min(SLOW_AFTER, self.head_timeout), self._head_late)

    def _end_head(self) -> None:
        head = self._conn
        head.reading = head.begun = False
        head.size = 0
        if head.timer is not None:
            head.timer.cancel()
            head.timer = None
        if head.slow:
            self.slow_heads.discard(self._client_host(), self)
            head.slow = False

    def _head_late(self) -> None:
        head = self._conn
        head.timer = None
        if self.transport.is_closing():
            return
        if not head.slow:
            if not self.slow_heads.add(self._client_host(), self):  # over the cap: refused, no answer
                self._end_head()
                self.transport.close()
                return
            head.slow = True
            head.timer = self.loop.call_later(max(0.0, head.deadline - self.loop.time()), self._head_late)
            return
        self._drop_head()

    def _drop_head(self) -> None:
        # A 408 only to a client that began a request, and never inside a response still
        # going out (a pipelined head trickling in behind it): that one is just cut.
        answer = self._conn.begun and (self.cycle is None or self.cycle.response_complete)
        self._end_head()
        if answer:
            self.transport.write(_closing_response(
                b"408 Request Timeout", f"the request head did not arrive within {self.head_timeout:g} s", self._url()))
        self.transport.close()


def guarded_protocol(head_timeout: float, slow_heads_per_client: int) -> type[HeadGuardedProtocol]:
    """The protocol class to give uvicorn (`http=`), with its own count of slow heads."""

    class Configured(HeadGuardedProtocol):
        pass

    Configured.head_timeout = head_timeout
    Configured.slow_heads = SlowHeads(slow_heads_per_client)
    return Configured
