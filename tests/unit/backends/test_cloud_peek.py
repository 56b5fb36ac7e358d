"""The peek at a cloud stream's first events (backends/cloud.py _peek_stream): the stream
the cloud sends (LF-framed, one `event:` and one `data:` line an event) is read without
the SSE decoder, and must be decided exactly as the decoder's reading decides it, for
every way the first events can come: split anywhere, an error before content or already
in hand, a malformed event, and every framing the fast reading leaves to the decoder."""

from __future__ import annotations

import asyncio
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nonstop.backends.cloud as cloud
from nonstop.routing.classify import Verdict


def _ev(name: str | None, data: object, *, space: bool = True, raw: bytes | None = None) -> bytes:
    line = b"data: " + (raw if raw is not None else orjson.dumps(data)) + b"\n"
    if name is None:
        return line + b"\n"
    return b"event:" + (b" " if space else b"") + name.encode() + b"\n" + line + b"\n"


MSG = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                            "content": [], "usage": {"input_tokens": 11, "output_tokens": 1}}}
START = _ev("message_start", MSG)
PING = _ev("ping", {"type": "ping"})
BLOCK = _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
DELTA = _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})
STOP = _ev("content_block_stop", {"type": "content_block_stop", "index": 0})
MDELTA = _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})
MSTOP = _ev("message_stop", {"type": "message_stop"})
OVERLOADED = _ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
RATE = _ev("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
WHOLE = START + PING + BLOCK + DELTA + STOP + MDELTA + MSTOP

STREAMS = {
    "plain": WHOLE,
    "no space": b"".join(_ev(n, {"type": n}, space=False) for n in ("message_start", "content_block_start", "message_stop")),
    "content first": BLOCK + DELTA + MSTOP,
    "message_stop only": START + MSTOP,
    "error first": OVERLOADED,
    "error after start": START + PING + RATE,
    "error in hand after content": START + BLOCK + DELTA + OVERLOADED,
    "error's data before its name": START + b'data: {"type":"error","error":{"type":"overloaded_error","message":"x"}}\nevent: error\n\n',
    "malformed start": _ev("message_start", None, raw=b"{not json") + BLOCK + DELTA,
    "malformed ping": START + _ev("ping", None, raw=b"ping") + BLOCK,
    "malformed content": START + _ev("content_block_start", None, raw=b"[1]") + DELTA,
    "malformed error": START + _ev("error", None, raw=b"oops"),
    "malformed after content": START + BLOCK + _ev("content_block_delta", None, raw=b"half {"),
    "error named in a text": START + BLOCK + _ev("content_block_delta", {"text": "\nevent: error\n"}) + MSTOP,
    "a name in the data": START + _ev(None, {"text": "event: content_block_start"}) + BLOCK,
    "unnamed events": _ev(None, {"type": "message_start"}) + _ev(None, {"type": "ping"}) + BLOCK,
    "comment lines": b": keep-alive\n\n" + START + b": more\n" + BLOCK,
    "two data lines": START + b"event: content_block_start\ndata: {\"type\":\ndata: \"content_block_start\"}\n\n" + DELTA,
    "no data": b"event: error\n\n" + START + BLOCK,
    "two names": b"event: error\nevent: ping\ndata: {}\n\n" + BLOCK,
    "two names, error last": b"event: ping\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}\n\n" + BLOCK,
    "id and retry lines": b"id: 1\nretry: 5\n" + START + BLOCK,
    "extra blank lines": START + b"\n\n" + BLOCK,
    "crlf": WHOLE.replace(b"\n", b"\r\n"),
    "cr": WHOLE.replace(b"\n", b"\r"),
    "ends before content": START + PING,
    "ends mid-event": START + b"event: content_block_start\ndata: {\"type\"",
    "ends without the blank line": START + b'event: content_block_start\ndata: {"type":"content_block_start"}\n',
    "empty": b"",
    "not sse": b"<html>busy</html>",
}


class _Content:
    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    async def readany(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


class _Resp:
    def __init__(self, pieces: list[bytes]):
        self.content = _Content(pieces)


def _split(body: bytes, piece: int) -> list[bytes]:
    return [body[i : i + piece] for i in range(0, len(body), piece)]


def _outcome(res: object) -> tuple:
    if isinstance(res, Verdict):
        return ("verdict", res.kind, res.failover, res.detail, res.status, res.until is None)
    assert isinstance(res, cloud._Peeked)
    return ("peeked", res.data)


async def _peek(pieces: list[bytes], *, fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(cloud, "_peek_plain", lambda buf: False)
        return _outcome(await cloud._peek_stream(_Resp(list(pieces))))


@pytest.mark.parametrize("piece", [1, 2, 5, 13, 64, 1 << 20], ids=lambda p: f"piece{p}")
@pytest.mark.parametrize("name", list(STREAMS))
async def test_the_fast_reading_decides_as_the_decoder_does(name, piece, monkeypatch):
    pieces = _split(STREAMS[name], piece)
    assert await _peek(pieces, fast=True, monkeypatch=monkeypatch) == await _peek(pieces, fast=False, monkeypatch=monkeypatch)


@pytest.mark.parametrize("name", ["plain", "no space", "content first", "message_stop only", "error first",
                                  "error after start", "error in hand after content", "malformed start",
                                  "malformed content", "malformed after content", "error named in a text",
                                  "ends before content"])
def test_the_cloud_s_own_framing_is_read_without_the_decoder(name):
    # Whole or read so far, these never go to the decoder.
    assert cloud._peek_plain(STREAMS[name]) is not False


@pytest.mark.parametrize("name", ["unnamed events", "comment lines", "two data lines", "no data", "two names",
                                  "id and retry lines", "extra blank lines", "crlf", "cr"])
def test_other_framings_go_to_the_decoder(name):
    assert cloud._peek_plain(STREAMS[name]) is False


def test_a_whole_first_read_hands_its_scan_to_the_relay():
    peeked = cloud._peek_plain(WHOLE)
    assert isinstance(peeked, cloud._Peeked)
    assert peeked.scan == (*cloud._scan(WHOLE), len(WHOLE)) == (-1, cloud._notable(WHOLE), len(WHOLE))
    assert [name for name, _ in peeked.scan.notable] == [b"message_start", b"message_delta", b"message_stop"]


def test_a_first_read_with_a_part_event_hands_the_scan_of_its_whole_events():
    # The relay's first cut is those events: the part event waits for its end.
    peeked = cloud._peek_plain(WHOLE + b"event: content_block_delta\ndata: {")
    assert isinstance(peeked, cloud._Peeked)
    assert peeked.scan == (*cloud._scan(WHOLE), len(WHOLE))


@pytest.mark.parametrize("piece", [1, 7, 64, 200, 1 << 20], ids=lambda p: f"piece{p}")
@pytest.mark.parametrize("name", list(STREAMS))
async def test_the_relay_reads_the_first_read_as_the_peek_handed_it(name, piece):
    # However the first reads were cut, what the peek hands on changes nothing the relay
    # sends or records.
    resp = _Resp(_split(STREAMS[name], piece))
    peeked = await cloud._peek_stream(resp)
    if not isinstance(peeked, cloud._Peeked):
        return

    async def relayed(scan):
        usage = cloud.Usage()
        out = [c async for c in cloud._relay_stream(_Stream(resp.content.pieces), peeked.data, usage, math.inf, scan)]
        return out, (usage.input_tokens, usage.output_tokens, usage.stop_reason, usage.complete, usage.error, usage.final)

    handed = await relayed(peeked.scan)
    assert handed == await relayed(None)


def test_a_malformed_event_after_the_first_content_is_handed_to_the_relay():
    # Not the peek's to fail over on (the decoder's reading stops at the first content):
    # the relay relays what comes before it and ends the stream there.
    body = START + BLOCK + _ev("content_block_delta", None, raw=b"half {") + MSTOP
    peeked = cloud._peek_plain(body)
    assert isinstance(peeked, cloud._Peeked)
    assert peeked.scan is not None and peeked.scan.bad == len(START + BLOCK)


async def test_the_relay_reads_usage_from_the_handed_events():
    class Stream:
        def __init__(self):
            self.content = self

        def iter_any(self):
            return self

        def __aiter__(self):
            return self

        async def __anext__(self):
            raise StopAsyncIteration

        def at_eof(self):
            return True

        def release(self):
            pass

    peeked = cloud._peek_plain(WHOLE)
    assert isinstance(peeked, cloud._Peeked)
    usage = cloud.Usage()
    out = b"".join([c async for c in cloud._relay_stream(Stream(), peeked.data, usage, math.inf, peeked.scan)])
    assert out == WHOLE
    assert (usage.input_tokens, usage.output_tokens, usage.stop_reason, usage.complete) == (11, 3, "end_turn", True)



class _SmallDecoder(cloud.SSEDecoder):
    def __init__(self) -> None:
        super().__init__(max_buffer=4096)


async def test_a_first_event_that_never_ends_is_refused_at_the_decoder_s_limit(monkeypatch):
    # No blank line in sight: past MAX_EVENT the decoder reads the bytes, and refuses them
    # as it always has (the cloud attempt fails; the request goes to a local backend).
    monkeypatch.setattr(cloud, "MAX_EVENT", 4096)
    monkeypatch.setattr(cloud, "SSEDecoder", _SmallDecoder)
    pieces = [b'event: message_start\ndata: {"type": "message_start", "pad": "'] + [b"x" * 1024] * 8
    with pytest.raises(ValueError):
        await cloud._peek_stream(_Resp(pieces))


# --- the relay's reads of plain events --------------------------------------------------------


class _Stream:
    """A cloud response whose body comes in the given reads."""

    def __init__(self, pieces: list[bytes]):
        self.content = self
        self.pieces = list(pieces)

    def iter_any(self):
        return self

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if not self.pieces:
            raise StopAsyncIteration
        return self.pieces.pop(0)

    def at_eof(self) -> bool:
        return not self.pieces

    async def read(self, n: int) -> bytes:  # what is left after the last event
        return self.pieces.pop(0)[:n] if self.pieces else b""

    def release(self) -> None:
        pass


async def _relayed(pieces: list[bytes], *, fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """What the relay yields for a stream read in `pieces` (the peek's read being the first
    piece), read by read, and what it records."""
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(cloud, "_plain_read", lambda data: False)
        usage = cloud.Usage()
        first, rest = (pieces[0], pieces[1:]) if pieces else (b"", [])
        out = [c async for c in cloud._relay_stream(_Stream(rest), first, usage, math.inf)]
        return out, (usage.input_tokens, usage.output_tokens, usage.stop_reason, usage.complete, usage.error,
                     usage.final)


def _events(body: bytes) -> list[bytes]:
    """The body read an event at a time, as the cloud writes a stream."""
    parts = body.split(b"\n\n")
    return [p + b"\n\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


@pytest.mark.parametrize("reads", ["events", "piece7", "piece64", "whole"])
@pytest.mark.parametrize("name", list(STREAMS))
async def test_plain_reads_are_relayed_as_the_full_checks_relay_them(name, reads, monkeypatch):
    body = STREAMS[name]
    pieces = (_events(body) if reads == "events" else [body] if reads == "whole"
              else _split(body, int(reads.removeprefix("piece"))))
    assert (await _relayed(pieces, fast=True, monkeypatch=monkeypatch)
            == await _relayed(pieces, fast=False, monkeypatch=monkeypatch))


@pytest.mark.parametrize("read", [
    DELTA, PING, BLOCK, STOP, DELTA + DELTA + STOP,
    b'event:content_block_delta\ndata:{"a":1}\n\n',
    b'event: content_block_delta\ndata: \t{"a":1} \x0b\n\n',
    b"event:  message_stop\ndata: {}\n\n",  # two spaces: not the name message_stop, as _NOTABLE reads it
    b"event: message_stops\ndata: {}\n\n",
])
def test_what_counts_as_a_plain_read(read):
    assert cloud._plain_read(read)


@pytest.mark.parametrize("read", [
    START, MDELTA, MSTOP, OVERLOADED, b"event:message_stop\ndata: {}\n\n", b"event:error\ndata: {}\n\n",
    DELTA.replace(b"\n", b"\r\n"), DELTA.replace(b"\n", b"\r"), DELTA[:-1], DELTA + DELTA[:10], b"data: {}\n\n",
    b": ping\n\n", b"event: ping\ndata: {}\r\n\n", b"event: ping\ndata: {\r}\n\n",
    b"event: ping\ndata: [1]\n\n", b"event: ping\ndata: {\n\n", b"event: ping\ndata: {}\ndata: {}\n\n",
    b"id: 1\nevent: ping\ndata: {}\n\n", b"event: ping\r\ndata: {}\n\n", b"", b"\n\n",
])
def test_what_is_read_in_full(read):
    assert not cloud._plain_read(read)


def test_a_long_read_goes_to_the_full_checks():
    # A burst of plain events: whole plain events, but longer than the match is worth.
    burst = DELTA * (cloud.PLAIN_READ_MAX // len(DELTA) + 1)
    assert cloud._PLAIN_RUN.fullmatch(burst) is not None
    assert not cloud._plain_read(burst)
    assert cloud._plain_read(DELTA * (cloud.PLAIN_READ_MAX // len(DELTA)))


_NAMES = [b"event: content_block_delta\n", b"event:content_block_delta\n", b"event: ping\n", b"event: message_start\n",
          b"event: message_delta\n", b"event: message_stop\n", b"event:error\n", b"event:  error\n", b"event: error \n",
          b"event: ping\r\n", b""]
_DATA = [b'data: {"type":"x","usage":{"input_tokens":5,"output_tokens":7},"stop_reason":"end_turn"}\n',
         b'data: {"type":"error","error":{"type":"overloaded_error","message":"m"}}\n',
         b"data: {}\n", b"data:{} \x0c\n", b"data: nope\n", b"data: {\n", b"data: }{\n", b"data: {}\r\n", b"data: {}\r"]
_OTHER = [b": comment\n", b"id: 3\n", b"\n", b"\r\n", b"\r"]
# Events mostly as the cloud frames them, with every way of framing one otherwise.
_EVENT = st.one_of(
    st.builds(lambda n, d, end: n + b"".join(d) + end, st.sampled_from(_NAMES),
              st.lists(st.sampled_from(_DATA), max_size=2), st.sampled_from([b"\n", b"\n", b"\r\n", b""])),
    st.sampled_from(_OTHER))


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(_EVENT, max_size=16), cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
       by_event=st.booleans())
def test_any_stream_is_relayed_as_the_full_checks_relay_it(lines, cuts, by_event):
    body = b"".join(lines)
    if by_event:
        pieces = _events(body)
    else:
        at = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
        pieces = [body[a:b] for a, b in zip(at, at[1:], strict=False)]
    with pytest.MonkeyPatch.context() as m:
        assert (asyncio.run(_relayed(pieces, fast=True, monkeypatch=m))
                == asyncio.run(_relayed(pieces, fast=False, monkeypatch=m)))


async def test_a_stream_read_an_event_at_a_time_takes_the_plain_reads_whole(monkeypatch):
    matched = []

    def counting(data: bytes) -> bool:
        matched.append(plain(data))
        return matched[-1]

    plain = cloud._plain_read
    monkeypatch.setattr(cloud, "_plain_read", counting)
    out, usage = await _relayed(_events(WHOLE), fast=True, monkeypatch=monkeypatch)
    assert b"".join(out) == WHOLE
    assert usage == (11, 3, "end_turn", True, "", True)
    # The ping, the block's start, its delta and its stop go as they came; message_start,
    # message_delta and message_stop are read in full.
    assert matched == [False, True, True, True, True, False, False]
