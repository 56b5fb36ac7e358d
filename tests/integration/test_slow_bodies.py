"""A request body that trickles after a complete head does not hold a connection: the
body must arrive within `body_timeout`, plus a second for every `body_min_rate` bytes; a
client that is slower gets a 408 in its own protocol and the connection is closed. A body
that keeps to the minimum rate is read whole, however long it takes."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.support import procs, rawhttp, wirecheck
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

BODY_TIMEOUT = 1.0
MIN_RATE = 1000
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi " * 300}]}
HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01", "content-type": "application/json"}


@pytest.fixture(scope="module")
def ns(fake_cloud: procs.Proc) -> Iterator[procs.Proc]:
    rawhttp.request("POST", fake_cloud.url + "/_fake/reset")
    gateway = procs.start_nonstop(nonstop_config(fake_cloud.url, body_timeout=BODY_TIMEOUT, body_min_rate=MIN_RATE))
    try:
        yield gateway
    finally:
        procs.stop_all_and_check([gateway])


def head(ns: procs.Proc, path: str, length: int | None, method: str = "POST") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{ns.port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
            + framing + "\r\n").encode()


def trickle(ns: procs.Proc, request_head: bytes, body: bytes, piece: int, every: float) -> tuple[bytes, float]:
    return rawhttp.trickle(ns.port, request_head, body, piece=piece, every=every)


@pytest.mark.parametrize("path,door", [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai"),
                                       ("/v1/messages/count_tokens", "anthropic"), ("/v1/files", "anthropic")])
def test_a_trickling_body_gets_a_408_and_the_connection_is_closed(ns, path, door):
    body = json.dumps(MESSAGE).encode()
    raw, took = trickle(ns, head(ns, path, len(body)), body, piece=5, every=0.1)  # 50 bytes a second
    status, headers, answer = rawhttp.split_response(raw)
    assert status == 408, raw[:300]
    assert headers["connection"] == "close"
    v = wirecheck.check(door, status, headers["content-type"], answer, stream=False)
    assert v.outcome == "error", v.problem
    assert "body_timeout" in v.problem
    # The grace, plus a second for every MIN_RATE bytes of the ~50-70 that came: ~1.1 s.
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + 3.0, took


def test_a_chunked_body_that_stops_is_cut(ns):
    raw, took = trickle(ns, head(ns, "/v1/messages", None) + b"5\r\n{\"mod\r\n", b"", piece=1, every=0.2)
    status, headers, _ = rawhttp.split_response(raw)
    assert status == 408 and headers["connection"] == "close"
    assert took < BODY_TIMEOUT + 3.0, took


def test_a_body_that_keeps_the_minimum_rate_is_read_whole(ns):
    body = json.dumps(MESSAGE).encode()  # ~1 KB, sent at ~2000 bytes a second
    raw, took = trickle(ns, head(ns, "/v1/messages", len(body)).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1),
                        body, piece=100, every=0.05)
    status, _, answer = rawhttp.split_response(raw)
    assert status == 200, raw[:300]
    assert json.loads(answer)["type"] == "message"


def test_a_body_nobody_reads_does_not_hold_the_connection(ns):
    """An answer that goes out before the body has been read (here /health, which reads
    none) closes the connection, so the rest of the body cannot keep it open."""
    raw, took = trickle(ns, head(ns, "/health", 10_000, method="GET"), b"x" * 10_000, piece=1, every=0.2)
    status, headers, _ = rawhttp.split_response(raw)
    assert status == 200 and headers["connection"] == "close"
    assert took < 3.0, took


def test_others_are_served_while_bodies_trickle(ns):
    body = json.dumps(MESSAGE).encode()
    held = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", ns.port))
            s.sendall(head(ns, "/v1/messages", len(body)) + body[:10])
            held.append(s)
        r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=MESSAGE, headers=HEADERS, timeout=10)
        assert r.status == 200, r.body[:300]
        for s in held:
            s.settimeout(BODY_TIMEOUT + 10)
            assert s.recv(65536).startswith(b"HTTP/1.1 408 ")
    finally:
        for s in held:
            s.close()
