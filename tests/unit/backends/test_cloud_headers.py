"""What goes up to the cloud from the client's headers, and what comes back down."""

from __future__ import annotations

import asyncio

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from nonstop.backends import cloud, head
from nonstop.backends.cloud import _success_verdict, response_headers
from nonstop.backends.head import forward_headers
from nonstop.routing.classify import FailureKind

CLIENT = [
    (b"Host", b"127.0.0.1:8787"), (b"Content-Length", b"120"), (b"Connection", b"keep-alive"),
    (b"Expect", b"100-continue"), (b"X-Nonstop-Token", b"secret"), (b"x-api-key", b"sk-ant-k"),
    (b"anthropic-version", b"2023-06-01"), (b"anthropic-beta", b"a"), (b"anthropic-beta", b"b"),
    (b"Transfer-Encoding", b"chunked"), (b"TE", b"trailers"), (b"accept-encoding", b"gzip"),
]


def test_the_clients_headers_go_up_but_hop_by_hop_expect_and_nonstops_own():
    out = forward_headers(CLIENT)
    assert {k.lower() for k in out} == {"x-api-key", "anthropic-version", "anthropic-beta", "accept-encoding"}
    assert out.getall("anthropic-beta") == ["a", "b"]  # repeated headers keep their order
    assert "expect" not in {k.lower() for k in forward_headers(CLIENT)}  # the same, from the name cache


def test_the_same_headers_again_go_up_as_the_same_strings_and_long_ones_are_not_kept():
    """A client's repeated headers share one decoded string (an open stream holds its
    request's headers); a value past the size bound is decoded afresh every time."""
    long_value = b"x" * (head._MAX_VALUE_BYTES + 1)
    first = forward_headers([(b"x-api-key", b"sk-ant-k"), (b"x-long", long_value)])
    again = forward_headers([(b"x-api-key", b"sk-ant-k"), (b"x-long", long_value)])
    assert first["x-api-key"] is again["x-api-key"]
    assert first["x-long"] == again["x-long"] == long_value.decode() and first["x-long"] is not again["x-long"]
    assert long_value not in head._REQUEST_VALUES


def test_the_cache_of_header_values_stays_bounded_and_still_forwards_every_value():
    for i in range(head._MAX_VALUES * 2 + 7):
        out = forward_headers([(b"x-claude-code-session-id", b"session-%d" % i)])
        assert out["x-claude-code-session-id"] == f"session-{i}"
        assert len(head._REQUEST_VALUES) <= head._MAX_VALUES


def test_header_names_go_up_as_the_client_spelled_them():
    out = forward_headers([(b"X-Custom-Thing", b"1"), (b"anthropic-version", b"2023-06-01")])
    assert list(out.keys()) == ["X-Custom-Thing", "anthropic-version"]
    assert out["x-custom-thing"] == "1"  # and case-insensitive, as aiohttp reads them


def test_the_clouds_reply_headers_come_down_lower_cased_without_hop_by_hop():
    out = response_headers([(b"Content-Type", b"application/json"), (b"Connection", b"close"),
                            (b"Transfer-Encoding", b"chunked"), (b"request-id", b"r1")])
    assert out == [(b"content-type", b"application/json"), (b"request-id", b"r1")]


def test_a_reply_with_two_content_types_is_relayed_with_the_first_it_was_read_by():
    raw = [(b"Content-Type", b"text/event-stream"), (b"request-id", b"r1"), (b"content-type", b"application/json")]
    for _ in range(2):  # read, then rebuilt from its shape
        assert response_headers(raw) == [(b"content-type", b"text/event-stream"), (b"request-id", b"r1")]


def test_a_reply_shaped_like_one_before_keeps_its_own_values():
    """The second reply with the same names in the same order is rebuilt from the first's
    shape: its own values, in its order, hop-by-hop ones still dropped."""
    names = [b"Date", b"Connection", b"request-id", b"Transfer-Encoding", b"anthropic-ratelimit-unified-status"]
    for i in range(3):
        raw = tuple((n, b"v%d-%d" % (i, j)) for j, n in enumerate(names))
        assert cloud.response_headers(raw) == [(b"date", b"v%d-0" % i), (b"request-id", b"v%d-2" % i),
                                               (b"anthropic-ratelimit-unified-status", b"v%d-4" % i)]
    # The same names in another order, or one more, is another shape.
    assert cloud.response_headers(((b"request-id", b"a"), (b"Date", b"b"))) == [(b"request-id", b"a"), (b"date", b"b")]
    assert cloud.response_headers(((b"request-id", b"a"), (b"Date", b"b"), (b"Keep-Alive", b"5"), (b"x", b"c"))) == [
        (b"request-id", b"a"), (b"date", b"b"), (b"x", b"c")]
    assert cloud.response_headers(()) == []


