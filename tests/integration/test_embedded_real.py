"""The embedded server with the real llama-server and the bundled model."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nonstop.backends.embedded import EmbeddedServer
from nonstop.config import EmbeddedConfig
from tests.integration.llama import require_llama
from tests.support.procs import pid_alive

pytestmark = pytest.mark.integration

REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Say hello."}],
}


async def ask(session: aiohttp.ClientSession, url: str, **extra: Any) -> aiohttp.ClientResponse:
    resp = await session.post(
        url + "/v1/messages",
        json={**REQUEST, **extra},
        headers={"anthropic-version": "2023-06-01"},
        timeout=aiohttp.ClientTimeout(total=120),
    )
    await resp.read()
    return resp


def assert_message(body: dict[str, Any]) -> None:
    assert body["type"] == "message" and body["role"] == "assistant"
    assert isinstance(body["content"], list) and body["content"]
    assert all(block["type"] in ("text", "thinking", "tool_use") for block in body["content"])
    assert body["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence")
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_embedded_serves_survives_kill_and_stops_clean(tmp_path: Path) -> None:
    require_llama()
    events: list[str] = []
    server = EmbeddedServer(
        EmbeddedConfig(context_window=4096, parallel=2, threads=1, ready_timeout=120),
        tmp_path,
        on_event=events.append,
    )
    started = time.monotonic()
    backend = await server.start()
    startup = time.monotonic() - started
    pids: list[int] = []
    try:
        print(f"embedded llama-server ready in {startup:.2f}s")
        assert backend.name == "embedded" and backend.api == "anthropic"
        assert backend.model == "SmolLM2-135M-Instruct.Q4_1"
        assert (backend.context_window, backend.max_output_tokens) == (4096, 64)
        assert server.healthy and server.pid is not None
        pids.append(server.pid)

        async with aiohttp.ClientSession() as session:
            # Each of the two slots gets the configured window.
            async with session.get(server.url + "/props") as resp:
                props = await resp.json()
            assert props["default_generation_settings"]["n_ctx"] == 4096
            assert props["total_slots"] == 2

            resp = await ask(session, server.url)
            assert resp.status == 200
            assert_message(await resp.json())

            resp = await ask(session, server.url, stream=True)
            assert resp.status == 200
            text = (await resp.read()).decode()
            # llama-server sends message_start only with the first decoded token's text, so
            # it can be missing; nonstop's normaliser supplies it (tests/unit/test_local_stream.py).
            assert "event: content_block_delta" in text and "event: message_stop" in text

            os.kill(pids[0], signal.SIGKILL)
            await until(
                lambda: server.healthy and server.pid not in (None, pids[0]), 60, "the restart"
            )
            assert server.pid is not None
            pids.append(server.pid)
            assert server.restarts == 1
            assert any("restarting in 1s" in e for e in events)

            resp = await ask(session, server.url)
            assert resp.status == 200
            assert_message(await resp.json())
    finally:
        await server.stop()
    assert server.pid is None
    for pid in pids:
        assert not pid_alive(pid), f"llama-server {pid} outlived stop()"
    log = (tmp_path / "embedded-llama.log").read_text(errors="replace")
    assert "--jinja" in log and "-t 1" in log
