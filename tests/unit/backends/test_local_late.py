"""A local stream that fails before any content goes on with the next local backend.

Its head late: the client's message began before the server answered. Its head in time:
the client has the server's message_start. Either way a server that then fails before
any content (its late head, or its stream: cut, an error event, an early end) hands the
message to the next local backend, and the client never notices; once content went out,
a failure ends the message with an error event."""

from __future__ import annotations

import asyncio
import gc
import weakref
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from aiohttp import web

import nonstop.backends.local as local_module
from nonstop.backends.base import Reply, TooLong
from nonstop.backends.local import LocalBackend
from nonstop.backends.registry import make_local_backend
from nonstop.config import Config, parse_config
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.server.pipeline import Pipeline
from nonstop.server.runtime import Runtime
from tests.support import wirecheck
from tests.unit.backends.test_local_replies import LLAMA, OPENAI_ANSWER, _chunk, _replies, _sse_app
from tests.unit.server.test_pipeline import Clock, FakeBackend, ctx

REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
LATE = 0.3  # the first server's head comes this long after the request; COMMIT_AFTER is shorter


def _ev(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


START = _ev("message_start", {"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant",
                                                                  "content": [], "usage": {"input_tokens": 3, "output_tokens": 0}}})
PING = _ev("ping", {"type": "ping"})
ERROR = _ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "model crashed"}})


def _text(index: int, text: str) -> bytes:
    return (_ev("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            + _ev("content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": {"type": "text_delta", "text": text}}))


ANSWER = (START + _text(0, "from next") + _ev("content_block_stop", {"type": "content_block_stop", "index": 0})
          + _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}})
          + _ev("message_stop", {"type": "message_stop"}))


