"""Property tests for the Anthropic <-> OpenAI translation.

1. Random Anthropic conversations survive Anthropic -> OpenAI -> Anthropic (backend
   translation, then the front door) with no loss of content or order, compared in a
   normalised form that spells out each documented convention.
2. Random OpenAI chunk sequences (text, reasoning, interleaved tool-call fragments,
   usage, finish reasons, junk) never produce an event sequence the validator rejects.
3. The tool-arguments scanner closes every prefix of every object as valid JSON.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nonstop.wire.openai import (
    TOOL_ERROR_PREFIX,
    TOOL_NAME_MAP_KEY,
    AnthropicToOpenAIStream,
    OpenAIStreamTranslator,
    anthropic_to_openai_request,
    openai_request_to_anthropic,
)
from nonstop.wire.openai.arguments import ArgumentsStream
from tests.support.anthropic_stream import validate_anthropic_stream

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- generators ---------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
tool_names = st.sampled_from(["read", "Bash", "mcp__srv__do.it", "x" * 70, "has space", "ok-name_2"])
tool_ids = st.text(string.ascii_letters + string.digits, min_size=4, max_size=12).map(lambda s: "toolu_" + s)
base64_data = st.text(string.ascii_letters + string.digits + "+/", min_size=4, max_size=16)
images = st.one_of(
    st.builds(lambda m, d: {"type": "image", "source": {"type": "base64", "media_type": m, "data": d}},
              st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]), base64_data),
    st.builds(lambda p: {"type": "image", "source": {"type": "url", "url": "https://example.com/" + p}},
              st.text(string.ascii_lowercase, min_size=1, max_size=8)),
)
text_blocks = texts.map(lambda t: {"type": "text", "text": t})
user_blocks = st.lists(st.one_of(text_blocks, images), min_size=1, max_size=4)


@st.composite
def tool_results(draw, tool_id: str) -> dict:
    content = draw(st.one_of(
        st.text(max_size=30),
        st.lists(st.one_of(text_blocks, images), max_size=3),
    ))
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id, "content": content}
    if draw(st.booleans()):
        block["is_error"] = draw(st.booleans())
    return block


@st.composite
def conversations(draw) -> dict:
    req: dict[str, Any] = {"model": "claude-x", "max_tokens": draw(st.integers(1, 8000))}
    names = draw(st.lists(tool_names, min_size=1, max_size=4, unique=True))
    req["tools"] = [
        {"name": n, "input_schema": {"type": "object", "properties": {}}, **({"description": d} if (d := draw(st.none() | texts)) else {})}
        for n in names
    ]
    system = draw(st.none() | texts | st.lists(text_blocks, min_size=1, max_size=3))
    if system is not None:
        req["system"] = system
    messages: list[dict] = [{"role": "user", "content": draw(texts | user_blocks)}]
    for _ in range(draw(st.integers(0, 4))):
        blocks = draw(st.lists(text_blocks, max_size=2))
        calls = [{"type": "tool_use", "id": draw(tool_ids), "name": draw(st.sampled_from(names)), "input": draw(json_objects)}
                 for _ in range(draw(st.integers(0 if blocks else 1, 3)))]
        ids = [c["id"] for c in calls]
        if len(set(ids)) != len(ids):
            continue
        messages.append({"role": "assistant", "content": blocks + calls})
        if calls:
            results = [draw(tool_results(i)) for i in ids]
            side = draw(st.lists(st.one_of(text_blocks, images), max_size=2))
            messages.append({"role": "user", "content": results + side})
        else:
            messages.append({"role": "user", "content": draw(texts | user_blocks)})
        if draw(st.integers(0, 5)) == 0:
            messages.append({"role": "system", "content": draw(texts)})
    req["messages"] = messages
    if draw(st.booleans()):
        choice = draw(st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": names[0]}]))
        if draw(st.booleans()):
            choice["disable_parallel_tool_use"] = draw(st.booleans())
        req["tool_choice"] = choice
    for key, strategy in (("temperature", st.floats(0, 1)), ("top_p", st.floats(0, 1)), ("top_k", st.integers(1, 100)),
                          ("stop_sequences", st.lists(texts, min_size=1, max_size=3))):
        if draw(st.booleans()):
            req[key] = draw(strategy)
    return req


# --- 1. request round trip -----------------------------------------------------------------


def _image_key(block: dict) -> tuple:
    src = block["source"]
    return ("image", src["type"], src.get("media_type"), src.get("data") or src.get("url"))


def normalise(req: dict, names: dict[str, str] | None = None) -> dict:
    """The content of a request, with each documented convention spelled out:
    system texts joined by blank lines; consecutive same-role turns merged; an assistant
    turn's texts joined by blank lines, its tool calls in order; a user turn's tool
    results (text joined by newlines, is_error also expressed by the "Error: " prefix)
    first, then its other text and images, including images returned by tools."""
    names = names or {}
    system = req.get("system")
    system_texts = [system] if isinstance(system, str) else [b["text"] for b in system or []]
    turns: list[dict] = []
    for msg in req["messages"]:
        if msg["role"] == "system":
            system_texts.append(msg["content"])
            continue
        content = msg["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not turns or turns[-1]["role"] != msg["role"]:
            turns.append({"role": msg["role"], "texts": [], "calls": [], "results": [], "side": []})
        turn = turns[-1]
        for b in blocks:
            if b["type"] == "text":
                (turn["texts"] if msg["role"] == "assistant" else turn["side"]).append(("text", b["text"]))
            elif b["type"] == "image":
                turn["side"].append(_image_key(b))
            elif b["type"] == "tool_use":
                turn["calls"].append((b["id"], names.get(b["name"], b["name"]), b["input"]))
            elif b["type"] == "tool_result":
                content = b.get("content")
                parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
                text = "\n".join(p["text"] for p in parts if p["type"] == "text")
                turn["side"].extend(_image_key(p) for p in parts if p["type"] == "image")
                is_error = bool(b.get("is_error"))
                if not is_error and text.startswith(TOOL_ERROR_PREFIX):
                    is_error, text = True, text[len(TOOL_ERROR_PREFIX):]
                turn["results"].append((b["tool_use_id"], text, is_error))
    for turn in turns:
        turn["texts"] = "\n\n".join(t for _, t in turn["texts"] if t)
    tools = [(names.get(t["name"], t["name"]), t.get("description"), t["input_schema"]) for t in req.get("tools") or []]
    choice = dict(req.get("tool_choice") or {}) or None
    if choice:
        if "name" in choice:
            choice["name"] = names.get(choice["name"], choice["name"])
        if not choice.get("disable_parallel_tool_use") or choice["type"] == "none":
            choice.pop("disable_parallel_tool_use", None)
    return {
        "system": "\n\n".join(system_texts),
        "turns": turns,
        "tools": tools,
        "tool_choice": choice,
        **{k: req.get(k) for k in ("temperature", "top_p", "top_k", "stop_sequences")},
    }


@SETTINGS
@given(conversations())
def test_conversations_survive_the_round_trip(req):
    wire = anthropic_to_openai_request(req, model="local", max_tokens=100_000, stream=False)
    names = wire.pop(TOOL_NAME_MAP_KEY, {})
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", t["function"]["name"]) for t in wire["tools"])
    back = openai_request_to_anthropic(json.loads(json.dumps(wire)))
    assert back["max_tokens"] == req["max_tokens"]
    assert normalise(back, names) == normalise(req)


# --- 2. random chunk streams ------------------------------------------------------------------

JUNK = [
    {}, {"choices": None}, {"choices": [None]}, {"choices": [{"delta": None}]}, {"choices": "x"},
    {"choices": [{"index": 2, "delta": {"content": "other choice"}}]}, {"usage": "x"},
    {"choices": [{"delta": {"tool_calls": [None, {"index": "z"}, {"function": 1}]}}]},
    {"choices": [{"delta": {"content": 7, "reasoning_content": 8}}]}, {"error": None}, 42,
]
FINISH = ["stop", "length", "tool_calls", "content_filter", "function_call", "weird", ""]


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


@st.composite
def chaotic_streams(draw) -> list:
    """Chunks from a misbehaving server: everything in any order."""
    calls = {}
    for idx in range(draw(st.integers(0, 3))):
        args = json.dumps(draw(json_objects)) if draw(st.integers(0, 4)) else draw(st.text(max_size=20))
        calls[idx] = split(args, draw(st.lists(st.integers(0, 200), max_size=6)))
    ops = []
    for idx, frags in calls.items():
        ops.append(("start", idx))
        ops.extend(("args", idx, f) for f in frags)
    ops.extend(("text", t) for t in draw(st.lists(st.text(max_size=8), max_size=5)))
    ops.extend(("reasoning", t) for t in draw(st.lists(st.text(max_size=8), max_size=3)))
    ops.extend(("finish", draw(st.sampled_from(FINISH))) for _ in range(draw(st.integers(0, 2))))
    ops.extend(("usage",) for _ in range(draw(st.integers(0, 2))))
    ops.extend(("junk", j) for j in draw(st.lists(st.sampled_from(JUNK), max_size=3)))
    ops = draw(st.permutations(ops))
    chunks = []
    for op in ops:
        if op[0] == "start":
            call: dict[str, Any] = {"index": op[1], "function": {}}
            if draw(st.integers(0, 5)):
                call["id"] = draw(st.sampled_from(["call_1", "call 2", "c.3", "x"])) + str(op[1])
            if draw(st.integers(0, 5)):
                call["function"]["name"] = draw(tool_names)
            chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
        elif op[0] == "args":
            chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": op[1], "function": {"arguments": op[2]}}]}}]})
        elif op[0] == "text":
            chunks.append({"choices": [{"index": 0, "delta": {"content": op[1]}}]})
        elif op[0] == "reasoning":
            key = draw(st.sampled_from(["reasoning_content", "reasoning"]))
            chunks.append({"choices": [{"index": 0, "delta": {key: op[1]}}]})
        elif op[0] == "finish":
            chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": op[1]}]})
        elif op[0] == "usage":
            chunks.append({"choices": [], "usage": {"prompt_tokens": draw(st.integers(0, 5000)), "completion_tokens": draw(st.integers(0, 500)),
                                                     "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, 6000))}}})
        else:
            chunks.append(op[1])
    return chunks


def run(chunks: list, estimate: int = 10) -> list[tuple[str, dict]]:
    t = OpenAIStreamTranslator(model="m", message_id="msg_p", input_tokens_estimate=estimate)
    events = []
    for c in chunks:
        events.extend(t.feed(c))
    events.extend(t.finish())
    return events


@SETTINGS
@given(chaotic_streams(), st.integers(-5, 10**6))
def test_any_chunk_sequence_gives_a_valid_anthropic_stream(chunks, estimate):
    validate_anthropic_stream(run(chunks, estimate))


@st.composite
def well_behaved_streams(draw) -> tuple[list, str, list[dict]]:
    """Text, then tool calls with id+name first and arguments split anywhere and
    interleaved across calls, then finish and usage."""
    chunks: list = []
    text = draw(st.text(max_size=40))
    chunks.extend({"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in split(text, draw(st.lists(st.integers(0, 50), max_size=4))))
    docs = draw(st.lists(json_objects, max_size=4))
    queues = {i: split(json.dumps(d, ensure_ascii=draw(st.booleans())), draw(st.lists(st.integers(0, 300), max_size=8))) for i, d in enumerate(docs)}
    for i in queues:  # every call is announced before any arguments arrive
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]})
    while any(queues.values()):
        i = draw(st.sampled_from([k for k, q in queues.items() if q]))
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": queues[i].pop(0)}}]}}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if docs else "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    return chunks, text, docs


@SETTINGS
@given(well_behaved_streams())
def test_interleaved_streams_keep_text_and_every_tool_input(case):
    chunks, text, docs = case
    events = run(chunks)
    validate_anthropic_stream(events)
    assert "".join(d["delta"]["text"] for t, d in events if t == "content_block_delta" and d["delta"]["type"] == "text_delta") == text
    inputs: dict[int, list[str]] = {}
    for t, d in events:
        if t == "content_block_start" and d["content_block"]["type"] == "tool_use":
            inputs[d["index"]] = []
        elif t == "content_block_delta" and d["delta"]["type"] == "input_json_delta":
            inputs[d["index"]].append(d["delta"]["partial_json"])
    assert [json.loads("".join(v)) for _, v in sorted(inputs.items())] == docs

    # ... and back out through the front door's stream: the same text and arguments.
    out = AnthropicToOpenAIStream(model="m", completion_id="c", include_usage=True, created=1)
    chunks_back = [c for t, d in events for c in out.feed(t, d)] + out.finish()
    deltas = [c["choices"][0]["delta"] for c in chunks_back if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == text
    args: dict[int, str] = {}
    for d in deltas:
        for call in d.get("tool_calls") or []:
            args[call["index"]] = args.get(call["index"], "") + call["function"]["arguments"]
    assert [json.loads(a) for _, a in sorted(args.items())] == docs
    assert chunks_back[-1]["usage"]["completion_tokens"] == 5


# --- 3. the arguments scanner ----------------------------------------------------------------


@SETTINGS
@given(json_objects, st.booleans(), st.lists(st.integers(0, 500), max_size=10))
def test_scanner_passes_valid_objects_through_unchanged(doc, ascii_only, cuts):
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=None if cuts else 1)
    scan = ArgumentsStream()
    out = "".join(scan.feed(piece) for piece in split(text, cuts))
    assert json.loads(out) == doc
    assert scan.complete and not scan.dead
    assert scan.closing() == ""


@SETTINGS
@given(json_objects, st.integers(0, 10**6))
def test_scanner_closes_every_prefix(doc, cut):
    text = json.dumps(doc)
    prefix = text[: cut % (len(text) + 1)]
    scan = ArgumentsStream()
    out = scan.feed(prefix)
    if scan.started:
        assert isinstance(json.loads(out + scan.closing()), dict)


@SETTINGS
@given(st.text(alphabet='{}[]",:\\ntrufalse0123456789.-eE \n\tabc', max_size=40), st.lists(st.integers(0, 50), max_size=5))
def test_scanner_output_always_closes_for_junk(text, cuts):
    scan = ArgumentsStream()
    out = "".join(scan.feed(piece) for piece in split(text, cuts))
    if scan.started:
        assert isinstance(json.loads(out + scan.closing()), dict)
    else:
        assert out == ""
