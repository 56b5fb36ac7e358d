"""HTTP as the tests speak it: each request on a fresh socket, sent as written.

    status, headers, body = request("GET", ns.url + "/_nonstop/api/status")
    r = exchange("POST", ns.url + "/v1/messages", json=MESSAGE, headers=HEADERS)
    r.status, r.headers, r.pairs, r.body, r.head_s, r.total_s
    exchange("POST", ns.url, target="*", body=b"{", headers={...})     # any request target
    with open_stream("POST", ns.url + "/v1/messages", json=..., until=b"word3") as seen:
        ...                                                           # hang up mid-stream
    raw, took = trickle(ns.port, head, body, piece=5, every=0.1)      # a slow client

A raw socket rather than a client library, so that a test can send what a library would
refuse or tidy up (odd request targets, bytes that are not UTF-8, huge headers, a chunked
body), time the response head, and go away half-way through a stream. Every request says
`Connection: close`; a response ends at its Content-Length, at its last chunk, or when the
server closes. Timeouts bound the whole exchange and raise TimeoutError.
"""

from __future__ import annotations

import json as jsonlib
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_BODYLESS = {"HEAD"}
_SEND_CHUNK = 8192


class IncompleteReply(ConnectionError):
    """The server closed the connection before its response was complete."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case; the last value of a repeated header
    pairs: list[tuple[str, str]]  # every header line in order, names in lower case
    body: bytes  # with any chunked framing removed
    head_s: float  # seconds to the end of the response head
    total_s: float  # seconds to the end of the response (or to `until`)


def request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """status, headers, body. A body that is not bytes is sent as JSON; every request
    says `content-type: application/json` unless `headers` says otherwise."""
    data = body if body is None or isinstance(body, bytes) else jsonlib.dumps(body).encode()
    if data is None and method in ("POST", "PUT", "PATCH"):
        data = b""
    r = exchange(method, url, body=data, headers={"content-type": "application/json", **(headers or {})}, timeout=timeout)
    return r.status, r.headers, r.body


def exchange(method: str, url: str, *, target: str | None = None, body: bytes | None = None, json: Any = None,
             headers: dict[str, str] | None = None, chunked: bool = False, timeout: float = 30,
             until: bytes | None = None) -> Reply:
    """One request and its whole response. `target` replaces the request target taken
    from `url` (sent as it is, so it may be `*` or an absolute URL); `json` is a document
    sent as the body; `chunked` sends the body with Transfer-Encoding: chunked; `until`
    stops reading once those bytes have arrived in the body (for endless streams)."""
    started = time.monotonic()
    with _send(method, url, target, body, json, headers, chunked, timeout) as sock:
        response = _Response(method, started)
        _receive(sock, response, started + timeout, until)
    return response.reply(until)


@contextmanager
def open_stream(method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None,
                until: bytes, timeout: float = 60) -> Iterator[bytes]:
    """Send the request and read until `until` arrives (or the response ends); yields the
    bytes received so far, head included, and hangs up when the block ends."""
    started = time.monotonic()
    with _send(method, url, None, None, json, headers, False, timeout) as sock:
        response = _Response(method, started)
        _receive(sock, response, started + timeout, until)
        yield response.data


def trickle(port: int, head: bytes, body: bytes, *, piece: int, every: float, limit: float = 30,
            source: str = "127.0.0.1") -> tuple[bytes, float]:
    """A slow client: send `head` whole, then `body` `piece` bytes every `every` seconds
    (an empty piece: nothing more), reading whatever the server answers until it closes.
    Returns everything received and the seconds from the head to the close; raises
    AssertionError if the connection is still open after `limit` seconds."""
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as s:
        s.sendall(head)
        t0 = time.monotonic()
        received = b""
        sent = 0
        s.settimeout(every)
        while time.monotonic() - t0 < limit:
            if piece and sent < len(body):
                with suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
                    s.sendall(body[sent : sent + piece])
                    sent += piece
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:  # a byte sent after the server closed: keep what came before
                break
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError(f"the connection was still open after {limit} s; received {received[:300]!r}")
        return received, time.monotonic() - t0


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """status, headers (lower-case names), body (chunked framing removed) of one raw response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    first, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    if "chunked" in headers.get("transfer-encoding", ""):
        body = _dechunk(body)[0]
    return int(first.split()[1]), headers, body


