"""trim_to_fit: make a conversation fit a small local window."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nonstop.routing.fit import NOTE, trim_to_fit
from nonstop.wire.anthropic import estimate_tokens

SYSTEM = "You are a coding assistant."


def tool_id(i: int) -> str:
    return f"toolu_{i:020d}"


def conversation(turns: int, result_chars: int = 400, last: Any = "what now?") -> dict[str, Any]:
    """user -> (assistant tool_use -> user tool_result) * turns -> assistant text -> user `last`."""
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "please fix the bug " * 20}]
    for i in range(turns):
        msgs.append({
            "role": "assistant",
            "content": [
                {"type": "text", "text": f"step {i} " + "a" * 200},
                {"type": "tool_use", "id": tool_id(i), "name": "Read", "input": {"path": f"f{i}.py"}},
            ],
        })
        msgs.append({
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_id(i), "content": f"result {i} " + "r" * result_chars}],
        })
    msgs.append({"role": "assistant", "content": [{"type": "text", "text": "done reading"}]})
    msgs.append({"role": "user", "content": last})
    return {"model": "claude-sonnet-4-5", "system": SYSTEM, "max_tokens": 1000, "messages": msgs}


def tool_use_ids(req: dict[str, Any]) -> set[str]:
    return {
        b["id"]
        for m in req["messages"]
        if m["role"] == "assistant" and isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_use"
    }


def tool_result_ids(req: dict[str, Any]) -> set[str]:
    return {
        b["tool_use_id"]
        for m in req["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result"
    }


def all_text(req: dict[str, Any]) -> str:
    parts: list[str] = []
    for m in req["messages"]:
        c = m["content"]
        if isinstance(c, str):
            parts.append(c)
            continue
        for b in c:
            if b.get("type") == "text":
                parts.append(b["text"])
            elif b.get("type") == "tool_result":
                parts.append(b["content"] if isinstance(b["content"], str) else str(b["content"]))
    return "\n".join(parts)


def fit(req: dict[str, Any], budget: int, counted: int | None = None) -> dict[str, Any] | None:
    return trim_to_fit(req, counted if counted is not None else estimate_tokens(req), budget)


# --- dropping old turns ---------------------------------------------------------------------


def test_drops_oldest_turns_and_keeps_the_last_user_turn() -> None:
    req = conversation(20)
    full = estimate_tokens(req)
    out = fit(req, full // 3)
    assert out is not None
    assert estimate_tokens(out) <= full // 3
    assert len(out["messages"]) < len(req["messages"])
    assert out["messages"][-1] == req["messages"][-1]
    assert out["messages"][-2] == req["messages"][-2]
    assert out["messages"][0]["role"] == "user"
    roles = [m["role"] for m in out["messages"]]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), roles
    assert out["system"] == SYSTEM
    assert out["model"] == req["model"]
    # the newest turns survive, the oldest go
    assert "result 19" in all_text(out)
    assert "result 0 " not in all_text(out)
    assert "please fix the bug" not in all_text(out)


def test_adds_the_note_when_turns_are_dropped() -> None:
    req = conversation(20)
    out = fit(req, estimate_tokens(req) // 3)
    assert out is not None
    first = out["messages"][0]["content"]
    assert isinstance(first, list)
    assert first[0] == {"type": "text", "text": NOTE}
    assert all_text(out).count(NOTE) == 1


def test_tool_pairs_stay_consistent() -> None:
    req = conversation(20)
    out = fit(req, estimate_tokens(req) // 3)
    assert out is not None
    assert tool_result_ids(out) <= tool_use_ids(out)


def test_orphaned_tool_results_become_text() -> None:
    req = conversation(20)
    out = fit(req, estimate_tokens(req) // 3)
    assert out is not None
    first = out["messages"][0]["content"]
    # the first kept user turn answered a tool call that was dropped
    assert first[1]["type"] == "text"
    assert first[1]["text"].startswith("(earlier tool result) result ")
    assert not any(b.get("type") == "tool_result" for b in first)


def test_orphaned_tool_result_with_block_content_becomes_text() -> None:
    req = conversation(10)
    for m in req["messages"]:
        if isinstance(m["content"], list):
            for b in m["content"]:
                if b.get("type") == "tool_result":
                    b["content"] = [{"type": "text", "text": b["content"]}, {"type": "image", "source": {"type": "base64", "data": "A"}}]
    out = fit(req, estimate_tokens(req) // 2)
    assert out is not None
    assert tool_result_ids(out) <= tool_use_ids(out)
    first = out["messages"][0]["content"]
    assert first[1]["text"].startswith("(earlier tool result) result ")


def test_input_is_not_modified() -> None:
    req = conversation(20, result_chars=20000)
    before = copy.deepcopy(req)
    out = fit(req, 3000)
    assert out is not None
    assert req == before


def test_no_drop_no_note() -> None:
    req = conversation(3)
    out = fit(req, estimate_tokens(req) + 100)
    assert out is not None
    assert out["messages"] == req["messages"]
    assert NOTE not in all_text(out)


# --- cutting huge old tool results ---------------------------------------------------------------


def test_cuts_huge_old_tool_results_before_dropping_turns() -> None:
    req = conversation(3, result_chars=200_000)
    budget = 8000
    out = fit(req, budget)
    assert out is not None
    assert estimate_tokens(out) <= budget
    assert len(out["messages"]) == len(req["messages"]), "cutting was enough: no turn dropped"
    assert NOTE not in all_text(out)
    results = [
        b["content"] for m in out["messages"] if isinstance(m["content"], list)
        for b in m["content"] if b.get("type") == "tool_result"
    ]
    assert len(results) == 3
    for text in results:
        assert "characters trimmed by nonstop" in text
        assert text.startswith("result ")
        assert len(text) < 200_000
    assert tool_result_ids(out) == tool_use_ids(out)


def test_cuts_huge_text_inside_tool_result_blocks() -> None:
    req = conversation(2)
    req["messages"][2]["content"][0]["content"] = [{"type": "text", "text": "x" * 300_000}]
    out = fit(req, 6000)
    assert out is not None
    inner = out["messages"][2]["content"][0]["content"][0]["text"]
    assert "characters trimmed by nonstop" in inner


def test_huge_latest_turn_is_cut_as_a_last_resort() -> None:
    req = conversation(2, last="y" * 60_000)
    out = fit(req, 12_000)
    assert out is not None
    assert estimate_tokens(out) <= 12_000
    last = out["messages"][-1]["content"]
    text = last if isinstance(last, str) else " ".join(b.get("text", "") for b in last)
    assert "characters trimmed by nonstop" in text


# --- impossible -------------------------------------------------------------------------------


def test_none_when_system_alone_is_too_big() -> None:
    req = conversation(3)
    req["system"] = "s" * 100_000
    assert fit(req, 2000) is None


def test_none_when_tools_alone_are_too_big() -> None:
    req = conversation(3)
    req["tools"] = [{"name": f"T{i}", "description": "d" * 2000, "input_schema": {"type": "object"}} for i in range(20)]
    assert fit(req, 2000) is None


@pytest.mark.parametrize("messages", [[], None, ["junk"]], ids=["empty", "missing", "junk"])
def test_none_without_messages(messages: Any) -> None:
    req: dict[str, Any] = {"model": "m"}
    if messages is not None:
        req["messages"] = messages
    assert trim_to_fit(req, 100, 50) is None


def test_none_for_a_tiny_budget() -> None:
    assert fit(conversation(5), 10) is None


# --- counted tokens ---------------------------------------------------------------------------


def test_server_count_larger_than_estimate_trims_more() -> None:
    req = conversation(20)
    est = estimate_tokens(req)
    budget = est // 2
    plain = fit(req, budget, counted=est)
    scaled = fit(req, budget, counted=est * 2)
    assert plain is not None and scaled is not None
    assert len(scaled["messages"]) < len(plain["messages"])
    assert estimate_tokens(scaled) * 2 <= budget


def test_server_count_smaller_than_estimate_is_not_trusted() -> None:
    req = conversation(20)
    est = estimate_tokens(req)
    out = fit(req, est // 2, counted=est // 10)
    assert out is not None
    assert estimate_tokens(out) <= est // 2


# --- the result fits --------------------------------------------------------------------------


@pytest.mark.parametrize("turns", [5, 20])
@pytest.mark.parametrize("fraction", [0.2, 0.35, 0.5, 0.75, 0.9])
def test_result_fits_with_room_for_the_note(turns: int, fraction: float) -> None:
    req = conversation(turns)
    budget = int(estimate_tokens(req) * fraction)
    out = fit(req, budget)
    if out is not None:
        # the note and the orphan prefix may add a few dozen tokens (see the xfail below)
        assert estimate_tokens(out) <= budget + 40
        assert out["messages"][-1] == req["messages"][-1]


def test_result_never_exceeds_the_budget() -> None:
    req = conversation(3, result_chars=400)
    full = estimate_tokens(req)
    over = []
    for budget in range(50, full + 50, 2):
        out = fit(req, budget)
        if out is not None and estimate_tokens(out) > budget:
            over.append((budget, estimate_tokens(out)))
    assert over == []
