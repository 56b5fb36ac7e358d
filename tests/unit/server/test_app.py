"""App.last_guard and the body's deadline in process: a handler that raises at each stage
of the exchange, and a body that trickles, each end well-formed in the client's protocol
with the request id that was logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from nonstop.config import parse_config
from nonstop.server.app import App
from nonstop.server.asgi import Message, Receive, Scope, Send, read_body

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]
JSON = [(b"content-type", b"application/json")]
OPENING = b'event: message_start\ndata: {"type": "message_start"}\n\n'


class Boom(Exception):
    pass


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                             "body_timeout": 0.3, "body_min_rate": 1000}))


def scope_for(path: str, body: bytes = b"{}", method: str = "POST", chunked: bool = False) -> Scope:
    headers = [(b"host", b"127.0.0.1:8787"), (b"content-type", b"application/json")]
    headers.append((b"transfer-encoding", b"chunked") if chunked else (b"content-length", str(len(body)).encode()))
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": headers}


class Client:
    """One exchange's two channels: what the app receives, and what it sent."""

    def __init__(self, parts: list[bytes] | None = None, every: float = 0.0, then_wait: bool = False):
        self.parts = list(parts if parts is not None else [b"{}"])
        self.every = every
        self.then_wait = then_wait  # after the parts, the body never ends
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if not self.parts:
            await asyncio.sleep(3600 if self.then_wait else 0)
            return {"type": "http.disconnect"}
        await asyncio.sleep(self.every)
        part = self.parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(self.parts) or self.then_wait}

    async def send(self, msg: Message) -> None:
        self.sent.append(msg)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(next(m["headers"] for m in self.sent if m["type"] == "http.response.start"))

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    @property
    def ended(self) -> bool:
        bodies = [m for m in self.sent if m["type"] == "http.response.body"]
        return bool(bodies) and not bodies[-1].get("more_body", False) and \
            all(m.get("more_body", False) for m in bodies[:-1])


async def run(app: App, scope: Scope, handler: Handler | None = None, client: Client | None = None) -> Client:
    if handler is not None:
        app.routes[(scope["method"], scope["path"])] = handler
    client = client or Client()
    await app(scope, client.receive, client.send)  # never raises
    return client


def logged_ids(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split()[0] for r in caplog.records if r.name == "nonstop" and r.levelno >= logging.WARNING]


# --- handlers that fail at each stage ---------------------------------------------------------------


