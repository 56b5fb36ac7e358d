"""The sans-IO SSE decoder and encoder, tested with plain bytes."""

from __future__ import annotations

import pytest

from nonstop.wire.sse import (
    JSONEventDecoder,
    MalformedEvent,
    SSEDecoder,
    SSEEvent,
    encode_event,
    loads_with_lone_surrogates,
)

STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1"}}\n'
    b"\n"
    b": keep-alive comment\n"
    b"event: ping\n"
    b'data: {"type":"ping"}\n'
    b"\n"
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","delta":{"text":"h\xc3\xa9llo \xe2\x9c\x93"}}\n'
    b"\n"
    b"data: first\n"
    b"data: second\n"
    b"\n"
)
EXPECTED = [
    SSEEvent("message_start", '{"type":"message_start","message":{"id":"msg_1"}}'),
    SSEEvent("ping", '{"type":"ping"}'),
    SSEEvent("content_block_delta", '{"type":"content_block_delta","delta":{"text":"héllo ✓"}}'),
    SSEEvent("message", "first\nsecond"),
]


def decode_all(chunks: list[bytes]) -> list[SSEEvent]:
    dec = SSEDecoder()
    out: list[SSEEvent] = []
    for c in chunks:
        out.extend(dec.feed(c))
    out.extend(dec.flush())
    return out


def with_endings(raw: bytes, ending: bytes) -> bytes:
    return raw.replace(b"\n", ending)


ENDINGS = [b"\n", b"\r\n", b"\r"]
ENDING_IDS = ["lf", "crlf", "cr"]


@pytest.mark.parametrize("ending", ENDINGS, ids=ENDING_IDS)
def test_whole_stream(ending: bytes) -> None:
    assert decode_all([with_endings(STREAM, ending)]) == EXPECTED


@pytest.mark.parametrize("ending", ENDINGS, ids=ENDING_IDS)
def test_split_at_every_position(ending: bytes) -> None:
    raw = with_endings(STREAM, ending)
    for i in range(len(raw) + 1):
        assert decode_all([raw[:i], raw[i:]]) == EXPECTED, f"split at {i}"


@pytest.mark.parametrize("ending", ENDINGS, ids=ENDING_IDS)
def test_split_at_every_pair_of_positions(ending: bytes) -> None:
    raw = with_endings(STREAM[:120], ending) + with_endings(b"\n\n", ending)
    want = decode_all([raw])
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert decode_all([raw[:i], raw[i:j], raw[j:]]) == want, (i, j)


@pytest.mark.parametrize("ending", ENDINGS, ids=ENDING_IDS)
def test_byte_at_a_time(ending: bytes) -> None:
    raw = with_endings(STREAM, ending)
    assert decode_all([raw[i : i + 1] for i in range(len(raw))]) == EXPECTED


def test_events_come_out_as_soon_as_complete() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"event: a\ndata: 1\n") == []
    assert dec.feed(b"\n") == [SSEEvent("a", "1")]
    assert dec.feed(b"data: 2\n\nda") == [SSEEvent("message", "2")]
    assert dec.feed(b"ta: 3\n\n") == [SSEEvent("message", "3")]


def test_cr_at_chunk_end_then_lf() -> None:
    """CRLF split across chunks is one line ending, not a line plus a blank line."""
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\ndata: b\r") == []
    # A CR right after a line's end ends the blank line whatever follows: the event is
    # complete now, and the LF that follows is that CRLF's, not another blank line.
    assert dec.feed(b"\n\r") == [SSEEvent("message", "a\nb")]
    assert dec.feed(b"\n") == []
    assert dec.flush() == []


def test_cr_at_chunk_end_then_other_byte() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []  # a lone CR could still be half of CRLF
    assert dec.feed(b"\r") == [SSEEvent("message", "a")]  # but this one ends a blank line either way
    assert dec.feed(b"data: b\r\r") == [SSEEvent("message", "b")]
    assert dec.flush() == []


