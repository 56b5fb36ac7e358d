"""Fit a request into a small local context window.

Used only after the client was already told "prompt is too long" and came back still too
long (a compaction request): then trimming beats failing. Large old tool results are cut
in the middle first, then the oldest turns go, always keeping the latest user turn and
keeping tool_use / tool_result pairs consistent.
"""

from __future__ import annotations

import copy
from typing import Any

from nonstop.wire.anthropic import estimate_tokens

NOTE = "[Earlier conversation omitted by nonstop to fit the local model's context window.]"


def _cut_middle(text: str, keep_chars: int) -> str:
    if len(text) <= keep_chars:
        return text
    half = max(1, keep_chars // 2)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters trimmed by nonstop ...]\n{text[-half:]}"


def _shrink_blocks(msg: dict[str, Any], keep_chars: int) -> None:
    content = msg.get("content")
    if isinstance(content, str):
        msg["content"] = _cut_middle(content, keep_chars)
        return
    if not isinstance(content, list):
        return
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            block["text"] = _cut_middle(block["text"], keep_chars)
        elif block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, str):
                block["content"] = _cut_middle(inner, keep_chars)
            elif isinstance(inner, list):
                for b in inner:
                    if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str):
                        b["text"] = _cut_middle(b["text"], keep_chars)


def _orphan_results_to_text(msg: dict[str, Any], known_ids: set[str]) -> None:
    content = msg.get("content")
    if not isinstance(content, list):
        return
    out = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result" and block.get("tool_use_id") not in known_ids:
            inner = block.get("content")
            text = inner if isinstance(inner, str) else " ".join(
                b.get("text", "") for b in inner or [] if isinstance(b, dict) and b.get("type") == "text"
            )
            out.append({"type": "text", "text": f"(earlier tool result) {text}"})
        else:
            out.append(block)
    msg["content"] = out


def trim_to_fit(req: dict[str, Any], counted_tokens: int, budget: int) -> dict[str, Any] | None:
    """A copy of req whose estimated size is within budget tokens, or None if even the
    latest turn alone cannot fit."""
    est = estimate_tokens(req)
    scale = max(1.0, counted_tokens / est) if est else 1.0
    target = budget
    # The note and the rewritten orphan results are added after trimming: if they push
    # the result over, trim again for a smaller target.
    for _ in range(8):
        out = _trim(req, counted_tokens, target)
        if out is None:
            return None
        size = estimate_tokens(out) * scale
        if size <= budget:
            return out
        target -= int(size - budget) + 1
        if target <= 0:
            return None
    return None


def _trim(req: dict[str, Any], counted_tokens: int, budget: int) -> dict[str, Any] | None:
    est = estimate_tokens(req)
    scale = max(1.0, counted_tokens / est) if est else 1.0

    def size(r: dict[str, Any]) -> float:
        return estimate_tokens(r) * scale

    out = copy.deepcopy(req)
    messages: list[dict[str, Any]] = [m for m in out.get("messages") or [] if isinstance(m, dict)]
    if not messages:
        return None
    # 1. Cut huge blocks in all but the latest message.
    keep_chars = int(budget * 3.5 / 4)
    for m in messages[:-1]:
        _shrink_blocks(m, keep_chars)
    out["messages"] = messages
    # 2. Drop the oldest turns until it fits.
    dropped = 0
    while size(out) > budget and len(messages) > 1:
        messages.pop(0)
        dropped += 1
        while messages and messages[0].get("role") != "user":
            messages.pop(0)
            dropped += 1
        if not messages:
            return None
    if size(out) > budget:
        _shrink_blocks(messages[-1], keep_chars // 2)
        if size(out) > budget:
            return None
    if dropped:
        ids = {
            b.get("id")
            for m in messages
            if m.get("role") == "assistant" and isinstance(m.get("content"), list)
            for b in m["content"]
            if isinstance(b, dict) and b.get("type") == "tool_use"
        }
        _orphan_results_to_text(messages[0], {i for i in ids if isinstance(i, str)})
        first = messages[0]
        content = first.get("content")
        note = {"type": "text", "text": NOTE}
        first["content"] = [note] + (content if isinstance(content, list) else [{"type": "text", "text": str(content)}])
    return out
