"""A server whose chat template refuses a user message right after tool results
(Mistral-family and Gemma templates: "roles must alternate"; older mistral_common versions:
"Unexpected role 'user' after role 'tool'"): nonstop learns it from the first refusal,
sends that request again with the text beside the results inside the last result, and
every later request so; the server is not counted as failing for it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from nonstop.backends import local as local_module
from nonstop.backends.base import Reply
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.routing.classify import Verdict
from nonstop.wire.anthropic import fold_beside_results, to_local_request
from nonstop.wire.openai.backend_request import anthropic_to_openai_request

LOOP = [
    {"role": "user", "content": "fix the test"},
    {"role": "assistant", "content": [{"type": "text", "text": "Reading."},
                                      {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"p": "t.py"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "def test(): assert 1 == 2"},
        {"type": "text", "text": "<system-reminder>Keep the todo list current.</system-reminder>"}]},
]
REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": LOOP,
           "tools": [{"name": "Read", "input_schema": {"type": "object"}}]}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [{"type": "text", "text": "ok"}],
           "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}
MISTRAL = "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."
MISTRAL_COMMON = "Unexpected role 'user' after role 'tool'"


def _local(req: dict[str, Any]) -> dict[str, Any]:
    return to_local_request(req, model="m", max_tokens=64)


# --- the fold ------------------------------------------------------------------------------


def test_text_beside_results_goes_inside_the_last_result_in_order() -> None:
    req = _local({"messages": [*LOOP[:2], {"role": "user", "content": [
        {"type": "text", "text": "first"},
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "out"}]},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
        {"type": "text", "text": "last"}]}]})
    turn = fold_beside_results(req)["messages"][2]["content"]
    assert [b["type"] for b in turn] == ["tool_result", "image"]  # images stay where they were
    assert [b["text"] for b in turn[0]["content"]] == ["out", "first", "last"]
    assert req["messages"][2]["content"][0]["type"] == "text"  # the request itself is not changed


def test_a_result_given_as_a_string_or_nothing_keeps_it_first() -> None:
    for inner, texts in (("out", ["out", "note"]), ("", ["note"]), (None, ["note"])):
        result = {"type": "tool_result", "tool_use_id": "toolu_1", **({} if inner is None else {"content": inner})}
        req = _local({"messages": [*LOOP[:2], {"role": "user", "content": [result, {"type": "text", "text": "note"}]}]})
        assert [b["text"] for b in fold_beside_results(req)["messages"][2]["content"][0]["content"]] == texts


def test_nothing_to_fold_is_none() -> None:
    only_results = [*LOOP[:2], {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]
    for messages in (LOOP[:1], only_results, [{"role": "user", "content": [{"type": "text", "text": "a"}]}]):
        assert fold_beside_results(_local({"messages": messages})) is None


def test_an_openai_server_then_gets_no_user_message_after_the_tool_messages() -> None:
    chat = anthropic_to_openai_request(fold_beside_results(_local(REQUEST)), model="m", max_tokens=16, stream=False)
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool"]
    assert chat["messages"][2]["content"].endswith("<system-reminder>Keep the todo list current.</system-reminder>")


# --- the backend ---------------------------------------------------------------------------


def _strict(refusal: str, status: int, seen: list[dict[str, Any]], refuse_after: float = 0.0) -> web.Application:
    """A server that refuses, as a chat template does, a user message after tool results
    (`refuse_after` seconds later: a template applied after a slow queue)."""
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        roles = [m["role"] for m in body["messages"]]
        after_tool = any(a == "tool" and b == "user" for a, b in zip(roles, roles[1:], strict=False))
        text_beside = any(m["role"] == "user" and isinstance(m["content"], list)
                          and {"tool_result", "text"} <= {b["type"] for b in m["content"]} for m in body["messages"])
        if after_tool or text_beside:
            await asyncio.sleep(refuse_after)
            return web.json_response({"error": {"code": status, "message": refusal, "type": "server_error"}}, status=status)
        if body.get("stream") and request.path == "/v1/chat/completions":
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for delta, finish in (({"role": "assistant", "content": "ok"}, None), ({}, "stop")):
                chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                await resp.write(b"data: %s\n\n" % orjson.dumps(chunk))
            await resp.write(b"data: [DONE]\n\n")
            return resp
        if body.get("stream"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for name, data in (("message_start", {"type": "message_start", "message": {**MESSAGE, "content": []}}),
                               ("content_block_start", {"type": "content_block_start", "index": 0,
                                                        "content_block": {"type": "text", "text": ""}}),
                               ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": "ok"}}),
                               ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                                  "usage": {"output_tokens": 1}}),
                               ("message_stop", {"type": "message_stop"})):
                await resp.write(b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(data)))
            return resp
        if request.path == "/v1/chat/completions":
            return web.json_response({"id": "c", "object": "chat.completion", "model": "m", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
        return web.json_response(MESSAGE)

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    app.router.add_post("/v1/chat/completions", handler)
    return app


@pytest.mark.parametrize(("api", "refusal", "status", "stream"), [
    ("anthropic", MISTRAL, 500, False),
    ("anthropic", MISTRAL, 500, True),
    ("openai", MISTRAL_COMMON, 400, False),
    ("openai", MISTRAL, 500, True),
])
async def test_the_first_refusal_teaches_it_and_the_request_is_answered(
        serve, caplog: pytest.LogCaptureFixture, api: str, refusal: str, status: int, stream: bool) -> None:
    seen: list[dict[str, Any]] = []
    url = await serve(_strict(refusal, status, seen))
    cfg = parse_config({"local": [{"name": "mistral", "url": url, "api": api, "context_window": 8192, "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        with caplog.at_level(logging.WARNING, logger="nonstop"):
            for _ in range(2):
                res = await asyncio.wait_for(backend.send_request(dict(REQUEST), stream=stream), 20)
                assert isinstance(res, Reply) and res.status == 200
                body = b"".join([c async for c in res.body])
                assert b"ok" in body
                if res.close is not None:
                    res.close()
    assert len(seen) == 3  # the refused one, its folded resend, and the next request folded at once
    assert sum("refuses a user message right after tool results" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(("api", "refusal", "status"), [("anthropic", MISTRAL, 500), ("openai", MISTRAL, 500)])
async def test_a_refusal_after_the_stream_began_is_answered_folded_in_the_same_stream(
        serve, monkeypatch: pytest.MonkeyPatch, api: str, refusal: str, status: int) -> None:
    """The refusal came after COMMIT_AFTER: the client's stream has begun, and the folded
    resend's answer continues it, as it would have answered before the commit."""
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.05)
    seen: list[dict[str, Any]] = []
    url = await serve(_strict(refusal, status, seen, refuse_after=0.3))
    cfg = parse_config({"local": [{"name": "mistral", "url": url, "api": api, "context_window": 8192, "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await asyncio.wait_for(backend.send_request(dict(REQUEST), stream=True), 20)
        assert isinstance(res, Reply) and res.status == 200
        body = b"".join([c async for c in res.body])
        if res.close is not None:
            res.close()
    assert b"ok" in body and b"event: error" not in body and body.count(b"event: message_start") == 1, body
    assert b'"stop_reason":"end_turn"' in body
    assert len(seen) == 2 and backend.fold_turns
    assert res.usage.error == "" and "sent again" in res.usage.note
    assert not backend.state.demoted and backend.state.failures == 0


async def test_another_refusal_is_not_retried(serve) -> None:
    seen: list[dict[str, Any]] = []
    url = await serve(_strict("Only user and assistant roles are supported!", 500, seen))
    cfg = parse_config({"local": [{"name": "box", "url": url, "api": "anthropic", "context_window": 8192, "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await asyncio.wait_for(backend.send_request(dict(REQUEST), stream=False), 20)
    assert isinstance(res, Verdict) and len(seen) == 1 and not backend.fold_turns


async def test_a_refusal_with_nothing_to_fold_is_not_retried(serve) -> None:
    seen: list[dict[str, Any]] = []

    async def refuses(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"error": {"message": MISTRAL}}, status=500)

    app = web.Application()
    app.router.add_post("/v1/messages", refuses)
    cfg = parse_config({"local": [{"name": "box", "url": await serve(app), "api": "anthropic", "context_window": 8192,
                                   "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        plain = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        res = await asyncio.wait_for(backend.send_request(plain, stream=False), 20)
    assert isinstance(res, Verdict) and len(seen) == 1 and not backend.fold_turns
