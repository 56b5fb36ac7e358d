"""A response's head as nonstop's cycle writes it (server/response_head.py) is the head
uvicorn's own cycle writes, byte for byte, with the same state left behind, for every
head: the ones it writes itself and the ones it leaves to uvicorn (which writes or refuses
them as always). And a real server with nonstop's protocol answers through it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from nonstop.server.response_head import ResponseCycle


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def close(self) -> None:
        self.out.append(b"<closed>")

    def is_closing(self) -> bool:
        return False


class _Flow:
    write_paused = False


def _cycle(cls: type, *, method: str, keep_alive: bool, default_headers: list[tuple[bytes, bytes]],
           expect_100: bool) -> Any:
    log = logging.getLogger("test-response-head")
    return cls(scope={"method": method, "type": "http"}, transport=_Transport(), flow=_Flow(), logger=log,
               access_logger=log, access_log=False, default_headers=list(default_headers),
               message_event=asyncio.Event(), expect_100_continue=expect_100, keep_alive=keep_alive,
               on_response=lambda: None)


STATE = ("response_started", "response_complete", "chunked_encoding", "expected_content_length", "keep_alive",
         "waiting_for_100_continue")


async def _written(cls: type, messages: list[dict[str, Any]], **kw: Any) -> tuple[Any, ...]:
    cycle = _cycle(cls, **kw)
    errors = []
    for m in messages:
        try:
            await cycle.send(m)
        except Exception as exc:  # noqa: BLE001 (which error, if any, is what is compared)
            errors.append((type(exc).__name__, str(exc)))
            break
    return tuple(cycle.transport.out), tuple(getattr(cycle, k) for k in STATE), tuple(errors)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~",
                 min_size=1, max_size=24).map(str.encode)
_name = st.one_of(
    _token,
    st.sampled_from([b"content-length", b"Content-Length", b"transfer-encoding", b"Transfer-Encoding", b"connection",
                     b"Connection", b"content-type", b"x-nonstop-backend", b"bad name", b"a:b", b"a\nb", b"a\rb",
                     b"\x7f", b"", b"caf\xc3\xa9", b"\xff"]),
    st.binary(max_size=8),
)
_value = st.one_of(
    st.text(max_size=30).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"12", b" 12 ", b"-1", b"1_0", b"x", b"", b"\xd9\xa3", b"chunked", b"Chunked", b"close",
                     b"keep-alive, Close", b"a\tb", b"a\rb", b"a\nb", b"\x00", b"\x7f", b"\x80\xff"]),
    st.binary(max_size=12),
)
_headers = st.lists(st.tuples(_name, _value), max_size=8)
_status = st.one_of(st.sampled_from([200, 201, 204, 304, 400, 429, 500, 529, 599, 100]),
                    st.sampled_from([99, 600, "200", None]))


@settings(max_examples=1500, deadline=None)
@given(status=_status, headers=_headers, method=st.sampled_from(["GET", "POST", "HEAD"]), keep_alive=st.booleans(),
       defaults=st.sampled_from([[], [(b"server", b"uvicorn")], [(b"date", b"Sun, 06 Dec 2026 05:00:00 GMT")]]),
       body=st.sampled_from([[], [b"ok"], [b"", b"data: {}\n\n"]]), expect_100=st.booleans())
def test_the_head_is_uvicorn_s_head(status, headers, method, keep_alive, defaults, body, expect_100):
    start = {"type": "http.response.start", "status": status, "headers": headers}
    messages = [start] + [{"type": "http.response.body", "body": b, "more_body": True} for b in body] + \
        [{"type": "http.response.body", "body": b"", "more_body": False}]
    kw = {"method": method, "keep_alive": keep_alive, "default_headers": defaults, "expect_100": expect_100}
    assert asyncio.run(_written(ResponseCycle, messages, **kw)) == asyncio.run(_written(RequestResponseCycle, messages, **kw))


@pytest.fixture
def uvicorn_sends(monkeypatch) -> list[str]:
    """The types of the messages that reach uvicorn's own send."""
    seen: list[str] = []
    original = RequestResponseCycle.send

    async def counting(self, message):
        seen.append(message["type"])
        await original(self, message)

    monkeypatch.setattr(RequestResponseCycle, "send", counting)
    return seen


async def test_a_relayed_reply_s_head_is_written_without_uvicorn_s_loop(uvicorn_sends):
    # The usual head (lower-case names, a length or none): uvicorn's send never sees it.
    cycle = _cycle(ResponseCycle, method="POST", keep_alive=True, default_headers=[], expect_100=False)
    await cycle.send({"type": "http.response.start", "status": 200,
                      "headers": [(b"content-type", b"text/event-stream"), (b"request-id", b"req_1")]})
    await cycle.send({"type": "http.response.body", "body": b"event: ping\n\n", "more_body": False})
    assert uvicorn_sends == ["http.response.body"]
    assert cycle.transport.out[0] == (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nrequest-id: req_1\r\n"
                                      b"transfer-encoding: chunked\r\n\r\n")
    assert cycle.chunked_encoding is True and cycle.response_complete


@pytest.mark.parametrize("kind", [tuple, iter, lambda hs: (h for h in hs), lambda hs: [list(h) for h in hs]])
async def test_headers_given_as_any_iterable_of_pairs_make_the_same_head(kind):
    # ASGI's headers are an iterable of [name, value] pairs, not only a list of tuples.
    fields = [(b"content-type", b"application/json"), (b"content-length", b"2"), (b"request-id", b"r1")]
    heads = []
    for cls in (ResponseCycle, RequestResponseCycle):
        cycle = _cycle(cls, method="GET", keep_alive=True, default_headers=[(b"server", b"x")], expect_100=False)
        await cycle.send({"type": "http.response.start", "status": 200, "headers": kind(fields)})
        heads.append(cycle.transport.out)
    assert heads[0] == heads[1] and heads[0][0].endswith(b"request-id: r1\r\n\r\n")


@pytest.mark.parametrize("headers", [[(b"connection", b"close")], [(b"transfer-encoding", b"chunked")],
                                     [(b"x", b"a\nb")], [(b"content-length", b"x")]])
async def test_the_heads_left_to_uvicorn_go_to_its_send(headers, uvicorn_sends):
    cycle = _cycle(ResponseCycle, method="GET", keep_alive=True, default_headers=[], expect_100=False)
    with pytest.raises(Exception) if headers[0][1] in (b"a\nb", b"x") else _no_error():
        await cycle.send({"type": "http.response.start", "status": 200, "headers": headers})
    assert uvicorn_sends == ["http.response.start"]


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
