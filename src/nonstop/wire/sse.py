"""Sans-IO server-sent events: an incremental decoder, one that also parses each event's
data as a JSON object, and an encoder."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from nonstop.wire.framing import CR, LF


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str

    def encode(self) -> bytes:
        return encode_event(self.event, self.data)


def encode_event(event: str, data: str | bytes) -> bytes:
    if isinstance(data, bytes):
        if LF not in data:  # one line (JSON as orjson writes it): no splitting, no copies as str
            data.decode()  # UTF-8, or the same error as below
            line = b"data: " + data + b"\n\n"
            return b"event: " + event.encode() + b"\n" + line if event else line
        data = data.decode()
    lines = data.split("\n")
    body = "".join(f"data: {line}\n" for line in lines)
    if event:
        return f"event: {event}\n{body}\n".encode()
    return f"{body}\n".encode()


# An event as servers write them: at most one `event:` line, then one `data:` line and
# the blank line, LF-framed. A read made of such events is decoded a regex match per
# event (SSEDecoder._plain) instead of a pass of Python per line; anything else (CR
# line ends, comments, ids, several data lines, a field without its colon) is read by
# the line loop, which gives the same events for these.
_PLAIN_EVENT = re.compile(rb"(?:event: ?([^\n]*)\n)?data: ?([^\n]*)\n\n")


class SSEDecoder:
    """Feed bytes, get complete events. Handles LF, CRLF and CR line endings and
    events split anywhere across chunks."""

    __slots__ = ("_buf", "_event", "_data", "_size", "_max", "_skip_lf")

    def __init__(self, max_buffer: int = 16 * 1024 * 1024):
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._size = 0  # bytes of data in the event being read: one event is bounded too
        self._max = max_buffer
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._skip_lf and chunk.startswith(b"\n"):  # the LF of a CRLF whose CR ended the last chunk
            chunk = chunk[1:]
        self._skip_lf = False
        buf = self._buf + chunk if self._buf else chunk
        lf_only = CR not in buf
        if not lf_only:
            # A lone trailing CR may be the first half of CRLF: keep it for the next chunk,
            # unless it ends a blank line (right after a line's end), which it does either way.
            keep_cr = buf.endswith(b"\r")
            if keep_cr:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr and buf.endswith(b"\n"):
                buf += b"\n"
                self._skip_lf = True
            elif keep_cr:
                buf += b"\r"
        out: list[SSEEvent] = []
        start = 0
        if lf_only and not self._data and not self._event:  # LF-framed, at an event's start
            end = buf.rfind(b"\n\n") + 2  # where the complete events end (1: none yet)
            if end > 1:
                plain = self._plain(buf, end)
                if plain is not None:
                    out, start = plain, end
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if not line:
                if self._data:  # an event without data is not dispatched (the SSE standard)
                    out.append(SSEEvent(self._event or "message", "\n".join(self._data)))
                self._event = ""
                self._data = []
                self._size = 0
                continue
            if line[:1] == b":":
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._size += len(value)
                if self._size > self._max:
                    raise ValueError("SSE event larger than the buffer limit")
                self._data.append(value.decode("utf-8", "replace"))
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
        self._buf = buf[start:]
        if len(self._buf) > self._max:
            raise ValueError("SSE line longer than the buffer limit")
        return out

    def _plain(self, buf: bytes, end: int) -> list[SSEEvent] | None:
        """The events of buf[:end] when each is one _PLAIN_EVENT, one after another; None
        when any is not (the line loop reads them then)."""
        out: list[SSEEvent] = []
        pos = 0
        match = _PLAIN_EVENT.match
        while pos < end:
            m = match(buf, pos, end)
            if m is None:
                return None
            name, data = m.group(1, 2)
            if len(data) > self._max:
                raise ValueError("SSE event larger than the buffer limit")
            out.append(SSEEvent(name.decode("utf-8", "replace") if name else "message",
                                data.decode("utf-8", "replace")))
            pos = m.end()
        return out

    def flush(self) -> list[SSEEvent]:
        """Events left when the stream ends (a final event without its blank line)."""
        out = self.feed(b"\n\n") if self._buf else []
        if self._data:
            out.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._data, self._event, self._size = [], "", 0
        return out


class MalformedEvent(ValueError):
    """An event whose data was meant as a JSON object and is not one (see JSONEventDecoder)."""


class JSONEventDecoder:
    """Feed bytes, get each complete event whose data is a JSON object, parsed: a list of
    (event, data) pairs. Events whose data is anything else (`[DONE]`, a bare value,
    junk) are skipped; `done` tells that `[DONE]` came (OpenAI's end of a stream, which a
    server may send and then hold its connection open), and nothing after it is read.
    `event.encode()` gives an event's bytes again, for a caller that holds one back or
    forwards it untouched.

    `strict`: data that begins as a JSON object or array and does not parse raises
    MalformedEvent instead of being skipped (an answer's piece lost without a word would
    end the stream as if whole: a tool call run with its arguments gone). The good events
    read before it come first: the error is raised by the next feed or flush. A string with
    a lone UTF-16 surrogate escape (`"\\ud83d"`, half of a pair a server split across
    two events) is not JSON orjson reads; it is read as JSON still, and the lone half
    becomes U+FFFD, the rest of the event kept."""

    __slots__ = ("_failed", "_sse", "done", "strict")

    def __init__(self, max_buffer: int = 16 * 1024 * 1024, *, strict: bool = False):
        self._sse = SSEDecoder(max_buffer)
        self.done = False
        self.strict = strict
        self._failed: MalformedEvent | None = None  # found after good events: raised next time

    def feed(self, chunk: bytes) -> list[tuple[SSEEvent, dict[str, Any]]]:
        self._raise_failed()
        return self._parsed(self._sse.feed(chunk))

    def flush(self) -> list[tuple[SSEEvent, dict[str, Any]]]:
        """Events left when the stream ends (a final event without its blank line)."""
        self._raise_failed()
        return self._parsed(self._sse.flush())

    def _raise_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _parsed(self, events: list[SSEEvent]) -> list[tuple[SSEEvent, dict[str, Any]]]:
        out: list[tuple[SSEEvent, dict[str, Any]]] = []
        for ev in events:
            if self.done:  # the stream ended at [DONE]: what follows is not part of it
                break
            try:
                data = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                text = ev.data.strip()
                if text == "[DONE]":
                    self.done = True
                    continue
                data = loads_with_lone_surrogates(text)
                if data is None:
                    if self.strict and text[:1] in ("{", "["):
                        self._failed = MalformedEvent(f"an event whose data is not JSON: {text[:80]!r}")
                        if not out:
                            self._raise_failed()
                        break
                    continue
            if isinstance(data, dict):
                out.append((ev, data))
        return out


def loads_with_lone_surrogates(text: str) -> Any:
    """JSON that orjson refuses only for a lone surrogate escape, read with the standard
    library (which allows them), each lone half replaced by U+FFFD; None for anything
    else that is not JSON."""
    if "\\u" not in text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return _mended(data)


def _mended(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # pairs kept whole, lone halves replaced
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, dict):
        return {_mended(k): _mended(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mended(v) for v in value]
    return value
