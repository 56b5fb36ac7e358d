"""The cloud passthrough facing an odd or hostile cloud: legal replies nonstop must relay
(not fail over), broken ones it must fail over on before the client has a byte, and
refusals whose meaning must survive a cut body."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web

from nonstop.backends.base import Reply
from nonstop.backends.cloud import CloudBackend
from nonstop.backends.head import forward_headers
from nonstop.config import CloudConfig
from nonstop.routing.classify import FailureKind, Verdict
from tests.support.inprocess import paced_app, serve

__all__ = ["serve"]

def _ev(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


MSG = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
       "stop_reason": None, "usage": {"input_tokens": 11, "output_tokens": 1}}
START = _ev("message_start", {"type": "message_start", "message": MSG})
BLOCK = _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
DELTA = _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})
REST = b"".join([
    _ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
    _ev("message_stop", {"type": "message_stop"}),
])
OVERLOADED = _ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


async def _request(url: str, *, method: str = "POST", path: bytes = b"/v1/messages", stream: bool = True,
                   expect: str = "stream", body: bytes = b"{}") -> tuple[Reply | Verdict, bytes]:
    cfg = CloudConfig(url=url, first_byte_timeout=5.0)
    session = CloudBackend.make_session(cfg)
    try:
        backend = CloudBackend(cfg, session)
        res = await backend.request(method, path, b"", forward_headers([(b"x-api-key", b"k")]), body,
                                    stream=stream, expect=expect)
        out = b""
        if isinstance(res, Reply):
            out = b"".join([c async for c in res.body])
            if res.close is not None:
                res.close()
        return res, out
    finally:
        await session.close()


# --- streams -------------------------------------------------------------------------------


async def test_a_ping_event_without_data_before_content_is_not_a_broken_stream(serve):
    """`event: ping` and a blank line, without a data line, is legal SSE and is not even
    dispatched (the SSE standard): before the first content it is no sign of a broken
    stream, and the good answer is relayed, not thrown away for a local one."""
    url = await serve(paced_app([START + b"event: ping\n\n" + BLOCK + DELTA + REST]))
    res, out = await _request(url)
    assert isinstance(res, Reply), f"a good stream was failed over: {res}"
    assert out.endswith(REST)


async def test_an_error_event_after_content_is_not_logged_as_a_complete_answer(serve):
    """An `event: error` after text has gone out ends the client's stream (it is
    relayed), and the answer counts as incomplete, with what the cloud said: the request
    log, the stats and `nonstop status` show a cut answer, not an "ok"."""
    url = await serve(paced_app([START + BLOCK + DELTA, OVERLOADED], gap=0.05))
    res, out = await _request(url)
    assert isinstance(res, Reply)
    assert out.endswith(OVERLOADED)
    assert "overloaded_error" in res.usage.error and not res.usage.complete


async def test_an_error_already_read_with_the_first_content_still_fails_over(serve):
    """An error event in the cloud's first read, behind the first content event: nothing
    has reached the client yet, so it is a failover (overloaded: serve this request
    locally), not a 200 stream that ends in an error."""
    url = await serve(paced_app([START + BLOCK + OVERLOADED]))
    res, out = await _request(url)
    assert isinstance(res, Verdict), f"a stream whose only content was an error was committed: {out!r}"
    assert res.kind == FailureKind.OVERLOADED and res.failover


# --- whole replies ---------------------------------------------------------------------------


async def test_a_head_request_is_relayed_despite_its_content_length(raw_cloud):
    """A reply to HEAD has the Content-Length a GET's body would have, and no body (RFC
    9110 9.3.2): it is relayed as it is, not taken for a cut reply of a broken cloud."""
    url = await raw_cloud(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 42\r\n"
                          b"x-cloud: yes\r\n\r\n")
    res, out = await _request(url, method="HEAD", path=b"/api/hello", stream=False, expect="", body=b"")
    assert isinstance(res, Reply), f"a healthy HEAD reply was taken for a broken cloud: {res}"
    assert res.status == 200 and out == b""


@pytest.mark.parametrize("status, headers, body", [
    (429, b"anthropic-ratelimit-unified-status: rejected\r\nanthropic-ratelimit-unified-representative-claim: five_hour\r\n"
          b"anthropic-ratelimit-unified-reset: 1800018000\r\nretry-after: 18000\r\n",
     b'{"type":"error","error":{"type":"rate_limit_error","message":"usage limit"}}'),
    (401, b"", b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}'),
], ids=["five-hour-429", "401"])
async def test_a_refusal_whose_body_is_cut_keeps_its_meaning(raw_cloud, status, headers, body):
    """A refusal whose body is cut short keeps the meaning its head gives: a 429 with the
    5-hour limit's headers is the 5-hour limit (the state learns its reset), and a 401 is
    relayed as an auth problem (not hidden behind a local answer), its body nonstop's own
    error in place of the cut one."""
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body) + 100}\r\n".encode()
    url = await raw_cloud(head + headers + b"\r\n" + body[:20])
    res, out = await _request(url)
    if status == 429:
        assert isinstance(res, Verdict) and res.kind == FailureKind.SUBSCRIPTION_LIMIT, res
    else:
        assert isinstance(res, Reply) and res.status == 401, res
        doc = orjson.loads(out)
        assert doc["type"] == "error" and "cut" in doc["error"]["message"]
        assert b"content-length" not in dict(res.headers)


async def test_a_stream_whose_media_type_is_not_lower_case_is_relayed(raw_cloud):
    """Media types are case-insensitive (RFC 9110 8.3.1): a good stream whose type a proxy
    capitalised (`Text/Event-Stream`) is relayed, not thrown away for a local answer."""
    stream = START + BLOCK + DELTA + REST
    url = await raw_cloud(b"HTTP/1.0 200 OK\r\ncontent-type: Text/Event-Stream; charset=utf-8\r\n\r\n" + stream)
    res, out = await _request(url)
    assert isinstance(res, Reply), f"a good stream was failed over: {res}"
    assert out == stream


async def test_a_refusal_whose_body_never_comes_keeps_its_meaning(serve):
    """A 429 head with the 5-hour limit's headers, and then nothing until the deadline:
    the limit and its reset are learned from the head, not a network timeout."""

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=429, headers={
            "content-type": "application/json", "content-length": "200",
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
            "anthropic-ratelimit-unified-reset": "1800018000"})
        await resp.prepare(request)
        await asyncio.sleep(30)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    url = await serve(app)
    cfg = CloudConfig(url=url, first_byte_timeout=0.3, connect_timeout=0.2)
    session = CloudBackend.make_session(cfg)
    try:
        res = await CloudBackend(cfg, session).request("POST", b"/v1/messages", b"", forward_headers([]), b"{}",
                                                       stream=True, expect="stream")
    finally:
        await session.close()
    assert isinstance(res, Verdict) and res.kind == FailureKind.SUBSCRIPTION_LIMIT and res.until, res


# --- replies coded though identity was asked for ----------------------------------------------


def _gzipped(body: bytes, ctype: bytes, status: bytes = b"200 OK", coding: bytes = b"gzip") -> bytes:
    import gzip
    import zlib

    data = gzip.compress(body) if coding.lower() == b"gzip" else zlib.compress(body)
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\ncontent-encoding: " + coding
            + b"\r\ncontent-length: %d\r\n\r\n" % len(data) + data)


@pytest.mark.parametrize("coding", [b"gzip", b"GZIP", b"deflate"])
async def test_a_coded_answer_is_read_and_relayed_decoded(raw_cloud, coding):
    """A proxy that compresses though nonstop asked for identity: the answer is read (not
    a failover on bytes nonstop cannot read), its declared length is the coded one (not a
    cut), and it goes to the client decoded, without its coding or that length."""
    message = orjson.dumps({**MSG, "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"})
    url = await raw_cloud(_gzipped(message, b"application/json", coding=coding))
    res, out = await _request(url, stream=False, expect="json")
    assert isinstance(res, Reply), res
    assert out == message and res.usage.stop_reason == "end_turn"
    names = {k for k, _ in res.headers}
    assert b"content-encoding" not in names and b"content-length" not in names


async def test_a_coded_stream_is_peeked_and_relayed_decoded(raw_cloud):
    url = await raw_cloud(_gzipped(START + BLOCK + DELTA + REST, b"text/event-stream"))
    res, out = await _request(url)
    assert isinstance(res, Reply), res
    assert out == START + BLOCK + DELTA + REST and res.usage.complete
    assert b"content-encoding" not in {k for k, _ in res.headers}


async def test_a_coded_refusal_is_classified_from_its_words(raw_cloud):
    body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "Your credit balance is too low to access the Anthropic API."}})
    url = await raw_cloud(_gzipped(body, b"application/json", status=b"400 Bad Request"))
    res, _ = await _request(url, stream=False, expect="json")
    assert isinstance(res, Verdict) and res.failover and res.kind == FailureKind.CREDIT_EXHAUSTED, res


async def test_a_coded_reply_nonstop_does_not_read_goes_as_it_came(raw_cloud):
    """Any other path is passed through byte for byte: still coded, with its coding."""
    url = await raw_cloud(_gzipped(b'{"anything": 1}', b"application/json"))
    res, out = await _request(url, method="GET", path=b"/v1/files", stream=False, expect="")
    assert isinstance(res, Reply)
    assert out[:2] == b"\x1f\x8b" and (b"content-encoding", b"gzip") in res.headers


async def test_a_flood_before_any_content_is_a_broken_stream_decided_at_once(raw_cloud):
    """Megabytes of blank lines before the first content (a few KiB on the wire once a
    middlebox compresses them): no content in the first MAX_BEFORE_CONTENT bytes is a
    broken stream, decided in well under a second, not seconds of the event loop."""
    import gzip

    from nonstop.backends import cloud

    flood = gzip.compress(START + b"\n" * (16 << 20) + BLOCK + DELTA + REST, 9)
    url = await raw_cloud(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\n"
                          b"content-length: %d\r\n\r\n" % len(flood) + flood)
    loop = asyncio.get_running_loop()
    started = loop.time()
    res, _ = await _request(url)
    assert loop.time() - started < 1.5
    assert isinstance(res, Verdict) and res.kind == FailureKind.BAD_RESPONSE and res.failover
    assert f"first {cloud.MAX_BEFORE_CONTENT // 1024} KiB" in res.detail


@pytest.mark.parametrize(("codings", "decoded"), [((b"identity", b"gzip"), True), ((b"gzip", b"identity"), False)])
async def test_the_last_of_several_codings_is_the_one_read(raw_cloud, codings, decoded):
    """aiohttp decodes by the last content-encoding header; what is relayed agrees with
    it: decoded and without any coding header, or as it came with its headers."""
    import gzip

    body = START + BLOCK + DELTA + REST
    data = gzip.compress(body)
    head = b"".join(b"content-encoding: " + c + b"\r\n" for c in codings)
    url = await raw_cloud(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" + head
                          + b"content-length: %d\r\n\r\n" % len(data) + data)
    res, out = await _request(url)
    if decoded:
        assert isinstance(res, Reply) and out == body
        assert b"content-encoding" not in {k for k, _ in res.headers}
    else:  # gzip bytes nonstop cannot read: a broken stream, failed over
        assert isinstance(res, Verdict) and res.kind == FailureKind.BAD_RESPONSE


@pytest.mark.parametrize("status, body, said", [
    (400, b"<html><body>Bad Request</body></html>", "not the API's error JSON"),
    (401, b"", "an empty body"),
    (404, b'{"message": "no such thing"}', "not the API's error JSON"),
])
async def test_a_refusal_that_is_not_the_api_s_error_json_is_said_in_the_client_s_protocol(raw_cloud, status, body, said):
    """A proxy's HTML page or an empty body, on an API nonstop speaks for, reaches the
    client as an Anthropic error (its SDK reads it), saying what came; the status stays."""
    url = await raw_cloud(b"HTTP/1.1 %d X\r\ncontent-type: text/html\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))
    res, out = await _request(url, stream=False, expect="json")
    assert isinstance(res, Reply) and res.status == status, res
    doc = orjson.loads(out)
    assert doc["type"] == "error" and said in doc["error"]["message"], doc
    assert (b"content-type", b"application/json") in res.headers


async def test_the_api_s_own_refusal_and_other_paths_go_as_they_came(raw_cloud):
    err = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: required"}}'
    url = await raw_cloud(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                          % (len(err), err))
    res, out = await _request(url, stream=False, expect="json")
    assert isinstance(res, Reply) and out == err
    page = b"<html>not here</html>"
    url = await raw_cloud(b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: %d\r\n\r\n%s"
                          % (len(page), page))
    res, out = await _request(url, path=b"/v1/files/x", stream=False, expect="", method="GET", body=b"")
    assert isinstance(res, Reply) and res.status == 404 and out == page  # a path nonstop only passes through
