"""An OpenAI-format local server's odd replies (streamed and whole), as the Anthropic
client gets them: cut or empty streams, a last event without its blank line, calls named
but never made, a cut double-encoded call, an error beside an empty choices list.

Two levels: sans-IO (OpenAIEventSource + LocalStreamNormalizer, the way
LocalBackend._relay chains them) and end to end (an in-process server, the OpenAI local
backend, the bytes a client receives)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from nonstop.backends.base import Reply
from nonstop.backends.local_openai import OpenAIEventSource
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.wire import openai as oa
from nonstop.wire.local_stream import LocalStreamNormalizer, normalize_message
from tests.support import wirecheck
from tests.support.anthropic_stream import validate_anthropic_stream
from tests.support.inprocess import serve  # noqa: F401  (fixture)

Event = tuple[str, dict[str, Any]]
REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


# --- helpers -----------------------------------------------------------------------------------


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def _relay(chunks: list[dict[str, Any]], *, capped: bool = False) -> list[Event]:
    """Chunks through the OpenAI event source and the normalizer, as LocalBackend._relay
    chains them for an `api = "openai"` backend (close_cut_calls=False, a backend tag)."""
    tr = oa.OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=10, close_cut_calls=False)
    source = OpenAIEventSource("box", tr)
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=10, capped=capped, tag="box1")
    out: list[Event] = []
    for c in chunks:
        for t, d in source.feed("message", c):
            out.extend(norm.feed(t, d))
        if norm.finished or norm.error:
            break
    if not norm.finished and not norm.error:
        for t, d in source.finish():
            out.extend(norm.feed(t, d))
    return out + norm.finish()


def _stop_reason(events: list[Event]) -> str | None:
    return next((d["delta"]["stop_reason"] for n, d in events if n == "message_delta"), None)


def _block_types(events: list[Event]) -> list[str]:
    return [d["content_block"]["type"] for n, d in events if n == "content_block_start"]


def _whole(message: dict[str, Any], finish: str | None, *, capped: bool = False) -> dict[str, Any]:
    """A whole Chat Completions reply as LocalBackend._whole gives it to the client."""
    resp = {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}]}
    cut = oa.cut_tool_call(resp)
    msg = oa.openai_to_anthropic_response(resp, model="m", input_tokens_estimate=10)
    if not oa.finish_reason_of(resp):
        msg["stop_reason"] = None
    return normalize_message(msg, model="m", input_tokens_estimate=10, capped=capped, tag="box1", cut=cut)


async def _stream_from(serve, body: bytes, request: dict[str, Any] = REQUEST) -> tuple[Reply, bytes]:  # noqa: F811
    """`body` served as a 200 text/event-stream by an OpenAI-format server (then a clean
    end of the response); what the client receives from the OpenAI local backend."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if body:
            await resp.write(body)
        return resp

    res, out = await _send(serve, handler, stream=True, request=request)
    assert isinstance(res, Reply), res
    return res, out


async def _send(serve, handler: Any, *, stream: bool, request: dict[str, Any] = REQUEST) -> tuple[Any, bytes]:  # noqa: F811
    """`request` (REQUEST unless given) through the OpenAI local backend to a server answering with `handler`:
    what the backend gives (a Reply or why not), and a Reply's body."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    url = await serve(app)
    cfg = parse_config({"local": [{"name": "box", "url": url, "api": "openai", "context_window": 8192,
                                   "count_tokens": "estimate"}]})
    out = b""
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await asyncio.wait_for(backend.send_request(dict(request), stream=stream), 10)
        if isinstance(res, Reply):
            out = b"".join([c async for c in res.body])
            if res.close is not None:
                res.close()
    return res, out


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


# --- a stream that ends with nothing, or early ----------------------------------------------


async def test_an_openai_stream_with_no_chunks_at_all_is_not_a_finished_empty_answer(serve):  # noqa: F811
    """A 200 stream whose body ends without a single chunk (no finish_reason, no [DONE])
    failed before any content: "the local server ended the stream early", as on the
    Anthropic-format path (an error, and the next local backend may take the request),
    not an empty answer that looks finished."""
    res, body = await _stream_from(serve, b"")
    v = wirecheck.check_anthropic_stream(body)
    assert v.outcome == "error", f"an empty stream was reported as a finished answer: {v} / usage {res.usage}"


async def test_an_openai_stream_cut_off_without_finish_reason_or_done_is_not_end_turn(serve):  # noqa: F811
    """Text, then the body ends with neither a finish_reason nor `data: [DONE]`: the answer
    was cut (every OpenAI-compatible server ends a whole stream with both), and the client
    hears an error, not a half sentence as the model's final word."""
    body = _sse(_chunk({"role": "assistant", "content": "The first step is to"}))
    res, out = await _stream_from(serve, body)
    v = wirecheck.check_anthropic_stream(out)
    assert v.outcome == "error", f"a cut-off stream was reported as complete: {v}"


# --- the last event without its blank line ----------------------------------------------------


