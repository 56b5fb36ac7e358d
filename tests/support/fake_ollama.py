"""A scripted Ollama: loading a model takes time, a loaded model lapses after its
keep_alive, and a request whose num_ctx differs from the loaded one reloads it, as
Ollama's scheduler does. Every call is recorded.

    app = ollama_app(load_seconds=2.0)         # in process (aiohttp TestServer)
    python -m tests.support.fake_ollama --port N --load-seconds 2   # as a process

`model` is the one model it can load ("" for none pulled); `others` are more models
pulled, listed before it and described (completion only, no tools) but never loaded;
`modelfile_ctx` is the num_ctx in `model`'s Modelfile, as /api/show gives it.

    GET  /api/version, /api/tags, /api/ps       what Ollama answers (ps: loaded models,
                                                context_length, expires_at)
    POST /api/show                              details, model_info, capabilities
    POST /api/generate                          empty prompt: load (or renew keep_alive)
    POST /v1/messages                           loads if needed, then a short answer
    GET  /v1/models
    GET  /_fake/calls                           the recorded calls, in order
    POST /_fake/unload                          drop the loaded model now
    POST /_fake/reset                           forget the calls, unload
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

MODEL = "qwen2.5-coder:7b"
SIZE = 4_683_087_332  # its file, in bytes (/api/tags)
DEFAULT_KEEP_ALIVE = 300.0
DEFAULT_NUM_CTX = 4096
# model_info as Ollama's /api/show gives it (Qwen2.5-Coder-7B's shape).
MODEL_INFO = {
    "general.architecture": "qwen2",
    "general.parameter_count": 7_615_616_512,
    "qwen2.block_count": 28,
    "qwen2.attention.head_count": 28,
    "qwen2.attention.head_count_kv": 4,
    "qwen2.embedding_length": 3584,
    "qwen2.context_length": 32768,
}


@dataclass
class Loaded:
    num_ctx: int
    span: float  # its keep_alive: seconds it stays after its last use (negative: for ever)
    expires: float = 0.0  # time.time(); 0: never


@dataclass
class FakeOllama:
    load_seconds: float = 2.0
    model: str = MODEL
    default_num_ctx: int = DEFAULT_NUM_CTX
    calls: list[dict[str, Any]] = field(default_factory=list)
    loaded: Loaded | None = None
    loads: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def record(self, path: str, body: Any = None) -> None:
        self.calls.append({"path": path, "body": body, "at": time.time()})

    def current(self) -> Loaded | None:
        if self.loaded is not None and self.loaded.expires and time.time() >= self.loaded.expires:
            self.loaded = None
        return self.loaded

    async def ensure(self, num_ctx: int | None, keep_alive: Any) -> float:
        """Load the model (or reuse it); seconds spent loading."""
        async with self._lock:
            want = num_ctx or self.default_num_ctx
            have = self.current()
            spent = 0.0
            if have is None or have.num_ctx != want:
                self.loaded = None
                await asyncio.sleep(self.load_seconds)
                self.loads += 1
                spent = self.load_seconds
                have = self.loaded = Loaded(want, DEFAULT_KEEP_ALIVE)
            # A request that names no keep_alive keeps the model's; the timer restarts.
            seconds = _seconds(keep_alive)
            if seconds is not None:
                have.span = seconds
            have.expires = 0.0 if have.span < 0 else time.time() + have.span
            return spent


FAKE = web.AppKey("fake", FakeOllama)


def _seconds(keep_alive: Any) -> float | None:
    if keep_alive is None:
        return None
    if isinstance(keep_alive, int | float):
        return float(keep_alive)
    text = str(keep_alive).strip()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].lstrip("-").replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def ollama_app(load_seconds: float = 2.0, *, model: str = MODEL, default_num_ctx: int = DEFAULT_NUM_CTX,
               size: int = SIZE, others: Sequence[str] = (), modelfile_ctx: int | None = None) -> web.Application:
    fake = FakeOllama(load_seconds, model, default_num_ctx)
    pulled = [*others, *([model] if model else [])]
    app = web.Application()
    app[FAKE] = fake

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.14.2"})

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m, "size": size,
                                              "details": {"parameter_size": "7.6B", "quantization_level": "Q4_K_M"}}
                                             for m in pulled]})

    async def ps(request: web.Request) -> web.Response:
        fake.record("/api/ps")
        have = fake.current()
        if have is None:
            return web.json_response({"models": []})
        expires = datetime.fromtimestamp(have.expires or time.time() + 10 ** 8, UTC).isoformat()
        return web.json_response({"models": [{"name": fake.model, "model": fake.model, "size": 5_500_000_000,
                                              "size_vram": 0, "context_length": have.num_ctx, "expires_at": expires}]})

    async def show(request: web.Request) -> web.Response:
        body = await request.json()
        fake.record("/api/show", body)
        if body.get("model") not in pulled:
            return web.json_response({"error": f"model '{body.get('model')}' not found"}, status=404)
        ours = body["model"] == fake.model
        return web.json_response({
            "details": {"format": "gguf", "family": "qwen2", "parameter_size": "7.6B", "quantization_level": "Q4_K_M"},
            "model_info": MODEL_INFO, "capabilities": ["completion", "tools"] if ours else ["completion"],
            "parameters": f"num_ctx {modelfile_ctx}" if ours and modelfile_ctx else "",
        })

    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        fake.record("/api/generate", body)
        if body.get("model") != fake.model:
            return web.json_response({"error": f"model '{body.get('model')}' not found"}, status=404)
        options = body.get("options") or {}
        await fake.ensure(options.get("num_ctx"), body.get("keep_alive"))
        return web.json_response({"model": fake.model, "created_at": datetime.now(UTC).isoformat(),
                                  "response": "", "done": True, "done_reason": "load"})

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        fake.record("/v1/messages", body)
        await fake.ensure(None, None)
        msg = {"id": "msg_fake", "type": "message", "role": "assistant", "model": fake.model,
               "content": [{"type": "text", "text": "Hello from the fake Ollama."}],
               "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 6}}
        if not body.get("stream"):
            return web.json_response(msg)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        start = {**msg, "content": [], "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 0}}
        for event, doc in [
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": msg["content"][0]["text"]}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 6}}),
            ("message_stop", {"type": "message_stop"}),
        ]:
            await resp.write(f"event: {event}\ndata: {json.dumps(doc)}\n\n".encode())
        return resp

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "library"}
                                                              for m in pulled]})

    async def calls(_: web.Request) -> web.Response:
        return web.json_response({"calls": fake.calls, "loads": fake.loads})

    async def unload(_: web.Request) -> web.Response:
        fake.loaded = None
        return web.json_response({"ok": True})

    async def reset(_: web.Request) -> web.Response:
        fake.calls.clear()
        fake.loaded, fake.loads = None, 0
        return web.json_response({"ok": True})

    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_fake/calls", calls)
    app.router.add_post("/_fake/unload", unload)
    app.router.add_post("/_fake/reset", reset)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--load-seconds", type=float, default=2.0)
    args = p.parse_args()
    web.run_app(ollama_app(args.load_seconds), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
