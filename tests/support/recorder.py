"""A recording local stand-in: answers /v1/messages and /v1/chat/completions with valid
replies and remembers every request it received (to prove no cloud credential reaches a
local server)."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.support.standin import serve

LOG: list[dict] = []


def _record(request: web.Request, body: bytes) -> None:
    LOG.append({
        "method": request.method, "path": request.path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body": body.decode("utf-8", "replace"),
    })


async def recorded(request: web.Request) -> web.Response:
    return web.json_response(LOG)


async def messages(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    _record(request, body)
    req = json.loads(body)
    text = "recorded reply"
    if "[slow]" in body.decode("utf-8", "replace"):
        await asyncio.sleep(4)  # like a long prompt being processed on a CPU
    if "[slow-fail]" in body.decode("utf-8", "replace"):
        await asyncio.sleep(4)  # then the server gives up on it
        return web.json_response({"error": {"message": "the model crashed", "type": "server_error"}}, status=503)
    if req.get("tools") and "[tool]" in json.dumps((req.get("messages") or [{}])[-1]):
        return await _tool_call(request, req)
    if not req.get("stream"):
        return web.json_response({
            "id": "msg_rec", "type": "message", "role": "assistant", "model": req.get("model"),
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 2},
        })
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)

    async def ev(name: str, data: dict) -> None:
        await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    # Deliberately sloppy like some local servers: zero input tokens, text inside the start.
    await ev("message_start", {"type": "message_start", "message": {"id": "msg_rec", "type": "message", "role": "assistant", "model": req.get("model"), "content": [], "usage": {"input_tokens": 0, "output_tokens": 0}}})
    await ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "recorded "}})
    await ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "reply"}})
    await ev("content_block_stop", {"type": "content_block_stop", "index": 0})
    await ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}})
    await ev("message_stop", {"type": "message_stop"})
    return resp


async def _tool_call(request: web.Request, req: dict) -> web.StreamResponse:
    """A call of the first offered tool, with the server's own kind of id."""
    name = req["tools"][0]["name"]
    if not req.get("stream"):
        return web.json_response({
            "id": "msg_rec", "type": "message", "role": "assistant", "model": req.get("model"),
            "content": [{"type": "tool_use", "id": "call_0", "name": name, "input": {"command": "ls"}}],
            "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 5},
        })
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for name_, data in (
        ("message_start", {"type": "message_start", "message": {"id": "msg_rec", "type": "message", "role": "assistant", "model": req.get("model"), "content": [], "usage": {"input_tokens": 3, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "call_0", "name": name, "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"command": "ls"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}),
        ("message_stop", {"type": "message_stop"}),
    ):
        await resp.write(f"event: {name_}\ndata: {json.dumps(data)}\n\n".encode())
    return resp


async def count_tokens(request: web.Request) -> web.Response:
    body = await request.read()
    _record(request, body)
    return web.json_response({"input_tokens": max(1, len(body) // 4)})


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    _record(request, body)
    req = json.loads(body)
    if not req.get("stream"):
        return web.json_response({
            "id": "chatcmpl-rec", "object": "chat.completion", "model": req.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "recorded reply"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        })
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for chunk in (
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "recorded"}}]},
        {"choices": [{"index": 0, "delta": {"content": " reply"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}},
    ):
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "recorder-model", "object": "model"}]})


def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/_recorded", recorded)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    serve(app)


if __name__ == "__main__":
    main()
