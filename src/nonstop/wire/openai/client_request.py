"""The OpenAI front door, requests: a Chat Completions request from a client -> the
internal Anthropic request. Replies go back through client_reply.

Pure: a dict in, a dict out. Invalid input raises TranslationError with a message that
names the field, for a 400 in the client's own error format.
"""

from __future__ import annotations

import re
from typing import Any

from nonstop.wire.arguments import parse_arguments
from nonstop.wire.hygiene import EMPTY_TURN_TEXT
from nonstop.wire.openai.backend_request import TOOL_ERROR_PREFIX
from nonstop.wire.tool_ids import valid_tool_id

DEFAULT_MAX_TOKENS = 4096
_DATA_URL = re.compile(r"data:([^;,]+)?(?:;[^,]*)?;base64,(.*)", re.S)
_SPACE = re.compile(r"\s+")


class TranslationError(ValueError):
    """The client's request cannot be expressed as an Anthropic request."""


def openai_request_to_anthropic(req: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(req, dict):
        raise TranslationError("the request body must be a JSON object")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise TranslationError("model: required, a non-empty string")
    raw_messages = req.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise TranslationError("messages: required, a non-empty list")
    n = req.get("n")
    if n is not None and n != 1:
        raise TranslationError("n: only 1 completion per request is supported")
    functions = req.get("functions")
    if functions is not None and not isinstance(functions, list):
        raise TranslationError("functions: must be a list")
    if functions and req.get("tools"):
        raise TranslationError("functions: send tools or the legacy functions, not both")

    system: list[str] = []
    messages: list[dict[str, Any]] = []
    called: str | None = None  # the id given to the last legacy function_call
    for i, msg in enumerate(raw_messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise TranslationError(f"{where}: must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(t for t in _text_parts(msg.get("content"), where) if t.strip())  # the cloud refuses blank text blocks
        elif role == "user":
            merge = _ends_with_tool_results(messages)
            # An empty user turn is one OpenAI takes; Anthropic wants text in it.
            blocks = _user_blocks(msg.get("content"), where) or ([] if merge else [{"type": "text", "text": EMPTY_TURN_TEXT}])
            _append(messages, "user", blocks, merge=merge)
        elif role == "tool":
            _append(messages, "user", [_tool_result(msg, where)], merge=_ends_with_tool_results(messages))
        elif role == "function":  # legacy: the result of the assistant's function_call before it
            if called is None:
                raise TranslationError(f"{where}: a function message must follow an assistant message "
                                       "with a function_call")
            result = {"type": "tool_result", "tool_use_id": called,
                      "content": "".join(_text_parts(msg.get("content"), where))}
            _append(messages, "user", [result], merge=_ends_with_tool_results(messages))
            called = None
        elif role == "assistant":
            blocks = _assistant_blocks(msg, where)
            if isinstance(msg.get("function_call"), dict):
                called = valid_tool_id(f"call_{i}_legacy")
                blocks.append(_legacy_call(msg["function_call"], called, where))
            if blocks:
                messages.append({"role": "assistant", "content": blocks})
        else:
            raise TranslationError(f"{where}.role: {role!r} is not supported; use system, developer, user, "
                                   "assistant, tool or function")
    _no_trailing_space(messages)
    if not messages:
        raise TranslationError("messages: need at least one user or assistant message")
    if "stream" in req and req["stream"] is not None and not isinstance(req["stream"], bool):
        raise TranslationError("stream: must be true or false")  # as OpenAI says; "true" is not streamed

    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": _max_tokens(req)}
    if system:
        out["system"] = system[0] if len(system) == 1 else [{"type": "text", "text": t} for t in system]
    stop = req.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and (stops := [s for s in stop if isinstance(s, str) and s.strip()]):
        out["stop_sequences"] = stops  # Anthropic refuses a stop sequence of only whitespace
    temperature = req.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)  # OpenAI allows up to 2
    for key in ("top_p", "top_k"):
        # Current Claude models refuse temperature and top_p together: temperature wins.
        if _is_number(req.get(key)) and not (key == "top_p" and "temperature" in out):
            out[key] = req[key]
    if req.get("stream") is True:
        out["stream"] = True
    if isinstance(req.get("user"), str) and req["user"]:
        out["metadata"] = {"user_id": req["user"]}
    legacy = bool(functions)
    tools = (_tools([{"type": "function", "function": f} for f in functions or ()], "functions") if legacy
             else _tools(req.get("tools")))
    if tools:
        out["tools"] = tools
        choice = _legacy_choice(req.get("function_call")) if legacy else _tool_choice(req.get("tool_choice"))
        # A legacy reply holds one function_call.
        if (legacy or req.get("parallel_tool_calls") is False) and (choice is None or choice["type"] != "none"):
            choice = choice or {"type": "auto"}
            choice["disable_parallel_tool_use"] = True
        if choice is not None:
            out["tool_choice"] = choice
    return out


# --- request pieces --------------------------------------------------------------------


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]], *, merge: bool) -> None:
    # Tool results and the user text after them form one user turn: tool_result blocks
    # must open the user message that follows the assistant's tool calls.
    if merge:
        messages[-1]["content"].extend(blocks)
    elif blocks:
        messages.append({"role": role, "content": blocks})


def _ends_with_tool_results(messages: list[dict[str, Any]]) -> bool:
    if not messages or messages[-1]["role"] != "user":
        return False
    content = messages[-1]["content"]
    return bool(content) and content[-1].get("type") == "tool_result"


