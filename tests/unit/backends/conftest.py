"""What the backend tests share: small in-process servers, and the bundled model file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.support.inprocess import serve, smollm2

__all__ = ["serve", "smollm2"]


@pytest.fixture
async def raw_cloud() -> AsyncIterator[Callable[[bytes | list[tuple[float, bytes]]], Awaitable[str]]]:
    """A cloud that answers every request with the given raw bytes (head and body as
    written; or pieces, each written the given seconds after the one before), then
    closes the connection."""
    servers: list[asyncio.Server] = []

    async def start(reply: bytes | list[tuple[float, bytes]]) -> str:
        pieces = [(0.0, reply)] if isinstance(reply, bytes) else reply

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                for after, piece in pieces:
                    await asyncio.sleep(after)
                    writer.write(piece)
                    await writer.drain()
            except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()