def test_cr_only_event_end_at_stream_end() -> None:
    """An event ended by CR CR as the last bytes of a stream: one event, not lost, not doubled."""
    dec = SSEDecoder()
    early = dec.feed(b"data: x\r\r")
    assert early + dec.flush() == [SSEEvent("message", "x")]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b": just a comment\n\n", []),
        (b":\n\n", []),
        (b": c1\ndata: a\n: c2\ndata: b\n\n", [SSEEvent("message", "a\nb")]),
        (b"data:no-space\n\n", [SSEEvent("message", "no-space")]),
        (b"data:  two spaces\n\n", [SSEEvent("message", " two spaces")]),
        (b"data\n\n", [SSEEvent("message", "")]),
        (b"data:\ndata:\n\n", [SSEEvent("message", "\n")]),
        (b"data: a: b: c\n\n", [SSEEvent("message", "a: b: c")]),
        (b"id: 7\nretry: 100\ndata: x\n\n", [SSEEvent("message", "x")]),
        (b"unknown: field\ndata: x\n\n", [SSEEvent("message", "x")]),
        (b"\n\n\n", []),
        (b"event: e1\ndata: 1\n\ndata: 2\n\n", [SSEEvent("e1", "1"), SSEEvent("message", "2")]),
    ],
    ids=[
        "comment-only", "empty-comment", "comments-between-data", "no-space", "two-spaces",
        "bare-data", "empty-data-lines", "colons-in-value", "id-retry-ignored", "unknown-field",
        "blank-lines", "event-name-resets",
    ],
)
def test_field_parsing(raw: bytes, expected: list[SSEEvent]) -> None:
    assert decode_all([raw]) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"event: message_stop\ndata: {}", [SSEEvent("message_stop", "{}")]),
        (b"event: message_stop\ndata: {}\n", [SSEEvent("message_stop", "{}")]),
        (b"data: a\ndata: b", [SSEEvent("message", "a\nb")]),
        (b"data: x\r\n", [SSEEvent("message", "x")]),
        (b"data: x\r", [SSEEvent("message", "x")]),
        (b"", []),
        (b": only a comment", []),
    ],
    ids=["no-newline", "one-newline", "multi-line", "crlf", "cr", "nothing", "comment"],
)
def test_flush_final_event_without_blank_line(raw: bytes, expected: list[SSEEvent]) -> None:
    dec = SSEDecoder()
    early = dec.feed(raw)
    assert early == []
    assert dec.flush() == expected
    assert dec.flush() == []


def test_flush_after_complete_stream_is_empty() -> None:
    dec = SSEDecoder()
    dec.feed(STREAM)
    assert dec.flush() == []


def test_utf8_split_inside_a_character() -> None:
    raw = "data: ✓é\n\n".encode()
    for i in range(len(raw) + 1):
        assert decode_all([raw[:i], raw[i:]]) == [SSEEvent("message", "✓é")]


def test_buffer_limit() -> None:
    dec = SSEDecoder(max_buffer=64)
    dec.feed(b"data: " + b"x" * 50)
    with pytest.raises(ValueError):
        dec.feed(b"x" * 50)


def test_buffer_limit_counts_only_an_unfinished_line() -> None:
    dec = SSEDecoder(max_buffer=64)
    for _ in range(100):
        assert dec.feed(b"data: " + b"x" * 40 + b"\n\n") == [SSEEvent("message", "x" * 40)]


# --- encode_event ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "data", "wire"),
    [
        ("ping", '{"type":"ping"}', b'event: ping\ndata: {"type":"ping"}\n\n'),
        ("", "hi", b"data: hi\n\n"),
        ("e", "a\nb", b"event: e\ndata: a\ndata: b\n\n"),
        ("e", b"bytes", b"event: e\ndata: bytes\n\n"),
        ("e", "", b"event: e\ndata: \n\n"),
    ],
)
def test_encode_event(event: str, data: str | bytes, wire: bytes) -> None:
    assert encode_event(event, data) == wire


@pytest.mark.parametrize(
    "event",
    [
        SSEEvent("message_start", '{"type":"message_start"}'),
        SSEEvent("content_block_delta", '{"delta":{"text":"é ✓ \\n"}}'),
        SSEEvent("message", "line one\nline two\n\nafter blank"),
        SSEEvent("message", ""),
        SSEEvent("e", " leading space"),
        SSEEvent("e", ": looks like a comment"),
        SSEEvent("error", "trailing newline\n"),
    ],
    ids=["json", "unicode", "multi-line", "empty", "leading-space", "colon", "trailing-newline"],
)
def test_encode_decode_round_trip(event: SSEEvent) -> None:
    wire = event.encode()
    assert wire == encode_event(event.event, event.data)
    assert decode_all([wire]) == [event]
    for i in range(len(wire) + 1):
        assert decode_all([wire[:i], wire[i:]]) == [event]


def test_round_trip_of_many_events() -> None:
    events = [SSEEvent(f"e{i}", f"payload {i}\nmore {i}") for i in range(20)]
    wire = b"".join(e.encode() for e in events)
    assert decode_all([wire]) == events
    assert decode_all([wire[i : i + 7] for i in range(0, len(wire), 7)]) == events


# --- JSONEventDecoder -------------------------------------------------------------------

