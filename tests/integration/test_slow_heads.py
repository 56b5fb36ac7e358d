"""A client that never finishes its request head does not hold a connection: the head has a
deadline (`head_timeout`), one address may hold only `slow_heads_per_client` slow heads,
and nonstop keeps serving everyone else meanwhile.

Every test speaks from its own loopback address (127.0.0.N: Linux routes all of 127/8 to
lo), so that the per-address count of one test does not leak into the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from collections.abc import Iterator

import pytest

from nonstop.config import ConfigError, parse_config
from nonstop.server.head_guard import SLOW_AFTER
from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

HEAD_TIMEOUT = 3.0
PER_CLIENT = 4
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
PARTIAL_HEAD = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
# Room after a deadline for a loaded machine to act on it: the deadline is proven by the
# lower bounds (never before it) and by the attacks' own length (they would go on).
LATE = 3.0


@pytest.fixture(scope="module")
def ns() -> Iterator[procs.Proc]:
    cloud = procs.start_fake_cloud()
    gateway = procs.start_nonstop(nonstop_config(cloud.url, head_timeout=HEAD_TIMEOUT,
                                                 slow_heads_per_client=PER_CLIENT))
    try:
        yield gateway
    finally:
        procs.stop_all_and_check([gateway])
        cloud.stop()


def connect(ns: procs.Proc, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", ns.port))
    return s


def read_to_close(s: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes; TimeoutError if it does not."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise TimeoutError(f"the connection is still open; received {data[:200]!r}") from None
        if not chunk:
            return data
        data += chunk


def trickle_until_dropped(s: socket.socket) -> tuple[bytes, float]:
    """Send a head one byte a second until the server drops the connection: what it
    answered, and how long after the first byte it closed."""
    t0 = time.monotonic()
    answer = b""
    for byte in PARTIAL_HEAD + b"a" * 20:
        try:
            s.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        s.settimeout(1.0)
        try:
            answer = s.recv(65536)
        except TimeoutError:
            continue
        break
    answer += read_to_close(s, timeout=2)
    return answer, time.monotonic() - t0


def closed_by_server(s: socket.socket) -> bool:
    """True when the server has closed (or answered on) this connection."""
    return bool(select.select([s], [], [], 0)[0])


def message_request(port: int, *, close: bool = False) -> bytes:
    import json

    body = json.dumps(MESSAGE).encode()
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
            + ("Connection: close\r\n" if close else "") + f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def read_response(s: socket.socket, timeout: float = 10) -> bytes:
    """The head of one response read whole from a kept-alive connection (a body with a
    Content-Length or chunked; the small answers here end in one piece)."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(s, data)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = [line.lower() for line in head.split(b"\r\n")]
    if b"transfer-encoding: chunked" in lines:
        while not body.endswith(b"0\r\n\r\n"):
            body += _recv(s, data + body)
    else:
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
        while len(body) < length:
            body += _recv(s, data + body)
    return head


def _recv(s: socket.socket, so_far: bytes) -> bytes:
    chunk = s.recv(65536)
    assert chunk, f"the connection closed mid-response: {so_far[-200:]!r}"
    return chunk


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- the deadline -------------------------------------------------------------------------------


def test_trickled_head_is_dropped_at_the_deadline(ns):
    with connect(ns, "127.0.0.20") as s:
        answer, took = trickle_until_dropped(s)
    assert HEAD_TIMEOUT - 0.2 < took < HEAD_TIMEOUT + LATE, took
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert error_of(answer) == ("timeout_error", "the request head did not arrive within 3 s")


def test_connection_that_sends_nothing_is_closed(ns):
    with connect(ns, "127.0.0.21") as s:
        t0 = time.monotonic()
        answer = read_to_close(s, timeout=HEAD_TIMEOUT + LATE)
        took = time.monotonic() - t0
    assert answer == b"", "a client that sent nothing gets no response, only the close"
    assert HEAD_TIMEOUT - 0.2 < took < HEAD_TIMEOUT + LATE, took


def test_trickled_head_on_a_kept_alive_connection_is_dropped(ns):
    with connect(ns, "127.0.0.22") as s:
        s.sendall(message_request(ns.port))
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(HEAD_TIMEOUT + 0.5)  # idle between requests: not the head's deadline
        answer, took = trickle_until_dropped(s)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert HEAD_TIMEOUT - 1.2 < took < HEAD_TIMEOUT + LATE, took  # from the next head's first byte


def test_oversized_head_is_refused_before_it_ends(ns):
    with connect(ns, "127.0.0.23") as s:
        s.sendall(PARTIAL_HEAD)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may close before reading it all
            s.sendall(b"a" * (300 * 1024))
        answer = read_to_close(s, timeout=5)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert error_of(answer)[0] == "invalid_request_error"  # the client's fault, in its format


@pytest.mark.parametrize("raw", [
    b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x00b\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\n\r\n",
], ids=["length-and-chunked", "negative-length", "nul-in-header", "control-in-target"])
def test_bytes_the_parser_refuses_get_a_400_in_the_clients_format(ns, raw):
    with connect(ns, "127.0.0.24") as s:
        s.sendall(raw)
        answer = read_to_close(s, timeout=5)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    etype, message = error_of(answer)
    assert etype == "invalid_request_error" and "not valid HTTP/1.1" in message
    # The same on the OpenAI door: its error shape.
    with connect(ns, "127.0.0.24") as s:
        s.sendall(raw.replace(b"/v1/messages", b"/v1/chat/completions"))
        answer = read_to_close(s, timeout=5)
    if b"/v1/messages" in raw:
        doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert doc["error"]["type"] == "invalid_request_error" and "param" in doc["error"], doc
    assert ns.proc.poll() is None
    status, _, _ = rawhttp.request("GET", ns.url + "/health")
    assert status == 200


