"""The relay's reading of a cloud stream's whole events (backends/cloud.py `_scan`): one
pass for the malformed data lines and the notable events, held to the two regexes it
replaced, which read a chunk once each. Every answer must be the same, for the cloud's
own framing and for any bytes at all."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

import nonstop.backends.cloud as cloud
from nonstop.wire.framing import first_malformed_event

# The reading as it was: a data line that is not one JSON object, searched for.
_BAD_DATA = re.compile(rb"\ndata:(?![ \t\x0b\x0c]*\{[^\n]*\}[ \t\x0b\x0c]*(?:\n|$))")
_GOOD_FIRST = re.compile(rb"data:[ \t\x0b\x0c]*\{[^\n]*\}[ \t\x0b\x0c]*(?:\n|$)")


def _first_malformed(events: bytes) -> int:
    if b"\r" in events:
        return first_malformed_event(events)
    if (events.startswith(b"data:") and _GOOD_FIRST.match(events) is None) or _BAD_DATA.search(events):
        return first_malformed_event(events)
    return -1


def _dumps(value: object, *, spaced: bool = False) -> bytes:
    # (json, not orjson: counts past 64 bits are written too.)
    return json.dumps(value, separators=(", ", ": ") if spaced else (",", ":")).encode()


NAMES = ["message_start", "message_delta", "message_stop", "error", "ping", "content_block_delta",
         "content_block_start", "message_stopped", "errors", ""]
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                     max_leaves=6)
_line = st.one_of(
    st.builds(lambda n, sp: b"event:" + (b" " if sp else b"") + n.encode(), st.sampled_from(NAMES), st.booleans()),
    st.builds(lambda v, sp: b"data:" + (b" " if sp else b"") + _dumps(v), _json, st.booleans()),
    st.builds(lambda d: b"data: " + _dumps(d), st.dictionaries(st.sampled_from(["text", "type"]),
                                                                     st.sampled_from(["\nevent: error\n", "x\ndata: y"]))),
    st.sampled_from([b"data: {", b"data: }", b"data: {x} ", b"data:\t{}\x0b", b"data: {}\r", b"data:", b": ping",
                     b"event: error", b"xevent: message_stop", b"id: 1", b"", b"data: {\"a\": 1}  x"]),
    st.binary(max_size=12),
)
_chunk = st.builds(lambda lines, end: b"\n".join(lines) + end, st.lists(_line, max_size=12),
                   st.sampled_from([b"", b"\n", b"\n\n", b"\r\n\r\n"]))


@settings(max_examples=3000, deadline=None)
@given(_chunk)
def test_one_pass_finds_what_the_two_regexes_found(chunk):
    assert cloud._scan(chunk) == (_first_malformed(chunk), cloud._notable(chunk))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_one_pass_agrees_on_any_bytes(chunk):
    assert cloud._scan(chunk) == (_first_malformed(chunk), cloud._notable(chunk))


def test_the_cloud_s_stream_is_read_in_one_pass():
    whole = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":5}}}\n\n'
             b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"\\nevent: error\\n"}}\n\n'
             b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    bad, notable = cloud._scan(whole)
    assert bad == -1
    assert [name for name, _ in notable] == [b"message_start", b"message_stop"]
    assert all(whole[at:].startswith(b"data: ") for _, at in notable)
    cut = whole.replace(b'{"type":"message_stop"}', b'{"type":"message_st')
    assert cloud._scan(cut)[0] == cut.index(b"event: message_stop")
