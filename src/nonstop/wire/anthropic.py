"""Anthropic Messages helpers: the request a local Anthropic-compatible server can take,
token estimates, and the fixes local streams need before a client sees them.

Pure functions of dicts.
"""

from __future__ import annotations

import secrets
from collections.abc import Container
from typing import Any

import orjson

from nonstop.wire.pdf import known_text
from nonstop.wire.tool_ids import ServerToolIds

# Top-level request keys a local server understands. Everything else is dropped on the
# way to a local model (and documented in docs/compatibility.md): metadata,
# context_management, output_config, thinking, service_tier, container, mcp_servers ...
LOCAL_REQUEST_KEYS = frozenset({
    "model", "messages", "system", "max_tokens", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice",
})
_BLOCK_KEYS = {
    "text": ("type", "text"),
    "image": ("type", "source"),
    "tool_use": ("type", "id", "name", "input"),
    "tool_result": ("type", "tool_use_id", "content", "is_error"),
}
_TOOL_KEYS = ("name", "description", "input_schema")

# One Anthropic stream event in parsed form: (event name, data object).
Event = tuple[str, dict[str, Any]]


def new_message_id() -> str:
    return "msg_nonstop_" + secrets.token_hex(12)


def local_block(block: Any, native: Container[str]) -> dict[str, Any] | None:
    """`block` in a form a local model can take, or None to drop it. A bare string is a
    text block. Thinking goes (a local model cannot verify or use another model's
    reasoning), and so does anything that is not a block. A block whose type is not in
    `native` becomes a text block: a document's own text where it has one, else a note
    of what was left out (a PDF's text once wire/pdf.py has read it). A native block
    comes back as it is, for the caller to map."""
    if isinstance(block, str):
        return {"type": "text", "text": block}
    if not isinstance(block, dict):
        return None
    btype = block.get("type")
    if btype in ("thinking", "redacted_thinking"):
        return None
    if isinstance(btype, str) and btype in native:
        return block
    text = (known_text(block) or _document_text(block.get("source"))) if btype == "document" else None
    return {"type": "text", "text": f"[{btype or 'unknown'} block omitted]" if text is None else text}


def _document_text(source: Any) -> str | None:
    if not isinstance(source, dict):
        return None
    if source.get("type") == "text":
        return str(source.get("data") or "")
    if source.get("type") == "content":
        inner = source.get("content")
        if isinstance(inner, str):
            return inner
        if isinstance(inner, list):
            return "\n".join(str(b.get("text") or "") for b in inner if isinstance(b, dict) and b.get("type") == "text")
    return None


def _clean_block(block: Any, ids: ServerToolIds) -> dict[str, Any] | None:
    block = local_block(block, _BLOCK_KEYS)
    if block is None:
        return None
    out = {k: block[k] for k in _BLOCK_KEYS[block["type"]] if k in block}
    btype = out["type"]
    if btype == "tool_use":
        if "id" in out:
            out["id"] = ids(out["id"])
    elif btype == "tool_result":
        if "tool_use_id" in out:
            out["tool_use_id"] = ids(out["tool_use_id"])
        if isinstance(out.get("content"), list):
            # One level: a result inside a result is not one a server reads, and following
            # such nesting would recurse as deep as a client cares to nest.
            inner = [c for c in (_clean_block(b, ids) if not _is_result(b) else dict(_OMITTED_RESULT) for b in out["content"])
                     if c is not None]
            out["content"] = inner
    return out


_OMITTED_RESULT = {"type": "text", "text": "[tool_result block omitted]"}


def _is_result(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "tool_result"


def _system_text(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"type": "text", "text": system}] if system else []
    if isinstance(system, list):
        out = []
        for b in system:
            if isinstance(b, dict) and b.get("type") == "text":
                out.append({"type": "text", "text": str(b.get("text", ""))})
            elif isinstance(b, str):
                out.append({"type": "text", "text": b})
        return out
    return []


def to_local_request(req: dict[str, Any], *, model: str, max_tokens: int) -> dict[str, Any]:
    """The request for a local server that speaks Anthropic Messages natively (and, through
    wire.openai.backend_request, the one for a server that speaks OpenAI Chat). The
    history's tool ids are the server's form of them (wire.tool_ids.ServerToolIds)."""
    out: dict[str, Any] = {k: req[k] for k in LOCAL_REQUEST_KEYS if k in req}
    out["model"] = model
    asked = req.get("max_tokens")
    out["max_tokens"] = min(asked, max_tokens) if isinstance(asked, int) and asked > 0 else max_tokens
    system = _system_text(req.get("system"))
    messages: list[dict[str, Any]] = []
    ids = ServerToolIds()
    for msg in req.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        content = msg.get("content")
        if role == "system":
            # Newer clients put system turns inside messages; local servers reject them.
            system.extend(_system_text(content))
            continue
        if role not in ("user", "assistant"):
            continue
        if isinstance(content, list):
            blocks = [c for c in (_clean_block(b, ids) for b in content) if c is not None]
            if not blocks:
                blocks = [{"type": "text", "text": "(no content)"}]
            content = blocks
        elif not isinstance(content, str):
            content = str(content)
        if messages and messages[-1]["role"] == role:
            prev = messages[-1]["content"]
            prev_list = [{"type": "text", "text": prev}] if isinstance(prev, str) else prev
            cur = [{"type": "text", "text": content}] if isinstance(content, str) else content
            messages[-1] = {"role": role, "content": prev_list + cur}
        else:
            messages.append({"role": role, "content": content})
    out["messages"] = messages
    if system:
        out["system"] = system
    else:
        out.pop("system", None)
    tools = req.get("tools")
    if isinstance(tools, list):
        kept = [
            {k: t[k] for k in _TOOL_KEYS if k in t}
            for t in tools
            if isinstance(t, dict) and t.get("type") in (None, "custom") and isinstance(t.get("name"), str)
        ]
        if kept:
            out["tools"] = kept
        else:
            out.pop("tools", None)
            out.pop("tool_choice", None)
    tc = out.get("tool_choice")
    if isinstance(tc, dict):
        tc = {k: tc[k] for k in ("type", "name") if k in tc}
        kept_names = {t["name"] for t in out.get("tools") or []}
        name = tc.get("name")
        if tc.get("type") == "tool" and not (isinstance(name, str) and name in kept_names):
            tc = {"type": "auto"}  # the named tool was a server tool a local model cannot run
        out["tool_choice"] = tc
    return out


