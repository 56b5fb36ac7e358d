"""Tool ids made valid for the Anthropic API: deterministic, collision-free, fresh when missing."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.wire.tool_ids import reply_tool_id, valid_tool_id

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
