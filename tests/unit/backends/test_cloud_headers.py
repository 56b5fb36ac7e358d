"""What goes up to the cloud from the client's headers, and what comes back down."""

from __future__ import annotations

from nonstop.backends.cloud import forward_headers, response_headers

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
