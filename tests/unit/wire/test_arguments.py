"""Tool-call arguments that arrive as JSON text, whole or in fragments (ArgumentsStream):
any prefix closes as valid JSON, strings are repaired, and what cannot become an object is
refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.wire.arguments import ArgumentsStream
from tests.unit.wire.openai.strategies import SETTINGS, json_objects, split


@pytest.mark.parametrize(("sent", "expected"), [
    ('{"a": "x', {"a": "x"}),
    ('{"a": 1.', {"a": 1.0}),
    ('{"a": -', {"a": 0}),
    ('{"a": 1e', {"a": 1.0}),
    ('{"a": tr', {"a": True}),
    ('{"a": [1, ', {"a": [1]}),
    ('{"a": [', {"a": []}),
    ('{"a": {"b": nu', {"a": {"b": None}}),
    ('{"a": "\\u00', {"a": ""}),
    ('{"a": "x\\', {"a": "x"}),
    ('{"a"', {}),
    ('{"a": 1, ', {"a": 1}),
    ("{", {}),
])
def test_arguments_stream_closes_any_prefix(sent, expected):
    scan = ArgumentsStream()
    out = scan.feed(sent)
    assert json.loads(out + scan.closing()) == expected


def test_arguments_stream_repairs_strings():
    scan = ArgumentsStream()
    out = scan.feed('{"a": "tab\there\\q\\u12x"}')
    assert json.loads(out) == {"a": "tab\there\\q\\u12x"}
    assert scan.complete


@pytest.mark.parametrize("bad", ["[1]", '"x"', "x", '{"a" 1}', '{"a": 01}', '{,}', '{"a": 1,}', '{"a": [1,]}', '{"a": tx}'])
def test_arguments_stream_refuses_what_cannot_become_an_object(bad):
    scan = ArgumentsStream()
    out = scan.feed(bad)
    assert scan.dead
    if scan.started:
        json.loads(out + scan.closing())


# --- properties ------------------------------------------------------------------------------


@SETTINGS
@given(json_objects, st.booleans(), st.lists(st.integers(0, 500), max_size=10))
def test_scanner_passes_valid_objects_through_unchanged(doc, ascii_only, cuts):
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=None if cuts else 1)
    scan = ArgumentsStream()
    out = "".join(scan.feed(piece) for piece in split(text, cuts))
    assert json.loads(out) == doc
    assert scan.complete and not scan.dead
    assert scan.closing() == ""


@SETTINGS
@given(json_objects, st.integers(0, 10**6))
def test_scanner_closes_every_prefix(doc, cut):
    text = json.dumps(doc)
    prefix = text[: cut % (len(text) + 1)]
    scan = ArgumentsStream()
    out = scan.feed(prefix)
    if scan.started:
        assert isinstance(json.loads(out + scan.closing()), dict)


@SETTINGS
@given(st.text(alphabet='{}[]",:\\ntrufalse0123456789.-eE \n\tabc', max_size=40), st.lists(st.integers(0, 50), max_size=5))
def test_scanner_output_always_closes_for_junk(text, cuts):
    scan = ArgumentsStream()
    out = "".join(scan.feed(piece) for piece in split(text, cuts))
    if scan.started:
        assert isinstance(json.loads(out + scan.closing()), dict)
    else:
        assert out == ""


@pytest.mark.parametrize("raw", ['{"a": 123456789012345678901234567890}', '{"a": "\\ud800"}', '{"a": NaN}',
                                 '{"a": 1e400}', '{"a": "\\ud800'])
def test_arguments_are_always_an_object_orjson_can_write(raw):
    import orjson

    from nonstop.wire.arguments import parse_arguments

    value = parse_arguments(raw)
    assert isinstance(value, dict)
    orjson.dumps(value)  # a whole reply is encoded with it


@pytest.mark.parametrize("raw", ["null", " null\n", '"null"', None, "", "  "])
def test_no_arguments_written_as_null_are_none(raw):
    """Some servers write `null` for a call without arguments: that is an empty input, not
    text to keep under _raw (which the tool would refuse)."""
    from nonstop.wire.arguments import parse_arguments

    assert parse_arguments(raw) == {} and parse_arguments(raw, repair=False) == {}


@pytest.mark.parametrize("raw", ["nul", "nullx", "[null]", '{"a": null'])
def test_text_that_only_looks_like_null_is_not_dropped(raw):
    from nonstop.wire.arguments import parse_arguments

    value = parse_arguments(raw)
    assert value == ({"a": None} if raw.startswith("{") else {"_raw": raw})