async def test_a_final_event_without_its_blank_line_is_not_dropped(serve):  # noqa: F811
    """The server's last data line ends the body without the blank line after it: it is
    still an event (the end of the answer and its finish_reason), not dropped."""
    body = (_sse(_chunk({"role": "assistant", "content": "Hello"}))
            + b"data: " + orjson.dumps(_chunk({"content": " world"}, "stop")) + b"\n")
    _, out = await _stream_from(serve, body)
    v = wirecheck.check_anthropic_stream(out)
    assert v.outcome == "ok" and v.text == "Hello world", f"the last event was dropped: {v}"


# --- finish_reason "tool_calls" without any tool call -------------------------------------------


def test_a_streamed_tool_calls_finish_without_a_call_is_not_tool_use() -> None:
    """A reply that ends with finish_reason "tool_calls" though no call was made (vLLM,
    vllm-project/vllm#53255) ends the turn: the Messages API never says tool_use without
    a tool_use block, and a client that branches on it would find nothing to run."""
    out = _relay([_chunk({"role": "assistant", "content": "Hello! I am fine."}), _chunk({}, "tool_calls")])
    validate_anthropic_stream(out)
    assert "tool_use" not in _block_types(out)
    assert _stop_reason(out) == "end_turn", f"stop_reason {_stop_reason(out)!r} without any tool_use block"


def test_a_streamed_call_without_a_name_is_dropped_and_not_announced_as_tool_use() -> None:
    """A call that never gets a name is dropped (it cannot be made), and the stop reason
    does not announce a call the message does not have."""
    out = _relay([_chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {"arguments": '{"a": 1}'}}]}),
                  _chunk({}, "tool_calls")])
    validate_anthropic_stream(out)
    assert "tool_use" not in _block_types(out)
    assert _stop_reason(out) != "tool_use"


def test_a_whole_tool_calls_finish_without_a_call_is_not_tool_use() -> None:
    """The whole-reply form: content text, `tool_calls: []`, finish_reason "tool_calls":
    the end of the turn."""
    msg = _whole({"content": "Hello! I am fine.", "tool_calls": []}, "tool_calls")
    assert all(b["type"] != "tool_use" for b in msg["content"])
    assert msg["stop_reason"] == "end_turn", f"stop_reason {msg['stop_reason']!r} without any tool_use block"


# --- a double-encoded call cut by nonstop's lowered limit ---------------------------------------


def test_a_cut_double_encoded_call_under_nonstops_cap_is_not_one_to_run() -> None:
    """Arguments written double-encoded (a JSON string holding the object, as some chat
    templates make them) and cut by nonstop's lowered max_tokens: a call the limit cut is
    never one to run (max_tokens), as on the Anthropic-format path, not a Bash call with
    input {"_raw": ...}."""
    cut = '"{\\"command\\": \\"rm -rf build && make'
    out = _relay([_chunk({"tool_calls": [{"index": 0, "id": "c0", "type": "function",
                                          "function": {"name": "Bash", "arguments": cut}}]}),
                  _chunk({}, "length")], capped=True)
    validate_anthropic_stream(out)
    assert _stop_reason(out) == "max_tokens", f"a cut call went out as {_stop_reason(out)!r}"


# --- an error object beside an empty choices list ----------------------------------------------


def test_an_error_chunk_with_an_empty_choices_list_is_not_ignored() -> None:
    """A mid-stream error on a data line that also carries `"choices": []` (a proxy or
    server that fills every field of its chunk schema) ends the stream with an error, not
    as a finished answer. (`"error": null` is no error: test_local_replies.py.)"""
    out = _relay([_chunk({"role": "assistant", "content": "Partial"}),
                  {"choices": [], "error": {"message": "slot 0 crashed", "type": "server_error", "code": 500}}])
    read = validate_anthropic_stream(out, allow_error=True)
    assert read.error, f"the server's error was dropped; the client heard stop_reason {_stop_reason(out)!r}"


@pytest.mark.parametrize(("error", "said"), [
    ({"message": "slot 0 crashed", "code": 500}, "box: slot 0 crashed"),
    ({"code": 500, "type": "server_error"}, 'box: {"error":{"code":500,"type":"server_error"}}'),
    ("out of memory", "box: out of memory"),
])
def test_a_stream_error_says_what_the_server_said(error: Any, said: str) -> None:
    """An error object without a message is quoted as sent, never as "None"."""
    out = _relay([_chunk({"role": "assistant", "content": "Partial"}), {"error": error}])
    assert validate_anthropic_stream(out, allow_error=True).error == said


# --- an answer the server gave up on (vLLM's and SGLang's `abort`) --------------------------------


def test_a_streamed_answer_the_server_aborted_ends_with_an_error_not_end_turn() -> None:
    """vLLM names an answer its engine gave up on `finish_reason: "abort"`: what came
    before is not the model's whole answer, and Claude Code must not take it as one."""
    for finish in ("abort", "error"):
        out = _relay([_chunk({"role": "assistant", "content": "The first step is to"}), _chunk({}, finish=finish)])
        read = validate_anthropic_stream(out, allow_error=True)
        assert read.error and "gave up" in read.error, (finish, out)
        assert _stop_reason(out) is None, f"{finish}: the client heard stop_reason {_stop_reason(out)!r}"


