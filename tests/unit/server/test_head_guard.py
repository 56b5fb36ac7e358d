"""What the head guard costs a connection that behaves: no more instance memory than
uvicorn's own protocol (the deadlines themselves are proven against a real server in
tests/integration/test_slow_heads.py); and a response's head going out with its first
body bytes, or alone at the end of the turn when the body is late."""

from __future__ import annotations

import asyncio
import sys

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from nonstop.server.head_guard import HeadGuardedProtocol, _Coalesced, guarded_protocol


async def _ok(scope, receive, send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _served(cls: type[HttpToolsProtocol]) -> HttpToolsProtocol:
    """The protocol instance that served two requests on one kept-alive connection."""
    cfg = Config(app=_ok, http="httptools", lifespan="off", log_level="error")
    cfg.load()
    loop = asyncio.get_running_loop()
    made: list[HttpToolsProtocol] = []

    def factory() -> HttpToolsProtocol:
        made.append(cls(cfg, ServerState(), {}, _loop=loop))
        return made[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 5)
        return made[0]
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_a_guarded_connection_holds_no_larger_instance_dict_than_uvicorns():
    # uvicorn's attributes nearly fill the key table its instances share; one attribute
    # too many gives each connection a dictionary of its own, about 1.3 KB more.
    plain = await _served(HttpToolsProtocol)
    guarded = await _served(guarded_protocol(5.0, 32))
    assert isinstance(guarded, HeadGuardedProtocol)
    assert sys.getsizeof(guarded.__dict__) <= sys.getsizeof(plain.__dict__)
    assert guarded._conn.timer is None and not guarded._conn.reading


class _Recorder:
    """A transport that records each system call a write would be."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append([data])

    def writelines(self, data) -> None:
        self.calls.append(list(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


async def test_a_head_goes_out_with_the_first_body_bytes_in_one_call():
    rec = _Recorder()
    out = _Coalesced(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.hold_head()
    out.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert rec.calls == []
    out.write(b"5\r\nhello\r\n")
    out.write(b"0\r\n\r\n")
    assert rec.calls == [[b"HTTP/1.1 200 OK\r\n\r\n", b"5\r\nhello\r\n"], [b"0\r\n\r\n"]]
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left
    assert len(rec.calls) == 2


async def test_a_head_whose_body_is_late_goes_out_alone_at_the_end_of_the_turn():
    rec = _Recorder()
    out = _Coalesced(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.hold_head()
    out.write(b"head")
    await asyncio.sleep(0)
    assert rec.calls == [[b"head"]]
    out.write(b"body")  # the body, later, on its own
    assert rec.calls == [[b"head"], [b"body"]]


async def test_the_end_of_one_responses_turn_does_not_let_go_of_the_next_ones_head():
    # The first response's head went with its body; its end-of-turn check runs only after
    # the next request on the connection has begun (the client was quick): the next head
    # is still held for its own body.
    rec = _Recorder()
    out = _Coalesced(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.hold_head()
    out.write(b"head 1")
    out.write(b"body 1")
    out.hold_head()  # the next request's head is complete before the loop's turn ends
    await asyncio.sleep(0)
    out.write(b"head 2")
    out.write(b"body 2")
    assert rec.calls == [[b"head 1", b"body 1"], [b"head 2", b"body 2"]]


async def test_a_pipelined_requests_head_does_not_drop_a_head_still_held():
    # A response started and waits for its body; the next request, pipelined behind it,
    # completes its head meanwhile. Nothing is lost and nothing overtakes.
    rec = _Recorder()
    out = _Coalesced(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.hold_head()
    out.write(b"head 1")
    out.hold_head()  # the pipelined request (its response waits for this one's end)
    out.write(b"body 1")
    out.write(b"end 1")
    await asyncio.sleep(0)
    assert b"".join(b"".join(c) for c in rec.calls) == b"head 1body 1end 1"
    assert rec.calls[0] == [b"head 1"]


async def test_a_held_head_is_written_before_the_connection_closes_and_never_after():
    rec = _Recorder()
    out = _Coalesced(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.hold_head()
    out.write(b"head")
    out.close()
    assert rec.calls == [[b"head"]] and rec.closing
    out.hold_head()
    out.write(b"next head")
    await asyncio.sleep(0)  # the connection is closing: nothing is written to it
    assert rec.calls == [[b"head"]]


async def _late_body(scope, receive, send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await scope["state"]["go"].wait()
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_real_server_sends_a_head_whose_body_is_late_without_waiting_for_it():
    # The client sees the head while the application still waits to send the body.
    go = asyncio.Event()
    cfg = Config(app=_late_body, http="httptools", lifespan="off", log_level="error")
    cfg.load()
    loop = asyncio.get_running_loop()
    cls = guarded_protocol(5.0, 32)
    server = await loop.create_server(lambda: cls(cfg, ServerState(), {"go": go}, _loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        go.set()
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def _echo(scope, receive, send) -> None:
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def test_a_client_that_expects_100_continue_gets_it_before_it_sends_its_body():
    cfg = Config(app=_echo, http="httptools", lifespan="off", log_level="error")
    cfg.load()
    loop = asyncio.get_running_loop()
    cls = guarded_protocol(5.0, 32)
    server = await loop.create_server(lambda: cls(cfg, ServerState(), {}, _loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
