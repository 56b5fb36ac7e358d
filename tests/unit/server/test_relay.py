"""The relay's own guard, in process: a reply whose body fails before its first bytes,
mid-stream, or after the stream has already ended, reaches the client well-formed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from nonstop.backends.base import Exchange, Reply, Usage, single
from nonstop.config import parse_config
from nonstop.server.asgi import Connection, Message
from nonstop.server.events import EventBus
from nonstop.server.metrics import Metrics
from nonstop.server.pipeline import Outcome, RequestContext
from nonstop.server.relay import Relay
from nonstop.server.request_log import RequestLog
from nonstop.server.writers import AnthropicWriter, OpenAIWriter, Writer
from nonstop.store.db import RequestRow
from tests.support import wirecheck

SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]


def ev(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {orjson.dumps(data).decode()}\n\n".encode()


START = ev("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
    "usage": {"input_tokens": 5, "output_tokens": 1}}})
BLOCK = ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
DELTA = ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})
END = (ev("content_block_stop", {"type": "content_block_stop", "index": 0})
       + ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}})
       + ev("message_stop", {"type": "message_stop"}))


class Fault(Exception):
    pass


async def failing(*chunks: bytes) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c
    raise Fault("the reply broke")


@pytest.fixture
def relay(tmp_path: Path) -> Relay:
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}})
    return Relay(cfg, RequestLog(None, Metrics(), EventBus()))


async def stays() -> Message:
    """The receive of a client that stays to the end."""
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


async def pump(relay: Relay, body: AsyncIterator[bytes], writer: Writer, stream: bool = True) -> tuple[int, bytes, list[Message]]:
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, stream)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter())
    reply = Reply(200, list(SSE), body, "cloud", stream)
    await relay.pump(ctx, reply, writer, [], stays, send, time.perf_counter())
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert sent[-1]["type"] == "http.response.body" and not sent[-1].get("more_body", False), "the response did not end"
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), sent


async def test_a_reply_that_fails_before_its_first_bytes_is_a_whole_error(relay):
    status, body, _ = await pump(relay, failing(b"", b""), AnthropicWriter())
    assert status == 500  # the empty pieces did not send the head ahead of the bytes
    doc = orjson.loads(body)
    assert doc["error"]["type"] == "api_error" and "req_nonstop_test" in doc["error"]["message"]


async def test_the_head_goes_out_with_the_first_bytes(relay):
    _, _, sent = await pump(relay, failing(b"", START + BLOCK + DELTA), AnthropicWriter())
    assert [m["type"] for m in sent[:2]] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == START + BLOCK + DELTA


async def test_a_stream_that_fails_mid_way_ends_with_an_error_event(relay):
    status, body, _ = await pump(relay, failing(START + BLOCK, DELTA), AnthropicWriter())
    v = wirecheck.check_anthropic(status, "text/event-stream", body, stream=True)
    assert v.outcome == "error" and "req_nonstop_test" in v.problem, v.problem


async def test_a_stream_that_had_ended_gets_nothing_more(relay):
    status, body, _ = await pump(relay, failing(START + BLOCK + DELTA + END), AnthropicWriter())
    assert body == START + BLOCK + DELTA + END
    assert wirecheck.check_anthropic(status, "text/event-stream", body, stream=True).outcome == "ok"


class FailsAfterTheEnd(OpenAIWriter):
    async def body(self, reply: Reply) -> AsyncIterator[bytes]:
        async for chunk in super().body(reply):
            yield chunk
        raise Fault("after [DONE]")


async def test_an_openai_stream_that_had_ended_gets_nothing_more(relay):
    status, body, _ = await pump(relay, single(START + BLOCK + DELTA + END), FailsAfterTheEnd("m", False))
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"[DONE]") == 1
    assert wirecheck.check_openai(status, "text/event-stream", body, stream=True).outcome == "ok"


@pytest.mark.parametrize("last,ended", [
    (START + BLOCK, False),
    (END, True),
    (END.replace(b"\n", b"\r\n"), True),
    (ev("error", {"type": "error", "error": {"type": "api_error", "message": "x"}}), True),
    (b"event: ping\ndata: {}\n\n", False),
    (b"", False),
])
def test_when_an_anthropic_stream_has_ended(last, ended):
    assert AnthropicWriter().ended(last) is ended


def test_when_an_openai_stream_has_ended():
    w = OpenAIWriter("m", False)
    assert w.ended(b'data: {"choices": []}\n\ndata: [DONE]\n\n')
    assert not w.ended(b'data: {"choices": []}\n\n') and not w.ended(b"")


def last_flagged(usage: Usage, *chunks: bytes, then: Exception | None = None) -> AsyncIterator[bytes]:
    """A body that says its last chunk is last (Usage.final), as the cloud's does; `then`:
    raised after it (a fault past the end)."""
    async def body() -> AsyncIterator[bytes]:
        for i, c in enumerate(chunks):
            usage.final = i == len(chunks) - 1
            yield c
        if then is not None:
            raise then
    return body()


async def pump_reply(relay: Relay, make: Callable[[Usage], AsyncIterator[bytes]], writer: Writer) -> list[Message]:
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, True)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter())
    usage = Usage()
    await relay.pump(ctx, Reply(200, list(SSE), make(usage), "cloud", True, usage), writer, [], stays, send, time.perf_counter())
    return sent


async def test_the_last_chunk_goes_out_with_the_end_of_the_response(relay):
    sent = await pump_reply(relay, lambda u: last_flagged(u, START + BLOCK, DELTA + END), AnthropicWriter())
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert [(m["body"], m["more_body"]) for m in bodies] == [(START + BLOCK, True), (DELTA + END, False)]


async def test_a_whole_stream_in_one_chunk_is_one_message_after_its_head(relay):
    sent = await pump_reply(relay, lambda u: last_flagged(u, START + BLOCK + DELTA + END), AnthropicWriter())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == START + BLOCK + DELTA + END and not sent[1]["more_body"]


async def test_an_openai_stream_ends_with_done_after_a_last_chunk(relay):
    """The writer's own end ([DONE]) follows the body's last chunk: that chunk goes out
    first, and [DONE] with the end."""
    sent = await pump_reply(relay, lambda u: last_flagged(u, START + BLOCK, DELTA + END), OpenAIWriter("m", False))
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies[-1]["body"].endswith(b"data: [DONE]\n\n") and not bodies[-1]["more_body"]
    assert all(m["more_body"] for m in bodies[:-1])
    body = b"".join(m["body"] for m in bodies)
    assert wirecheck.check_openai(200, "text/event-stream", body, stream=True).outcome == "ok"


async def test_a_fault_after_the_last_chunk_still_sends_it_and_nothing_more(relay):
    sent = await pump_reply(relay, lambda u: last_flagged(u, START + BLOCK, DELTA + END, then=Fault("late")), AnthropicWriter())
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert body == START + BLOCK + DELTA + END and not sent[-1]["more_body"]
    assert wirecheck.check_anthropic(200, "text/event-stream", body, stream=True).outcome == "ok"


async def test_a_fault_after_a_held_chunk_that_did_not_end_the_stream_ends_it_with_an_error(relay):
    sent = await pump_reply(relay, lambda u: last_flagged(u, START + BLOCK, DELTA, then=Fault("late")), AnthropicWriter())
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert body.startswith(START + BLOCK + DELTA) and not sent[-1]["more_body"]
    v = wirecheck.check_anthropic(200, "text/event-stream", body, stream=True)
    assert v.outcome == "error" and "req_nonstop_test" in v.problem, v.problem


class Journal(RequestLog):
    """Writes "row" into the same journal the client's messages go to."""

    def __init__(self, journal: list[object]):
        super().__init__(None, Metrics(), EventBus())
        self.journal = journal

    def record(self, row: RequestRow) -> None:
        self.journal.append(("row", row.outcome))


