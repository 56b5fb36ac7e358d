"""What the head guard costs a connection that behaves: no more instance memory than
uvicorn's own protocol (the deadlines themselves are proven against a real server in
tests/integration/test_slow_heads.py)."""

from __future__ import annotations

import asyncio
import sys

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from nonstop.server.head_guard import HeadGuardedProtocol, guarded_protocol


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