def test_an_answer_aborted_before_any_content_fails_before_anything_is_shown() -> None:
    out = _relay([_chunk({"role": "assistant", "content": ""}), _chunk({}, finish="abort")])
    assert [n for n, _ in out if n == "content_block_delta"] == []
    assert validate_anthropic_stream(out, allow_error=True).error


async def test_an_aborted_answer_reaches_the_client_as_an_error(serve):  # noqa: F811
    body = (_sse(_chunk({"role": "assistant", "content": "Half an"})) + _sse(_chunk({}, finish="abort"))
            + b"data: [DONE]\n\n")
    res, out = await _stream_from(serve, body)
    v = wirecheck.check_anthropic_stream(out)
    assert v.outcome == "error", f"an aborted answer was reported as complete: {v}"


async def test_a_whole_reply_the_server_aborted_is_a_failure_not_an_answer(serve):  # noqa: F811
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Half an"}, "finish_reason": "abort"}]})

    res, _ = await _send(serve, handler, stream=False)
    assert not isinstance(res, Reply), f"an aborted answer was relayed as the model's: {res}"


def test_an_aborted_answer_says_so_once_whatever_follows() -> None:
    """vLLM sends a usage chunk after the last one when asked for usage: the abort is
    one error, not one per chunk that follows."""
    tr = oa.OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=10, close_cut_calls=False)
    source = OpenAIEventSource("box", tr)
    events = [e for c in (_chunk({"role": "assistant", "content": "Half"}), _chunk({}, finish="abort"),
                          _chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 2}))
              for e in source.feed("message", c)]
    assert [n for n, _ in events].count("error") == 1


# --- tool names split across fragments ---------------------------------------------------------


def _tool(name: str, **properties: Any) -> dict[str, Any]:
    return {"name": name, "input_schema": {"type": "object", "properties": properties}}


async def test_split_tool_names_on_a_reused_index_ending_with_done_reach_the_client_whole(serve):  # noqa: F811
    """A server that reuses index 0 for every call, splits the second call's name across
    fragments and ends with `[DONE]` right after the last arguments, naming no finish:
    the client gets both calls, each with its whole name and input, and tool_use."""
    request = {**REQUEST, "tools": [_tool("Bash", command={"type": "string"}), _tool("BashOutput"),
                                    _tool("Read", file_path={"type": "string"})]}

    def call(**fields: Any) -> bytes:
        fn = {k: fields.pop(k) for k in ("name", "arguments") if k in fields}
        return _sse(_chunk({"tool_calls": [{"index": 0, **fields, "function": fn}]}))

    body = (_sse(_chunk({"role": "assistant", "content": None}))
            + call(id="call_1", type="function", name="Bash", arguments="") + call(arguments='{"command": "ls"}')
            + call(id="call_2", type="function", name="Re", arguments="") + call(name="ad", arguments="")
            + call(arguments='{"file_path": "a"}') + b"data: [DONE]\n\n")
    _, out = await _stream_from(serve, body, request)
    assert wirecheck.check_anthropic_stream(out).outcome == "ok"
    events = wirecheck.anthropic_events(out)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    inputs: dict[int, str] = {}
    for n, d in events:
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta":
            inputs[d["index"]] = inputs.get(d["index"], "") + d["delta"]["partial_json"]
    assert [(b["name"], orjson.loads(inputs[i])) for i, b in enumerate(starts)] == [
        ("Bash", {"command": "ls"}), ("Read", {"file_path": "a"})]
    assert len({b["id"] for b in starts}) == 2
    assert _stop_reason(events) == "tool_use"


def test_cached_prompt_tokens_of_a_stream_reach_the_client():
    """llama-server and vLLM report the prompt tokens they took from their cache in the
    last chunk's usage; the Anthropic client hears them as cache reads, as from the cloud."""
    out = _relay([_chunk({"role": "assistant", "content": "hi"}), _chunk({}, "stop"),
                  _chunk(None, usage={"prompt_tokens": 1000, "completion_tokens": 3,
                                      "prompt_tokens_details": {"cached_tokens": 960}})])
    final = next(d for n, d in out if n == "message_delta")["usage"]
    assert final == {"input_tokens": 40, "cache_read_input_tokens": 960, "output_tokens": 3}


def test_a_call_whose_arguments_are_null_is_a_call_without_input():
    out = _relay([_chunk({"role": "assistant", "tool_calls": [
                      {"index": 0, "id": "call_1", "type": "function", "function": {"name": "ls", "arguments": "null"}}]}),
                  _chunk({}, "tool_calls")])
    js = "".join(d["delta"]["partial_json"] for n, d in out
                 if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert orjson.loads(js) == {}
    assert _stop_reason(out) == "tool_use"