def test_a_shape_seen_before_is_not_read_again(monkeypatch):
    monkeypatch.setattr(cloud, "_REPLY_SHAPES", {})
    reads = []
    real = cloud._shape
    monkeypatch.setattr(cloud, "_shape", lambda shape: reads.append(shape) or real(shape))
    for i in range(3):
        assert cloud.response_headers(((b"Date", b"d%d" % i), (b"Connection", b"close"))) == [(b"date", b"d%d" % i)]
    assert reads == [(b"Date", b"Connection")]


def test_the_shapes_kept_are_bounded_and_emptied_when_full(monkeypatch):
    """Emptied, as the heads are, so shapes that came early (an error's, a proxy's) do
    not keep the one in use now out for good."""
    monkeypatch.setattr(cloud, "_REPLY_SHAPES", {})
    for i in range(cloud._MAX_SHAPES + 20):
        raw = ((b"X-Shape-%d" % i, b"1"), (b"Connection", b"close"), (b"request-id", b"r%d" % i))
        assert cloud.response_headers(raw) == [(b"x-shape-%d" % i, b"1"), (b"request-id", b"r%d" % i)]
        assert len(cloud._REPLY_SHAPES) <= cloud._MAX_SHAPES
        assert tuple(k for k, _ in raw) in cloud._REPLY_SHAPES  # the latest is always kept


T0 = 1_800_000_000.0
U = "anthropic-ratelimit-unified-"


class _Resp:
    """What _success_verdict reads of an aiohttp response: its status and headers."""

    def __init__(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(headers))


def test_a_duplicated_unified_status_that_says_rejected_is_not_lost() -> None:
    """A success whose `unified-status` comes twice (a proxy appending a cached copy) is
    a rejected quota if either copy says so, whichever comes first."""
    later = _success_verdict(_Resp(200, [(U + "status", "allowed"), (U + "status", "rejected"),
                                         (U + "reset", str(int(T0 + 3600)))]))
    assert later is not None and later.kind is FailureKind.SUBSCRIPTION_LIMIT  # seen this way round
    first = _success_verdict(_Resp(200, [(U + "status", "rejected"), (U + "status", "allowed"),
                                         (U + "reset", str(int(T0 + 3600)))]))
    assert first is not None, "a duplicated status whose first copy says rejected was read as allowed"


async def test_the_quota_headers_are_learned_once_the_reply_is_on_its_way_and_never_fail_it(serve, caplog):
    """The headers of a reply teach the account's utilization after the reply is returned
    (they decide nothing about it), before the loop turns again; an observer that fails
    is logged, and the reply still stands."""
    import asyncio

    from aiohttp import web

    from nonstop.backends.base import Reply
    from nonstop.backends.cloud import CloudBackend
    from nonstop.config import CloudConfig

    async def messages(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"type": "message", "content": []}, headers={U + "5h-utilization": "0.42"})

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    cfg = CloudConfig(url=await serve(app))
    seen: list[tuple[str, str | None]] = []

    def observer(account: str, headers) -> None:
        seen.append((account, headers.get(U + "5h-utilization")))
        raise RuntimeError("a broken observer")

    session = CloudBackend.make_session(cfg)
    try:
        backend = CloudBackend(cfg, session, observe_headers=observer)
        res = await backend.request("POST", b"/v1/messages", b"", forward_headers([]), b"{}", expect="json", account="key:a")
        assert isinstance(res, Reply) and res.status == 200
        await asyncio.sleep(0)
        assert seen == [("key:a", "0.42")]
        assert "reading the cloud's quota headers failed" in caplog.text
    finally:
        await session.close()


async def _request_head(request_class: type, headers: object) -> bytes:
    """The head a session sends for `headers`, as a server reads it off the socket."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if not got.done():
            got.set_result(head)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(skip_auto_headers=cloud._SKIP_AUTO, request_class=request_class) as s, \
                s.post(f"http://127.0.0.1:{port}/v1/messages", headers=headers, data=b"{}") as resp:
            await resp.read()
        return (await got).replace(b":%d\r\n" % port, b":PORT\r\n")  # (each a server of its own)
    finally:
        server.close()


async def test_the_forwarded_request_s_head_is_aiohttp_s_own_byte_for_byte():
    cases = [
        forward_headers(CLIENT),
        forward_headers([(b"x-api-key", b"sk-ant-k"), (b"Anthropic-Beta", b"a"), (b"anthropic-beta", b"b"),
                         (b"User-Agent", b"claude-cli/2.0"), (b"accept", b"application/json")]),
        CIMultiDict([("x-api-key", "k"), ("HOST", "elsewhere.example"), ("anthropic-version", "2023-06-01")]),
        CIMultiDict(),
        {"x-api-key": "k", "Host": "other.example"},
        [("x-api-key", "k"), ("x-a", "1"), ("x-a", "2")],
    ]
    for headers in cases:
        ours = await _request_head(cloud._ForwardedRequest, headers)
        theirs = await _request_head(aiohttp.ClientRequest, headers)
        assert ours == theirs, headers
