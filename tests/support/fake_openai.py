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
        return web.json_response(_whole(chunks, req.get("model")))
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for c in chunks:
        await resp.write(b"data: " + (c.encode() if isinstance(c, str) else json.dumps(c).encode()) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


def _whole(chunks: list, model: object) -> dict:
    """The recording as one completion: its text, and its tool calls put together by
    index (their id and name from the first chunk that has them, arguments joined)."""
    deltas = [c["choices"][0].get("delta", {}) for c in chunks if isinstance(c, dict) and c.get("choices")]
    finishes = [c["choices"][0].get("finish_reason") for c in chunks if isinstance(c, dict) and c.get("choices")]
    text = "".join(d.get("content") or "" for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for tc in d.get("tool_calls") or []:
            call = calls.setdefault(tc.get("index", 0), {"id": "", "type": "function",
                                                          "function": {"name": "", "arguments": ""}})
            call["id"] = call["id"] or tc.get("id") or ""
            fn = tc.get("function") or {}
            call["function"]["name"] = call["function"]["name"] or fn.get("name") or ""
            call["function"]["arguments"] += fn.get("arguments") or ""
    message: dict = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    finish = next((f for f in reversed(finishes) if f), "tool_calls" if calls else "stop")
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


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