async def before_head(scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(scope, receive, 1 << 20)
    raise Boom("before the head")


def after_head(headers: list[tuple[bytes, bytes]]) -> Handler:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(scope, receive, 1 << 20)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise Boom("after the head")
    return handler


def mid_body(headers: list[tuple[bytes, bytes]], first: bytes) -> Handler:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(scope, receive, 1 << 20)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        raise Boom("mid-stream")
    return handler


async def after_the_end(scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(scope, receive, 1 << 20)
    await send({"type": "http.response.start", "status": 200, "headers": JSON})
    await send({"type": "http.response.body", "body": b'{"ok": true}', "more_body": False})
    raise Boom("after the response")


# --- before the head: a whole error response ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/files"])
async def test_before_the_head_anthropic_clients_get_an_error_with_the_logged_request_id(app, caplog, path):
    caplog.set_level(logging.INFO, "nonstop")
    c = await run(app, scope_for(path), before_head)
    assert c.status == 500 and c.ended
    doc = orjson.loads(c.body)
    assert doc["type"] == "error" and doc["error"]["type"] == "api_error"
    assert "Boom" in doc["error"]["message"]
    assert logged_ids(caplog) == [doc["request_id"]]
    assert doc["request_id"] in doc["error"]["message"]


async def test_before_the_head_openai_clients_get_an_openai_error(app, caplog):
    caplog.set_level(logging.INFO, "nonstop")
    c = await run(app, scope_for("/v1/chat/completions"), before_head)
    assert c.status == 500 and c.ended
    err = orjson.loads(c.body)["error"]
    assert set(err) >= {"message", "type", "code"} and "Boom" in err["message"]
    [rid] = logged_ids(caplog)
    assert rid in err["message"]


async def test_the_traceback_is_logged_by_nonstop_with_the_request_id(app, caplog):
    caplog.set_level(logging.INFO)
    await run(app, scope_for("/v1/messages"), before_head)
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.name == "nonstop" and record.exc_info is not None and record.exc_info[0] is Boom
    assert record.getMessage().startswith("req_nonstop_")


# --- after the head: the stream ends with an error event ------------------------------------------------


@pytest.mark.parametrize("handler", [after_head(SSE), mid_body(SSE, OPENING)], ids=["after-head", "mid-stream"])
async def test_an_anthropic_stream_ends_with_an_error_event(app, caplog, handler):
    caplog.set_level(logging.INFO, "nonstop")
    c = await run(app, scope_for("/v1/messages"), handler)
    assert c.status == 200 and c.ended
    events = [e for e in c.body.split(b"\n\n") if e]
    assert events[-1].startswith(b"event: error\ndata: ")
    err = orjson.loads(events[-1].split(b"data: ", 1)[1])
    assert err["type"] == "error" and err["error"]["type"] == "api_error"
    assert logged_ids(caplog)[0] in err["error"]["message"]
    assert c.body.endswith(b"\n\n")


@pytest.mark.parametrize("handler", [after_head(SSE), mid_body(SSE, b'data: {"choices": []}\n\n')],
                         ids=["after-head", "mid-stream"])
async def test_an_openai_stream_ends_with_an_error_chunk_and_done(app, caplog, handler):
    caplog.set_level(logging.INFO, "nonstop")
    c = await run(app, scope_for("/v1/chat/completions"), handler)
    assert c.status == 200 and c.ended
    chunks = [e for e in c.body.split(b"\n\n") if e]
    assert chunks[-1] == b"data: [DONE]"
    err = orjson.loads(chunks[-2].removeprefix(b"data: "))["error"]
    assert logged_ids(caplog)[0] in err["message"]


async def test_a_json_body_that_had_begun_is_ended_not_replaced(app):
    c = await run(app, scope_for("/v1/messages"), mid_body(JSON, b'{"id": "msg_1", '))
    assert c.status == 200 and c.ended
    assert c.body == b'{"id": "msg_1", '  # no error text glued onto the JSON: the client sees it cut


async def test_after_the_response_ended_nothing_more_is_sent(app, caplog):
    caplog.set_level(logging.INFO, "nonstop")
    c = await run(app, scope_for("/v1/messages"), after_the_end)
    assert c.status == 200 and c.body == b'{"ok": true}' and c.ended
    assert len(logged_ids(caplog)) == 1


async def test_a_request_a_door_began_is_logged_once_even_when_no_relay_recorded_it(app):
    async def fails_while_planning(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(scope, receive, 1 << 20)
        app.anthropic.context(scope, b"{}", {"model": "m", "stream": True}, "/v1/messages")
        raise Boom("while planning")

    c = await run(app, scope_for("/v1/messages"), fails_while_planning)
    [row] = app.rt.request_log.recent
    assert row["request_id"] == orjson.loads(c.body)["request_id"]
    assert (row["status"], row["outcome"], row["path"]) == (500, "error", "/v1/messages")
    assert "Boom" in row["error"]


async def test_a_row_the_relay_recorded_is_not_logged_twice(app):
    await run(app, scope_for("/v1/messages"), after_the_end)  # no door row at all: nothing to record
    assert not app.rt.request_log.recent


async def test_a_send_that_fails_inside_the_guard_does_not_escape(app):
    class Broken(Client):
        async def send(self, msg: Message) -> None:
            raise ConnectionResetError("the client is gone")

    await run(app, scope_for("/v1/messages"), before_head, Broken())


async def test_the_app_keeps_serving_after_a_guarded_failure(app):
    await run(app, scope_for("/v1/messages"), before_head)
    c = await run(app, scope_for("/health", b"", method="GET"))
    assert c.status == 200 and orjson.loads(c.body)["status"] == "ok"


# --- the body's deadline -------------------------------------------------------------------------------


async def answered(scope: Scope, receive: Receive, send: Send) -> None:
    body = await read_body(scope, receive, 1 << 20)
    await send({"type": "http.response.start", "status": 200, "headers": JSON})
    await send({"type": "http.response.body", "body": orjson.dumps({"got": len(body)})})


@pytest.mark.parametrize("path,openai", [("/v1/messages", False), ("/v1/chat/completions", True), ("/v1/files", False)])
async def test_a_trickling_body_gets_a_408_in_the_clients_protocol_and_the_connection_is_closed(app, caplog, path, openai):
    caplog.set_level(logging.INFO, "nonstop")
    trickle = Client([b"{"] * 100, every=0.1)  # 10 bytes a second: under body_min_rate
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    c = await run(app, scope_for(path, b"{" * 100), answered, trickle)
    took = loop.time() - t0
    assert c.status == 408 and c.ended
    assert c.headers[b"connection"] == b"close"
    doc = orjson.loads(c.body)
    message = doc["error"]["message"]
    assert "body_timeout" in message and "of 100 bytes" in message
    if not openai:
        assert doc["error"]["type"] == "timeout_error" and doc["request_id"] == logged_ids(caplog)[0]
    assert 0.3 <= took < 0.3 + 0.1 * 3, took  # the grace, plus a second per 1000 bytes of the few received


async def test_a_body_that_never_ends_is_cut_too(app):
    c = await run(app, scope_for("/v1/messages", chunked=True), answered, Client([b"{"], then_wait=True))
    assert c.status == 408 and c.headers[b"connection"] == b"close"
    assert "of " not in orjson.loads(c.body)["error"]["message"].split("bytes")[0]  # no size was declared


async def test_a_body_that_keeps_pace_is_read_whole_however_long_it_takes(app):
    # 100 bytes every 50 ms is 2000 bytes a second, over body_min_rate (1000): 0.6 s in
    # all, twice body_timeout, and never cut.
    c = await run(app, scope_for("/v1/messages", b"x" * 1200), answered, Client([b"x" * 100] * 12, every=0.05))
    assert c.status == 200 and orjson.loads(c.body) == {"got": 1200}
    assert b"connection" not in c.headers


async def test_a_response_before_the_body_is_read_closes_the_connection(app):
    async def early(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 401, "headers": JSON})
        await send({"type": "http.response.body", "body": b"{}"})

    c = await run(app, scope_for("/v1/messages", b"{}"), early)
    assert c.headers[b"connection"] == b"close"
    c = await run(app, scope_for("/health", b"", method="GET"))
    assert b"connection" not in c.headers  # no body: the connection stays open


def test_the_body_settings_are_checked():
    from nonstop.config import ConfigError

    cfg = parse_config({})
    assert (cfg.body_timeout, cfg.body_min_rate) == (10.0, 16384)
    for bad, key in (({"body_timeout": 0}, "body_timeout"), ({"body_timeout": -1}, "body_timeout"),
                     ({"body_min_rate": 0}, "body_min_rate"), ({"body_min_rate": 1.5}, "body_min_rate")):
        with pytest.raises(ConfigError) as err:
            parse_config(bad)
        assert str(err.value).startswith(key + ":"), err.value


async def test_a_host_name_once_served_does_not_open_the_door_to_others(app):
    """Without a token only loopback names are served. The names already found allowed
    are remembered as sent; a foreign name is refused before and after them, however many
    allowed forms (ports, case) came first."""
    from tests.support.inprocess import exchange

    async def status_for(host: bytes) -> int:
        status, _, _ = await exchange(app, "GET", "/health", headers=[(b"host", host)], exact=True)
        return status

    assert await status_for(b"evil.example:8787") == 403
    assert await status_for(b"127.0.0.1:8787") == 200
    for port in range(100):
        assert await status_for(b"LocalHost:%d" % port) == 200
    assert await status_for(b"[::1]:8787") == 200
    assert await status_for(b"evil.example:8787") == 403
    assert await status_for(b"127.0.0.1.evil.example") == 403
    assert len(app._hosts_seen) <= 64


# --- the head, read once and kept for the client's next request (backends/head.py) ---------------


async def test_only_a_request_let_in_leaves_its_head_kept(tmp_path: Path) -> None:
    """A refused request (no token, a wrong one, a foreign Host, a head over the limit)
    leaves nothing behind; one let in keeps its head for the next request."""
    from nonstop.backends import head as H
    from tests.support.inprocess import exchange

    token = "the-token-0123456789"
    guarded = App(parse_config({"state_dir": str(tmp_path / "a"), "log": {"enabled": False}, "token": token}))
    assert (await exchange(guarded, "GET", "/health"))[0] == 401
    assert (await exchange(guarded, "GET", "/health", headers=[(b"x-nonstop-token", b"wrong")]))[0] == 401
    assert not H._HEADS and H._last[0] is None
    assert (await exchange(guarded, "GET", "/health", headers=[(b"x-nonstop-token", token.encode())]))[0] == 200
    [kept] = H._HEADS.values()
    assert kept.token == token.encode() and H._last[0] is kept
    # The same client's head found kept is still checked: a wrong token is refused.
    assert (await exchange(guarded, "GET", "/health", headers=[(b"x-nonstop-token", b"wrong")]))[0] == 401

    H.forget_heads()
    local = App(parse_config({"state_dir": str(tmp_path / "b"), "log": {"enabled": False}}))
    assert (await exchange(local, "GET", "/health", headers=[(b"host", b"evil.example")], exact=True))[0] == 403
    big = [(b"host", b"127.0.0.1"), (b"x-big", b"x" * (64 * 1024))]
    assert (await exchange(local, "GET", "/health", headers=big, exact=True))[0] == 431
    # A target that is not a path (`OPTIONS *`) is no request for the cloud either.
    status, _, body = await exchange(local, "OPTIONS", "*")
    assert status == 400 and "must be a path" in orjson.loads(body)["error"]["message"]
    # The client's fault, said in its format as such (not a server error).
    status, _, body = await exchange(local, "POST", "/v1/messages", headers=big, exact=True)
    assert status == 431 and orjson.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = await exchange(local, "POST", "/v1/chat/completions", headers=big, exact=True)
    assert status == 431 and orjson.loads(body)["error"]["type"] == "invalid_request_error"
    assert not H._HEADS and H._last[0] is None
    assert (await exchange(local, "GET", "/health"))[0] == 200
    assert len(H._HEADS) == 1


async def test_the_first_content_type_says_whether_a_failed_reply_was_a_stream(app):
    """The last guard ends a reply in its own form: the first content-type decides."""
    json_then_sse = [*JSON, *SSE]
    client = await run(app, scope_for("/v1/messages"), mid_body(json_then_sse, b'{"id": 1'))
    assert client.ended and b"event: error" not in client.body
    sse_then_json = [*SSE, *JSON]
    client = await run(app, scope_for("/v1/messages"), mid_body(sse_then_json, OPENING))
    assert client.ended and b"event: error" in client.body


async def test_a_compressed_body_is_refused_where_nonstop_reads_it_and_passed_on_where_it_does_not(recording_app) -> None:
    import gzip

    from nonstop.backends.head import forget_heads
    from tests.support.inprocess import exchange

    app, sent = recording_app
    forget_heads()
    doc = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    packed = gzip.compress(orjson.dumps(doc))
    coded = [(b"content-encoding", b"gzip")]
    for path, fmt in (("/v1/messages", "anthropic"), ("/v1/messages/count_tokens", "anthropic"),
                      ("/v1/chat/completions", "openai")):
        status, _, body = await exchange(app, "POST", path, headers=coded, body=packed)
        err = orjson.loads(body)["error"]
        assert status == 415 and err["type"] == "invalid_request_error", (path, body)
        assert "content-encoding 'gzip'" in err["message"] and "uncompressed" in err["message"]
        assert ("param" in err) == (fmt == "openai")
    assert sent == []
    # `identity` is no coding at all.
    status, _, _ = await exchange(app, "POST", "/v1/messages", headers=[(b"content-encoding", b"Identity")],
                                  body=orjson.dumps(doc))
    assert status == 200 and len(sent) == 1
    # Only `identity`, however said, is none.
    for value in (b"identity, identity", b" , identity,", b""):
        status, _, _ = await exchange(app, "POST", "/v1/messages", headers=[(b"content-encoding", value)],
                                      body=orjson.dumps(doc))
        assert status == 200, value
    assert len(sent) == 4
    # A coding named second, in a list or in a second header, is a coding all the same.
    for headers in ([(b"content-encoding", b"identity, gzip")],
                    [(b"content-encoding", b"identity"), (b"content-encoding", b"br")]):
        status, _, body = await exchange(app, "POST", "/v1/messages", headers=headers, body=packed)
        assert status == 415 and b"content-encoding" in body, (headers, body)
    assert len(sent) == 4
    # A path nonstop passes through unread gets the body as it came, coding and all.
    status, _, _ = await exchange(app, "POST", "/v1/files", headers=coded, body=packed)
    assert status == 200 and sent[-1] == packed
