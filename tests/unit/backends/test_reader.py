"""RelayReader: a reply's body read whole-buffer at a time, with the stock reader's flow
control, end and errors, against a real server writing HTTP chunks (conftest.py's
raw_cloud)."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys

import aiohttp
import pytest
from aiohttp.streams import StreamReader

from nonstop.backends import cloud, reader
from nonstop.backends.base import Reply
from nonstop.backends.cloud import CloudBackend
from nonstop.backends.head import forward_headers
from nonstop.backends.reader import RelayReader, coded, relay_reader
from nonstop.config import CloudConfig

Pieces = list[tuple[float, bytes]]


def _chunked(*parts: bytes, end: bool = True) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return body + (b"0\r\n\r\n" if end else b"")


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


EVENTS = [b"event: content_block_delta\ndata: {\"n\": %d}\n\n" % i for i in range(200)]


def test_the_installed_aiohttp_reader_is_laid_out_as_the_relay_reader_expects() -> None:
    # If an aiohttp upgrade moves the reader's state, every reply keeps the stock reader
    # (correct, and slower): this says so here rather than in a benchmark.
    assert reader.USABLE


def test_replies_parsed_by_aiohttps_pure_python_parser_keep_the_stock_reader() -> None:
    # That parser can stay paused at a chunk's end until a reader asks for more after
    # every chunk (see reader.py): without the C parser, RelayReader is not used.
    env = {**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", "from nonstop.backends import reader; print(reader.USABLE)"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


async def test_an_aiohttp_laid_out_otherwise_keeps_its_own_reader(raw_cloud, monkeypatch) -> None:
    monkeypatch.setattr(reader, "USABLE", False)
    url = await raw_cloud([(0.0, HEAD + _chunked(*EVENTS))])
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        relay_reader(resp)
        assert type(resp.content) is StreamReader
        assert await resp.read() == b"".join(EVENTS)


async def test_a_stream_written_a_chunk_at_a_time_reads_the_same(raw_cloud) -> None:
    pieces: Pieces = [(0.0, HEAD + _chunked(*EVENTS[:50], end=False))]
    pieces += [(0.002, _chunked(e, end=False)) for e in EVENTS[50:]]
    pieces.append((0.0, b"0\r\n\r\n"))
    url = await raw_cloud(pieces)
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        relay_reader(resp)
        assert type(resp.content) is RelayReader
        got = [c async for c in resp.content.iter_any()]
        assert resp.content.at_eof()
        assert resp.content._http_chunk_splits is None  # no chunk ends kept, before the swap or after
    assert b"".join(got) == b"".join(EVENTS)
    assert len(got) > 1  # read as it came, not at the end


async def test_a_reader_that_falls_behind_pauses_the_connection_and_resumes_it(raw_cloud) -> None:
    big = [bytes([65 + i % 26]) * 4096 for i in range(512)]  # 2 MiB in 4 KiB chunks
    url = await raw_cloud([(0.0, HEAD + _chunked(*big))])
    async with aiohttp.ClientSession(read_bufsize=16 * 1024) as s, s.get(url) as resp:
        relay_reader(resp)
        await asyncio.sleep(0.3)  # nothing read: the buffer stops near its high-water mark
        protocol = resp.connection.protocol if resp.connection else None
        assert resp.content._size <= 2 * 16 * 1024 + 64 * 1024
        assert protocol is not None and protocol._reading_paused
        out = bytearray()
        async with asyncio.timeout(10):  # a connection left paused would hang here
            async for chunk in resp.content.iter_any():
                out += chunk
                await asyncio.sleep(0)
    assert bytes(out) == b"".join(big)


async def test_sized_reads_and_whole_buffer_reads_mix(raw_cloud) -> None:
    url = await raw_cloud([(0.0, HEAD + _chunked(*EVENTS))])
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        relay_reader(resp)
        first = await resp.content.read(7)
        second = await resp.content.read(100)
        rest = b"".join([c async for c in resp.content.iter_any()])
    assert first + second + rest == b"".join(EVENTS)
    assert len(first) == 7 and len(second) == 100


async def test_a_body_cut_mid_chunk_fails_as_the_stock_reader_fails(raw_cloud) -> None:
    url = await raw_cloud([(0.0, HEAD + _chunked(*EVENTS[:3], end=False) + b"400\r\nevent: cut")])
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        relay_reader(resp)
        with pytest.raises(aiohttp.ClientPayloadError):
            async for _ in resp.content.iter_any():
                pass


async def test_a_silent_server_ends_the_read_by_its_timeout(raw_cloud) -> None:
    url = await raw_cloud([(0.0, HEAD + _chunked(EVENTS[0], end=False)), (5.0, b"0\r\n\r\n")])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=0.2)) as s, s.get(url) as resp:
        relay_reader(resp)
        assert await resp.content.readany() == EVENTS[0]
        with pytest.raises(asyncio.TimeoutError):
            await resp.content.readany()


async def test_a_reply_whose_connection_the_stock_reader_paused_keeps_the_stock_reader(raw_cloud) -> None:
    # More chunks with the head than the stock reader keeps the ends of (4,096 at the
    # cloud session's read_bufsize of 64 KiB): it pauses the connection before the swap,
    # and the HTTP parser, paused at the last of them, holds the rest of the next read
    # (here all of it) until a reader asks for more after every chunk, as only the stock
    # one does. Swapped anyway, the read waits for the connection's end and loses "bc".
    url = await raw_cloud([(0.0, HEAD + _chunked(*[b"x"] * 4097, end=False)), (0.2, _chunked(b"a", b"b", b"c")),
                           (2.0, b"")])
    async with aiohttp.ClientSession(read_bufsize=2**16) as s, s.get(url) as resp:
        assert resp.content._protocol._reading_paused
        relay_reader(resp)
        assert type(resp.content) is StreamReader
        out = bytearray()
        async with asyncio.timeout(1.5):  # (the server holds the connection open for 2 s)
            async for chunk in resp.content.iter_any():
                out += chunk
    assert bytes(out) == b"x" * 4097 + b"abc"


async def test_a_read_resumes_the_connection_only_when_it_was_paused(raw_cloud) -> None:
    pieces: Pieces = [(0.0, HEAD + _chunked(EVENTS[0], end=False))]
    pieces += [(0.005, _chunked(e, end=False)) for e in EVENTS[1:40]]
    pieces.append((0.0, b"0\r\n\r\n"))
    url = await raw_cloud(pieces)
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        relay_reader(resp)
        protocol = resp.connection.protocol if resp.connection else None
        assert protocol is not None
        resumed = 0
        resume = protocol.resume_reading

        def counted(*args: object, **kwargs: object) -> None:
            nonlocal resumed
            resumed += 1
            resume(*args, **kwargs)  # type: ignore[arg-type]

        protocol.resume_reading = counted  # type: ignore[method-assign]
        reads = [c async for c in resp.content.iter_any()]
    assert b"".join(reads) == b"".join(EVENTS[:40])
    # The stock reader asks once a chunk; here only the body's end does (feed_eof).
    assert len(reads) > 5 and resumed <= 1


async def test_the_cloud_backend_reads_a_plain_reply_by_the_relay_reader_and_a_decoded_one_not(
        raw_cloud, monkeypatch) -> None:
    swapped: list[type] = []

    def spy(resp: aiohttp.ClientResponse) -> None:
        relay_reader(resp)
        swapped.append(type(resp.content))

    monkeypatch.setattr(cloud, "relay_reader", spy)
    answer = (b'{"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], '
              b'"stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}')
    zipped = gzip.compress(answer)
    plain = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(answer)) + answer
    coded_head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                  b"content-length: %d\r\n\r\n" % len(zipped))
    for raw in (plain, coded_head + zipped):
        url = await raw_cloud(raw)
        cfg = CloudConfig(url=url, first_byte_timeout=5.0)
        session = CloudBackend.make_session(cfg)
        try:
            res = await CloudBackend(cfg, session).request("POST", b"/v1/messages", b"",
                                                           forward_headers([(b"x-api-key", b"k")]), b"{}",
                                                           expect="json")
            assert isinstance(res, Reply)
            assert b"".join([c async for c in res.body]) == answer
        finally:
            await session.close()
    assert swapped == [RelayReader]  # the gzip reply, decoded by aiohttp, kept its own


@pytest.mark.parametrize(("codings", "expected"), [
    ((), False), (("identity",), False), (("gzip",), True), (("GZIP",), True), (("br",), True),
    (("zstd",), True), (("deflate",), True), (("gzip", "identity"), False), (("identity", "gzip"), True),
    (("x-custom",), False), (("gzİp",), False),
])
def test_coded_reads_the_last_content_coding_as_aiohttp_does(codings, expected) -> None:
    class _Resp:
        headers = aiohttp.client_reqrep.CIMultiDictProxy(aiohttp.client_reqrep.CIMultiDict(
            [("content-encoding", c) for c in codings]))

    assert coded(_Resp()) is expected  # type: ignore[arg-type]