def fold_beside_results(req: dict[str, Any]) -> dict[str, Any] | None:
    """`req` (the output of to_local_request) with the text each user turn holds beside its
    tool results moved inside the last of those results; None when no turn holds both.

    For a server whose chat template refuses a user message right after tool results:
    Mistral-family templates (and Gemma's) count it as a second user turn in a row ("roles
    must alternate user/assistant/..."), and older mistral_common versions say "Unexpected role
    'user' after role 'tool'". Claude Code puts text beside results on most turns (the
    `<system-reminder>` notes, the user's own words), and an OpenAI-format server is sent
    it as a user message after the tool messages. Images stay where they were."""
    messages = req.get("messages")
    if not isinstance(messages, list):
        return None
    out: list[Any] | None = None
    for i, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) and msg.get("role") == "user" else None
        if not isinstance(content, list):
            continue
        last = next((j for j in range(len(content) - 1, -1, -1) if _is_result(content[j])), -1)
        texts = [b for b in content if isinstance(b, dict) and b.get("type") == "text"]
        if last < 0 or not texts:
            continue
        result = content[last]
        inner = result.get("content")
        held = [{"type": "text", "text": inner}] if isinstance(inner, str) and inner else list(inner) if isinstance(inner, list) else []
        folded = {**result, "content": held + texts}
        kept = [folded if j == last else b for j, b in enumerate(content) if not (isinstance(b, dict) and b.get("type") == "text")]
        if out is None:
            out = list(messages)
        out[i] = {**msg, "content": kept}
    return None if out is None else {**req, "messages": out}


_UNCOUNTED = frozenset({"cache_control", "signature", "type"})


def text_size(node: Any) -> int:
    """The characters of the strings (values and keys) in a JSON value, at any depth."""
    size, stack = 0, [node]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            size += len(node)
        elif isinstance(node, dict):
            size += sum(len(k) for k in node if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return size


# What a character outside ASCII weighs in the estimate, per byte of UTF-8 beyond its
# first: a CJK character (three bytes) weighs 3.5 characters, a token, as tokenizers read
# it; Cyrillic, Greek or Arabic (two bytes) 2.25. Counted as plain characters, text in
# those scripts read two to four times short, and a local window overflowed.
WIDE_BYTE = 1.25


def _wide(text: str) -> int:
    """The weight of a text that is not all ASCII, in ASCII characters."""
    n = len(text)
    return n + int((len(text.encode("utf-8", "surrogatepass")) - n) * WIDE_BYTE)


def estimate_tokens(req: dict[str, Any]) -> int:
    """A conservative token estimate from the request's text: about 3.5 characters per
    token for English and code, a token for each CJK character (WIDE_BYTE), plus a
    little per message and per image."""
    chars = 0
    images = 0
    stack = [req.get("system"), req.get("messages")]  # a loop, not recursion: any depth
    push, pop = stack.append, stack.pop
    while stack:
        node = pop()
        if isinstance(node, str):
            chars += len(node) if node.isascii() else _wide(node)
        elif isinstance(node, dict):
            if node.get("type") == "image":
                images += 1
                continue
            for k, v in node.items():
                if k in _UNCOUNTED:
                    continue
                if type(v) is str:  # most values: counted here, not pushed and popped
                    chars += len(v) if v.isascii() else _wide(v)
                else:
                    push(v)
        elif isinstance(node, list):
            stack.extend(node)
    tools = req.get("tools")
    if tools:
        try:
            chars += len(orjson.dumps(tools))
        except orjson.JSONEncodeError:  # nested deeper than orjson writes: its strings will do
            chars += text_size(tools)
    n_messages = len(req.get("messages") or [])
    return max(1, int(chars / 3.5) + 4 * n_messages + 1000 * images)


# The largest token count taken from a server: any count a model could reach, and every
# number JSON readers agree on (an unsigned -1, 2**64 - 1, is none of these).
MAX_COUNT = 2**53 - 1


def token_count(value: Any) -> int | None:
    """A usage count a server reported, if it is one: a positive whole number, not absurd."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_COUNT:
        return value
    return None


def estimate_text_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)
