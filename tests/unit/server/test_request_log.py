"""server/request_log: one record per request. The log is a courtesy: what cannot be
written to it (the log itself, or an odd count from a server) never stops the gateway
from serving, nor the log from recording the requests that follow."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

import nonstop.store.db as db
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.server.app import App
from nonstop.wire.sse import encode_event
from tests.support.full_disk import FULL, full_disk_connect
from tests.support.inprocess import exchange

MESSAGE = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
                        "messages": [{"role": "user", "content": "hi"}]})


async def lifespan_startup(app: App) -> list[dict[str, Any]]:
    """Run the app's lifespan start-up (and, if it started, its shutdown); the messages it sent."""
    msgs = [{"type": "lifespan.startup"}]
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if msgs:
            return msgs.pop(0)
        await asyncio.sleep(3600)
        return {}

    async def send(m: dict[str, Any]) -> None:
        out.append(m)
        if m["type"] == "lifespan.startup.complete":
            msgs.append({"type": "lifespan.shutdown"})

    await asyncio.wait_for(app({"type": "lifespan"}, receive, send), 30)
    return out


def _local_server(output_tokens: int) -> web.Application:
    """A local Anthropic-API server (llama-server, LM Studio...) whose stream reports
    `output_tokens` in its usage."""

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for name, data in [
            ("message_start", {"type": "message_start", "message": {
                "id": "m", "type": "message", "role": "assistant", "model": "x", "content": [],
                "usage": {"input_tokens": 3, "output_tokens": 0}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                               "usage": {"output_tokens": output_tokens}}),
            ("message_stop", {"type": "message_stop"})]:
            await resp.write(encode_event(name, orjson.dumps(data)))
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


@contextlib.contextmanager
def gateway_with_local(tmp_path: Path, url: str, session: aiohttp.ClientSession) -> Iterator[App]:
    """nonstop with its request log open and one local Anthropic backend; main work never
    goes to the cloud, so every request is served (and logged) by the local backend."""
    cfg = parse_config({"state_dir": str(tmp_path), "routing": {"main": {"cloud": "never"}},
                        "local": [{"name": "llama", "url": url, "count_tokens": "estimate"}]})
    app = App(cfg)
    assert app.rt.store is not None
    app.rt.store.open()
    app.rt.use_backends([make_local_backend(c, session) for c in cfg.local])
    try:
        yield app
    finally:
        app.rt.store.close()


@pytest.mark.parametrize("problem", ["corrupt-db", "state-dir-not-creatable"])
async def test_the_gateway_starts_and_serves_when_its_request_log_cannot_be_opened(tmp_path: Path, problem: str) -> None:
    """A request log that cannot be opened (not a database, or a state directory that
    cannot be made) does not keep the gateway from starting: it serves without the log
    and says why, so `nonstop serve` and `nonstop claude` still work."""
    if problem == "corrupt-db":
        state = tmp_path / "state"
        state.mkdir()
        (state / "nonstop.db").write_bytes(b"this is not an SQLite database\n" * 200)
    else:
        (tmp_path / "a-file").write_text("")
        state = tmp_path / "a-file" / "state"  # cannot be created: a file is in the way
    app = App(parse_config({"state_dir": str(state), "embedded": {"mode": "never"}, "discovery": {"enabled": False}}))
    out = await lifespan_startup(app)
    kinds = [m["type"] for m in out]
    assert "lifespan.startup.failed" not in kinds, [m.get("message") for m in out]
    assert "lifespan.startup.complete" in kinds


async def test_requests_are_served_while_the_disk_refuses_the_log(
        tmp_path: Path, serve, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the disk full under the request log, every request is answered as before and
    none waits on the disk; the console says once that rows are lost, not once a request."""
    monkeypatch.setattr(db, "connect", full_disk_connect)
    url = await serve(_local_server(7))
    async with aiohttp.ClientSession() as session:
        with gateway_with_local(tmp_path, url, session) as app, caplog.at_level(logging.INFO, logger="nonstop"):
            FULL.set()
            try:
                for _ in range(3):
                    answers = await asyncio.wait_for(asyncio.gather(*(
                        exchange(app, "POST", "/v1/messages", body=MESSAGE) for _ in range(20))), 30)
                    assert [a[0] for a in answers] == [200] * 20
                    assert all(b"hello" in a[2] for a in answers)
                    await asyncio.sleep(0.3)  # the writer meets the full disk in between
                assert app.rt.store is not None
                await asyncio.wait_for(asyncio.to_thread(app.rt.store.flush, 5), 10)
            finally:
                FULL.clear()
    said = [r.getMessage() for r in caplog.records if "request log" in r.getMessage()]
    assert len(said) == 1 and "database or disk is full" in said[0], said
    assert len(app.rt.request_log.recent) == 60, "the dashboard's feed lost rows the disk refused"


async def test_a_local_server_reporting_an_unsigned_minus_one_does_not_end_request_logging(tmp_path: Path, serve) -> None:
    """A local server whose usage says output_tokens = 18446744073709551615 (an unsigned
    -1) is answered, and the requests after it are still logged: `nonstop logs`, the
    dashboard's history and today's totals go on counting."""
    odd = await serve(_local_server(2**64 - 1))
    fine = await serve(_local_server(7))
    async with aiohttp.ClientSession() as session:
        with gateway_with_local(tmp_path, odd, session) as app:
            assert (await exchange(app, "POST", "/v1/messages", body=MESSAGE))[0] == 200
            assert app.rt.store is not None
            await asyncio.to_thread(app.rt.store.flush, 1)
            app.rt.use_backends([make_local_backend(c, session) for c in
                                 parse_config({"local": [{"name": "llama", "url": fine}]}).local])
            assert (await exchange(app, "POST", "/v1/messages", body=MESSAGE))[0] == 200
            rows = await asyncio.wait_for(asyncio.to_thread(app.rt.store.recent, limit=10), 10)
            assert any(r["output_tokens"] == 7 for r in rows), f"the second request was not logged: {rows}"


async def test_a_negative_token_count_from_a_local_server_is_still_logged(tmp_path: Path, serve, caplog) -> None:
    """A local server reporting -1 output tokens ("unknown") is served and recorded like
    any other request: its row reaches the log, the metrics and the dashboard's feed, and
    no internal failure is logged for it."""
    url = await serve(_local_server(-1))
    async with aiohttp.ClientSession() as session:
        with gateway_with_local(tmp_path, url, session) as app, caplog.at_level(logging.WARNING, logger="nonstop"):
            status, _, body = await exchange(app, "POST", "/v1/messages", body=MESSAGE)
            assert status == 200 and b"hello" in body
            failures = [r.getMessage() for r in caplog.records if "failed inside nonstop" in r.getMessage()]
            assert failures == [], failures
            assert len(app.rt.request_log.recent) == 1, "the served request is missing from the dashboard's feed"


@pytest.mark.parametrize("at", [490, 495, 497, 499])
def test_a_key_across_the_error_cap_leaves_no_part_of_itself_in_the_row(at: int) -> None:
    """An error is kept to 500 characters. Cut first, a key that straddled the cut kept a
    prefix (`sk-ant-ap`) too short for the patterns to know; redacted first, none of it stays."""
    from nonstop.server.events import EventBus
    from nonstop.server.metrics import Metrics
    from nonstop.server.request_log import RequestLog
    from nonstop.store.db import RequestRow

    key = "sk-ant-api03-" + "Q" * 90
    row = RequestRow(ts=0.0, error="x" * at + key + " and more")
    RequestLog(None, Metrics(), EventBus()).record(row)
    assert len(row.error) <= 500
    assert "sk-ant" not in row.error and "QQQ" not in row.error and not row.error.endswith("sk-")


@pytest.mark.parametrize("said", ["x-api-key: abcdef123456", "authorization: Basic dXNlcjpwYXNz",
                                  "api_key=supersecretvalue", "token=abcdef123456", "Bearer abcdefghijkl",
                                  "sk-ant-api03-" + "Q" * 40])
@pytest.mark.parametrize("field", ["model", "client", "session_id"])
def test_a_secret_in_the_clients_own_words_is_redacted_in_every_form_redaction_knows(field: str, said: str) -> None:
    """The model, the client's name and its session id are the client's words: a key
    pasted into any of them is redacted in every form redact() knows elsewhere (not only
    after `sk-`, `bearer` and `token`, the three these fields were once looked at for)."""
    from nonstop.server.events import EventBus
    from nonstop.server.metrics import Metrics
    from nonstop.server.request_log import RequestLog
    from nonstop.store.db import RequestRow

    row = RequestRow(ts=0.0, model="claude-sonnet-4-5", client="claude-cli/2.0", session_id="s-1")
    setattr(row, field, f"tool {said} end")
    RequestLog(None, Metrics(), EventBus()).record(row)
    value = getattr(row, field)
    assert "[redacted]" in value and value.startswith("tool ") and said[-6:] not in value
    assert {f: getattr(row, f) for f in ("model", "client", "session_id") if f != field} == {
        f: v for f, v in (("model", "claude-sonnet-4-5"), ("client", "claude-cli/2.0"), ("session_id", "s-1")) if f != field}


# --- what the process shows of a row, a batch at a time ------------------------------------


def _shown() -> tuple[Any, list[logging.LogRecord], Any]:
    from nonstop.server.events import EventBus
    from nonstop.server.metrics import Metrics
    from nonstop.server.request_log import RequestLog

    records: list[logging.LogRecord] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    return RequestLog(None, Metrics(), EventBus()), records, Grab()


@contextlib.contextmanager
def _console(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("nonstop")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


async def test_rows_recorded_together_are_shown_in_one_console_write_a_line_each() -> None:
    """The console gets one record for the rows of the last SHOW_EVERY seconds, a line per
    request, and the console's format gives every line its time and level."""
    from nonstop.server.request_log import SHOW_EVERY
    from nonstop.server.run import _Formatter
    from nonstop.store.db import RequestRow

    rl, records, grab = _shown()
    with _console(grab):
        for i in range(3):
            rl.record(RequestRow(ts=0.0, request_id=f"req_{i}", path="/v1/messages", backend="cloud", outcome="ok", status=200))
        assert records == [], "shown before its batch is due"
        await asyncio.sleep(SHOW_EVERY * 3)
    [record] = records
    text = _Formatter("%(asctime)s nonstop %(levelname)s %(message)s", "%H:%M:%S").format(record)
    lines = text.split("\n")
    assert [ln.split()[3] for ln in lines] == ["req_0", "req_1", "req_2"]
    assert all(ln.split()[1:3] == ["nonstop", "INFO"] for ln in lines), lines
    assert all("backend=cloud outcome=ok status=200" in ln for ln in lines), lines


async def test_metrics_and_the_dashboard_count_a_row_as_soon_as_they_are_read() -> None:
    """Reading the feed or the metrics shows every row recorded so far, not only those of
    batches already shown."""
    from nonstop.store.db import RequestRow

    rl, _, _ = _shown()
    rl.record(RequestRow(ts=0.0, request_id="now", backend="cloud", outcome="ok", status=200))
    assert [r["request_id"] for r in rl.recent] == ["now"]
    assert b'nonstop_requests_total{backend="cloud",outcome="ok"} 1.0' in rl.metrics.render()
    rl.record(RequestRow(ts=0.0, request_id="next", backend="cloud", outcome="ok", status=200))
    assert [r["request_id"] for r in rl.recent] == ["now", "next"]


async def test_the_metrics_endpoint_counts_the_request_just_answered(tmp_path: Path, serve) -> None:
    """/metrics read right after an answer counts it."""
    url = await serve(_local_server(5))
    async with aiohttp.ClientSession() as session:
        with gateway_with_local(tmp_path, url, session) as app:
            status, _, _ = await exchange(app, "POST", "/v1/messages", body=MESSAGE)
            assert status == 200
            _, _, body = await exchange(app, "GET", "/metrics")
    assert b'nonstop_requests_total{backend="llama",outcome="ok"} 1.0' in body


async def test_a_stop_shows_the_rows_still_waiting(tmp_path: Path) -> None:
    """The last requests' console lines are written when the gateway stops, not lost with
    their batch's timer."""
    from nonstop.store.db import RequestRow

    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}))
    _, records, grab = _shown()
    with _console(grab):
        app.rt.request_log.record(RequestRow(ts=0.0, request_id="last", backend="cloud", outcome="ok", status=200))
        await app.rt.stop()
    assert [r.getMessage().split()[0] for r in records] == ["last"]