JSON_STREAM = (
    "event: message_start\n"
    'data: {"type":"message_start","message":{"id":"msg_1"}}\n'
    "\n"
    ": keep-alive comment\n"
    "event: ping\n"
    "data: 42\n"
    "\n"
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","delta":{"text":"h\u00e9"}}\n'
    "\n"
    "event: error\n"
    'data: {"type":"error","error":{"type":"overloaded_error"\n'
    "\n"
    'data: {"choices":[]}\n'
    "\n"
    "data: [DONE]\n"
    "\n"
    'data: {"after":"done"}\n'
    "\n"
)
JSON_EXPECTED = [
    ("message_start", {"type": "message_start", "message": {"id": "msg_1"}}),
    ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "hé"}}),
    ("message", {"choices": []}),
]


def json_events(chunks: list[str]) -> list[tuple[str, dict]]:
    dec = JSONEventDecoder()
    return [(ev.event, data) for c in chunks for ev, data in dec.feed(c.encode())]


def test_json_events_keep_only_objects() -> None:
    assert json_events([JSON_STREAM]) == JSON_EXPECTED


def test_json_events_split_at_every_position() -> None:
    for i in range(len(JSON_STREAM) + 1):
        assert json_events([JSON_STREAM[:i], JSON_STREAM[i:]]) == JSON_EXPECTED, i


def test_json_event_bytes_decode_to_the_same_event() -> None:
    dec = JSONEventDecoder()
    got = dec.feed(JSON_STREAM.encode())
    raw = b"".join(ev.encode() for ev, _ in got)
    assert json_events([raw.decode()]) == JSON_EXPECTED
    assert got[0][0].encode() == b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1"}}\n\n'


def test_json_events_wait_for_the_blank_line() -> None:
    dec = JSONEventDecoder()
    assert dec.feed(b'event: ping\ndata: {"type":"ping"}\n') == []
    assert [(ev.event, data) for ev, data in dec.feed(b"\n")] == [("ping", {"type": "ping"})]


def test_an_event_of_many_lines_over_the_limit_is_refused():
    dec = SSEDecoder(max_buffer=1024)
    with pytest.raises(ValueError):
        for _ in range(100):
            dec.feed(b"data: " + b"x" * 100 + b"\n")  # lines that never end their event


def test_a_cr_that_ends_a_blank_line_at_the_end_of_a_chunk_dispatches_the_event_at_once():
    dec = SSEDecoder()
    assert dec.feed(b"event: message_stop\rdata: {}\r\r") == [SSEEvent("message_stop", "{}")]
    assert dec.feed(b"\nevent: ping\r\ndata: {}\r\n\r\n") == [SSEEvent("ping", "{}")]  # that CR's LF, then more


# --- the one-regex reading of plain events ------------------------------------------------
# A read made only of plain events (an optional `event:` line, one `data:` line, the blank
# line; LF-framed) is decoded by SSEDecoder._plain; anything else by the line loop. Fed a
# byte at a time, the decoder never holds a complete event at an event's start, so the
# line loop reads everything: it is the reference the whole reads are held to.

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TEXT = st.text(st.sampled_from(list("ab :é✓{}\"\\\t")), max_size=12)
_LINES = [
    st.builds(lambda n, d: f"event: {n}\ndata: {d}\n\n", _TEXT, _TEXT),  # plain
    st.builds(lambda n, d: f"event:{n}\ndata:{d}\n\n", _TEXT, _TEXT),  # plain, no spaces
    st.builds(lambda d: f"data: {d}\n\n", _TEXT),  # plain, no name (OpenAI's)
    st.just("event:\ndata: x\n\n"),  # an empty name
    st.builds(lambda d: f"data: {d}\ndata: {d}\n\n", _TEXT),  # two data lines
    st.builds(lambda d: f": {d}\n", _TEXT),  # a comment
    st.builds(lambda d: f"id: {d}\nevent: e\ndata: {d}\n\n", _TEXT),  # an id first
    st.just("data\n\n"),  # a field without its colon
    st.just("event: lone\n\n"),  # no data: not dispatched
    st.just("\n"),  # a stray blank line
    st.builds(lambda n, d: f"data: {d}\nevent: {n}\n\n", _TEXT, _TEXT),  # data before the name
    st.builds(lambda n, d: f"event: {n}\r\ndata: {d}\r\n\r\n", _TEXT, _TEXT),  # CRLF
]


def _one_byte_at_a_time(raw: bytes) -> list[SSEEvent]:
    return decode_all([raw[i : i + 1] for i in range(len(raw))])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(*_LINES), max_size=8), st.lists(st.integers(0, 200), max_size=4))
