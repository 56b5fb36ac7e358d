"""Realistic request bodies for the benchmarks, generated (deterministically) rather than
recorded, so nothing private ends up in the repository.

`claude_code_request()` has the shape of a Claude Code 2.x first request: ~50 KB of JSON,
three system blocks with `cache_control`, a dozen tools with JSON schemas (one carrying
`defer_loading`), a few turns including a tool call and its result, and the top-level keys
the CLI sends (`thinking`, `context_management`, `output_config`, `metadata`).

Also here: the same conversation in OpenAI Chat form, the headers Claude Code sends, and a
recorded-style OpenAI stream for the translation benchmark.

Run `python benchmarks/payload.py` to print the sizes.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

MODEL = "claude-sonnet-4-5"
_WORD_TEXT = (
    "the file function test module return value error request response stream token "
    "config path user project change build run check commit branch cache server client "
    "local cloud model tool result message system block event header status context "
    "window limit quota state retry timeout output input parse write read list dict "
    "string number index type schema field default option command shell edit search "
    "must should never always before after when while each every only first last next"
)
_WORDS = _WORD_TEXT.split()

CLAUDE_CODE_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,fine-grained-tool-streaming-2025-05-14",
    "anthropic-dangerous-direct-browser-access": "true",
    "x-api-key": "sk-ant-api03-BENCHMARK-not-a-real-key-000000000000000000000000000000000000",
    "x-app": "cli",
    "user-agent": "claude-cli/2.1.332 (external, cli)",
    "x-claude-code-session-id": "6f1c2a9e-bench-4d3b-9c1e-000000000001",
    "x-stainless-lang": "js",
    "x-stainless-package-version": "0.70.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "node",
    "x-stainless-runtime-version": "v22.12.0",
    "x-stainless-retry-count": "0",
    "x-stainless-timeout": "600",
}


def _text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    out: list[str] = []
    for i in range(0, len(words), 14):
        sentence = " ".join(words[i : i + 14])
        out.append(sentence[:1].upper() + sentence[1:] + ".")
    return " ".join(out)


def _schema(rng: random.Random, n_props: int) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for i in range(n_props):
        kind = rng.choice(["string", "integer", "boolean", "array", "enum"])
        name = f"{rng.choice(_WORDS)}_{i}"
        desc = _text(rng, rng.randint(10, 30))
        if kind == "array":
            props[name] = {"type": "array", "items": {"type": "string"}, "description": desc}
        elif kind == "enum":
            props[name] = {"type": "string", "enum": [rng.choice(_WORDS) for _ in range(4)], "description": desc}
        else:
            props[name] = {"type": kind, "description": desc}
    required = sorted(rng.sample(sorted(props), k=max(1, n_props // 2)))
    return {
        "type": "object", "properties": props, "required": required,
        "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#",
    }


_TOOL_NAMES = ["Task", "Bash", "Glob", "Grep", "Read", "Edit", "Write", "NotebookEdit",
               "WebFetch", "TodoWrite", "WebSearch", "BashOutput"]


def claude_code_request(*, stream: bool = True, target_bytes: int = 50_000, seed: int = 7) -> dict[str, Any]:
    """A Claude Code-shaped request of about `target_bytes` of JSON."""
    rng = random.Random(seed)
    tools = []
    for i, name in enumerate(_TOOL_NAMES):
        tool: dict[str, Any] = {
            "name": name,
            "description": _text(rng, rng.randint(60, 160)),
            "input_schema": _schema(rng, rng.randint(2, 6)),
        }
        if i == len(_TOOL_NAMES) - 1:
            tool["defer_loading"] = True
        tools.append(tool)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>\n" + _text(rng, 120) + "\n</system-reminder>"},
            {"type": "text", "text": _text(rng, 25)},
        ]},
        {"role": "assistant", "content": [
            {"type": "text", "text": _text(rng, 30)},
            {"type": "tool_use", "id": "toolu_01BenchA1b2C3d4E5f6G7h8", "name": "Read",
             "input": {"file_path": "/work/project/src/app/main.py"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01BenchA1b2C3d4E5f6G7h8",
             "content": "\n".join(f"{n:>6}\t{_text(rng, 9)}" for n in range(1, 60))},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": _text(rng, 40)}]},
        {"role": "system", "content": _text(rng, 20)},
        {"role": "user", "content": [{"type": "text", "text": _text(rng, 30), "cache_control": {"type": "ephemeral"}}]},
    ]
    req: dict[str, Any] = {
        "model": MODEL,
        "messages": messages,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "gitStatus: " + _text(rng, 40), "cache_control": {"type": "ephemeral"}},
        ],
        "tools": tools,
        "metadata": {"user_id": "user_bench_account__session_6f1c2a9e"},
        "max_tokens": 128000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
        "stream": stream,
    }
    # Grow the long instruction block until the body has the size asked for.
    size = len(orjson.dumps(req))
    filler = _text(rng, max(0, (target_bytes - size) // 6))
    req["system"][1]["text"] = filler
    size = len(orjson.dumps(req))
    while size < target_bytes:
        req["system"][1]["text"] += " " + _text(rng, max(1, (target_bytes - size) // 6))
        size = len(orjson.dumps(req))
    return req


def small_request(*, stream: bool = False) -> dict[str, Any]:
    """A ~1 KB request (a title or summary call)."""
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 512,
        "system": [{"type": "text", "text": "Summarize this coding conversation in a short title."}],
        "messages": [{"role": "user", "content": "Fix the flaky test in the request log module. " * 16}],
        "stream": stream,
    }


def to_openai_chat(req: dict[str, Any]) -> dict[str, Any]:
    """The same conversation as an OpenAI Chat Completions request (for calling an
    OpenAI-format server directly, the baseline of the translation benchmark)."""
    msgs: list[dict[str, Any]] = []
    system = "\n\n".join(b["text"] for b in req.get("system", []) if b.get("text"))
    if system:
        msgs.append({"role": "system", "content": system})
    for m in req["messages"]:
        content = m["content"]
        if isinstance(content, str):
            msgs.append({"role": m["role"] if m["role"] != "system" else "system", "content": content})
            continue
        texts = [b["text"] for b in content if b.get("type") == "text"]
        calls = [b for b in content if b.get("type") == "tool_use"]
        results = [b for b in content if b.get("type") == "tool_result"]
        for r in results:
            msgs.append({"role": "tool", "tool_call_id": r["tool_use_id"], "content": r["content"]})
        if calls:
            msgs.append({"role": "assistant", "content": "\n".join(texts) or None, "tool_calls": [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": orjson.dumps(c["input"]).decode()}}
                for c in calls]})
        elif texts:
            msgs.append({"role": m["role"], "content": "\n".join(texts)})
    return {
        "model": "local-model",
        "messages": msgs,
        "tools": [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                     "parameters": t["input_schema"]}} for t in req.get("tools", [])],
        "max_tokens": 4096,
        "stream": bool(req.get("stream")),
        **({"stream_options": {"include_usage": True}} if req.get("stream") else {}),
    }


def openai_stream_chunks(n_text: int = 400, n_tool_args: int = 60, n_reasoning: int = 40) -> list[dict[str, Any]]:
    """Chunks of a streamed OpenAI Chat completion, shaped like llama.cpp's: reasoning,
    text, then one tool call whose arguments arrive in fragments, then usage."""
    rng = random.Random(11)
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764000000, "model": "local-model"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"reasoning_content": " " + rng.choice(_WORDS)}) for _ in range(n_reasoning)]
    out += [chunk({"content": " " + rng.choice(_WORDS)}) for _ in range(n_text)]
    args = orjson.dumps({"command": " ".join(rng.choice(_WORDS) for _ in range(n_tool_args * 2)),
                         "description": "run it"}).decode()
    step = max(1, len(args) // n_tool_args)
    pieces = [args[i : i + step] for i in range(0, len(args), step)]
    out.append(chunk({"tool_calls": [{"index": 0, "id": "call_bench0001", "type": "function",
                                      "function": {"name": "Bash", "arguments": ""}}]}))
    out += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
    out.append(chunk({}, "tool_calls"))
    out.append({**base, "choices": [], "usage": {"prompt_tokens": 12000, "completion_tokens": len(out), "total_tokens": 12000 + len(out)}})
    return out


def sse_bytes(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def main() -> None:
    big = orjson.dumps(claude_code_request())
    print(f"claude_code_request: {len(big)} bytes, "
          f"{len(claude_code_request()['tools'])} tools, {len(claude_code_request()['messages'])} messages")
    print(f"small_request: {len(orjson.dumps(small_request()))} bytes")
    print(f"openai chat form: {len(orjson.dumps(to_openai_chat(claude_code_request())))} bytes")
    chunks = openai_stream_chunks()
    print(f"openai stream: {len(chunks)} chunks, {len(sse_bytes(chunks))} bytes")


if __name__ == "__main__":
    main()