def _server(body: bytes, *, delay: float = 0.0, cut: bool = False, hold: float = 0.0, then: bytes = b"") -> web.Application:
    """Its head after `delay`, then `body`; after `hold`, `then`; then the connection is
    cut (`cut`), or the body ends."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(delay)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if body:
            await resp.write(body)
        await asyncio.sleep(hold)
        if then:
            await resp.write(then)
        if cut and request.transport is not None:
            request.transport.abort()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    return app


@dataclass
class Late:
    reply: Reply
    body: bytes  # what the client got
    asked: list[object]  # what `instead` was asked with
    closed: list[str]  # the replies closed by the stream's end, in order
    first: LocalBackend


async def _late_stream(serve, monkeypatch, first_app: web.Application, *, other: bool = True,
                       next_app: web.Application | None = None, next_api: str = "anthropic",
                       commit_after: float = 0.05, request: dict | None = None, first_api: str = "anthropic") -> Late:
    """The request streamed by `first`, its head late (unless it comes within
    `commit_after`); `instead` gives `next`'s stream (or None where `other` is False).
    The reply is closed when its body has been read."""
    monkeypatch.setattr(local_module, "COMMIT_AFTER", commit_after)
    cfg = parse_config({"local": [
        {"name": "first", "url": await serve(first_app), "api": first_api, "count_tokens": "estimate"},
        {"name": "next", "url": await serve(next_app or _server(ANSWER)), "api": next_api, "count_tokens": "estimate"}]})
    asked: list[object] = []
    closed: list[str] = []
    async with aiohttp.ClientSession() as session:
        first, nxt = (make_local_backend(c, session) for c in cfg.local)
        request = request or REQUEST
        res = await first.send_request(dict(request), stream=True)
        assert isinstance(res, Reply) and res.handover

        async def instead(failure):
            asked.append(failure)
            assert first.state.inflight == 0  # its slot is back, its response closed
            if not other:
                return None
            taken = await nxt.send_request(dict(request), stream=True)
            assert isinstance(taken, Reply)
            close = taken.close
            taken.close = lambda: (closed.append("next"), close and close())
            return taken

        res.instead = instead
        first_close = res.close
        res.close = lambda: (closed.append("first"), first_close and first_close())
        body = b"".join([c async for c in res.body])
        run = Late(res, body, asked, list(closed), first)
        res.close()
        assert first.state.inflight == 0 and nxt.state.inflight == 0
    assert closed == ["first", "next"] if run.reply.backend == "next" else ["first"]
    return run


@pytest.mark.parametrize("status,text", [(503, '{"error": "the model crashed"}'), (400, LLAMA)], ids=["error", "overflow"])
async def test_a_server_that_fails_its_late_head_hands_the_message_over(serve, monkeypatch, status, text):
    run = await _late_stream(serve, monkeypatch, _replies(status, text, delay=LATE), next_api="openai",
                             next_app=_sse_app("/v1/chat/completions", OPENAI_ANSWER + b"data: [DONE]\n\n"))
    res, body = run.reply, run.body
    assert run.closed == ["first"]  # its slot went back when the next took over, not at the end
    assert wirecheck.check_anthropic_stream(body).outcome == "ok", body[-300:]
    assert body.count(b"event: message_start") == 1 and b'"text":"hi"' in body
    assert isinstance(run.asked[0], TooLong if status == 400 else Verdict)
    assert res.backend == "next" and res.usage.output_tokens == 1 and res.usage.complete
    assert res.usage.note.startswith("first failed after the stream began") and res.usage.note.endswith("handed to next")


@pytest.mark.parametrize("app", [
    _server(START, delay=LATE, cut=True),
    _server(START + PING, delay=LATE, hold=0.1, cut=True),
    _server(b"", delay=LATE, cut=True),
    _server(START + ERROR, delay=LATE),
    _server(ERROR, delay=LATE, hold=5),
    _server(START, delay=LATE),
    _server(START + b"event: content_block_start\ndata: {not json\n\n", delay=LATE),
], ids=["cut", "cut-after-a-ping", "cut-before-message-start", "error-event", "error-event-held-open", "ended-early",
        "unreadable"])
async def test_a_late_stream_that_fails_before_any_content_hands_the_message_over(serve, monkeypatch, app):
    run = await _late_stream(serve, monkeypatch, app)
    res, body, asked = run.reply, run.body, run.asked
    assert wirecheck.check_anthropic_stream(body).outcome == "ok", body[-400:]
    assert body.count(b"event: message_start") == 1 and b"from next" in body and b"event: error" not in body
    assert len(asked) == 1 and isinstance(asked[0], Verdict) and asked[0].failover
    assert asked[0].kind is FailureKind.BAD_RESPONSE and asked[0].detail
    assert res.backend == "next" and res.usage.complete and not res.usage.error
    assert res.usage.note.startswith(f"first failed after the stream began ({asked[0].detail})")
    assert res.usage.note.endswith("; handed to next")
    assert run.closed == ["first"]  # the first's slot went back when the next took over, not at the end
    assert run.first.state.failures == 1 and run.first.state.demoted  # the failed backend is still told so


async def test_the_servers_error_event_is_named_in_the_hand_over(serve, monkeypatch):
    run = await _late_stream(serve, monkeypatch, _server(START + ERROR, delay=LATE))
    assert isinstance(run.asked[0], Verdict) and "model crashed" in run.asked[0].detail
    assert "(model crashed); handed to next" in run.reply.usage.note


@pytest.mark.parametrize("app,words", [
    (_server(START + _text(0, "partial answer"), delay=LATE, hold=0.1, cut=True), b"stream failed"),
    (_server(START + _text(0, "partial answer"), delay=LATE, hold=0.1, then=ERROR), b"model crashed"),
    (_server(START + _text(0, "partial answer"), delay=LATE), b"ended the stream early"),
], ids=["cut", "error-event", "ended-early"])
async def test_a_late_stream_that_fails_after_content_went_out_ends_with_an_error(serve, monkeypatch, app, words):
    run = await _late_stream(serve, monkeypatch, app)
    res, body = run.reply, run.body
    v = wirecheck.check_anthropic_stream(body)
    assert v.outcome == "error", (v, body[-400:])
    assert run.asked == [] and res.backend == "first"
    assert body.count(b"event: message_start") == 1 and b"partial answer" in body and words in body
    assert b"from next" not in body and "handed to" not in res.usage.note
    assert res.usage.error and not res.usage.complete


@pytest.mark.parametrize("app,words", [  # the error event as it was before hand-overs of late streams
    (_server(START, delay=LATE, cut=True), b'"error":{"type":"api_error","message":"first stream failed: ClientPayloadError"}'),
    (_server(START + ERROR, delay=LATE), b'"error":{"type":"overloaded_error","message":"model crashed"}'),
    (_server(START, delay=LATE), b'"error":{"type":"api_error","message":"the local server ended the stream early"}'),
], ids=["cut", "error-event", "ended-early"])
async def test_a_late_stream_that_fails_with_no_other_backend_ends_with_an_error(serve, monkeypatch, app, words):
    run = await _late_stream(serve, monkeypatch, app, other=False)
    res, body = run.reply, run.body
    v = wirecheck.check_anthropic_stream(body)
    assert v.outcome == "error", (v, body[-400:])
    assert len(run.asked) == 1 and res.backend == "first"
    assert body.count(b"event: message_start") == 1 and words in body and body.count(b"event: error") == 1
    assert res.usage.error and not res.usage.complete and not res.usage.note
    assert run.first.state.failures == 1


class NeverAsked:
    """An `instead` that must not be asked (held by a weak reference, it shows who keeps it)."""

    async def __call__(self, failure: object) -> Reply | None:
        raise AssertionError("not asked")


def _first_only(url: str) -> Config:
    return parse_config({"local": [{"name": "first", "url": url, "api": "anthropic", "count_tokens": "estimate"}]})


async def test_a_late_stream_lets_the_request_go_once_content_began(serve, monkeypatch):
    # `instead` holds the whole request: a stream that is answering does not keep it.
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.05)
    cfg = _first_only(await serve(_server(START + _text(0, "answering"), delay=LATE, hold=1.0)))
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await backend.send_request(dict(REQUEST), stream=True)
        assert isinstance(res, Reply)
        instead = NeverAsked()
        held = weakref.ref(instead)
        res.instead = instead
        del instead
        body = res.body.__aiter__()
        got = b""
        while b"answering" not in got:
            got += await asyncio.wait_for(body.__anext__(), 5)
        gc.collect()
        assert held() is None, "the stream kept the request after its content began"
        got += b"".join([c async for c in body])
        assert res.close is not None
        res.close()
    assert b"ended the stream early" in got


async def test_a_chain_of_late_streams_that_fail_before_content_ends_on_the_backend_that_answers(tmp_path, serve, monkeypatch):
    # Through the pipeline: the first stream is cut, the next sends an error event, both
    # before any content; the third answers. One message reaches the client.
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.05)
    urls = {"f0": await serve(_server(START, delay=LATE, cut=True)), "f1": await serve(_server(START + ERROR, delay=LATE)),
            "good": await serve(_server(ANSWER))}
    config = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "local": [
        {"name": n, "url": u, "api": "anthropic", "count_tokens": "estimate"} for n, u in urls.items()]})
    rt = Runtime(config, clock=Clock())
    req = {**REQUEST, "stream": True}
    async with aiohttp.ClientSession() as session:
        backends = [make_local_backend(c, session) for c in config.local]
        rt.use_backends(backends, cloud=FakeBackend("cloud", [Verdict(FailureKind.NETWORK, True, None, "down")]))  # type: ignore[arg-type]
        c = ctx(req)
        out = await Pipeline(rt).run(c)
        assert out.reply is not None and out.reply.backend == "f0"
        body = b"".join([chunk async for chunk in out.reply.body])
        assert out.reply.close is not None
        out.reply.close()
    assert wirecheck.check_anthropic_stream(body).outcome == "ok", body[-400:]
    assert body.count(b"event: message_start") == 1 and b"from next" in body
    assert out.reply.backend == "good" and out.reply.usage.complete
    assert out.reply.usage.note == ("f0 failed after the stream began (f0 stream failed: ClientPayloadError); handed to f1; "
                                    "f1 failed after the stream began (model crashed); handed to good")
    assert [name for name, _ in out.tried][-2:] == ["f0", "f1"]
    assert all(b.state.inflight == 0 for b in backends) and backends[0].state.demoted and backends[1].state.demoted


# Heads in time: the client's message_start is the server's own, and what follows it is
# the same as for a late head.
PROMPT = 5.0


@pytest.mark.parametrize("app", [
    _server(START, cut=True),
    _server(START + PING, hold=0.1, cut=True),
    _server(b"", cut=True),
    _server(START + ERROR),  # the start and the error in one read: the start still goes out first
    _server(ERROR, hold=5),
    _server(START),
], ids=["cut", "cut-after-a-ping", "cut-before-message-start", "error-event", "error-event-held-open", "ended-early"])
async def test_a_stream_whose_head_came_in_time_and_that_fails_before_any_content_hands_the_message_over(
        serve, monkeypatch, app):
    run = await _late_stream(serve, monkeypatch, app, commit_after=PROMPT)
    res, body = run.reply, run.body
    assert wirecheck.check_anthropic_stream(body).outcome == "ok", body[-400:]
    assert body.count(b"event: message_start") == 1 and b"from next" in body and b"event: error" not in body
    assert len(run.asked) == 1 and isinstance(run.asked[0], Verdict) and run.asked[0].failover
    assert res.backend == "next" and res.usage.complete and not res.usage.error
    assert res.usage.note.endswith("; handed to next")
    assert run.closed == ["first"]
    assert run.first.state.failures == 1


WITH_TOOLS = REQUEST | {"tools": [{"name": "Read", "description": "read a file",
                                   "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]}
EMPTY_BLOCK = _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})


@pytest.mark.parametrize("app,request_", [
    (_server(START + EMPTY_BLOCK + ERROR), WITH_TOOLS),
    (_server(START + EMPTY_BLOCK + ERROR), REQUEST),
    (_server(START + EMPTY_BLOCK, hold=0.1, cut=True), WITH_TOOLS),
    (_server(START + EMPTY_BLOCK + PING, hold=0.1, cut=True), REQUEST),
    (_server(START + _text(0, "\n\n"), hold=0.1, cut=True), WITH_TOOLS),  # held: it may still become a call
], ids=["empty-block-then-error", "no-tools-empty-block-then-error", "empty-block-then-cut",
        "no-tools-empty-block-then-cut", "held-text-then-cut"])
async def test_a_stream_that_fails_before_anything_was_shown_hands_the_message_over(serve, monkeypatch, app, request_):
    # An empty block shows nothing; with tools, nor does a text block held back until it
    # is known not to be a tool call. The next backend goes on.
    run = await _late_stream(serve, monkeypatch, app, commit_after=PROMPT, request=request_)
    assert wirecheck.check_anthropic_stream(run.body).outcome == "ok", run.body[-400:]
    assert run.body.count(b"event: message_start") == 1 and b"from next" in run.body and b"event: error" not in run.body
    assert len(run.asked) == 1 and run.reply.backend == "next" and run.reply.usage.complete


async def test_an_empty_answer_that_ends_well_keeps_its_empty_block(serve, monkeypatch):
    stop = _ev("content_block_stop", {"type": "content_block_stop", "index": 0})
    done = (_ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}})
            + _ev("message_stop", {"type": "message_stop"}))
    for app in (_server(START + EMPTY_BLOCK + stop + done), _server(START + EMPTY_BLOCK + PING + stop + done)):
        run = await _late_stream(serve, monkeypatch, app, commit_after=PROMPT)
        assert wirecheck.check_anthropic_stream(run.body).outcome == "ok", run.body[-400:]
        assert run.asked == [] and run.reply.backend == "first" and b"from next" not in run.body
        assert run.body.count(b"event: content_block_start") == 1 and run.body.index(b"message_start") < run.body.index(
            b"content_block_start")


async def test_a_stream_whose_head_came_in_time_and_that_fails_after_content_ends_with_an_error(serve, monkeypatch):
    run = await _late_stream(serve, monkeypatch, _server(START + _text(0, "partial answer"), hold=0.1, then=ERROR),
                             commit_after=PROMPT)
    assert wirecheck.check_anthropic_stream(run.body).outcome == "error", run.body[-400:]
    assert run.asked == [] and run.reply.backend == "first" and b"model crashed" in run.body
    assert b"from next" not in run.body


@pytest.mark.parametrize("app,words", [
    (_server(START, cut=True), b'"message":"first stream failed: ClientPayloadError"'),
    (_server(START + ERROR), b'"error":{"type":"overloaded_error","message":"model crashed"}'),
    (_server(b"", cut=True), b'"message":"first stream failed: ClientPayloadError"'),
], ids=["cut", "error-event", "cut-before-message-start"])
async def test_a_stream_whose_head_came_in_time_and_that_fails_with_no_other_backend_ends_with_an_error(
        serve, monkeypatch, app, words):
    run = await _late_stream(serve, monkeypatch, app, other=False, commit_after=PROMPT)
    v = wirecheck.check_anthropic_stream(run.body)
    assert v.outcome == "error", (v, run.body[-400:])
    assert len(run.asked) == 1 and run.reply.backend == "first"
    assert run.body.count(b"event: message_start") == 1 and words in run.body and run.body.count(b"event: error") == 1


@pytest.mark.parametrize("delay", [0.0, LATE], ids=["in-time", "late"])
async def test_a_stream_closed_unread_lets_the_request_go(serve, monkeypatch, delay):
    # The client left before its stream was read: closing the reply drops `instead` (which
    # holds the whole request) without waiting for the cycle collector.
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.05 if delay else PROMPT)
    cfg = _first_only(await serve(_server(ANSWER, delay=delay)))
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await backend.send_request(dict(REQUEST), stream=True)
        assert isinstance(res, Reply) and res.close is not None
        instead = NeverAsked()
        held = weakref.ref(instead)
        res.instead = instead
        del instead
        res.close()
        assert held() is None and backend.state.inflight == 0


async def test_content_and_an_error_in_the_same_read_hand_the_message_over(serve, monkeypatch):
    """Text and the server's error in one read, before anything but the start went out:
    nothing of it has reached the client, so the next backend answers the whole message."""
    run = await _late_stream(serve, monkeypatch, _server(START + _text(0, "partial answer") + ERROR, delay=LATE))
    assert wirecheck.check_anthropic_stream(run.body).outcome == "ok", run.body[-400:]
    assert b"from next" in run.body and b"partial answer" not in run.body


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
async def test_the_first_content_of_a_burst_goes_out_before_the_rest_is_read(serve, crlf):
    """A server that sends its whole answer in one read (a fast model, or a burst after
    prompt processing): the first text goes to the client at once, without waiting while
    nonstop reads the rest; the message is the same. CRLF-framed reads are taken whole."""
    deltas = b"".join(_ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": f" w{i}"}}) for i in range(40))
    body = (START + _text(0, "first") + deltas + _ev("content_block_stop", {"type": "content_block_stop", "index": 0})
            + _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 41}})
            + _ev("message_stop", {"type": "message_stop"}))
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    cfg = parse_config({"local": [{"name": "first", "url": await serve(_server(body)), "api": "anthropic",
                                   "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await backend.send_request(dict(REQUEST), stream=True)
        assert isinstance(res, Reply)
        chunks = [c async for c in res.body]
        res.close()
    whole = b"".join(chunks)
    assert wirecheck.check_anthropic_stream(whole).outcome == "ok", whole[-300:]
    assert whole.count(b"text_delta") == 41 and b" w39" in whole and res.usage.complete
    first = next(c for c in chunks if b"content_block_start" in c)
    if crlf:
        assert b" w39" in first  # one piece, as read
    else:
        assert b'"first"' in first and b" w0" not in first and b" w39" in chunks[-1] + chunks[-2]


@pytest.mark.parametrize("finish", ["abort", "error"])
async def test_content_and_an_openai_server_giving_up_in_the_same_read_hand_the_message_over(serve, monkeypatch, finish):
    """vLLM and SGLang say they gave up with a finish_reason, not an error event: in the
    same read as the first text, nothing of it has gone out, and the next backend answers."""
    body = _chunk({"role": "assistant", "content": "partial answer"}) + _chunk({}, finish)
    run = await _late_stream(serve, monkeypatch, _sse_app("/v1/chat/completions", body), first_api="openai",
                             commit_after=5)
    assert wirecheck.check_anthropic_stream(run.body).outcome == "ok", run.body[-400:]
    assert b"from next" in run.body and b"partial answer" not in run.body and len(run.asked) == 1


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("api", ["anthropic", "openai"])
async def test_a_server_that_answers_200_with_nothing_is_demoted(serve, stream, api):
    """A 200 with an empty body (a proxy in front of a crashed model, a server that lost
    its model) is a failed request, not an answer: the backend goes last until it answers."""
    path = "/v1/messages" if api == "anthropic" else "/v1/chat/completions"
    app = web.Application()

    async def empty(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, body=b"", content_type="text/event-stream" if stream else "application/json")

    app.router.add_post(path, empty)
    cfg = parse_config({"local": [{"name": "box", "url": await serve(app), "api": api, "count_tokens": "estimate"}]})
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        res = await backend.send_request(dict(REQUEST), stream=stream)
        if isinstance(res, Reply):  # a stream: its head came, and then nothing
            assert stream
            body = b"".join([c async for c in res.body])
            res.close()
            assert wirecheck.check_anthropic_stream(body).outcome == "error" and res.usage.error, body
        else:
            assert isinstance(res, Verdict) and res.failover, res
        assert backend.state.demoted and backend.state.inflight == 0
