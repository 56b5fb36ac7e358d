"""A reply's body read as nonstop reads it: whatever has come, at once, with no record of
where the server's HTTP chunks began and ended.

A streamed reply comes one event to an HTTP chunk: the cloud and the local servers flush
each event as it is made, and a Messages stream is some 80 of them to a short answer,
hundreds to a long one. aiohttp's StreamReader does work per chunk that nonstop never
uses: it records each chunk's end (for `readchunk()`, which nothing here calls), and
hands the buffered chunks over one at a time, each time asking the connection to read on
even when it was never paused (aiohttp 3.14 calls the protocol's `resume_reading()`, and
with it `data_received(b"")` and the HTTP parser, for every chunk read). That was about
110 Python bytecodes a chunk, some 9,000 of the ~20,000 a streamed request cost the
gateway, more than all of nonstop's own work on it (benchmarks/results, the opcodes
runs).

`RelayReader` is the same StreamReader with three methods of its own: chunk boundaries are
not recorded, and a read of everything buffered (`readany()`, `iter_any()`) takes the
chunks in one join and resumes the connection only when it was paused (its buffer went
over the high-water mark). Flow control, end of body, errors and timeouts are the stock
reader's. A reply's reader becomes one (`relay_reader`) as soon as its head is read: the
chunks that came in the same read as the head have been recorded by then (when the
cloud sends a whole reply at once, all of them: the saving is then the reads'), and the
chunks after it are not. A reply aiohttp decompresses keeps the stock reader (its
decompressor drives the reader's flow control in ways this does not follow), so does a
reply whose connection the stock reader has paused already (`relay_reader`), and so
does every reply if the installed aiohttp is not laid out as this expects (`USABLE`).
"""

from __future__ import annotations

import aiohttp
from aiohttp import client_proto, http_parser
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader

# The stock reader's state this reads and writes, and its connection's (whether reading
# is paused): present in every aiohttp this supports (pyproject.toml); an aiohttp without
# them keeps its own reader. So does one whose replies are parsed by its pure-Python
# parser (AIOHTTP_NO_EXTENSIONS, or no compiled wheel): a pause for a full buffer that
# falls at a chunk's end leaves that parser paused until a reader asks for more after
# every chunk, as only the stock one does. The C parser lets go of such a pause within
# the body's callback.
_STATE = ("_buffer", "_buffer_offset", "_size", "_cursor", "_protocol", "_timer", "_http_chunk_splits")
USABLE = (getattr(client_proto, "HttpResponseParser", None) is getattr(http_parser, "HttpResponseParserC", object())
          and all(name in getattr(StreamReader, "__slots__", ()) for name in _STATE)
          and "_reading_paused" in getattr(BaseProtocol, "__slots__", ())
          and all(callable(getattr(StreamReader, name, None))
                  for name in ("_read_nowait", "begin_http_chunk_receiving", "end_http_chunk_receiving")))


class RelayReader(StreamReader):
    __slots__ = ()  # the stock reader's layout: a reader's class can be changed in place

    def begin_http_chunk_receiving(self) -> None:
        """(A chunk's start: not recorded.)"""

    def end_http_chunk_receiving(self) -> None:
        """(A chunk's end: not recorded.)"""

    def _read_nowait(self, n: int) -> bytes:
        """What is buffered, or (`n` > 0) up to `n` bytes of it as the stock reader reads."""
        if n != -1 or self._buffer_offset:
            return super()._read_nowait(n)
        self._timer.assert_timeout()
        buffer = self._buffer
        if len(buffer) == 1:
            data = buffer.popleft()
        else:
            data = b"".join(buffer)
            buffer.clear()
        self._size = 0
        self._cursor += len(data)
        protocol = self._protocol
        if protocol._reading_paused:  # (the buffer went over the high-water mark)
            protocol.resume_reading()
        return data


# The content codings aiohttp decodes (http_parser: the parser's own list); another one
# stays as it came.
DECODED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


def coded(resp: aiohttp.ClientResponse) -> bool:
    """Whether aiohttp decodes this reply's body when asked to (see DECODED_CODINGS): by
    the last content-encoding header, as its parser reads them."""
    codings = resp.headers.getall("content-encoding", ())
    coding = codings[-1] if codings else ""
    return coding.isascii() and coding.lower() in DECODED_CODINGS


def relay_reader(resp: aiohttp.ClientResponse) -> None:
    """Read `resp`'s body by RelayReader from here on: called as soon as its head is
    read, before any read of its body. Only for a body aiohttp does not decompress
    (asked not to, or not `coded`); what the stock reader has already buffered is kept.

    Not for a reply whose connection is paused already: the stock reader pauses it when
    it has recorded too many chunk ends (thousands of chunks that came with the head)
    or when its buffer is full (over 128 KiB that came with the head), and a pause for
    chunk ends can leave the HTTP parser holding the rest of the body until its reader
    asks the connection to read on after every chunk, as only the stock reader does.
    (After the swap no chunk ends are recorded, and with the C parser a pause for a full
    buffer is let go of inside the body's callback and resumed by the read that empties
    the buffer.)"""
    content = resp.content
    if USABLE and type(content) is StreamReader and not content._protocol._reading_paused:
        content.__class__ = RelayReader
        content._http_chunk_splits = None  # the ends recorded so far: no longer read
