"""Mid-stream recovery (opt-in: `[recovery] continue_locally = true`).

When a cloud stream dies after text has reached the client, the partial assistant text
becomes a prefill for a local model, and the local continuation is spliced into the same
message: the client receives one unbroken message instead of an error.

It applies only when every block the cloud started is a text block and the stream had
not yet sent message_delta. It never applies once a tool_use (or thinking) block has
started: half a tool call cannot be continued by another model, and thinking blocks carry
signatures no local model can produce. Then the stream ends with the usual error event,
unless the message lacked only its end (every block closed, after message_delta or with
a whole tool call): nonstop ends it then.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from nonstop.backends.base import Reply
from nonstop.wire.anthropic import estimate_text_tokens
from nonstop.wire.sse import JSONEventDecoder, encode_event

log = logging.getLogger("nonstop")

ContinueFn = Callable[[dict[str, Any]], Awaitable[Reply | None]]


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


def prefill_request(req: dict[str, Any], partial: str) -> dict[str, Any]:
    """The original request plus the partial answer as an assistant prefill. A client's
    own prefill (the request ends with an assistant turn) is the start of the same text:
    the partial answer extends it, so the local model continues the text the client holds."""
    messages = list(req.get("messages") or [])
    last = messages[-1] if messages and isinstance(messages[-1], dict) else None
    if last is not None and last.get("role") == "assistant":
        content = last.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        if blocks and isinstance(blocks[-1], dict) and blocks[-1].get("type") == "text":
            blocks[-1] = {**blocks[-1], "text": str(blocks[-1].get("text", "")) + partial}
        else:
            blocks.append({"type": "text", "text": partial})
        messages[-1] = {**last, "content": _without_trailing_space(blocks)}
    else:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": partial.rstrip()}]})
    return {**req, "messages": messages}


def _without_trailing_space(blocks: list[Any]) -> list[Any]:
    # Trailing whitespace in a prefill is rejected by some servers; it is kept out of the
    # prefill, and splice drops the continuation's repeat of it (the client has it).
    end = blocks[-1]
    return [*blocks[:-1], {**end, "text": str(end.get("text", "")).rstrip()}]


def _ev(name: str, data: dict[str, Any]) -> bytes:
    return encode_event(name, orjson.dumps(data))


async def recovering(reply: Reply, source: AsyncIterator[bytes], req: dict[str, Any],
                     continue_locally: ContinueFn) -> AsyncIterator[bytes]:
    """`source` is the cloud body; the caller then makes this generator reply.body."""
    tracker = StreamTracker()
    async for chunk in source:
        events = tracker.feed(chunk)
        failed_at = next((i for i, (name, _, _) in enumerate(events) if name == "error"), None)
        if failed_at is None:
            yield chunk
            continue
        # Forward what came before the error; hold the error back while we try.
        before = b"".join(raw for _, _, raw in events[:failed_at])
        if before:
            yield before
        error_raw = events[failed_at][2]
        if tracker.saw_delta and not tracker.open:
            # Only message_stop was missing: the answer is whole.
            yield _ev("message_stop", {"type": "message_stop"})
            reply.usage.error, reply.usage.complete = "", True
            reply.note = "the cloud's stream lost its last event; nonstop ended it"
            return
        if tracker.whole:
            # Every block closed, a tool call among them: only the message's end is missing.
            yield _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                        "usage": {"output_tokens": max(1, tracker.output_tokens)}})
            yield _ev("message_stop", {"type": "message_stop"})
            reply.usage.error, reply.usage.complete, reply.usage.stop_reason = "", True, "tool_use"
            reply.note = "the cloud's stream ended after its last block; nonstop ended the message"
            return
        if not tracker.recoverable:
            yield error_raw
            return
        partial = "".join(tracker.text)
        local = await continue_locally(prefill_request(req, partial))
        if local is None:
            yield error_raw
            return
        log.warning("cloud stream failed mid-response; continuing on %s", local.backend)
        reply.usage.error = ""
        reply.note = f"continued on {local.backend} after a mid-stream cloud failure"
        async for piece in splice(tracker, local, skip=partial[len(partial.rstrip()):]):
            yield piece
        reply.usage.output_tokens = local.usage.output_tokens + (tracker.output_tokens or estimate_text_tokens(partial))
        reply.usage.stop_reason = local.usage.stop_reason
        reply.usage.complete = local.usage.complete
        if local.usage.error:
            reply.usage.error = local.usage.error
        return


async def splice(tracker: StreamTracker, local: Reply, skip: str = "") -> AsyncIterator[bytes]:
    """Re-number the local stream's blocks to follow the cloud's, merging its first text
    block into the cloud's open text block. `skip`: whitespace the client already has
    that the prefill left out; the continuation's repeat of it is dropped. The message's
    usage stays the cloud's for the prompt (the local server counted a fitted one), and
    its output counts both parts."""
    open_text = next((i for i in sorted(tracker.open) if tracker.blocks.get(i) == "text"), None)
    cloud_output = estimate_text_tokens("".join(tracker.text))
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
                    if merged is None and open_text is not None and block.get("type") == "text":
                        mapping[idx] = merged = open_text
                        continue
                    if merged is None and open_text is not None:
                        # The local model goes on with something else (a tool call): the
                        # cloud's text block ends first, one block open at a time.
                        out.append(_ev("content_block_stop", {"type": "content_block_stop", "index": open_text}))
                        merged = open_text
                    mapping[idx] = next_index
                    next_index += 1
                    out.append(_ev("content_block_start", {**data, "index": mapping[idx]}))
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
                    out.append(_ev(t, {**data, "index": mapping[idx]}))
                elif t == "message_delta":
                    # Close a cloud text block the local model never continued.
                    if open_text is not None and merged is None:
                        out.append(_ev("content_block_stop", {"type": "content_block_stop", "index": open_text}))
                        merged = open_text
                    out.append(_ev("message_delta", {**data, "usage": _usage(data.get("usage"), tracker.start_usage,
                                                                             cloud_output)}))
                else:
                    out.append(ev.encode())
            if out:
                yield b"".join(out)
    finally:
        if local.close is not None:
            local.close()
            local.close = None  # it holds its reply: dropped, both are freed by their counts


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