def test_plain_events_read_whole_or_split_as_the_line_loop_reads_them(parts: list[str], cuts: list[int]) -> None:
    raw = "".join(parts).encode()
    want = _one_byte_at_a_time(raw)
    assert decode_all([raw]) == want
    points = sorted({min(c, len(raw)) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert decode_all(pieces) == want


def test_plain_events_are_read_by_one_match_each() -> None:
    dec = SSEDecoder()
    raw = b'event: a\ndata: {"x":1}\n\ndata: [DONE]\n\nevent: b\ndata: tail'
    assert dec._plain(raw, raw.rfind(b"\n\n") + 2) == [SSEEvent("a", '{"x":1}'), SSEEvent("message", "[DONE]")]
    assert dec.feed(raw) == [SSEEvent("a", '{"x":1}'), SSEEvent("message", "[DONE]")]
    assert dec.feed(b"\n\n") == [SSEEvent("b", "tail")]
    other = b": comment\ndata: x\n\n"
    assert dec._plain(other, len(other)) is None  # the line loop's


def test_a_plain_event_over_the_limit_is_refused() -> None:
    dec = SSEDecoder(max_buffer=64)
    with pytest.raises(ValueError):
        dec.feed(b"event: e\ndata: " + b"x" * 100 + b"\n\n")


@pytest.mark.parametrize("data", [b'{"a":1}', b"", b"caf\xc3\xa9"], ids=["json", "empty", "utf8"])
@pytest.mark.parametrize("event", ["content_block_delta", ""], ids=["named", "unnamed"])
def test_encoding_one_line_of_bytes_is_the_general_encoding(event: str, data: bytes) -> None:
    general = "".join(f"data: {line}\n" for line in data.decode().split("\n"))
    want = (f"event: {event}\n{general}\n" if event else f"{general}\n").encode()
    assert encode_event(event, data) == want


def test_encoding_bytes_that_are_not_utf8_is_refused_as_before() -> None:
    with pytest.raises(UnicodeDecodeError):
        encode_event("e", b"\xff")


def test_a_surrogate_pair_split_across_events_keeps_the_rest_of_each() -> None:
    # orjson refuses a lone surrogate escape; the standard library reads it, and the lone
    # half becomes U+FFFD: the text around it (or a tool call's arguments) is not lost.
    d = JSONEventDecoder(strict=True)
    got = d.feed(b'data: {"t":"before \\ud83d"}\n\ndata: {"t":"\\ude00 after","k":["\\ud83d"]}\n\n'
                 b'data: {"t":"\\ud83d\\ude00 whole"}\n\n')
    assert [doc for _, doc in got] == [{"t": "before \ufffd"}, {"t": "\ufffd after", "k": ["\ufffd"]}, {"t": "\U0001f600 whole"}]
    assert loads_with_lone_surrogates('{"a": "\\udc00"}') == {"a": "\ufffd"}
    assert loads_with_lone_surrogates("{not json \\u0041") is None
    assert loads_with_lone_surrogates('{"a": 1}') is None  # nothing to mend: orjson's answer stands


@pytest.mark.parametrize("junk", [b'{"choices": [ {"delta": ', b"[1, 2", b'{"a": 1} trailing'])
def test_a_strict_decoder_refuses_data_meant_as_json(junk: bytes) -> None:
    lenient = JSONEventDecoder()
    assert [doc for _, doc in lenient.feed(b"data: " + junk + b'\n\ndata: {"ok": 1}\n\n')] == [{"ok": 1}]
    with pytest.raises(MalformedEvent):
        JSONEventDecoder(strict=True).feed(b"data: " + junk + b"\n\n")
    # What is not meant as JSON is skipped by both (a keep-alive word, a bare value).
    for other in (b"keep-alive", b"42", b'"text"'):
        assert JSONEventDecoder(strict=True).feed(b"data: " + other + b"\n\n") == []


def test_good_events_before_malformed_data_are_read_first() -> None:
    """Content and then a broken event in one read: the content reaches the client, then
    the error (raised by the next feed, or by flush at the stream's end)."""
    good = b'data: {"n": 1}\n\ndata: {"n": 2}\n\n'
    d = JSONEventDecoder(strict=True)
    assert [doc for _, doc in d.feed(good + b'data: {"n": \n\ndata: {"n": 3}\n\n')] == [{"n": 1}, {"n": 2}]
    with pytest.raises(MalformedEvent):
        d.feed(b'data: {"n": 4}\n\n')
    d = JSONEventDecoder(strict=True)
    assert len(d.feed(good + b'data: [1,\n\n')) == 2
    with pytest.raises(MalformedEvent):
        d.flush()


def test_nothing_after_done_is_read() -> None:
    d = JSONEventDecoder()
    got = d.feed(b'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {"after": 1}\n\n')
    assert [doc for _, doc in got] == [{"a": 1}] and d.done
    assert d.feed(b'data: {"later": 1}\n\n') == []