# --- sending ----------------------------------------------------------------------------------


@contextmanager
def _send(method: str, url: str, target: str | None, body: bytes | None, json: Any, headers: dict[str, str] | None,
          chunked: bool, timeout: float) -> Iterator[socket.socket]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if target is None:
        target = url[len(f"{parts.scheme}://{parts.netloc}"):] or "/"
    given = {k.lower() for k in headers or {}}
    lines = [f"{method} {target} HTTP/1.1"]
    if "host" not in given:
        lines.append(f"Host: {parts.netloc}")
    lines.append("Connection: close")
    if json is not None:
        body = jsonlib.dumps(json).encode()
        if "content-type" not in given:
            lines.append("Content-Type: application/json")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if chunked:
            sock.sendall(head)
            with suppress(BrokenPipeError, ConnectionResetError):  # the server may answer before reading it all
                sock.sendall(_chunks(body or b""))
        else:
            sock.sendall(head + (body or b""))
        yield sock
    finally:
        sock.close()


def _chunks(body: bytes) -> bytes:
    pieces = [body[i:i + _SEND_CHUNK] for i in range(0, len(body), _SEND_CHUNK)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# --- receiving ----------------------------------------------------------------------------------


class _Response:
    """What has arrived so far of one response, and whether it is complete."""

    def __init__(self, method: str, started: float):
        self.method = method
        self.started = started
        self.data = b""
        self.head_end = -1
        self.head_s = 0.0
        self.status = 0
        self.pairs: list[tuple[str, str]] = []
        self.length: int | None = None  # None: chunked, or to the close
        self.chunked = False
        self.closed = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if self.head_end < 0 and (end := self.data.find(b"\r\n\r\n")) >= 0:
            self.head_end = end + 4
            self.head_s = time.monotonic() - self.started
            first, *lines = self.data[:end].decode("latin-1").split("\r\n")
            self.status = int(first.split()[1])
            self.pairs = [(k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines)]
            headers = dict(self.pairs)
            if self.method in _BODYLESS or self.status in (204, 304) or 100 <= self.status < 200:
                self.length = 0
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self.chunked = True
            elif headers.get("content-length", "").isdigit():
                self.length = int(headers["content-length"])

    @property
    def raw_body(self) -> bytes:
        return self.data[self.head_end:] if self.head_end >= 0 else b""

    def complete(self) -> bool:
        if self.head_end < 0:
            return False
        if self.chunked:
            return self.raw_body.endswith(b"0\r\n\r\n") and _dechunk(self.raw_body)[1]
        if self.length is not None:
            return len(self.raw_body) >= self.length
        return self.closed

    def reply(self, until: bytes | None) -> Reply:
        if self.head_end < 0:
            raise IncompleteReply(f"the connection closed before the response head: {self.data[:200]!r}")
        if not self.complete() and not (until and until in self.raw_body):
            raise IncompleteReply(f"the connection closed before the end of the response: {self.data[-200:]!r}")
        body = _dechunk(self.raw_body)[0] if self.chunked else self.raw_body[: self.length]
        return Reply(self.status, dict(self.pairs), self.pairs, body, self.head_s, time.monotonic() - self.started)


def _receive(sock: socket.socket, response: _Response, deadline: float, until: bytes | None) -> None:
    while not response.complete() and not (until and until in response.raw_body):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete answer in time; received {response.data[-300:]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            response.closed = True
            return
        response.add(chunk)


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    """The body inside chunked framing, and whether its last chunk has arrived."""
    out, pos = bytearray(), 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(out), False
        size = int(data[pos:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out), data.find(b"\r\n\r\n", line_end) >= 0  # after any trailers
        out += data[line_end + 2 : line_end + 2 + size]
        if len(data) < line_end + 2 + size + 2:
            return bytes(out), False
        pos = line_end + 2 + size + 2
