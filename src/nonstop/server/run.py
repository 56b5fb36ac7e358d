"""Run the gateway under uvicorn (uvloop + httptools, with a deadline for request heads)."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import sys
from collections.abc import Callable, Iterator

import uvicorn

from nonstop.config import Config
from nonstop.store import listening


class _Redact(logging.Filter):
    """Belt and braces: no log line may carry something that looks like a key."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):
            return True
        from nonstop.redact import redact

        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class _Formatter(logging.Formatter):
    """The console's format; its time (to the second) is formatted once a second, not
    once a line (a line a request). A record of several lines (the request log's batch:
    `lines`) gives each line the same time and level."""

    _second: int | None = None
    _time = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        second = int(record.created)
        if second != self._second:
            self._time, self._second = super().formatTime(record, datefmt), second
        return self._time

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if getattr(record, "lines", False) and "\n" in record.message:
            head = text[: text.index(record.message)] if record.message in text else ""
            text = text.replace("\n", "\n" + head)
        return text


def _no_caller(stack_info: bool = False, stacklevel: int = 1) -> tuple[str, int, str, str | None]:
    return "(unknown file)", 0, "(unknown function)", None


def setup_logging(level: int = logging.INFO) -> None:
    # No format here names the thread or the process: a record need not look them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s nonstop %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_Redact())
    root = logging.getLogger("nonstop")
    # Nor its file, line or function: without this, every record walks the stack for its
    # caller (some 6 µs a line, on the paths that switch the cloud's state).
    root.findCaller = _no_caller  # type: ignore[method-assign]
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def serve(cfg: Config) -> int:
    from nonstop.server.app import create_app
    from nonstop.server.head_guard import guarded_protocol

    setup_logging()
    log = logging.getLogger("nonstop")
    log.info("nonstop listening on http://%s — cloud %s; config: %s", cfg.listen, cfg.cloud.url, cfg.source or "defaults")
    log.info("use it: ANTHROPIC_BASE_URL=http://%s claude   (or: nonstop claude)", cfg.listen)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(
        create_app(cfg), host=cfg.host, port=cfg.port, loop=loop,
        http=guarded_protocol(cfg.head_timeout, cfg.slow_heads_per_client),
        lifespan="on", access_log=False, log_level="warning", server_header=False, date_header=False,
        # nonstop never reads the client's address or scheme from the scope, and must not
        # take them from X-Forwarded-* headers: no proxy-headers layer on every request.
        proxy_headers=False,
        # 0: no drain (None would be: wait for ever).
        timeout_graceful_shutdown=math.ceil(cfg.drain_timeout), timeout_keep_alive=75,
        h11_max_incomplete_event_size=64 * 1024,
    )
    server = _Server(config)
    server.on_started = lambda: listening.note(cfg.state_dir, cfg.listen)
    try:
        server.run()
    finally:
        listening.forget(cfg.state_dir)  # its own note: another gateway's stays
    return 0 if server.started else 1


# Serving a request makes no cyclic garbage: what it allocates is freed by reference
# counting. But Python collects its youngest generation every 700 net new objects, and
# with 64 streams in flight (~4,000 live young objects: header tuples, futures, coroutine
# frames) that came every 15 requests, each collection walking them all for nothing:
# ~0.5 ms each, with a 2 ms one every tenth, 40-55 µs of CPU per request (0 at
# concurrency 1, where each request frees what it made before the next). At 10,000 the
# objects of some 150 streams in flight fit; what a collection would reclaim (cycles
# made on rare paths, such as a kept traceback) waits at most that many objects longer.
# tests/unit/server/test_no_cycles.py holds the paths of a request to making none.
YOUNG_THRESHOLD = 10_000


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, so the process would
    exit with -15 after draining cleanly; a clean drain exits 0.

    Once started, what start-up built (modules, the app, its sessions) lives as long as
    the process: it is moved out of the collector's reach (gc.freeze), so a full
    collection walks only what serving made, not every object of every module. And the
    youngest generation is collected after YOUNG_THRESHOLD new objects, not Python's 700
    (see there).

    Once it listens, it notes where in its state directory (store/listening.py), for
    the commands that look for it; `serve` takes the note back when it stops."""

    on_started: Callable[[], object] | None = None

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            if self.on_started is not None:
                self.on_started()
            gc.collect()
            gc.freeze()
            gc.set_threshold(YOUNG_THRESHOLD, 10, 10)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()
