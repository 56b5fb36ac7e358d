"""Tool ids made valid for the Anthropic API: deterministic, collision-free, fresh when missing.
And the ids a local server is sent: nine letters and digits, paired, never shared."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.wire import tool_ids
from nonstop.wire.tool_ids import ServerToolIds, reply_tool_id, valid_tool_id

VALID_ID = re.compile(r"[a-zA-Z0-9_-]+")
# Ids that differ only in characters the API rejects are the likely collisions.
NEAR_IDS = st.text(alphabet="ab_-.: /ü", max_size=12)


@pytest.mark.parametrize("raw", ["toolu_01ABC-x", "call-1", "call_0", "X"])
def test_a_valid_id_is_kept(raw: str) -> None:
    assert valid_tool_id(raw) == raw
    assert reply_tool_id(raw) == raw


@pytest.mark.parametrize(("raw", "start"), [("call:1.2/3", "call_1_2_3_"), ("fc 42", "fc_42_"), ("ツール", "____")])
def test_an_invalid_id_keeps_its_readable_part(raw: str, start: str) -> None:
    assert valid_tool_id(raw).startswith(start)
    assert VALID_ID.fullmatch(valid_tool_id(raw))


def test_ids_that_differ_only_in_invalid_characters_stay_apart() -> None:
    assert len({valid_tool_id(i) for i in ("a.b", "a:b", "a b", "a_b")}) == 4


def test_a_long_id_stays_short() -> None:
    got = valid_tool_id("ü" * 200)
    assert VALID_ID.fullmatch(got) and len(got) <= 64


def test_the_empty_id_in_a_history_maps_the_same_way_every_time() -> None:
    assert valid_tool_id("") == valid_tool_id("")
    assert VALID_ID.fullmatch(valid_tool_id(""))


@pytest.mark.parametrize("raw", [None, "", 42])
def test_a_reply_call_without_an_id_gets_a_fresh_one(raw: Any) -> None:
    got = reply_tool_id(raw)
    assert VALID_ID.fullmatch(got) and got.startswith("toolu_")
    assert reply_tool_id(raw) != got


@given(st.text() | NEAR_IDS)
def test_always_valid_and_deterministic(raw: str) -> None:
    got = valid_tool_id(raw)
    assert VALID_ID.fullmatch(got)
    assert len(got) <= max(61, len(raw))
    assert valid_tool_id(raw) == got == valid_tool_id(got)
    assert reply_tool_id(raw) == got if raw else reply_tool_id(raw) != reply_tool_id(raw)


@given(st.text() | NEAR_IDS, st.text() | NEAR_IDS)
def test_distinct_ids_never_collide(a: str, b: str) -> None:
    if a != b:
        assert valid_tool_id(a) != valid_tool_id(b)


SERVER_ID = re.compile(r"[a-zA-Z0-9]{9}")


@given(st.text(max_size=80))
def test_a_server_is_sent_nine_letters_and_digits_the_same_every_time(raw: str) -> None:
    short = ServerToolIds()(raw)
    assert SERVER_ID.fullmatch(short)
    assert ServerToolIds()(raw) == short  # another request, the same history: the same bytes


def test_a_call_and_its_result_pair_up_and_an_id_already_of_that_form_is_kept() -> None:
    ids = ServerToolIds()
    first = ids("toolu_01A09q90qw90lq917835lq9")
    assert ids("toolu_01A09q90qw90lq917835lq9") == first != ids("toolu_01A09q90qw90lq917835lq8")
    assert ids("abc123XYZ") == "abc123XYZ"
    assert ids(None) is None and ids(7) == 7


def test_two_ids_whose_hashes_meet_are_kept_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    real = tool_ids._server_id.__wrapped__

    def meeting(tool_id: str, attempt: int) -> str:
        return "Collision" if attempt == 0 else real(tool_id, attempt)

    monkeypatch.setattr(tool_ids, "_server_id", meeting)
    ids = ServerToolIds()
    a, b, kept = ids("toolu_a"), ids("toolu_b"), ids("Collision")
    assert a == "Collision" and b != a and SERVER_ID.fullmatch(b)
    assert kept != a and SERVER_ID.fullmatch(kept)  # a client's own id of that form yields too
    assert ids("toolu_b") == b
    assert ServerToolIds()("toolu_b") == "Collision"  # in a request of its own it has the first
