"""History going back to the cloud after local turns.

A conversation that was partly answered by a local model carries things the cloud
rejects: thinking blocks without a valid signature (locally produced ones carry
LOCAL_THINKING_SIGNATURE), tool ids outside ^[a-zA-Z0-9_-]+$, and text blocks with no
text but whitespace (a local model's "\n\n" before a call: "text content blocks must
contain non-whitespace text"). This module removes the first and the last, rewrites
the ids, and touches nothing else: system, unknown keys and order stay as they are.
When nothing needs changing it says so (None) without copying, so the caller can
forward the client's original bytes.
"""

from __future__ import annotations

from typing import Any

from nonstop.wire.local_stream import LOCAL_THINKING_SIGNATURE
from nonstop.wire.tool_ids import valid_tool_id

EMPTY_TURN_TEXT = "(no content)"
# The only block types the cloud may reject in a history: everything else is kept as is.
CHECKED_BLOCKS = frozenset({"thinking", "redacted_thinking", "tool_use", "tool_result"})


def clean_history_for_cloud(req: dict[str, Any]) -> dict[str, Any] | None:
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
            cleaned: Any = block  # the common case: a block no rule is about is kept
            if type(block) is dict:
                btype = block.get("type")
                if type(btype) is str and btype in CHECKED_BLOCKS:
                    cleaned = _clean_block(block, assistant)
                elif assistant and btype == "text" and blank_text(block.get("text")):
                    cleaned = None
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


def blank_text(text: Any) -> bool:
    """A text block's text that the cloud refuses: empty, or nothing but whitespace."""
    return isinstance(text, str) and (not text or text.isspace())


def kept_as_is(btype: Any, assistant: bool, signature: Any, data: Any, tool_id: Any) -> bool:
    """Whether a block goes to the cloud unchanged, from its type, its turn (an assistant
    turn or not) and the fields the rules read: a thinking block's signature, a redacted
    one's data, a tool_use's id or a tool_result's tool_use_id."""
    if btype == "thinking":
        return not assistant or (isinstance(signature, str) and bool(signature) and signature != LOCAL_THINKING_SIGNATURE)
    if btype == "redacted_thinking":
        return not assistant or bool(data)
    if btype == "tool_use" or btype == "tool_result":
        return not isinstance(tool_id, str) or valid_tool_id(tool_id) == tool_id
    return True


def _clean_block(block: Any, assistant: bool) -> Any:
    """The block itself when it is fine, a replacement, or None to remove it."""
    if not isinstance(block, dict):
        return block
    btype = block.get("type")
    key = "tool_use_id" if btype == "tool_result" else "id"
    if kept_as_is(btype, assistant, block.get("signature"), block.get("data"), block.get(key)):
        return block
    if btype == "tool_use" or btype == "tool_result":
        return {**block, key: valid_tool_id(block[key])}
    return None  # a thinking block the cloud would reject


def for_cloud(req: dict[str, Any]) -> dict[str, Any]:
    """`req` with its history cleaned for the cloud (the same object when clean)."""
    cleaned = clean_history_for_cloud(req)
    return req if cleaned is None else cleaned


def without_thinking(req: dict[str, Any]) -> dict[str, Any]:
    """`req` without extended thinking, for a cloud request whose last assistant turn a
    local model wrote: with `thinking` on, the cloud requires that turn to start with a
    signed thinking block, which no local model can produce. Context-management edits
    that clear thinking need thinking on, so they go too."""
    out = {k: v for k, v in req.items() if k != "thinking"}
    cm = out.get("context_management")
    if isinstance(cm, dict) and isinstance(cm.get("edits"), list):
        edits = [e for e in cm["edits"] if not (isinstance(e, dict) and str(e.get("type", "")).startswith("clear_thinking"))]
        if edits:
            out["context_management"] = {**cm, "edits": edits}
        else:
            out.pop("context_management")
    return out
