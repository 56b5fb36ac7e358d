"""The checks a Messages request must pass before nonstop serves it.

Deliberately shallow: only what nonstop itself reads (model, messages, stream,
max_tokens, tool names) must be well-formed. Unknown keys, roles and block types pass,
since the cloud accepts fields no list here could know (docs/wire.md §1), and a model
name is never checked against a list of models.
"""

from __future__ import annotations

import re
from typing import Any

MAX_MODEL_NAME = 256


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def bad_model(model: Any) -> str:
    if not isinstance(model, str) or not model:
        return "model: a non-empty string is required"
    if len(model) > MAX_MODEL_NAME:
        return f"model: longer than {MAX_MODEL_NAME} characters"
    if _CONTROL.search(model):
        return "model: contains control characters"
    return ""


def bad_max_tokens(mt: Any) -> str:
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
        return "max_tokens: must be a positive whole number"
    return ""


def validate_messages_request(req: Any) -> str:
    """A short reason the request cannot be served, or "" when it is well-formed enough."""
    if not isinstance(req, dict):
        return "the request body must be a JSON object"
    problem = bad_model(req.get("model"))
    if problem:
        return problem
    if not isinstance(req.get("messages"), list):
        return "messages: a list of messages is required"
    if "stream" in req and not isinstance(req["stream"], bool):
        return "stream: must be true or false"
    problem = bad_max_tokens(req.get("max_tokens"))
    if problem:
        return problem
    tools = req.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: must be a list of tool definitions"
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name", ""), str):
                return f"tools.{i}: each tool must be an object with a string name"
    for i, m in enumerate(req["messages"]):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"messages.{i}: each message must be an object with a role"
        if not isinstance(m.get("content"), str | list):
            return f"messages.{i}.content: must be a string or a list of content blocks"
    return ""
