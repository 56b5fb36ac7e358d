"""History going back to the cloud: local thinking stripped, tool ids made valid."""

from __future__ import annotations

import copy
import re
import time

from nonstop.wire.hygiene import EMPTY_TURN_TEXT, clean_history_for_cloud
from nonstop.wire.openai import LOCAL_THINKING_SIGNATURE

VALID_ID = re.compile(r"[a-zA-Z0-9_-]+")


def conversation(*messages: dict, **extra) -> dict:
    return {"model": "claude-x", "max_tokens": 10, "messages": list(messages), **extra}


def assistant(*blocks: dict) -> dict:
    return {"role": "assistant", "content": list(blocks)}


def user(*blocks) -> dict:
    return {"role": "user", "content": list(blocks) if blocks and not isinstance(blocks[0], str) else blocks[0]}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def thinking(signature) -> dict:
    block = {"type": "thinking", "thinking": "hm"}
    if signature is not None:
        block["signature"] = signature
    return block


def tool_use(tool_id: str) -> dict:
    return {"type": "tool_use", "id": tool_id, "name": "f", "input": {}}


def tool_result(tool_id: str) -> dict:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}


def test_a_clean_history_needs_no_change():
    req = conversation(
        user("hi"),
        assistant(thinking("EqQBCkgIARAB-cloud-signature"), {"type": "redacted_thinking", "data": "EmwKAhgB"}, text("x"), tool_use("toolu_01A")),
        user(tool_result("toolu_01A"), text("more")),
        {"role": "system", "content": "odd but allowed"},
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
    )
    assert clean_history_for_cloud(req) is None


def test_requests_without_messages_need_no_change():
    assert clean_history_for_cloud({}) is None
    assert clean_history_for_cloud({"messages": "x"}) is None
    assert clean_history_for_cloud({"messages": [None, 3, {"role": "user"}]}) is None


def test_local_and_unsigned_thinking_is_removed():
    req = conversation(
        user("hi"),
        assistant(thinking(LOCAL_THINKING_SIGNATURE), text("a")),
        user("next"),
        assistant(thinking(""), thinking(None), {"type": "redacted_thinking"}, {"type": "redacted_thinking", "data": ""}, text("b")),
        user("again"),
        assistant(thinking("cloud-sig"), text("c")),
    )
    original = copy.deepcopy(req)
    out = clean_history_for_cloud(req)
    assert out is not None
    assert out["messages"][1]["content"] == [text("a")]
    assert out["messages"][3]["content"] == [text("b")]
    assert out["messages"][5] is req["messages"][5]  # untouched messages are shared
    assert req == original  # the input is not modified


def test_an_assistant_turn_left_empty_gets_a_placeholder():
    out = clean_history_for_cloud(conversation(user("hi"), assistant(thinking(LOCAL_THINKING_SIGNATURE)), user("x")))
    assert out is not None
    assert out["messages"][1] == {"role": "assistant", "content": [text(EMPTY_TURN_TEXT)]}
    assert len(out["messages"]) == 3


def test_thinking_in_user_turns_is_left_to_the_cloud():
    assert clean_history_for_cloud(conversation(user(thinking(None), text("x")))) is None


def test_bad_tool_ids_are_rewritten_consistently():
    req = conversation(
        user("go"),
        assistant(tool_use("call:1"), tool_use("call.1"), tool_use("ok_id")),
        user(tool_result("call:1"), tool_result("call.1"), tool_result("ok_id")),
    )
    out = clean_history_for_cloud(req)
    assert out is not None
    uses = [b["id"] for b in out["messages"][1]["content"]]
    results = [b["tool_use_id"] for b in out["messages"][2]["content"]]
    assert uses == results
    assert uses[2] == "ok_id"
    assert uses[0] != uses[1]  # ids that differ only in bad characters stay distinct
    assert all(VALID_ID.fullmatch(i) for i in uses)
    again = clean_history_for_cloud(req)
    assert again is not None and [b["id"] for b in again["messages"][1]["content"]] == uses


def test_nothing_else_is_reshaped():
    req = conversation(
        user("hi"),
        assistant(thinking(LOCAL_THINKING_SIGNATURE), text("a"), {"type": "future_block", "x": 1}),
        system="keep me", thinking={"type": "adaptive"}, context_management={"edits": []}, unknown_key=[1, 2],
    )
    out = clean_history_for_cloud(req)
    assert out is not None
    assert {k: v for k, v in out.items() if k != "messages"} == {k: v for k, v in req.items() if k != "messages"}
    assert out["messages"][1] == {"role": "assistant", "content": [text("a"), {"type": "future_block", "x": 1}]}


def test_a_long_clean_history_is_checked_quickly():
    turn = [
        user("question " * 50),
        assistant(thinking("sig"), text("answer " * 50), tool_use("toolu_01")),
        user(tool_result("toolu_01"), text("more")),
    ]
    req = conversation(*(turn * 2000))  # 6000 messages
    start = time.perf_counter()
    assert clean_history_for_cloud(req) is None
    assert time.perf_counter() - start < 0.5