async def test_a_full_batch_is_shown_once_a_reply_is_out_without_waiting_for_the_timer() -> None:
    """SHOW_ROWS rows waiting are shown when a reply has gone out (its client waits for
    nothing then), not when a timer fires in the middle of another request; fewer wait for
    the timer."""
    from nonstop.server.request_log import SHOW_ROWS
    from nonstop.store.db import RequestRow

    rl, records, grab = _shown()
    with _console(grab):
        for i in range(SHOW_ROWS - 1):
            rl.record(RequestRow(ts=0.0, request_id=f"r{i}", backend="cloud", outcome="ok", status=200))
            rl.after_reply()
        assert records == []
        rl.record(RequestRow(ts=0.0, request_id="last", backend="cloud", outcome="ok", status=200))
        rl.after_reply()
    [record] = records
    assert len(record.getMessage().split("\n")) == SHOW_ROWS
    assert rl._timer is None, "the timer of a batch already shown is left armed"


def test_rows_recorded_in_a_later_event_loop_are_still_shown_on_time() -> None:
    """A batch's timer belongs to the loop that armed it. Rows recorded in another loop
    after that one ended get a timer of their own, not one that will never fire."""
    from nonstop.server.request_log import SHOW_EVERY
    from nonstop.store.db import RequestRow

    rl, records, grab = _shown()

    async def one(rid: str, wait: float) -> None:
        rl.record(RequestRow(ts=0.0, request_id=rid, backend="cloud", outcome="ok", status=200))
        await asyncio.sleep(wait)

    with _console(grab):
        asyncio.run(one("first", 0))  # its loop ends before its batch's timer is due
        asyncio.run(one("second", SHOW_EVERY * 3))
    assert [ln.split()[0] for r in records for ln in r.getMessage().split("\n")] == ["first", "second"]
