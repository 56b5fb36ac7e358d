"""What goes up to the cloud from the client's headers, and what comes back down."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from nonstop.backends.cloud import _success_verdict, forward_headers, response_headers
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


def test_the_clouds_reply_headers_come_down_lower_cased_without_hop_by_hop():
    out = response_headers([(b"Content-Type", b"application/json"), (b"Connection", b"close"),
                            (b"Transfer-Encoding", b"chunked"), (b"request-id", b"r1")])
    assert out == [(b"content-type", b"application/json"), (b"request-id", b"r1")]


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
