"""One message from two streams: a local model's stream spliced into a cloud stream that
broke off, as the rest of the same Anthropic message.

The client holds the cloud's `message_start` and the blocks it started; the local stream's
own start is left out, its first block is merged into the cloud's open block when it is
of the same type (text, or thinking), and its other blocks are numbered on from the
cloud's. Used where a cloud stream fails after its start: before any content
(backends/cloud.py: an empty text or thinking block and then an error or a cut) and,
opt-in, after text (server/recovery.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from nonstop.wire.anthropic import estimate_text_tokens
from nonstop.wire.local_stream import LOCAL_THINKING_SIGNATURE
from nonstop.wire.sse import JSONEventDecoder, encode_event


class Continuation(Protocol):
    """The stream that goes on with the message (a backend's Reply): its body, and how to
    close it (let go once the splice ends)."""

    body: AsyncIterator[bytes]
    close: Callable[[], Any] | None


class StreamTracker:
    """Follows an Anthropic event stream: which blocks exist, the text so far."""

    def __init__(self) -> None:
        self.blocks: dict[int, str] = {}
        self.open: set[int] = set()
        self.text: list[str] = []
        self.saw_delta = False
        self.saw_stop = False
        self.output_tokens = 0
        self.start_usage: dict[str, Any] = {}  # the cloud's message_start usage (the prompt's counts)
        self.decoder = JSONEventDecoder()

    def feed(self, chunk: bytes) -> list[tuple[str, dict[str, Any], bytes]]:
        """Events in this chunk, each with its own bytes (so one can be held back)."""
        out = []
        for ev, data in self.decoder.feed(chunk):
            self._observe(ev.event, data)
            out.append((ev.event, data, ev.encode()))
        return out

    def _observe(self, event: str, data: dict[str, Any]) -> None:
        t = data.get("type", event)
        idx = data.get("index")
        if t == "message_start":
            usage = (data.get("message") or {}).get("usage")
            self.start_usage = usage if isinstance(usage, dict) else {}
        elif t == "content_block_start" and isinstance(idx, int):
            self.blocks[idx] = (data.get("content_block") or {}).get("type", "")
            self.open.add(idx)
        elif t == "content_block_delta" and isinstance(idx, int):
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.text.append(str(delta.get("text", "")))
        elif t == "content_block_stop" and isinstance(idx, int):
            self.open.discard(idx)
        elif t == "message_delta":
            self.saw_delta = True
            usage = data.get("usage") or {}
            if isinstance(usage.get("output_tokens"), int):
                self.output_tokens = usage["output_tokens"]
        elif t == "message_stop":
            self.saw_stop = True

    @property
    def recoverable(self) -> bool:
        return (
            not self.saw_delta
            and bool(self.text)
            and all(kind == "text" for kind in self.blocks.values())
        )

    @property
    def whole(self) -> bool:
        """Every block the cloud started is closed, and one is a tool call: the message
        lacks only its end (message_delta, message_stop), which nonstop can give."""
        return not self.saw_delta and not self.open and "tool_use" in self.blocks.values()

    @property
    def next_index(self) -> int:
        return max(self.blocks) + 1 if self.blocks else 0


def json_event(name: str, data: dict[str, Any]) -> bytes:
    return encode_event(name, orjson.dumps(data))


async def splice(tracker: StreamTracker, local: Continuation, skip: str = "") -> AsyncIterator[bytes]:
    """Re-number the local stream's blocks to follow the cloud's, merging its first block
    into the cloud's open text or thinking block when it is of that type. `skip`:
    whitespace the client already has that the prefill left out; the continuation's
    repeat of it is dropped. The message's usage stays the cloud's for the prompt (the
    local server counted a fitted one), and its output counts both parts."""
    open_block = next((i for i in sorted(tracker.open) if tracker.blocks.get(i) in _MERGED), None)
    open_kind = tracker.blocks.get(open_block, "") if open_block is not None else ""
    cloud_output = estimate_text_tokens("".join(tracker.text)) if tracker.text else 0
    next_index = tracker.next_index
    mapping: dict[int, int] = {}
    merged: int | None = None
    decoder = JSONEventDecoder()
    try:
        async for chunk in local.body:
            out: list[bytes] = []
            for ev, data in decoder.feed(chunk):
                t = data.get("type", ev.event)
                if t == "message_start":
                    continue
                if t == "ping":  # keeps the client's stream alive while a local model reads the prompt
                    out.append(ev.encode())
                elif t == "content_block_start":
                    idx = data.get("index", 0)
                    block = data.get("content_block") or {}
                    if merged is None and open_block is not None and block.get("type") == open_kind:
                        mapping[idx] = merged = open_block
                        continue
                    if merged is None and open_block is not None:
                        # The local model goes on with something else (a tool call): the
                        # cloud's block ends first, one block open at a time.
                        out += _closed(open_block, open_kind)
                        merged = open_block
                    mapping[idx] = next_index
                    next_index += 1
                    out.append(json_event("content_block_start", {**data, "index": mapping[idx]}))
                elif t in ("content_block_delta", "content_block_stop"):
                    idx = data.get("index", 0)
                    if idx not in mapping:
                        continue
                    delta = data.get("delta")
                    if skip and mapping[idx] == merged and isinstance(delta, dict) and delta.get("type") == "text_delta":
                        piece = str(delta.get("text", ""))
                        n = 0
                        while n < min(len(piece), len(skip)) and piece[n].isspace():
                            n += 1
                        skip = "" if n < len(piece) else skip[n:]
                        if n == len(piece):
                            continue  # nothing but the whitespace the client has
                        data = {**data, "delta": {**delta, "text": piece[n:]}}
                    elif t == "content_block_delta":
                        skip = ""  # the continuation began with something else
                    out.append(json_event(t, {**data, "index": mapping[idx]}))
                elif t == "message_delta":
                    # Close a cloud block the local model never continued.
                    if open_block is not None and merged is None:
                        out += _closed(open_block, open_kind)
                        merged = open_block
                    out.append(json_event("message_delta", {**data, "usage": _usage(data.get("usage"), tracker.start_usage,
                                                                             cloud_output)}))
                else:
                    out.append(ev.encode())
            if out:
                yield b"".join(out)
    finally:
        if local.close is not None:
            local.close()
            local.close = None  # it holds its reply: dropped, both are freed by their counts


# The cloud's open block a local model's first block of the same type goes on in.
_MERGED = ("text", "thinking")


def _closed(index: int, kind: str) -> list[bytes]:
    """The end of the cloud's open block `index`. A thinking block gets the signature
    every locally ended one has (wire/hygiene.py strips it before the cloud sees it)."""
    out = []
    if kind == "thinking":
        out.append(json_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                      "delta": {"type": "signature_delta",
                                                                "signature": LOCAL_THINKING_SIGNATURE}}))
    out.append(json_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


# The usage fields that count the prompt: the cloud's, for the prompt the client sent.
_PROMPT_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _usage(local: Any, cloud: dict[str, Any], cloud_output: int) -> dict[str, Any]:
    """A local continuation's message_delta usage, as the client's message has it: the
    prompt's counts are the cloud's (the SDKs take message_delta's over message_start's;
    left out, the start's stand), the output is both parts'."""
    usage = {k: v for k, v in (local if isinstance(local, dict) else {}).items() if k not in _PROMPT_COUNTS}
    usage.update({k: cloud[k] for k in _PROMPT_COUNTS if isinstance(cloud.get(k), int)})
    out = usage.get("output_tokens")
    usage["output_tokens"] = cloud_output + (out if isinstance(out, int) else 0)
    return usage