@pytest.mark.parametrize("answer", ["stream", "error", "json"])
async def test_the_row_is_recorded_as_the_reply_ends_before_the_loop_runs_anything_else(tmp_path, answer):
    # A client that reads the request log as soon as its answer is complete finds the row:
    # nothing the event loop runs after the reply's last write (that client's next request
    # among it) comes before the row. And the answer does not wait for its row.
    journal: list[object] = []
    loop = asyncio.get_running_loop()

    async def send(msg: Message) -> None:
        journal.append(msg)
        if msg["type"] == "http.response.body" and not msg.get("more_body", False):
            loop.call_soon(journal.append, "the loop's next turn")

    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}})
    relay = Relay(cfg, Journal(journal))
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, answer == "stream")
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter())
    if answer == "stream":
        outcome = Outcome(reply=Reply(200, list(SSE), single(START + BLOCK + DELTA + END), "cloud", True))
    elif answer == "json":
        outcome = Outcome(reply=Reply(200, [(b"content-type", b"application/json")], single(b'{"type":"message"}'),
                                      "cloud", False))
    else:
        outcome = Outcome(status=529, etype="overloaded_error", message="no backend could serve")
    await relay.commit(ctx, outcome, stays, send, AnthropicWriter())
    await asyncio.sleep(0)
    rows = [i for i, m in enumerate(journal) if isinstance(m, tuple)]
    assert len(rows) == 1 and journal[rows[0]] == ("row", "error" if answer == "error" else "ok")
    end = rows[0] - 1
    last = journal[end]
    assert isinstance(last, dict) and last["type"] == "http.response.body" and not last.get("more_body", False)
    assert journal[rows[0] + 1:] == ["the loop's next turn"]


