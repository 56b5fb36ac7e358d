"""Make a local server's Anthropic event stream safe for strict clients (docs/wire.md §3).

Sans-IO: events in, events out. Fixes what local servers get wrong: zero input_tokens,
text or tool input placed inside content_block_start, tool ids with odd characters,
thinking without a signature, and a stream that stops without message_stop.
"""

from __future__ import annotations

from typing import Any

import orjson

from nonstop.wire.anthropic import Event, estimate_text_tokens, new_message_id
from nonstop.wire.tool_ids import local_tool_id, reply_tool_id

LOCAL_THINKING_SIGNATURE = "nonstop-local"


def message_start(model: str, input_tokens: int, message_id: str | None = None) -> Event:
    return (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id or new_message_id(),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": max(1, input_tokens), "output_tokens": 1},
            },
        },
    )


class LocalStreamNormalizer:
    def __init__(self, *, model: str, input_tokens_estimate: int, started: bool = False, capped: bool = False,
                 tag: str = ""):
        # capped: nonstop lowered the client's max_tokens for this backend. Hitting that
        # cap is then nonstop's limit, not the client's: reporting "max_tokens" would make
        # Claude Code believe its own (much larger) limit was hit and fail the turn.
        self.capped = capped
        # tag: the backend's tag; its tool calls get ids that carry it (wire/tool_ids.py).
        self.tag = tag
        self.cut = False
        self._tools = False
        self.model = model
        self.input_tokens = max(1, input_tokens_estimate)
        self.output_tokens = 0
        self.stop_reason = ""
        self.started = started
        self.finished = False
        self.error = ""
        self._open: dict[int, str] = {}  # index -> block type
        self._signed: set[int] = set()
        self._chars = 0

    def feed(self, etype: str, data: dict[str, Any]) -> list[Event]:
        if self.finished:
            return []
        t = data.get("type", etype)
        if t == "message_start":
            msg = data.get("message") or {}
            usage = msg.get("usage") or {}
            if isinstance(usage.get("input_tokens"), int) and usage["input_tokens"] > 0:
                self.input_tokens = usage["input_tokens"]
            if self.started:
                return []
            self.started = True
            return [message_start(self.model, self.input_tokens, msg.get("id") if isinstance(msg.get("id"), str) else None)]
        out: list[Event] = []
        if not self.started:
            self.started = True
            out.append(message_start(self.model, self.input_tokens))
        if t == "content_block_start":
            out.extend(self._start(data))
        elif t == "content_block_delta":
            out.extend(self._delta(data))
        elif t == "content_block_stop":
            idx = data.get("index", 0)
            if idx in self._open:
                if self._open[idx] == "thinking" and idx not in self._signed:
                    out.append(_delta_event(idx, {"type": "signature_delta", "signature": LOCAL_THINKING_SIGNATURE}))
                del self._open[idx]
                out.append(("content_block_stop", {"type": "content_block_stop", "index": idx}))
        elif t == "message_delta":
            delta = data.get("delta") or {}
            usage = data.get("usage") or {}
            if isinstance(delta.get("stop_reason"), str):
                self.stop_reason = _uncap(delta["stop_reason"], self.capped, self._tools)
                self.cut = self.cut or self.stop_reason != delta["stop_reason"]
            if isinstance(usage.get("output_tokens"), int):
                self.output_tokens = usage["output_tokens"]
            if isinstance(usage.get("input_tokens"), int) and usage["input_tokens"] > 0:
                self.input_tokens = usage["input_tokens"]
            out.extend(self._close_all())
            out.append(self._message_delta(delta.get("stop_sequence")))
        elif t == "message_stop":
            out.extend(self.finish())
        elif t == "ping":
            out.append(("ping", {"type": "ping"}))
        elif t == "error":
            err = data.get("error") or {}
            self.error = str(err.get("message") or "local stream error")
            self.finished = True
            out.append(("error", {"type": "error", "error": {"type": err.get("type") or "api_error", "message": self.error}}))
        return out

    def _start(self, data: dict[str, Any]) -> list[Event]:
        idx = data.get("index", 0)
        block = dict(data.get("content_block") or {})
        btype = block.get("type", "text")
        out: list[Event] = []
        if idx in self._open:  # a server that never closed the previous block
            return out
        self._open[idx] = btype
        if btype == "text":
            text = block.get("text") or ""
            out.append(("content_block_start", {"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}}))
            if text:
                self._chars += len(text)
                out.append(_delta_event(idx, {"type": "text_delta", "text": text}))
        elif btype == "tool_use":
            self._tools = True
            inp = block.get("input") or {}
            start = {"type": "tool_use", "id": _tool_id(block.get("id"), self.tag), "name": block.get("name", ""), "input": {}}
            out.append(("content_block_start", {"type": "content_block_start", "index": idx, "content_block": start}))
            if inp:
                js = orjson.dumps(inp).decode()
                self._chars += len(js)
                out.append(_delta_event(idx, {"type": "input_json_delta", "partial_json": js}))
        elif btype == "thinking":
            text = block.get("thinking") or ""
            out.append(("content_block_start", {"type": "content_block_start", "index": idx, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}))
            if text:
                out.append(_delta_event(idx, {"type": "thinking_delta", "thinking": text}))
        else:
            out.append(("content_block_start", {"type": "content_block_start", "index": idx, "content_block": block}))
        return out

    @property
    def content_started(self) -> bool:
        """A content block has started: the model is answering, not reading the prompt."""
        return bool(self._open) or self._chars > 0 or bool(self.stop_reason)

    def _delta(self, data: dict[str, Any]) -> list[Event]:
        idx = data.get("index", 0)
        if idx not in self._open:
            return []  # a delta for a block never started would abort the client
        delta = dict(data.get("delta") or {})
        dtype = delta.get("type")
        if dtype == "text_delta":
            self._chars += len(delta.get("text") or "")
        elif dtype == "input_json_delta":
            self._chars += len(delta.get("partial_json") or "")
        elif dtype == "signature_delta":
            delta["signature"] = LOCAL_THINKING_SIGNATURE
            self._signed.add(idx)
        return [_delta_event(idx, delta)]

    def _close_all(self) -> list[Event]:
        out: list[Event] = []
        for idx in sorted(self._open):
            if self._open[idx] == "thinking" and idx not in self._signed:
                out.append(_delta_event(idx, {"type": "signature_delta", "signature": LOCAL_THINKING_SIGNATURE}))
            out.append(("content_block_stop", {"type": "content_block_stop", "index": idx}))
        self._open.clear()
        return out

    def _message_delta(self, stop_sequence: Any = None) -> Event:
        if not self.output_tokens:
            self.output_tokens = estimate_text_tokens("x" * self._chars) if self._chars else 1
        return (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": stop_sequence},
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            },
        )

    def finish(self) -> list[Event]:
        """The local stream ended. A complete stream gets message_stop; one that stopped
        early gets a well-formed error instead of a silent truncation."""
        if self.finished:
            return []
        self.finished = True
        if not self.stop_reason and not self.output_tokens:
            self.error = self.error or "the local server ended the stream early"
            return [("error", {"type": "error", "error": {"type": "api_error", "message": self.error}})]
        out = self._close_all()
        return out + [("message_stop", {"type": "message_stop"})]


def _delta_event(idx: int, delta: dict[str, Any]) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": idx, "delta": delta})


def _uncap(stop_reason: str, capped: bool, has_tools: bool) -> str:
    if stop_reason == "max_tokens" and capped:
        return "tool_use" if has_tools else "end_turn"
    return stop_reason


def _tool_id(raw: Any, tag: str) -> str:
    return local_tool_id(tag) if tag else reply_tool_id(raw)


def normalize_message(msg: dict[str, Any], *, model: str, input_tokens_estimate: int, capped: bool = False,
                      tag: str = "") -> dict[str, Any]:
    """The same fixes for a non-streaming local reply."""
    out = dict(msg)
    out.setdefault("id", new_message_id())
    out["type"] = "message"
    out["role"] = "assistant"
    out["model"] = model
    content = []
    chars = 0
    for block in out.get("content") or []:
        if not isinstance(block, dict):
            continue
        b = dict(block)
        if b.get("type") == "tool_use":
            b["id"] = _tool_id(b.get("id"), tag)
            chars += len(orjson.dumps(b.get("input") or {}))
        elif b.get("type") == "thinking":
            b["signature"] = LOCAL_THINKING_SIGNATURE
        elif b.get("type") == "text":
            chars += len(b.get("text") or "")
        content.append(b)
    out["content"] = content
    usage = dict(out.get("usage") or {})
    if not isinstance(usage.get("input_tokens"), int) or usage["input_tokens"] <= 0:
        usage["input_tokens"] = max(1, input_tokens_estimate)
    if not isinstance(usage.get("output_tokens"), int) or usage["output_tokens"] <= 0:
        usage["output_tokens"] = max(1, chars // 4)
    out["usage"] = usage
    has_tools = any(b.get("type") == "tool_use" for b in content)
    if not out.get("stop_reason"):
        out["stop_reason"] = "tool_use" if has_tools else "end_turn"
    out["stop_reason"] = _uncap(str(out["stop_reason"]), capped, has_tools)
    out.setdefault("stop_sequence", None)
    return out
