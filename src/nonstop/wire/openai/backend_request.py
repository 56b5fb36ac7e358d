"""Anthropic Messages request -> OpenAI Chat Completions request, for local servers that
speak only OpenAI (`api = "openai"`).

Pure: a dict in, a dict out. Every field the OpenAI side cannot express is dropped on
purpose; docs/compatibility.md lists each one and why.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import orjson

from nonstop.wire.anthropic import local_block
from nonstop.wire.arguments import parse_arguments

# A tool_result with is_error: true becomes a tool message whose text starts with this.
# The front door reads the same prefix back as is_error, so the pair round-trips.
TOOL_ERROR_PREFIX = "Error: "
# Key under which anthropic_to_openai_request returns the tool-name mapping (wire name ->
# original name) when a name had to change. The caller must pop it before sending.
TOOL_NAME_MAP_KEY = "_tool_name_map"

_NAME_OK = re.compile(r"[a-zA-Z0-9_-]{1,64}").fullmatch
_NAME_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_PART_TYPES = frozenset({"text", "image"})
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high", "xhigh": "high"}

NameFn = Callable[[str], str]


def openai_tool_name(name: str) -> str:
    """The name a tool goes by on the OpenAI side. Valid names are kept; others become
    readable, unique and deterministic (the same name always maps the same way)."""
    if _NAME_OK(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    base = _NAME_BAD_CHARS.sub("_", name)[:55]
    return f"{base}_{digest}" if base else f"tool_{digest}"


def tool_name_map_for(req: dict[str, Any]) -> dict[str, str]:
    """wire name -> original name for every tool name in `req` that has to change."""
    names: dict[str, str] = {}
    for tool in req.get("tools") or []:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            _remember(tool["name"], names)
    for msg in req.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                _remember(str(block.get("name") or ""), names)
    return names


def _remember(name: str, names: dict[str, str]) -> str:
    wire = openai_tool_name(name)
    if wire != name:
        names[wire] = name
    return wire


def anthropic_to_openai_request(
    req: dict[str, Any], *, model: str, max_tokens: int, stream: bool, reasoning_param: str = ""
) -> dict[str, Any]:
    """The Chat Completions body for `req`. When a tool name had to be changed, the
    result carries `_tool_name_map` (wire name -> original): pop it before sending and
    hand it to the response translators, which restore the original names."""
    names: dict[str, str] = {}

    def wire_name(name: str) -> str:
        return _remember(name, names)

    system = _texts(req.get("system"))
    messages: list[dict[str, Any]] = []
    for msg in req.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        role, content = msg.get("role"), msg.get("content")
        if role == "system":
            system.extend(_texts(content))
        elif role == "user":
            messages.extend(_user_messages(content))
        elif role == "assistant":
            messages.append(_assistant_message(content, wire_name))
    if system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system)})

    asked = req.get("max_tokens")
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
        max_tokens = min(asked, max_tokens)
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max(1, max_tokens),
        "stream": stream,
    }
    if stream:
        out["stream_options"] = {"include_usage": True}
    stops = req.get("stop_sequences")
    if isinstance(stops, list) and (stops := [s for s in stops if isinstance(s, str) and s]):
        out["stop"] = stops
    for key in ("temperature", "top_p", "top_k"):
        if _is_number(req.get(key)):
            out[key] = req[key]
    tools = _tools(req.get("tools"), wire_name)
    if tools:
        out["tools"] = tools
        _tool_choice(req.get("tool_choice"), out, wire_name)
    thinking = req.get("thinking")
    if reasoning_param and isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        config = req.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        out[reasoning_param] = _EFFORTS.get(effort, "medium") if isinstance(effort, str) else "medium"
    if names:
        out[TOOL_NAME_MAP_KEY] = names
    return out


# --- messages -------------------------------------------------------------------------


def _user_messages(content: Any) -> list[dict[str, Any]]:
    """One Anthropic user turn -> tool messages (one per tool_result, in order), then one
    user message with everything else, including images returned by tools."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        return [{"role": "user", "content": "" if content is None else str(content)}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            text, images = _tool_result_content(block.get("content"))
            if block.get("is_error") is True:
                text = TOOL_ERROR_PREFIX + text
            out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id") or ""), "content": text})
            parts.extend(images)
        else:
            part = _part(block)
            if part is not None:
                parts.append(part)
    if parts:
        only_text = len(parts) == 1 and parts[0]["type"] == "text"
        out.append({"role": "user", "content": parts[0]["text"] if only_text else parts})
    elif not out:
        out.append({"role": "user", "content": ""})
    return out


def _tool_result_content(content: Any) -> tuple[str, list[dict[str, Any]]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return ("" if content is None else str(content)), []
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for block in content:
        part = _part(block)
        if part is None:
            continue
        if part["type"] == "text":
            texts.append(part["text"])
        else:
            images.append(part)
    return "\n".join(texts), images


def _assistant_message(content: Any, wire_name: NameFn) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            calls.append({
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {
                    "name": wire_name(str(block.get("name") or "")),
                    # Always an object's JSON (chat templates read it back as one).
                    "arguments": orjson.dumps(parse_arguments(block.get("input"))).decode(),
                },
            })
            continue
        part = _part(block)
        if part is not None:
            texts.append(part["text"] if part["type"] == "text" else "[image block omitted]")
    text = "\n\n".join(t for t in texts if t)
    msg: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _part(block: Any) -> dict[str, Any] | None:
    """A content block as an OpenAI content part (text or image_url); None to drop it."""
    block = local_block(block, _PART_TYPES)
    if block is not None and block["type"] == "image":
        return _image_part(block.get("source"))
    return None if block is None else {"type": "text", "text": str(block.get("text") or "")}


def _image_part(source: Any) -> dict[str, Any]:
    if isinstance(source, dict):
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            media = source.get("media_type") or "image/png"
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
    return {"type": "text", "text": "[image block omitted]"}


def _texts(system: Any) -> list[str]:
    if isinstance(system, str):
        return [system] if system else []
    out: list[str] = []
    for block in system if isinstance(system, list) else []:
        if isinstance(block, str) and block:
            out.append(block)
        elif isinstance(block, dict) and block.get("type") == "text" and block.get("text"):
            out.append(str(block["text"]))
    return out


# --- tools ----------------------------------------------------------------------------


def _tools(tools: Any, wire_name: NameFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else []:
        # Server tools (web_search, code_execution, ...) run in the cloud only.
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            continue
        if not isinstance(tool.get("name"), str):
            continue
        fn: dict[str, Any] = {"name": wire_name(tool["name"])}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        schema = tool.get("input_schema")
        fn["parameters"] = schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        out.append({"type": "function", "function": fn})
    return out


def offered_tool_names(body: dict[str, Any]) -> list[str]:
    """The names of the tools a Chat Completions body offers, as the server sees them."""
    tools = body.get("tools")
    return [t["function"]["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)] if isinstance(tools, list) else []


def _tool_choice(choice: Any, out: dict[str, Any], wire_name: NameFn) -> None:
    if not isinstance(choice, dict):
        return
    ctype = choice.get("type")
    if ctype == "auto":
        out["tool_choice"] = "auto"
    elif ctype == "any":
        out["tool_choice"] = "required"
    elif ctype == "none":
        out["tool_choice"] = "none"
    elif ctype == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": wire_name(choice["name"])}}
    if choice.get("disable_parallel_tool_use") is True and ctype != "none":
        out["parallel_tool_calls"] = False


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
