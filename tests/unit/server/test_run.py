"""server/run: the uvicorn server nonstop runs under."""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from nonstop.config import Config, parse_config
from nonstop.server import run


async def _app(scope, receive, send):  # noqa: ANN001
    raise AssertionError("no request is made")


def _uvicorn_config_for(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> uvicorn.Config:
    """The uvicorn.Config `nonstop serve` builds for cfg (the server is not started)."""
    seen: dict[str, Any] = {}

    class FakeServer:
        started = True

        def __init__(self, config: uvicorn.Config) -> None:
            seen["config"] = config

        def run(self) -> None:
            pass

    monkeypatch.setattr(run, "_Server", FakeServer)
    logger = logging.getLogger("nonstop")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        run.serve(cfg)
    finally:
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    return seen["config"]


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
        # Young collections only once the objects of some 150 streams in flight are new.
        assert gc.get_threshold() == (run.YOUNG_THRESHOLD, *before[1:])
    finally:
        await server.shutdown()
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.parametrize("drain", [0.0, 0.5])
def test_a_drain_timeout_under_one_second_still_bounds_the_shutdown(tmp_path: Path, drain: float,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """drain_timeout = 0 (no drain) or a fraction of a second bounds the graceful shutdown
    to at most a second: on SIGTERM nonstop stops when configured, not when the longest
    stream (a slow local model may take minutes) has finished."""
    cfg = parse_config({"state_dir": str(tmp_path), "drain_timeout": drain})
    timeout = _uvicorn_config_for(cfg, monkeypatch).timeout_graceful_shutdown
    assert timeout is not None, f"drain_timeout = {drain} became an unbounded graceful shutdown"
    assert timeout <= 1


def test_the_server_runs_as_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep-alive outlasts Claude Code's gaps between turns (uvicorn's own default is 5 s),
    nothing trusts X-Forwarded-* headers, and the drain is the configured one."""
    config = _uvicorn_config_for(parse_config({"state_dir": str(tmp_path), "drain_timeout": 30.0}), monkeypatch)
    assert config.timeout_keep_alive == 75
    assert config.proxy_headers is False and config.access_log is False
    assert config.timeout_graceful_shutdown == 30


def test_the_console_line_says_the_time_of_each_record_to_the_second() -> None:
    """The time is formatted once a second; a record of the next second gets its own."""
    fmt = run._Formatter("%(asctime)s nonstop %(levelname)s %(message)s", "%H:%M:%S")

    def line(created: float) -> str:
        rec = logging.LogRecord("nonstop", logging.INFO, __file__, 0, "hello %s", ("there",), None)
        rec.created = created
        return fmt.format(rec)

    t0 = 1_800_000_000.0
    expected = [time.strftime("%H:%M:%S", time.localtime(t)) + " nonstop INFO hello there"
                for t in (t0, t0 + 0.9, t0 + 1.0, t0 - 5)]
    assert [line(t) for t in (t0, t0 + 0.9, t0 + 1.0, t0 - 5)] == expected


def test_the_console_neither_looks_up_a_records_caller_nor_loses_its_error(monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The format names no file, line or function: a record does not walk the stack for
    them. A line still carries its words, redacted, and an exception's traceback."""
    log = logging.getLogger("nonstop")
    monkeypatch.setattr(log, "handlers", list(log.handlers))
    monkeypatch.setattr(log, "level", log.level)
    monkeypatch.setattr(log, "findCaller", log.findCaller)  # put back as it was after the test
    run.setup_logging()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    log.addHandler(Keep())
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed with x-api-key: %s", "plainsecretvalue123")
    assert seen and seen[0].funcName == "(unknown function)" and seen[0].lineno == 0
    err = capsys.readouterr().err
    assert "failed with x-api-key: [redacted]" in err and "plainsecretvalue123" not in err
    assert "ValueError: boom" in err
