"""The OpenAI front door, replies: an Anthropic message or event stream -> Chat
Completions (a whole completion, or chunks).

Pure: dicts in, dicts out; `created` may be passed in to keep results reproducible.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from nonstop.wire.errors import context_exceeded

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def finish_reason_for(stop_reason: Any, legacy: bool = False) -> str:
    reason = FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    return "function_call" if legacy and reason == "tool_calls" else reason


def openai_usage(usage: Any) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage. OpenAI prompt_tokens includes cached tokens."""
    usage = usage if isinstance(usage, dict) else {}

    def count(key: str) -> int:
        v = usage.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0

    cached = count("cache_read_input_tokens")
    prompt = count("input_tokens") + cached + count("cache_creation_input_tokens")
    completion = count("output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def anthropic_response_to_openai(msg: dict[str, Any], *, model: str, created: int | None = None,
                                 legacy: bool = False) -> dict[str, Any]:
    """`legacy`: the request offered the legacy `functions`, so a call is the message's
    `function_call` (the first call: such a request asks for one) and the finish reason
    `function_call`."""
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.get("content") or []:
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif btype == "thinking" and isinstance(block.get("thinking"), str):
            reasoning.append(block["thinking"])
        elif btype == "tool_use":
            calls.append({
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {"name": str(block.get("name") or ""), "arguments": orjson.dumps(block.get("input", {})).decode()},
            })
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls and legacy:
        message["function_call"] = calls[0]["function"]
    elif calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id_for(msg.get("id")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason_for(msg.get("stop_reason"), legacy),
                     "logprobs": None}],
        "usage": openai_usage(msg.get("usage")),
    }


def completion_id_for(message_id: Any) -> str:
    if isinstance(message_id, str) and message_id:
        return "chatcmpl-" + _BAD_ID_CHARS.sub("", message_id.removeprefix("msg_"))
    return "chatcmpl-nonstop"


class AnthropicToOpenAIStream:
    """Anthropic stream events -> Chat Completions chunks (sans-IO). The caller encodes
    each chunk as `data: <json>` and writes `data: [DONE]` after finish()."""

    def __init__(self, *, model: str, completion_id: str, include_usage: bool, created: int | None = None,
                 legacy: bool = False):
        self.legacy = legacy  # calls as the legacy `function_call` (the first only), as in the whole reply
        self.model = model
        self.completion_id = completion_id
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self._blocks: dict[int, tuple[str, int]] = {}  # Anthropic index -> (type, tool slot)
        self._tools = 0
        self._bare: set[int] = set()  # tool slots no arguments went out for yet
        self._done = False

    def feed(self, event_type: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if self._done or not isinstance(data, dict):
            return []
        etype = data.get("type", event_type)
        if etype == "message_start":
            message = data.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self.usage.update(message["usage"])
            return [self._chunk({"role": "assistant", "content": ""})]
        if etype == "content_block_start":
            return self._block_start(data)
        if etype == "content_block_delta":
            return self._block_delta(data)
        if etype == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
            if isinstance(data.get("usage"), dict):
                self.usage.update({k: v for k, v in data["usage"].items() if v is not None})
            return []
        if etype == "content_block_stop":
            index = data.get("index")
            known = self._blocks.get(index) if type(index) is int else None
            return self._no_arguments(known[1]) if known is not None and known[0] == "tool_use" else []
        if etype == "message_stop":
            return self.finish()
        if etype == "error":
            self._done = True
            err = data.get("error")
            err = err if isinstance(err, dict) else {}
            message, kind = str(err.get("message") or "upstream error"), str(err.get("type") or "api_error")
            code = "context_length_exceeded" if kind == "invalid_request_error" and context_exceeded(message) else None
            return [{"error": {"message": message, "type": kind, "param": None, "code": code}}]
        return []  # ping and unknown events carry nothing for OpenAI

    def finish(self) -> list[dict[str, Any]]:
        if self._done:
            return []
        out = [c for slot in sorted(self._bare) for c in self._no_arguments(slot)]
        self._done = True
        out.append(self._chunk({}, finish_reason_for(self.stop_reason, self.legacy)))
        if self.include_usage:
            out.append(self._chunk(None, usage=openai_usage(self.usage)))
        return out

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block")
        index = data.get("index")
        if not isinstance(block, dict) or not isinstance(index, int):
            return []
        btype = str(block.get("type"))
        if btype != "tool_use":
            self._blocks[index] = (btype, -1)
            text = block.get("text") if btype == "text" else block.get("thinking") if btype == "thinking" else None
            if isinstance(text, str) and text:
                return [self._chunk({"content" if btype == "text" else "reasoning_content": text})]
            return []
        slot = self._tools
        self._tools += 1
        if self.legacy and slot:  # a legacy reply holds one call
            self._blocks[index] = ("", -1)
            return []
        self._blocks[index] = (btype, slot)
        self._bare.add(slot)
        name = str(block.get("name") or "")
        if self.legacy:
            out = [self._chunk({"function_call": {"name": name, "arguments": ""}})]
        else:
            call = {"index": slot, "id": str(block.get("id") or ""), "type": "function",
                    "function": {"name": name, "arguments": ""}}
            out = [self._chunk({"tool_calls": [call]})]
        if block.get("input"):  # some servers put the whole input here
            out.append(self._args(slot, orjson.dumps(block["input"]).decode()))
        return out

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta")
        index = data.get("index")
        known = self._blocks.get(index) if type(index) is int else None
        if not isinstance(delta, dict) or known is None:
            return []
        dtype = delta.get("type")
        if dtype == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            return [self._chunk({"content": delta["text"]})]
        if dtype == "thinking_delta" and isinstance(delta.get("thinking"), str) and delta["thinking"]:
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if dtype == "input_json_delta" and known[0] == "tool_use" and isinstance(delta.get("partial_json"), str) and delta["partial_json"]:
            return [self._args(known[1], delta["partial_json"])]
        return []

    def _args(self, slot: int, text: str) -> dict[str, Any]:
        self._bare.discard(slot)
        if self.legacy:
            return self._chunk({"function_call": {"arguments": text}})
        return self._chunk({"tool_calls": [{"index": slot, "function": {"arguments": text}}]})

    def _no_arguments(self, slot: int) -> list[dict[str, Any]]:
        """A call that ended with no arguments sent: "{}", as the whole reply says, since
        clients parse the arguments as JSON and "" is not."""
        return [self._args(slot, "{}")] if slot in self._bare else []

    def _chunk(self, delta: dict[str, Any] | None, finish_reason: str | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk
