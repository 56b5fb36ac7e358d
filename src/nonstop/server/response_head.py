"""A response's head, written with its header checks made on all its headers at once.

uvicorn's httptools cycle writes a response's head (the ASGI `http.response.start`) with a
loop over its headers: each name and each value searched by a regex for the bytes HTTP
forbids there, each name lower-cased on its own, each compared with the three names the
framing depends on. A cloud reply relays some twenty headers (the quota headers among
them), and this loop was the largest single piece of Python in a request after nonstop's
own (some 1,100 bytecodes). `ResponseCycle.send` makes the same checks with a few calls
that each read every header in C: the names joined and their forbidden bytes deleted
(`bytes.translate`), likewise the values, the names lower-cased in one call, and the head
joined in one. It writes exactly the head uvicorn writes, and leaves every case it does
not take (a `connection` or `transfer-encoding` header, a forbidden byte, a content
length that is not a number, a paused transport, the access log) to uvicorn's own code,
which writes or refuses them as it always has. tests/unit/server/test_response_head.py
holds the two to the same bytes and the same state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from operator import itemgetter
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)

# The bytes uvicorn's own checks refuse, read from its regexes (each matches one byte): in
# a name, all but the line feed the names are joined with (which the split counts); in a
# value, all of them (the values are joined with a tab, which a value may hold).
_BAD_IN_NAMES = bytes(b for b in range(256) if b != 0x0A and HEADER_RE.fullmatch(bytes([b])))
_BAD_IN_VALUES = bytes(b for b in range(256) if HEADER_VALUE_RE.fullmatch(bytes([b])))
assert HEADER_RE.fullmatch(b"\n") and not HEADER_VALUE_RE.fullmatch(b"\t")  # (the joins rely on both)
_name = itemgetter(0)
_value = itemgetter(1)
# The names whose headers change the framing: the first two are left to uvicorn.
_LEFT_TO_UVICORN = (b"connection", b"transfer-encoding")
_LENGTH = b"content-length"


class _Done:
    """What `send` returns for a head it wrote: awaited, it is already done."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield from ()


_DONE = _Done()


class ResponseCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, whose `send` writes a response's head itself when
    it can (see the module's docstring). The protocol gives a cycle this class when it
    makes it (server/head_guard.py): no attribute is added, so the cycle stays as uvicorn
    made it."""

    def send(self, message: Any) -> Awaitable[None]:  # type: ignore[override]
        # Not a coroutine: the body's messages go to uvicorn's own send, awaited by the
        # caller, with no frame of this one's between them.
        if not self.response_started and not self.disconnected and not self.flow.write_paused \
                and not self.access_log and self.chunked_encoding is None and type(message) is dict \
                and message.get("type") == "http.response.start":
            head = self._head(message)
            if head is not None:
                self.transport.write(head)
                return _DONE
        return RequestResponseCycle.send(self, message)

    def _head(self, message: Any) -> bytes | None:
        """The head uvicorn would write for `message`, with the cycle's state set as it
        would set it; None (nothing set) for a case left to uvicorn."""
        try:
            status = message["status"]
            line = STATUS_LINE[status]
            headers = self.default_headers + list(message.get("headers", ()))  # (any iterable, as ASGI allows)
            names = list(map(_name, headers))
            values = list(map(_value, headers))
            joined = b"\n".join(names)
            lows = joined.lower().split(b"\n")
            shown = b"\t".join(values)
        except (KeyError, TypeError, ValueError):  # uvicorn's own error, from uvicorn's own code
            return None
        if len(lows) != len(names) or len(joined.translate(None, _BAD_IN_NAMES)) != len(joined) \
                or len(shown.translate(None, _BAD_IN_VALUES)) != len(shown):
            return None  # a line feed in a name (the split does not give one name each), a forbidden byte
        if _LEFT_TO_UVICORN[0] in lows or _LEFT_TO_UVICORN[1] in lows:
            return None
        length: int | None = None
        if _LENGTH in lows:
            try:
                length = int(values[lows.index(_LENGTH)].decode())
            except (UnicodeDecodeError, ValueError):
                return None
        n = len(lows)
        parts: list[bytes] = [b": "] * (4 * n + 3)
        parts[0] = line
        parts[1:4 * n:4] = lows
        parts[3:4 * n + 1:4] = values
        parts[4:4 * n + 1:4] = [b"\r\n"] * n
        # What follows the headers, in uvicorn's order: its own `connection: close`, its
        # own chunked framing, the blank line.
        parts[-2] = b"" if self.keep_alive else b"connection: close\r\n"
        chunked = length is None and self.scope["method"] != "HEAD" and status not in (204, 304)
        parts[-1] = b"transfer-encoding: chunked\r\n\r\n" if chunked else b"\r\n"
        if length is not None:
            self.expected_content_length = length
            self.chunked_encoding = False
        elif chunked:
            self.chunked_encoding = True
        self.response_started = True
        self.waiting_for_100_continue = False
        return b"".join(parts)