def error_of(answer: bytes) -> tuple[str, str]:
    """An answer's Anthropic error (type, message), from its raw bytes."""
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"content-type: application/json" in head.lower(), head
    doc = json.loads(body)
    assert doc["type"] == "error", doc
    return doc["error"]["type"], doc["error"]["message"]


# --- the cap per address ----------------------------------------------------------------------------


def test_connections_over_the_cap_are_closed_at_once(ns):
    held = [connect(ns, "127.0.0.30") for _ in range(PER_CLIENT)]
    try:
        for s in held:
            s.sendall(PARTIAL_HEAD)
        time.sleep(SLOW_AFTER + 0.4)  # now each is a slow head
        assert not any(closed_by_server(s) for s in held), "a slow head under the cap was dropped early"
        with connect(ns, "127.0.0.30") as extra:
            t0 = time.monotonic()
            assert read_to_close(extra, timeout=2.0) == b""
            # At once: not held until it would turn slow (SLOW_AFTER) and be refused then.
            assert time.monotonic() - t0 < SLOW_AFTER * 0.8
        # Another address is not affected: served, and not after the slow heads' deadline.
        r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=MESSAGE, headers=HEADERS, timeout=10)
        assert r.status == 200 and r.total_s < HEAD_TIMEOUT
        for s in held:
            assert read_to_close(s, timeout=HEAD_TIMEOUT + LATE).startswith(b"HTTP/1.1 408 ")
    finally:
        for s in held:
            s.close()
    # Once they are gone, the address is served again.
    with connect(ns, "127.0.0.30") as s:
        s.sendall(message_request(ns.port, close=True))
        assert read_to_close(s, timeout=10).startswith(b"HTTP/1.1 200 ")


def test_a_burst_of_ordinary_connections_from_one_address_is_served(ns):
    socks = [connect(ns, "127.0.0.31") for _ in range(PER_CLIENT * 16)]
    try:
        for s in socks:
            s.sendall(message_request(ns.port, close=True))
        answers = [read_to_close(s, timeout=30) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), {a[:20] for a in answers}


# --- nonstop keeps serving --------------------------------------------------------------------------


def test_others_are_served_quickly_while_500_slow_heads_are_held(ns):
    pid = ns.proc.pid
    before = fds(pid)
    # 500 slow heads, at most the cap from each address, so that nonstop holds them all.
    sources = [f"127.0.1.{i}" for i in range(1, 1 + 500 // PER_CLIENT)]
    attack = []
    try:
        for i in range(500):
            s = connect(ns, sources[i % len(sources)])
            s.sendall(PARTIAL_HEAD)
            attack.append(s)
        opened = time.monotonic()
        time.sleep(max(0.0, SLOW_AFTER + 0.3 - (time.monotonic() - opened)))
        held = sum(not closed_by_server(s) for s in attack)
        assert held == 500, f"nonstop dropped {500 - held} slow heads before their deadline"
        assert fds(pid) >= before + 500
        timings = []
        for _ in range(5):
            r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=MESSAGE, headers=HEADERS, timeout=10)
            assert r.status == 200, r.body[:200]
            timings.append(r.total_s)
        assert max(timings) < HEAD_TIMEOUT / 2, timings  # served meanwhile, not once the heads are gone
        assert sum(not closed_by_server(s) for s in attack) == 500, "the probes outlived some slow heads: too slow"
        # At the deadline every one of them is dropped.
        deadline = time.monotonic() + HEAD_TIMEOUT + LATE
        while time.monotonic() < deadline and not all(closed_by_server(s) for s in attack):
            time.sleep(0.1)
        assert all(closed_by_server(s) for s in attack), "some slow heads outlived the deadline"
    finally:
        for s in attack:
            s.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and fds(pid) > before + 2:
        time.sleep(0.1)
    assert fds(pid) <= before + 2, (before, fds(pid))


def test_keep_alive_use_like_claude_code_is_unaffected(ns):
    """Several requests on one connection with pauses, some longer than the head's
    deadline, and one head that arrives in pieces within it."""
    with connect(ns, "127.0.0.1") as s:
        for pause in (0.0, 0.5, HEAD_TIMEOUT + 1.0, 0.2):
            time.sleep(pause)
            s.sendall(message_request(ns.port))
            assert read_response(s).startswith(b"HTTP/1.1 200 ")
        request = message_request(ns.port)
        cut = request.index(b"\r\n\r\n") - 10
        s.sendall(request[:cut])
        time.sleep(SLOW_AFTER + 0.5)  # slow, but within the deadline
        s.sendall(request[cut:])
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
        assert not closed_by_server(s)


# --- the settings ------------------------------------------------------------------------------------


def test_settings_are_checked():
    cfg = parse_config({})
    assert (cfg.head_timeout, cfg.slow_heads_per_client) == (5.0, 32)
    assert parse_config({"head_timeout": 2, "slow_heads_per_client": 8}).head_timeout == 2.0
    for bad, key in (({"head_timeout": 0}, "head_timeout"), ({"head_timeout": -1}, "head_timeout"),
                     ({"head_timeout": "5"}, "head_timeout"), ({"slow_heads_per_client": 0}, "slow_heads_per_client"),
                     ({"slow_heads_per_client": 2.5}, "slow_heads_per_client")):
        with pytest.raises(ConfigError) as err:
            parse_config(bad)
        assert str(err.value).startswith(key + ":"), err.value