@pytest.mark.parametrize("fault", [OSError("the socket broke"), asyncio.CancelledError()])
@pytest.mark.parametrize("answer", ["stream", "json"])
async def test_the_row_is_recorded_when_the_last_write_fails_or_is_cancelled(tmp_path, answer, fault):
    journal: list[object] = []

    async def send(msg: Message) -> None:
        if msg["type"] == "http.response.body" and not msg.get("more_body", False):
            raise fault
        journal.append(msg)

    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}})
    relay = Relay(cfg, Journal(journal))
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, answer == "stream")
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter())
    if answer == "stream":
        reply = Reply(200, list(SSE), single(START + BLOCK + DELTA + END), "cloud", True)
    else:
        reply = Reply(200, [(b"content-type", b"application/json")], single(b'{"type":"message"}'), "cloud", False)
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await relay.commit(ctx, Outcome(reply=reply), stays, send, AnthropicWriter())
    assert [m for m in journal if isinstance(m, tuple)] != []  # its row, whatever its outcome says


class Rows(RequestLog):
    def __init__(self) -> None:
        super().__init__(None, Metrics(), EventBus())
        self.rows: list[RequestRow] = []

    def record(self, row: RequestRow) -> None:
        self.rows.append(row)


@pytest.mark.parametrize("handed", [True, False])
async def test_a_cloud_stream_handed_to_a_local_model_is_logged_with_its_failover_reason(tmp_path, handed):
    # The head names the cloud (its stream began), the body ends on a local backend (the
    # hand-over of backends/cloud.py): the row records the failover like any other.
    async def send(msg: Message) -> None:
        pass

    log = Rows()
    relay = Relay(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}), log)
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, True)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter())
    reply = Reply(200, list(SSE), single(b""), "cloud", True)

    async def body() -> AsyncIterator[bytes]:
        yield START + BLOCK
        if handed:
            reply.backend = "llama"
        yield DELTA + END

    reply.body = body()
    # (A hand-over that found no local model leaves the reply the cloud's, its error
    # relayed: the outcome's reason is set all the same, and not logged as a failover.)
    outcome = Outcome(reply=reply, reason="overloaded: overloaded (mid-stream)")
    await relay.commit(ctx, outcome, stays, send, AnthropicWriter())
    row = log.rows[-1]
    assert row.backend == ("llama" if handed else "cloud") and row.outcome == "ok"
    assert row.reason == ("overloaded: overloaded (mid-stream)" if handed else "")


class Broken(RequestLog):
    def __init__(self) -> None:
        super().__init__(None, Metrics(), EventBus())

    def record(self, row: RequestRow) -> None:
        raise Fault("the log is broken")


async def test_a_reply_ends_even_when_its_row_cannot_be_recorded(tmp_path):
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    relay = Relay(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}), Broken())
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, True)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter())
    outcome = Outcome(reply=Reply(200, list(SSE), single(START + BLOCK + DELTA + END), "cloud", True))
    with pytest.raises(Fault):
        await relay.commit(ctx, outcome, stays, send, AnthropicWriter())
    assert sent[-1]["type"] == "http.response.body" and not sent[-1].get("more_body", False)


# --- a client that leaves mid-stream ---------------------------------------------------------


