"""The cloud relay's cheap checks on what it forwards."""

from __future__ import annotations

import pytest

from nonstop.wire.framing import (
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
