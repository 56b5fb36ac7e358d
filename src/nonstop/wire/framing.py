"""Cheap checks on the cloud's raw bytes, for relaying a reply without parsing it.

The cloud path stays bytes: these look at framing and shape only, so that a stream can
be cut at event boundaries and a broken upstream can be told apart from a good one.
"""

from __future__ import annotations

# Single bytes looked for in the cloud's bytes, as ints: `CR in data` is one memchr, where
# `b"\r" in data` first tries its needle as an integer index (CPython 3.11), and raises and
# clears a TypeError, its message formatted, before it searches: 1.5k instructions each
# time, and a stream asks several times a read. Longer needles: `data.find(...)`, whose
# miss costs no exception either.
CR, LF = 0x0D, 0x0A


def lf_framed(buf: bytes) -> bytes:
    """SSE bytes with CRLF and lone CR line ends (both legal) made LF, as an SSE parser
    reads them. A CR at the very end is kept as it is: the LF that may follow it in the
    next read makes one line end with it, not two."""
    if CR not in buf:
        return buf
    tail = buf.endswith(b"\r")
    body = (buf[:-1] if tail else buf).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return body + b"\r" if tail else body


def complete_events_end(buf: bytes) -> int:
    """End of the last complete SSE event in buf (0 if none)."""
    lf = buf.rfind(b"\n\n")
    if CR not in buf:  # (the usual read, and every lf_framed one): no CRLF end to look for
        # The search for one would read the whole buffer backwards, a byte at a time, where
        # this test reads it with memchr.
        return lf + 2 if lf >= 0 else 0
    crlf = buf.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def first_malformed_event(events: bytes) -> int:
    """Offset of the first event whose data is not a JSON object (-1 if none). A cheap
    shape check, not a parse: every Anthropic event's data line is one JSON object."""
    pos = 0
    for event in events.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if not (data.startswith(b"{") and data.endswith(b"}")):
                    return pos
        pos += len(event) + 2
    return -1


def wrong_content_type(expect: str, ctype: str) -> str:
    """Why a success whose content type is not what the request asked for ("stream" or
    "json") cannot be relayed, or "" when it is fine. Such a reply means a broken
    upstream: failing over beats relaying it to a client that cannot read it."""
    ctype = ctype.lower()  # media types are case-insensitive (RFC 9110 8.3.1)
    if expect == "stream" and not ctype.startswith("text/event-stream"):
        return f"the cloud answered a stream request with {ctype[:60] or 'no content type'}"
    if expect == "json" and not ctype.startswith("application/json"):
        return f"the cloud answered with {ctype[:60] or 'no content type'} instead of JSON"
    return ""
