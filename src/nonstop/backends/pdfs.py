"""Reading the PDFs in a request for a local model, off the event loop (see wire/pdf.py).

A document is read once, on one worker thread (a PDF that is slow to read holds that
thread, never the server's), and two requests that carry the same unread document wait
for the same reading. A request waits at most READ_TIMEOUT seconds in all; a reading
that takes longer goes on, and its text serves the next turn."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from typing import Any

from nonstop.wire import pdf

log = logging.getLogger("nonstop")

READ_TIMEOUT = 10.0

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nonstop-pdf")
_READING: dict[tuple[int, int], asyncio.Future[str]] = {}


async def read_pdfs(req: dict[str, Any], timeout: float = READ_TIMEOUT) -> None:
    """Have the text of the request's PDFs kept (wire/pdf.py), waiting `timeout` at most."""
    waiting: list[asyncio.Future[str]] = []
    for key, data in pdf.unread(req):
        fut = _READING.get(key)
        if fut is None:
            fut = _READING[key] = asyncio.wrap_future(_POOL.submit(pdf.extract_text, data))
            fut.add_done_callback(functools.partial(_keep, key))
        waiting.append(fut)
    if waiting:
        await asyncio.wait(waiting, timeout=timeout)


def _keep(key: tuple[int, int], fut: asyncio.Future[str]) -> None:
    _READING.pop(key, None)
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:  # extract_text says what it cannot read: anything else is a fault of its own
        log.error("reading a PDF failed: %s: %s", type(exc).__name__, exc)
        return
    pdf.remember(key, fut.result())
