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

from nonstop.backends.base import Reply
from nonstop.wire.anthropic import estimate_text_tokens
from nonstop.wire.splice import StreamTracker, json_event, splice

log = logging.getLogger("nonstop")

ContinueFn = Callable[[dict[str, Any]], Awaitable[Reply | None]]


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
            yield json_event("message_stop", {"type": "message_stop"})
            reply.usage.error, reply.usage.complete = "", True
            reply.note = "the cloud's stream lost its last event; nonstop ended it"
            return
        if tracker.whole:
            # Every block closed, a tool call among them: only the message's end is missing.
            yield json_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                        "usage": {"output_tokens": max(1, tracker.output_tokens)}})
            yield json_event("message_stop", {"type": "message_stop"})
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