def _no_trailing_space(messages: list[dict[str, Any]]) -> None:
    """A last assistant turn is one the model goes on from, and Anthropic refuses one that
    ends in whitespace: its text loses the whitespace (and a turn left empty goes)."""
    if not messages or messages[-1]["role"] != "assistant":
        return
    content = messages[-1]["content"]
    if content and content[-1].get("type") == "text":
        text = content[-1]["text"].rstrip()
        if text:
            content[-1] = {**content[-1], "text": text}
        else:
            content.pop()
    if not content:
        messages.pop()


def _text_parts(content: Any, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content: must be a string or a list of parts")
    out = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            raise TranslationError(f"{where}.content[{j}]: only text parts are allowed here")
        text = part.get("text") if part["type"] == "text" else part.get("refusal")
        if not isinstance(text, str):
            raise TranslationError(f"{where}.content[{j}]: text must be a string")
        out.append(text)
    return out


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content: must be a string or a list of parts")
    blocks = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "text":
            if not isinstance(part.get("text"), str):
                raise TranslationError(f"{here}.text: must be a string")
            if part["text"].strip():  # Anthropic refuses a text block of only whitespace
                blocks.append({"type": "text", "text": part["text"]})
        elif ptype == "image_url":
            blocks.append(_image_block(part.get("image_url"), here))
        elif ptype == "file":
            blocks.append(_file_block(part.get("file"), here))
        else:
            raise TranslationError(f"{here}: part type {ptype!r} is not supported; use text, image_url or file")
    return blocks


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{where}.image_url.url: required, a string")
    if url.startswith("data:"):
        m = _DATA_URL.fullmatch(url)
        if not m:
            raise TranslationError(f"{where}.image_url.url: a data: URL must be base64-encoded")
        data = m.group(2)
        if _SPACE.search(data):  # base64 broken into lines (MIME): the same bytes without them
            data = _SPACE.sub("", data)
        return {"type": "image", "source": {"type": "base64", "media_type": image_media_type(m.group(1), data),
                                            "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{where}.image_url.url: use an http(s) URL or a base64 data: URL")


# The image types the Messages API takes, by how their base64 begins: it refuses an image
# whose bytes are not the type named, and any type but these four.
_IMAGE_MAGIC = (("/9j/", "image/jpeg"), ("iVBORw0KGgo", "image/png"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))


def image_media_type(declared: str | None, data: str) -> str:
    """An image's media type as the Messages API takes it: what its bytes say they are,
    else the declared type (`image/jpg`, as OpenAI takes it, named `image/jpeg`), else png."""
    for magic, media_type in _IMAGE_MAGIC:
        if data.startswith(magic):
            return media_type
    declared = (declared or "").strip().lower()
    return "image/jpeg" if declared == "image/jpg" else declared or "image/png"


def _file_block(file: Any, where: str) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, dict) else None
    m = _DATA_URL.fullmatch(data) if isinstance(data, str) else None
    if not m or m.group(1) != "application/pdf":
        raise TranslationError(f"{where}.file: only inline PDF files (file_data as a base64 data: URL) are supported")
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": m.group(2)}}


def _tool_result(msg: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"{where}.tool_call_id: required, a string")
    text = "".join(_text_parts(msg.get("content"), where))
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": valid_tool_id(call_id), "content": text}
    if text.startswith(TOOL_ERROR_PREFIX):
        block["content"] = text[len(TOOL_ERROR_PREFIX):]
        block["is_error"] = True
    return block


def _assistant_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": t} for t in _text_parts(msg.get("content"), where) if t.strip()]
    calls = msg.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise TranslationError(f"{where}.tool_calls: must be a list")
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise TranslationError(f"{where}.tool_calls[{j}].function.name: required, a string")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise TranslationError(f"{where}.tool_calls[{j}].id: required, a string")
        blocks.append({
            "type": "tool_use",
            "id": valid_tool_id(call_id),
            "name": fn["name"],
            "input": parse_arguments(fn.get("arguments"), repair=False),
        })
    return blocks


def legacy_functions(req: Any) -> bool:
    """Whether a request offers the legacy `functions` (not `tools`), so its client reads a
    call as `function_call` in the reply, not `tool_calls`."""
    return isinstance(req, dict) and isinstance(req.get("functions"), list) and bool(req["functions"])


def _legacy_call(call: dict[str, Any], call_id: str, where: str) -> dict[str, Any]:
    if not isinstance(call.get("name"), str) or not call["name"]:
        raise TranslationError(f"{where}.function_call.name: required, a string")
    return {"type": "tool_use", "id": call_id, "name": call["name"],
            "input": parse_arguments(call.get("arguments"), repair=False)}


def _legacy_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if isinstance(choice, dict) and isinstance(choice.get("name"), str) and choice["name"]:
        return {"type": "tool", "name": choice["name"]}
    raise TranslationError("function_call: use \"auto\", \"none\" or {\"name\": ...}")


def _max_tokens(req: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = req.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TranslationError(f"{key}: must be a positive integer")
        return value
    return DEFAULT_MAX_TOKENS


def _tools(tools: Any, key: str = "tools") -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise TranslationError(f"{key}: must be a list")
    out = []
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            shape = "{\"name\": ...}" if key == "functions" else "{\"type\": \"function\", \"function\": {\"name\": ...}}"
            raise TranslationError(f"{key}[{j}]: must be {shape}")
        params = fn.get("parameters")
        converted: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            converted["description"] = fn["description"]
        # The Messages API requires an object schema with its type; OpenAI takes `{}` or no
        # `type` for a function without arguments.
        if not isinstance(params, dict) or not params:
            params = {"type": "object", "properties": {}}
        elif "type" not in params:
            params = {"type": "object", **params}
        converted["input_schema"] = params
        out.append(converted)
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return {"type": "tool", "name": fn["name"]}
    raise TranslationError("tool_choice: use \"auto\", \"required\", \"none\" or {\"type\": \"function\", \"function\": {\"name\": ...}}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
