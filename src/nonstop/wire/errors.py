"""Error bodies in each client protocol."""

from __future__ import annotations

import os
import random
import re
from typing import Any

import orjson

from nonstop.wire.sse import encode_event

# Anthropic error.type for an HTTP status we originate.
_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    408: "timeout_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",  # the client's headers are too large: its fault, as a 413's
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# Request ids name a request in logs and errors; they guard nothing. A generator of the
# process's own, seeded from the OS once (and again in a forked child), makes one without
# a system call per request.
_IDS = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_IDS.seed)


def new_request_id() -> str:
    return f"req_nonstop_{_IDS.getrandbits(96):024x}"


def anthropic_error_dict(status: int, message: str, etype: str | None = None, request_id: str = "") -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": etype or _TYPE_FOR_STATUS.get(status, "api_error"), "message": message},
        "request_id": request_id or new_request_id(),
    }


def anthropic_error(status: int, message: str, etype: str | None = None, request_id: str = "") -> bytes:
    return orjson.dumps(anthropic_error_dict(status, message, etype, request_id))


def error_event(message: str, etype: str = "api_error") -> tuple[str, dict[str, Any]]:
    """A Messages stream's `error` event, as (event name, data)."""
    return "error", {"type": "error", "error": {"type": etype, "message": message}}


def anthropic_error_event(message: str, etype: str = "api_error") -> bytes:
    return encode_event("error", orjson.dumps(error_event(message, etype)[1]))


_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
}


def openai_error_dict(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPE.get(status, "server_error"),
            "param": None,
            "code": code,
        }
    }


def openai_error(status: int, message: str, code: str | None = None) -> bytes:
    return orjson.dumps(openai_error_dict(status, message, code))


# The cloud's words for a request over the model's window (nonstop's own say the first).
_TOO_LONG = re.compile(r"prompt is too long|input length and `?max_tokens`? exceed context limit", re.I)


def context_exceeded(message: str) -> bool:
    """Whether an error's message says the request does not fit the model's window:
    OpenAI clients trim the conversation on `context_length_exceeded`."""
    return _TOO_LONG.match(message) is not None


def prompt_too_long_message(tokens: int, maximum: int) -> str:
    # Claude Code recognises exactly this wording and compacts the conversation. The count
    # is over the maximum, as the words say, also where the prompt fit and only the room
    # for the answer did not.
    return f"prompt is too long: {max(tokens, maximum + 1)} tokens > {maximum} maximum"
