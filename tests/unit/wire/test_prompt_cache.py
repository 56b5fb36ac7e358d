"""wire/prompt_cache: the local request without per-request noise in its system prompt."""

from __future__ import annotations

import copy
from typing import Any

from nonstop.wire.prompt_cache import normalize_for_prompt_cache


def attribution(cch: str) -> str:
    return f"x-anthropic-billing-header: cc_version=2.1.332.{cch[:3]}; cc_entrypoint=cli; cch={cch}; cc_prompt_id=1;"


def local(cch: str, left: int = 15000000) -> dict[str, Any]:
    return {
        "model": "m", "max_tokens": 100,
        "system": [
            {"type": "text", "text": attribution(cch)},
            {"type": "text", "text": "You are Claude."},
            {"type": "text", "text": f"Policy.\n\n<total_tokens>{left} tokens left</total_tokens>\n"},
        ],
        "tools": [{"name": "Read", "description": "Reads.", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_two_turns_get_the_same_system_prompt() -> None:
    a = normalize_for_prompt_cache(local("1a2b3", 15000000))
    b = normalize_for_prompt_cache(local("9f8e7", 14990000))
    assert a["system"] == b["system"] == [
        {"type": "text", "text": "You are Claude."},
        {"type": "text", "text": "Policy.\n\n"},
    ]


def test_only_the_system_prompt_changes_and_the_input_stays() -> None:
    req = local("1a2b3")
    before = copy.deepcopy(req)
    out = normalize_for_prompt_cache(req)
    assert req == before
    assert out["tools"] is req["tools"] and out["messages"] is req["messages"]
    assert {k: v for k, v in out.items() if k != "system"} == {k: v for k, v in req.items() if k != "system"}


def test_a_quiet_request_comes_back_as_it_is() -> None:
    req = {"model": "m", "system": [{"type": "text", "text": "You are Claude."}], "messages": []}
    assert normalize_for_prompt_cache(req) is req
    assert normalize_for_prompt_cache({"model": "m", "messages": []}) == {"model": "m", "messages": []}


def test_a_string_system_prompt() -> None:
    assert normalize_for_prompt_cache({"system": attribution("abcde") + "\nYou are Claude."}) == {"system": "You are Claude."}
    assert normalize_for_prompt_cache({"system": attribution("abcde")}) == {}


def test_nothing_left_means_no_system_prompt() -> None:
    req = {"model": "m", "system": [{"type": "text", "text": attribution("abcde")}], "messages": []}
    assert normalize_for_prompt_cache(req) == {"model": "m", "messages": []}


def test_messages_keep_their_reminders() -> None:
    req = local("1a2b3")
    req["messages"] = [{"role": "user", "content": "<total_tokens>5 tokens left</total_tokens> hi"}]
    assert normalize_for_prompt_cache(req)["messages"] == req["messages"]
