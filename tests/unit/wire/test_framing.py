"""The cloud relay's cheap checks on what it forwards."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.wire.framing import (
    CR,
    LF,
    complete_events_end,
    first_malformed_event,
    lf_framed,
    wrong_content_type,
)


def test_first_malformed_finds_a_cut_json_event():
    good = b'event: a\ndata: {"type":"a"}\n\n'
    bad = b'event: b\ndata: {"type": "text_del\n\n'
    assert first_malformed_event(good + good) == -1
    assert first_malformed_event(good + bad + good) == len(good)
    assert first_malformed_event(bad) == 0
    assert first_malformed_event(b"") == -1


def test_cut_keeps_only_whole_events():
    assert complete_events_end(b'event: a\ndata: {}\n\nevent: b\ndata: {"x') == len(b'event: a\ndata: {}\n\n')
    assert complete_events_end(b'event: a\ndata: {}') == 0
    assert complete_events_end(b'event: a\r\ndata: {}\r\n\r\n') == len(b'event: a\r\ndata: {}\r\n\r\n')


def test_wrong_content_type_for_what_was_asked():
    assert wrong_content_type("stream", "text/html") and wrong_content_type("stream", "")
    assert not wrong_content_type("stream", "text/event-stream; charset=utf-8")
    assert wrong_content_type("json", "text/event-stream")
    assert not wrong_content_type("json", "application/json; charset=utf-8")
    assert not wrong_content_type("", "text/html")


@pytest.mark.parametrize("raw,framed", [
    (b"a\nb\n\n", b"a\nb\n\n"),
    (b"a\r\nb\r\n\r\n", b"a\nb\n\n"),
    (b"a\rb\r\r", b"a\nb\n\r"),  # the last CR may be half of a CRLF still to come
    (b"a\r\n\rb", b"a\n\nb"),
    (b"", b""),
])
def test_lf_framed(raw, framed):
    assert lf_framed(raw) == framed


def _end_by_both_searches(buf: bytes) -> int:
    """complete_events_end as it was first written: both ends searched, always."""
    lf, crlf = buf.rfind(b"\n\n"), buf.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


@given(st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b"\r\n\r\n", b"data: {}", b"x"]), max_size=12))
def test_cut_matches_searching_both_ends(parts: list[bytes]):
    buf = b"".join(parts)
    assert complete_events_end(buf) == _end_by_both_searches(buf)


@given(st.binary(max_size=64))
def test_single_bytes_as_ints_find_what_the_bytes_find(data: bytes):
    # CR and LF are looked for as ints (no TypeError raised and cleared on every test).
    assert (CR in data) == (b"\r" in data)
    assert (LF in data) == (b"\n" in data)
