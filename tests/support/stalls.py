"""A local server that stalls on some of its paths, as a busy or wedged one does: it takes
the connection and never answers ("head"), or sends the head and the first bytes of the
body and then nothing more ("body").

    app = stalling(ollama_app(), {"/api/show"}, "body")

Any aiohttp app of tests/support (or a test's own) can be made to stall this way; the
other paths answer as before. The stall ends when the server is shut down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Literal

from aiohttp import web

STALL = 60.0
How = Literal["head", "body"]


def stalling(app: web.Application, paths: Collection[str], how: How) -> web.Application:
    """`app`, stalling on `paths` (either method) the way `how` says."""

    @web.middleware
    async def stall(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path not in paths:
            return await handler(request)
        await request.read()
        if how == "head":
            await asyncio.sleep(STALL)
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        resp.content_length = 4096
        await resp.prepare(request)
        await resp.write(b'{"models": [')
        await asyncio.sleep(STALL)
        return resp

    app.middlewares.append(stall)
    return app
