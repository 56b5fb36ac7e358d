"""The cloud relay's cheap checks on what it forwards."""

from __future__ import annotations

from nonstop.backends.cloud import _cut, _first_malformed, _wrong_type


def test_first_malformed_finds_a_cut_json_event():
    good = b'event: a\ndata: {"type":"a"}\n\n'
    bad = b'event: b\ndata: {"type": "text_del\n\n'
    assert _first_malformed(good + good) == -1
    assert _first_malformed(good + bad + good) == len(good)
    assert _first_malformed(bad) == 0
    assert _first_malformed(b"") == -1


def test_cut_keeps_only_whole_events():
    assert _cut(b'event: a\ndata: {}\n\nevent: b\ndata: {"x') == len(b'event: a\ndata: {}\n\n')
    assert _cut(b'event: a\ndata: {}') == 0
    assert _cut(b'event: a\r\ndata: {}\r\n\r\n') == len(b'event: a\r\ndata: {}\r\n\r\n')


def test_wrong_content_type_for_what_was_asked():
    assert _wrong_type("stream", "text/html") and _wrong_type("stream", "")
    assert not _wrong_type("stream", "text/event-stream; charset=utf-8")
    assert _wrong_type("json", "text/event-stream")
    assert not _wrong_type("json", "application/json; charset=utf-8")
    assert not _wrong_type("", "text/html")