async def endless(closed: list[bool]) -> AsyncIterator[bytes]:
    """An upstream stream that never ends on its own; `closed` learns that it was closed."""
    try:
        yield START + BLOCK
        while True:
            await asyncio.sleep(0.01)
            yield DELTA
    finally:
        closed.append(True)


@pytest.mark.parametrize("told_by", ["connection", "connection_already_lost", "receive"])
async def test_a_client_that_leaves_mid_stream_ends_the_relay_and_the_upstream(relay, told_by):
    # nonstop's own server says so through the connection (no task waiting on receive());
    # under another server, a task waits on receive() for the disconnect.
    sent: list[Message] = []
    left = asyncio.Event()
    connection = Connection()

    async def send(msg: Message) -> None:
        sent.append(msg)
        if len(sent) == 3:
            if told_by == "connection":
                connection.connection_lost()
            left.set()

    async def receive() -> Message:
        if told_by == "receive":
            await left.wait()
            return {"type": "http.disconnect"}
        return await stays()

    if told_by == "connection_already_lost":
        connection.connection_lost()
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, True)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter(),
                         None, None if told_by == "receive" else connection)
    closed: list[object] = []
    reply = Reply(200, list(SSE), endless(closed), "cloud", True, close=lambda: closed.append("upstream closed"))
    gone = await asyncio.wait_for(relay.pump(ctx, reply, AnthropicWriter(), [], receive, send, time.perf_counter()), 5)
    assert gone and "upstream closed" in closed
    assert closed == (["upstream closed"] if told_by == "connection_already_lost" else [True, "upstream closed"])
    assert connection.on_lost is None  # the relay let go of the connection
    assert len(sent) <= 4  # no more than reached the send before the pump's next wait
    assert asyncio.current_task().cancelling() == 0  # the relay's own cancel was taken back


async def test_a_stream_that_ends_lets_go_of_the_connection(relay):
    connection = Connection()
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, True)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter(),
                         None, connection)
    reply = Reply(200, list(SSE), single(START + BLOCK + DELTA + END), "cloud", True)

    async def send(msg: Message) -> None:
        if msg.get("more_body"):
            assert connection.on_lost is not None  # watched while the reply goes out

    assert await relay.pump(ctx, reply, AnthropicWriter(), [], stays, send, time.perf_counter()) is False
    assert connection.on_lost is None and reply.headers == []  # nor does it keep the sent head
    connection.connection_lost()  # a later loss of the kept-alive connection touches nothing


@pytest.mark.parametrize("body,message", [
    (b'{"error": "bad thing"}', "bad thing"),
    (b'{"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}', "no"),
    (b'{"error": {"message": {"nested": 1}}}', '{"error": {"message": {"nested": 1}}}'),
    (b'{"error": 5}', '{"error": 5}'),
    (b"<html>oops</html>", "<html>oops</html>"),
])
async def test_an_upstream_error_of_any_shape_reaches_an_openai_client_as_an_openai_error(relay, body, message):
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    ex = Exchange("POST", "/v1/chat/completions", b"/v1/chat/completions", b"", [], b"{}", {}, False)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter())
    reply = Reply(400, [(b"content-type", b"application/json")], single(body), "cloud", False)
    await relay.pump(ctx, reply, OpenAIWriter("m", False), [], stays, send, time.perf_counter())
    out = orjson.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert next(m["status"] for m in sent if m["type"] == "http.response.start") == 400
    assert out["error"]["message"] == message


async def test_a_client_gone_before_a_reply_that_never_waits_leaves_no_cancel_behind(relay):
    # A body that never suspends (a whole reply, or a stream the first read held whole)
    # gives a cancel no await to land on: the relay must not leave one pending.
    connection = Connection()
    connection.connection_lost()
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, True)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter(),
                         None, connection)
    reply = Reply(200, list(SSE), single(START + BLOCK + DELTA + END), "cloud", True)
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    assert await relay.pump(ctx, reply, AnthropicWriter(), [], stays, send, time.perf_counter()) is True
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)  # would raise CancelledError if a cancel were left pending
    assert not [m for m in sent if m.get("body")]  # nothing went to a client already gone


