"""validate_messages_request: what must be well-formed before nonstop serves a request."""

from __future__ import annotations

from typing import Any

import pytest

from nonstop.wire.validate import MAX_MODEL_NAME, validate_messages_request


def req(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize("body", [
    req(),
    req(model="claude-opus-5-5"),  # a name no list knows
    req(stream=True, max_tokens=128000),
    req(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "x"}]}]),
    req(tools=[{"name": "Read", "defer_loading": True}, {"type": "web_search_20250305"}]),
    req(thinking={"type": "adaptive"}, context_management={}, output_config={"effort": "high"}),
    req(messages=[]),
], ids=["plain", "unknown-model", "stream", "system-role-and-blocks", "tools", "unknown-keys", "no-messages"])
def test_well_formed_requests_pass(body: dict[str, Any]) -> None:
    assert validate_messages_request(body) == ""


@pytest.mark.parametrize(("body", "start"), [
    ([1, 2], "the request body must be a JSON object"),
    ({"messages": []}, "model:"),
    (req(model=""), "model:"),
    (req(model=7), "model:"),
    (req(model="x" * (MAX_MODEL_NAME + 1)), "model: longer than"),
    (req(model="claude\nx"), "model: contains control characters"),
    (req(model="claude\x7f"), "model: contains control characters"),
    ({"model": "m"}, "messages:"),
    (req(messages={"role": "user"}), "messages:"),
    (req(stream="yes"), "stream:"),
    (req(max_tokens=0), "max_tokens:"),
    (req(max_tokens=True), "max_tokens:"),
    (req(max_tokens=1.5), "max_tokens:"),
    (req(tools={"name": "x"}), "tools:"),
    (req(tools=["Read"]), "tools.0:"),
    (req(tools=[{"name": "ok"}, {"name": 3}]), "tools.1:"),
    (req(messages=["hi"]), "messages.0:"),
    (req(messages=[{"content": "hi"}]), "messages.0:"),
    (req(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": None}]), "messages.1.content:"),
])
def test_malformed_requests_name_the_field(body: Any, start: str) -> None:
    assert validate_messages_request(body).startswith(start)


def test_a_model_name_at_the_limit_passes() -> None:
    assert validate_messages_request(req(model="m" * MAX_MODEL_NAME)) == ""
