"""A fake OpenAI-compatible local server that replays recorded chunk streams.

The request's model picks the recording: model "fixture:parallel_tool_calls" replays
tests/fixtures/openai_streams/parallel_tool_calls.jsonl. Other models get plain_text.
A model starting "whole:" is answered with the whole completion even when a stream is
asked for (a server that ignores `stream`).
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from tests.support.standin import serve

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openai_streams"
LOG: list[dict] = []


def chunks_for(model: str) -> list[dict]:
    model = model.removeprefix("whole:")
    name = model.removeprefix("fixture:") if model.startswith("fixture:") else "plain_text"
    path = FIXTURES / f"{name}.jsonl"
    # A line starting "RAW " is sent as it is after `data: ` (a chunk that is not JSON).
    return [line[4:] if line.startswith("RAW ") else json.loads(line)
            for line in path.read_text().splitlines() if line.strip()]


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    req = json.loads(body)
    LOG.append({"headers": [[k, v] for k, v in request.headers.items()], "body": req})
    chunks = chunks_for(str(req.get("model", "")))
    if not req.get("stream") or str(req.get("model", "")).startswith("whole:"):
        text = "".join(
            (c.get("choices") or [{}])[0].get("delta", {}).get("content") or ""
            for c in chunks if isinstance(c, dict) and c.get("choices")
        )
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": req.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        })
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for c in chunks:
        await resp.write(b"data: " + (c.encode() if isinstance(c, str) else json.dumps(c).encode()) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def recorded(request: web.Request) -> web.Response:
    return web.json_response(LOG)


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "fixture:plain_text", "object": "model"}]})


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_recorded", recorded)
    serve(app)


if __name__ == "__main__":
    main()