@pytest.mark.parametrize("writer", [AnthropicWriter(), OpenAIWriter("m", False)], ids=["anthropic", "openai"])
async def test_an_error_with_a_retry_time_sends_retry_after(relay, writer):
    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, False)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter())
    await relay.commit(ctx, Outcome(status=503, etype="api_error", message="no backend", retry_after=7200), stays, send, writer)
    head = next(m for m in sent if m["type"] == "http.response.start")
    assert head["status"] == 503 and (b"retry-after", b"7200") in head["headers"]
    sent.clear()
    await relay.commit(ctx, Outcome(status=503, etype="api_error", message="no backend"), stays, send, writer)
    head = next(m for m in sent if m["type"] == "http.response.start")
    assert not any(k == b"retry-after" for k, _ in head["headers"])


async def test_an_openai_client_gets_a_comment_for_each_ping_while_the_local_model_is_quiet():
    """Chat Completions has no ping event: while a local model reads a long prompt, the
    pings of the Anthropic stream reach an OpenAI client as SSE comments, which its SDK
    skips, so neither its read timeout nor a proxy closes a connection that is only quiet."""
    PING = ev("ping", {"type": "ping"})

    async def body() -> AsyncIterator[bytes]:
        for part in (START, PING, PING, BLOCK + DELTA, PING, END):
            yield part

    parts = [p async for p in OpenAIWriter("m", False).body(Reply(200, list(SSE), body(), "llama", True))]
    assert parts[1] == parts[2] == b": ping\n\n"  # between the role chunk and the text
    assert b": ping\n\n" in parts[4:-1]
    data = [orjson.loads(line[6:]) for p in parts for line in p.split(b"\n")
            if line.startswith(b"data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in data if c.get("choices")) == "hi"
    assert parts[-1].endswith(b"data: [DONE]\n\n")


async def test_a_relayed_reply_and_its_closes_are_freed_without_the_collector(relay):
    # A close holds its reply (a local stream's close lets go of what the reply holds), and
    # the pipeline wraps it in one more: once called, the relay drops it, so the reply, its
    # closes and what they hold are freed by their counts (serving makes no cyclic garbage,
    # which is what lets the young generation be collected rarely: server/run.py).
    import gc
    import weakref

    sent: list[Message] = []

    async def send(msg: Message) -> None:
        sent.append(msg)

    async def body() -> AsyncIterator[bytes]:
        yield START + BLOCK + DELTA + END

    closed: list[str] = []

    def local_reply() -> Reply:  # as LocalBackend._stream makes it
        reply = Reply(200, list(SSE), body(), "local", True)

        def close() -> None:
            closed.append(reply.backend)

        reply.close = close
        return reply

    def on_local(res: Reply) -> Reply:  # as Pipeline._on_local wraps its close
        close = res.close

        def wrapped() -> None:
            if close is not None:
                close()

        res.close = wrapped
        return res

    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", [], b"{}", {}, True)
    ctx = RequestContext(ex, RequestRow(ts=time.time(), request_id="req_nonstop_test"), time.perf_counter())
    reply = on_local(local_reply())
    gone = weakref.ref(reply)
    gc.collect()
    gc.disable()
    try:
        await relay.pump(ctx, reply, AnthropicWriter(), [], stays, send, time.perf_counter())
        del reply
        assert closed == ["local"]
        assert gone() is None, "the reply outlived its relay: a cycle holds it"
    finally:
        gc.enable()


def test_an_openai_client_keeps_the_retry_headers_of_an_error():
    """The OpenAI SDK reads retry-after(-ms) and x-should-retry: a 429 relayed to it keeps
    them (and the request id), and nothing else of the cloud's head."""
    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""

    cloud = [(b"content-type", b"application/json"), (b"retry-after", b"30"), (b"retry-after-ms", b"30000"),
             (b"x-should-retry", b"false"), (b"request-id", b"req_1"), (b"anthropic-ratelimit-unified-status", b"rejected")]
    w = OpenAIWriter("m", False)
    err = Reply(status=429, headers=cloud, body=nothing(), backend="cloud", stream=True)
    assert w.headers(err) == [(b"content-type", b"application/json"), (b"retry-after", b"30"),
                              (b"retry-after-ms", b"30000"), (b"x-should-retry", b"false"), (b"request-id", b"req_1")]
    ok = Reply(status=200, headers=cloud, body=nothing(), backend="cloud", stream=True)
    assert w.headers(ok) == [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
    assert w.headers(Reply(status=200, headers=cloud, body=nothing(), backend="cloud", stream=False)) == [
        (b"content-type", b"application/json")]
