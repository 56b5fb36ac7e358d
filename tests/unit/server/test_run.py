"""server/run: the uvicorn server nonstop runs under."""

from __future__ import annotations

import gc

import uvicorn

from nonstop.server import run


async def _app(scope, receive, send):  # noqa: ANN001
    raise AssertionError("no request is made")


async def test_serving_moves_what_start_up_built_out_of_the_collectors_reach() -> None:
    config = uvicorn.Config(_app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    config.load()
    server = run._Server(config)
    server.lifespan = config.lifespan_class(config)
    before = gc.get_threshold()
    try:
        await server.startup()
        assert server.started
        assert gc.get_freeze_count() > 0  # start-up's objects: never walked again
        assert gc.get_threshold() == (run.GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        await server.shutdown()
        gc.unfreeze()
        gc.set_threshold(*before)
