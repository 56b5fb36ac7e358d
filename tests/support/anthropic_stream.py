"""The Anthropic Messages stream grammar, as strict clients read it, checked on parsed
events: `validate_anthropic_stream([(event name, data), ...])`. The unit tests of every
translator that produces Anthropic events use it directly; tests/support/wirecheck.py
applies it to the raw bytes a client receives from nonstop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STOP_REASONS = frozenset({
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
    "model_context_window_exceeded",
})
TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
# The delta types each block type takes, and the field of each that carries its piece.
_DELTAS = {
    "text": {"text_delta": "text"},
    "tool_use": {"input_json_delta": "partial_json"},
    "thinking": {"thinking_delta": "thinking", "signature_delta": "signature"},
}


class StreamError(AssertionError):
    """An Anthropic event sequence that breaks the Messages stream grammar."""


@dataclass
class StreamRead:
    text: str  # the text deltas, joined
    error: str  # the message of the error event that ended the stream, or ""


def validate_anthropic_stream(events: list[tuple[str, dict[str, Any]]], *, allow_error: bool = False) -> StreamRead:
    """Raise StreamError naming the first broken rule of the Messages stream, as strict
    clients (Claude Code, the SDKs) read it:

    - `message_start` comes first, with empty content and a positive input_tokens;
    - blocks are numbered from 0, one open at a time, each started before its deltas and
      not used after its stop; only text, tool_use and thinking blocks;
    - text, thinking and tool input come only as deltas of the block's own kind, never
      inside content_block_start; a tool's input is a JSON object by its stop, a thinking
      block is signed;
    - then `message_delta` (a valid stop_reason, tool_use when a tool was called, output
      token usage) and `message_stop`, and nothing after it;
    - `ping` may come anywhere before the end; with `allow_error` the stream may end with
      a well-formed `error` event instead (after message_start).

    Returns the text the stream carried and the message of the error event that ended
    it, if one did.
    """
    stream = _Stream(allow_error)
    if not events:
        raise StreamError("empty stream")
    for i, (name, data) in enumerate(events):
        try:
            stream.feed(name, data, last=i == len(events) - 1)
        except StreamError as exc:
            raise StreamError(f"event {i} ({name}): {exc}") from None
    stream.end()
    return StreamRead("".join(stream.text), stream.error)


class _Stream:
    """The grammar's state after each event; `feed` raises StreamError at a broken rule."""

    def __init__(self, allow_error: bool):
        self.allow_error = allow_error
        self.started = self.delta_seen = self.stopped = False
        self.blocks: dict[int, str] = {}  # index -> block type, for every block started
        self.open: int | None = None
        self.tool_json: dict[int, list[str]] = {}
        self.signed: set[int] = set()
        self.text: list[str] = []
        self.error = ""  # the message of the error event that ended the stream

    def feed(self, name: str, data: Any, *, last: bool) -> None:
        if not isinstance(data, dict) or data.get("type") != name:
            raise StreamError(f"data type {data.get('type') if isinstance(data, dict) else data!r} is not the event name")
        if self.stopped:
            raise StreamError("nothing may follow message_stop")
        if name == "ping":
            return
        if name == "error":
            self._error(data, last)
        elif not self.started:
            self._message_start(name, data)
        elif self.delta_seen and name != "message_stop":
            raise StreamError("only message_stop may follow message_delta")
        elif name in self._HANDLERS:
            self._HANDLERS[name](self, data)
        else:
            raise StreamError("a second message_start" if name == "message_start" else f"unknown event type {name!r}")

    def end(self) -> None:
        if not self.stopped and not self.error:
            raise StreamError("the stream ends without message_delta + message_stop or an error event (silent truncation)")

    def _error(self, data: dict[str, Any], last: bool) -> None:
        if not self.allow_error:
            raise StreamError("unexpected error event")
        if not is_anthropic_error(data):
            raise StreamError(f"malformed error event: {str(data)[:200]}")
        if not self.started:
            raise StreamError("an error event before message_start")
        if not last:
            raise StreamError("an error event must be the last")
        self.error = data["error"]["message"]

    def _message_start(self, name: str, data: dict[str, Any]) -> None:
        if name != "message_start":
            raise StreamError("the first event must be message_start")
        message = data.get("message") or {}
        if message.get("content") != []:
            raise StreamError("message_start must carry empty content")
        input_tokens = (message.get("usage") or {}).get("input_tokens")
        if not isinstance(input_tokens, int) or input_tokens <= 0:
            raise StreamError(f"message_start input_tokens must be a positive int, got {input_tokens!r}")
        self.started = True

    def _block_start(self, data: dict[str, Any]) -> None:
        index = data.get("index")
        if index != len(self.blocks):
            raise StreamError(f"block index {index!r}, expected {len(self.blocks)} (consecutive from 0)")
        if self.open is not None:
            raise StreamError(f"block {self.open} is still open")
        block = data.get("content_block") or {}
        btype = block.get("type")
        if btype == "text" and block.get("text") != "":
            raise StreamError("text must come as deltas, not inside content_block_start")
        if btype == "thinking" and block.get("thinking") != "":
            raise StreamError("thinking must come as deltas, not inside content_block_start")
        if btype == "tool_use":
            if block.get("input") != {}:
                raise StreamError("tool input must come as deltas; content_block_start has input {}")
            if not isinstance(block.get("id"), str) or not TOOL_ID.fullmatch(block["id"]):
                raise StreamError(f"tool id {block.get('id')!r} does not match ^[a-zA-Z0-9_-]+$")
            if not isinstance(block.get("name"), str) or not block["name"]:
                raise StreamError("tool_use needs a name")
            self.tool_json[index] = []
        if btype not in _DELTAS:
            raise StreamError(f"unexpected block type {btype!r}")
        self.blocks[index] = btype
        self.open = index

    def _block_delta(self, data: dict[str, Any]) -> None:
        index = data.get("index")
        if index not in self.blocks:
            raise StreamError(f"delta for block {index!r} that was never started")
        if index != self.open:
            raise StreamError(f"delta for block {index} after its stop")
        delta = data.get("delta") or {}
        dtype = delta.get("type")
        field = _DELTAS[self.blocks[index]].get(dtype)
        if field is None:
            raise StreamError(f"{dtype!r} delta in a {self.blocks[index]} block")
        if not isinstance(delta.get(field), str):
            raise StreamError(f"{dtype}.{field} must be a string")
        if dtype == "input_json_delta":
            self.tool_json[index].append(delta[field])
        elif dtype == "signature_delta":
            self.signed.add(index)
        elif dtype == "text_delta":
            self.text.append(delta[field])

    def _block_stop(self, data: dict[str, Any]) -> None:
        index = data.get("index")
        if index is None or index != self.open:
            raise StreamError(f"stop for block {index!r}, which is not open")
        if self.blocks[index] == "tool_use":
            text = "".join(self.tool_json[index])
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                raise StreamError(f"tool input is not a JSON object: {text!r}")
        if self.blocks[index] == "thinking" and index not in self.signed:
            raise StreamError("thinking block closed without a signature_delta")
        self.open = None

    def _message_delta(self, data: dict[str, Any]) -> None:
        if self.open is not None:
            raise StreamError(f"message_delta while block {self.open} is open")
        reason = (data.get("delta") or {}).get("stop_reason")
        if reason not in STOP_REASONS:
            raise StreamError(f"stop_reason {reason!r} is not valid")
        if "tool_use" in self.blocks.values() and reason not in ("tool_use", "max_tokens"):
            raise StreamError(f"a tool block exists, so stop_reason must be tool_use (or max_tokens, where the "
                              f"limit cut the call), not {reason!r}")
        usage = data.get("usage") or {}
        if not isinstance(usage.get("output_tokens"), int) or usage["output_tokens"] < 0:
            raise StreamError("message_delta usage.output_tokens must be an int")
        self.delta_seen = True

    def _message_stop(self, data: dict[str, Any]) -> None:
        if not self.delta_seen:
            raise StreamError("message_stop before message_delta")
        self.stopped = True

    _HANDLERS: dict[str, Callable[[_Stream, dict[str, Any]], None]] = {
        "content_block_start": _block_start, "content_block_delta": _block_delta,
        "content_block_stop": _block_stop, "message_delta": _message_delta, "message_stop": _message_stop,
    }


def is_anthropic_error(doc: Any) -> bool:
    if not isinstance(doc, dict) or doc.get("type") != "error":
        return False
    err = doc.get("error")
    return (
        isinstance(err, dict) and isinstance(err.get("type"), str) and bool(err.get("type"))
        and isinstance(err.get("message"), str) and bool(err.get("message"))
    )
