"""Strict checks of what a client receives, independent of nonstop's own code.

Each check takes the status, content type and raw body of one response and returns a
`Verdict`: `ok` (a complete answer), `error` (a well-formed error in the client's
protocol) or a violation (`problem` says what is wrong). A stream that just stops, a
delta for a block that is not open, an event after message_stop, a 200 carrying an error
body: each is a violation, because a strict client (Claude Code, the SDKs) breaks on it.

The Anthropic stream grammar itself is tests/support/anthropic_stream.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.support.anthropic_stream import (
    STOP_REASONS,
    StreamError,
    is_anthropic_error,
    validate_anthropic_stream,
)

OPENAI_FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


@dataclass
class Verdict:
    outcome: str  # "ok" | "error" | "violation"
    problem: str = ""
    text: str = ""  # the assistant text received (for recovery checks)
    events: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.outcome != "violation"


def _bad(problem: str, events: list[str] | None = None) -> Verdict:
    return Verdict("violation", problem, events=events or [])


def parse_sse(body: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """(event name, data) pairs, and any bytes after the last blank line."""
    text = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    end = text.rfind(b"\n\n")
    complete, rest = (text[: end + 2], text[end + 2 :]) if end >= 0 else (b"", text)
    out: list[tuple[str, str]] = []
    for block in complete.split(b"\n\n"):
        if not block.strip():
            continue
        name, data = "", []
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                continue
            key, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if key == b"event":
                name = value.decode("utf-8", "replace")
            elif key == b"data":
                data.append(value.decode("utf-8", "replace"))
        if name or data:
            out.append((name or "message", "\n".join(data)))
    return out, rest


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def is_openai_error(doc: Any) -> bool:
    if not isinstance(doc, dict) or set(doc) - {"error"}:
        return False
    err = doc.get("error")
    return isinstance(err, dict) and isinstance(err.get("message"), str) and bool(err.get("message")) and "type" in err


def _traceback(body: bytes) -> bool:
    return b"Traceback (most recent call last)" in body


# --- Anthropic ------------------------------------------------------------------------------

def anthropic_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) pairs of an SSE body; raises StreamError when an event's
    data is not a JSON object."""
    out = []
    for i, (name, data) in enumerate(parse_sse(body)[0]):
        doc = _json(data)
        if not isinstance(doc, dict):
            raise StreamError(f"event {i} ({name}) data is not a JSON object: {data[:80]!r}")
        out.append((name, doc))
    return out


def check_anthropic_stream(body: bytes) -> Verdict:
    events, rest = parse_sse(body)
    names = [n for n, _ in events]
    if rest.strip():
        return _bad(f"bytes after the last complete event: {rest[:80]!r}", names)
    try:
        read = validate_anthropic_stream(anthropic_events(body), allow_error=True)
    except StreamError as exc:
        return _bad(str(exc), names)
    return Verdict("error" if read.error else "ok", read.error, read.text, names)


def check_anthropic_message(doc: Any) -> Verdict:
    if not isinstance(doc, dict) or doc.get("type") != "message" or doc.get("role") != "assistant":
        return _bad(f"not a message: {str(doc)[:200]}")
    content = doc.get("content")
    if not isinstance(content, list):
        return _bad("content is not a list")
    if doc.get("stop_reason") not in STOP_REASONS:
        return _bad(f"stop_reason {doc.get('stop_reason')!r}")
    usage = doc.get("usage") or {}
    if not isinstance(usage.get("input_tokens"), int) or usage["input_tokens"] <= 0:
        return _bad(f"input_tokens {usage.get('input_tokens')!r}")
    text = "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return Verdict("ok", "", text)


