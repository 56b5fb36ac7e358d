"""A request's head, read once for each head a client sends (backends/head.py)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from nonstop.backends import head as H
from nonstop.backends.base import Exchange
from nonstop.backends.head import head_of, identity_coded, read_head

CLAUDE = [
    (b"host", b"127.0.0.1:8787"), (b"content-length", b"51234"), (b"connection", b"keep-alive"),
    (b"accept-encoding", b"gzip, deflate"), (b"x-api-key", b"sk-ant-k"), (b"anthropic-version", b"2023-06-01"),
    (b"anthropic-beta", b"a"), (b"anthropic-beta", b"b"), (b"user-agent", b"claude-cli/2.1.332 (external, cli)"),
    (b"x-claude-code-session-id", b"s-1"), (b"x-nonstop-token", b"tok"), (b"cookie", b"nonstop_token=c"),
]


def _with_length(n: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, n if k == b"content-length" else v) for k, v in CLAUDE]


def test_content_length_is_set_aside_and_the_rest_read_once():
    first, length = read_head(_with_length(b"100"))
    again, other = read_head(_with_length(b"200"))
    assert (length, other) == ("100", "200")
    assert again is first  # the same head, a different body: one reading


def test_a_head_without_content_length_says_so():
    assert read_head([(b"host", b"x")])[1] == ""
    assert read_head([(b"content-length", b"5"), (b"content-length", b"6")])[1] == "5"  # the first, as read_body reads it


def test_what_the_cloud_gets_drops_hop_by_hop_and_nonstops_own():
    h = head_of(CLAUDE)
    assert isinstance(h.forwarded, CIMultiDictProxy)  # shared by requests: read-only
    assert {k.lower() for k in h.forwarded} == {"accept-encoding", "x-api-key", "anthropic-version", "anthropic-beta",
                                                 "user-agent", "x-claude-code-session-id", "cookie"}
    assert h.forwarded.getall("anthropic-beta") == ["a", "b"]
    assert h.forwarded["accept-encoding"] == "gzip, deflate"
    assert h.reading.getall("accept-encoding") == ["identity"]  # for a reply nonstop reads
    assert {k.lower() for k in h.reading} == {k.lower() for k in h.forwarded}


def test_the_credential_the_planners_headers_and_the_logs_names():
    h = head_of(CLAUDE)
    assert h.credential == "sk-ant-k"
    assert dict(h.facts) == {"x-claude-code-session-id": "s-1"}
    with pytest.raises(TypeError):
        h.facts["x"] = "y"  # type: ignore[index]  # shared: read-only
    assert (h.host, h.token, h.cookie) == (b"127.0.0.1:8787", b"tok", b"nonstop_token=c")
    assert (h.client, h.session) == ("claude-cli/2.1.332 (external, cli)", "s-1")
    bearer = head_of([(b"authorization", b"Bearer sk-ant-oat01-x"), (b"x-claude-code-request-class", b"background")])
    assert bearer.credential == "sk-ant-oat01-x"
    assert dict(bearer.facts) == {"x-claude-code-request-class": "background"}
    assert head_of([]) == head_of([(b"content-length", b"0")])


def test_the_first_of_each_for_the_log_and_the_checks_cut_to_what_the_log_keeps():
    h = head_of([(b"user-agent", b"u" * 500), (b"user-agent", b"second"), (b"host", b"a"), (b"host", b"b"),
                 (b"x-claude-code-session-id", b"s" * 300)])
    assert h.client == "u" * H.CLIENT_CHARS
    assert h.session == "s" * H.SESSION_CHARS
    assert h.host == b"a"


def test_heads_kept_are_bounded_and_a_huge_one_is_not_kept():
    for i in range(H._MAX_HEADS * 2 + 3):
        read_head([(b"x-trace", str(i).encode())])
    assert len(H._HEADS) <= H._MAX_HEADS
    huge = [(b"x-big", b"x" * (H.MAX_KEPT_BYTES + 1))]
    assert head_of(huge).forwarded["x-big"] == "x" * (H.MAX_KEPT_BYTES + 1)
    assert tuple(huge) not in H._HEADS
    assert H._last[0] != huge


def test_identity_coded_copies_unless_it_says_only_identity_already():
    plain = CIMultiDict([("accept-encoding", "gzip"), ("x-a", "1")])
    coded = identity_coded(plain)
    assert coded is not plain and coded.getall("accept-encoding") == ["identity"]
    assert plain["accept-encoding"] == "gzip"  # not changed
    assert identity_coded(coded) is coded
    twice = CIMultiDict([("accept-encoding", "identity"), ("accept-encoding", "gzip")])
    assert identity_coded(twice).getall("accept-encoding") == ["identity"]


def test_an_exchange_reads_its_head_when_its_door_did_not():
    ex = Exchange(method="POST", path="/v1/messages", raw_path=b"/v1/messages", query=b"", headers=CLAUDE,
                  body=b"{}", req={}, stream=False)
    assert ex.read_head() is head_of(CLAUDE)
    given = head_of([(b"x-api-key", b"other")])
    ex2 = Exchange(method="POST", path="/v1/messages", raw_path=b"/v1/messages", query=b"", headers=CLAUDE,
                   body=b"{}", req={}, stream=False, head=given)
    assert ex2.read_head() is given
