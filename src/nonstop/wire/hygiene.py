"""History going back to the cloud after local turns.

A conversation that was partly answered by a local model carries things the cloud
rejects: thinking blocks without a valid signature (locally produced ones carry
LOCAL_THINKING_SIGNATURE) and tool ids outside ^[a-zA-Z0-9_-]+$. This module removes
the one and rewrites the other, and touches nothing else: system, unknown keys and
order stay as they are. When nothing needs changing it says so (None) without copying,
so the caller can forward the client's original bytes.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from nonstop.wire.local_stream import LOCAL_THINKING_SIGNATURE

_ID_OK = re.compile(r"[a-zA-Z0-9_-]+").fullmatch
_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
EMPTY_TURN_TEXT = "(no content)"


def cloud_tool_id(tool_id: str) -> str:
    """A valid tool id for `tool_id`. Deterministic (the history is sent again on every
    turn, so a tool_use and its tool_result always map the same way) and collision-safe
    (ids differing only in invalid characters stay different)."""
    if _ID_OK(tool_id):
        return tool_id
    digest = hashlib.sha256(tool_id.encode()).hexdigest()[:12]
    base = _BAD_ID_CHARS.sub("_", tool_id)[:48]
    return f"{base}_{digest}" if base else f"toolu_{digest}"


def clean_history_for_cloud(req: dict) -> dict | None:
    """None when `req` can go to the cloud as it is; otherwise a cleaned shallow copy
    (unchanged messages and blocks are shared, not copied)."""
    messages = req.get("messages")
    if not isinstance(messages, list):
        return None
    changed: list[Any] | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        assistant = msg.get("role") == "assistant"
        kept: list[Any] | None = None
        for j, block in enumerate(content):
            cleaned = _clean_block(block, assistant)
            if cleaned is block:
                if kept is not None:
                    kept.append(block)
                continue
            if kept is None:
                kept = content[:j]
            if cleaned is not None:
                kept.append(cleaned)
        if kept is None:
            continue
        if not kept:
            kept = [{"type": "text", "text": EMPTY_TURN_TEXT}]
        if changed is None:
            changed = list(messages)
        changed[i] = {**msg, "content": kept}
    if changed is None:
        return None
    return {**req, "messages": changed}


def _clean_block(block: Any, assistant: bool) -> Any:
    """The block itself when it is fine, a replacement, or None to remove it."""
    if not isinstance(block, dict):
        return block
    btype = block.get("type")
    if btype == "thinking":
        signature = block.get("signature")
        if assistant and (not signature or not isinstance(signature, str) or signature == LOCAL_THINKING_SIGNATURE):
            return None
    elif btype == "redacted_thinking":
        if assistant and not block.get("data"):
            return None
    elif btype == "tool_use":
        tool_id = block.get("id")
        if isinstance(tool_id, str) and not _ID_OK(tool_id):
            return {**block, "id": cloud_tool_id(tool_id)}
    elif btype == "tool_result":
        tool_id = block.get("tool_use_id")
        if isinstance(tool_id, str) and not _ID_OK(tool_id):
            return {**block, "tool_use_id": cloud_tool_id(tool_id)}
    return block