def check_anthropic(status: int, ctype: str, body: bytes, *, stream: bool) -> Verdict:
    if _traceback(body):
        return _bad(f"a traceback in a {status} response")
    if status >= 400:
        doc = _json(body.decode("utf-8", "replace"))
        if not ctype.startswith("application/json"):
            return _bad(f"HTTP {status} error with content-type {ctype!r}: {body[:120]!r}")
        if not is_anthropic_error(doc):
            return _bad(f"HTTP {status} body is not an Anthropic error: {body[:200]!r}")
        return Verdict("error", doc["error"]["message"])
    if status != 200:
        return _bad(f"unexpected status {status}")
    if _is_error_json(body):
        return _bad(f"HTTP 200 with an error body: {body[:200]!r}")
    if stream:
        if not ctype.startswith("text/event-stream"):
            return _bad(f"a stream was asked for but content-type is {ctype!r}: {body[:120]!r}")
        return check_anthropic_stream(body)
    if not ctype.startswith("application/json"):
        return _bad(f"content-type {ctype!r} for a JSON reply")
    return check_anthropic_message(_json(body.decode("utf-8", "replace")))


def _is_error_json(body: bytes) -> bool:
    doc = _json(body.decode("utf-8", "replace"))
    return is_anthropic_error(doc) or is_openai_error(doc)


# --- OpenAI ---------------------------------------------------------------------------------


def check_openai_stream(body: bytes) -> Verdict:
    events, rest = parse_sse(body)
    names = [d[:20] for _, d in events]
    if rest.strip():
        return _bad(f"bytes after the last complete event: {rest[:80]!r}", names)
    if not events or events[-1][1].strip() != "[DONE]":
        return _bad("stream does not end with [DONE] (silent truncation)", names)
    finished = False
    error = ""
    text: list[str] = []
    for i, (_, data) in enumerate(events[:-1]):
        if data.strip() == "[DONE]":
            return _bad("[DONE] before the end", names)
        doc = _json(data)
        if error:
            return _bad(f"a chunk after the error chunk: {data[:120]}", names)
        if is_openai_error(doc):
            error = doc["error"]["message"]
            continue
        if not isinstance(doc, dict) or doc.get("object") != "chat.completion.chunk":
            return _bad(f"chunk {i} is not a chat.completion.chunk: {data[:120]}", names)
        choices = doc.get("choices")
        if not isinstance(choices, list):
            return _bad(f"chunk {i} has no choices list", names)
        for ch in choices:
            fr = ch.get("finish_reason")
            if fr is not None:
                if fr not in OPENAI_FINISH:
                    return _bad(f"finish_reason {fr!r}", names)
                if finished:
                    return _bad("a second finish_reason", names)
                finished = True
            content = (ch.get("delta") or {}).get("content")
            if isinstance(content, str):
                text.append(content)
    if error:
        return Verdict("error", error, "".join(text), names)
    if not finished:
        return _bad("no finish_reason and no error before [DONE] (silent truncation)", names)
    return Verdict("ok", "", "".join(text), names)


def check_openai(status: int, ctype: str, body: bytes, *, stream: bool) -> Verdict:
    if _traceback(body):
        return _bad(f"a traceback in a {status} response")
    doc: Any = None
    if status >= 400 or not stream:
        doc = _json(body.decode("utf-8", "replace"))
    if status >= 400:
        if not ctype.startswith("application/json") or not is_openai_error(doc):
            return _bad(f"HTTP {status} body is not an OpenAI error: {body[:200]!r}")
        return Verdict("error", doc["error"]["message"])
    if status != 200:
        return _bad(f"unexpected status {status}")
    if stream:
        if not ctype.startswith("text/event-stream"):
            return _bad(f"a stream was asked for but content-type is {ctype!r}: {body[:200]!r}")
        return check_openai_stream(body)
    if is_openai_error(doc) or is_anthropic_error(doc):
        return _bad(f"HTTP 200 with an error body: {body[:200]!r}")
    if not isinstance(doc, dict) or doc.get("object") != "chat.completion":
        return _bad(f"not a chat.completion: {body[:200]!r}")
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        return _bad("no choices")
    ch = choices[0]
    msg = ch.get("message") or {}
    if msg.get("role") != "assistant" or ch.get("finish_reason") not in OPENAI_FINISH:
        return _bad(f"bad choice: {str(ch)[:200]}")
    return Verdict("ok", "", str(msg.get("content") or ""))


def check(door: str, status: int, ctype: str, body: bytes, *, stream: bool) -> Verdict:
    if door == "openai":
        return check_openai(status, ctype, body, stream=stream)
    return check_anthropic(status, ctype, body, stream=stream)
