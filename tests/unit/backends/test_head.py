"""A request's head, read once for each head a client sends (backends/head.py)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from nonstop.backends import head as H
from nonstop.backends.base import Exchange
from nonstop.backends.head import Head, head_of, identity_coded, keep_head, split_head

CLAUDE = [
    (b"host", b"127.0.0.1:8787"), (b"content-length", b"51234"), (b"connection", b"keep-alive"),
    (b"accept-encoding", b"gzip, deflate"), (b"x-api-key", b"sk-ant-k"), (b"anthropic-version", b"2023-06-01"),
    (b"anthropic-beta", b"a"), (b"anthropic-beta", b"b"), (b"user-agent", b"claude-cli/2.1.332 (external, cli)"),
    (b"x-claude-code-session-id", b"s-1"), (b"x-nonstop-token", b"tok"), (b"cookie", b"nonstop_token=c"),
]


def _with_length(n: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, n if k == b"content-length" else v) for k, v in CLAUDE]


def _kept(raw: list[tuple[bytes, bytes]]) -> Head:
    head = head_of(raw)
    keep_head(head)
    return head


def test_content_length_is_set_aside_and_a_kept_head_is_read_once():
    first, length = split_head(_with_length(b"100"))
    keep_head(first)
    again, other = split_head(_with_length(b"200"))
    assert (length, other) == ("100", "200")
    assert again is first  # the same head, a different body: one reading


def test_the_latest_head_again_is_told_by_its_slices_and_anything_else_is_read():
    """The latest head found kept, sent again with another content-length in the same
    place, is found without a pass; a change anywhere else, or a second content-length,
    is not taken for it."""
    first = _kept(_with_length(b"1"))
    assert split_head(_with_length(b"2"))[0] is first
    split = H._split[0]
    assert split is not None and split.head is first and split.at == 1
    assert split_head(_with_length(b"3")) == (first, "3")
    assert H._split[0] is split  # found by the slices: nothing read or made

    other_key = [(k, b"sk-ant-other" if k == b"x-api-key" else v) for k, v in _with_length(b"4")]
    other, length = split_head(other_key)
    assert other is not first and other.credential == "sk-ant-other" and length == "4"
    added = [*_with_length(b"5"), (b"x-extra", b"1")]
    assert split_head(added)[0] is not first and split_head(added[:-1])[0] is first
    moved = [CLAUDE[0], *CLAUDE[2:5], (b"content-length", b"6"), *CLAUDE[5:]]
    assert split_head(moved) == (first, "6")  # the same head, its length elsewhere: found by the pass
    assert H._split[0].at == 4  # and the slices follow it
    two = [*_with_length(b"7")[:2], (b"content-length", b"8"), *CLAUDE[2:]]
    assert split_head(two) == (first, "7")  # the first, as read_body reads it
    assert H._split[0] is None or H._split[0].at == 4  # two lengths are never told by the slices
    as_lists = [list(h) for h in _with_length(b"10")]
    got, length = split_head(as_lists)  # type: ignore[arg-type]
    assert got is not first and got.credential == first.credential and length == "10"  # read, not kept


def test_a_change_before_the_length_is_not_taken_for_the_latest_head():
    """The slice before the content-length is compared too: another Host (the DNS
    rebinding check reads it), or another credential sent before the length."""
    first = _kept(_with_length(b"1"))
    split_head(_with_length(b"2"))
    assert H._split[0] is not None and H._split[0].at == 1
    rebound = [(b"host", b"evil.example:8787"), *_with_length(b"3")[1:]]
    got = split_head(rebound)[0]
    assert got is not first and got.host == b"evil.example:8787"
    early = [(b"x-api-key", b"sk-ant-early"), (b"content-length", b"4"), *CLAUDE[2:]]
    first_early = _kept(early)
    split_head([(b"x-api-key", b"sk-ant-early"), (b"content-length", b"5"), *CLAUDE[2:]])  # its slices now
    other = split_head([(b"x-api-key", b"sk-ant-other"), (b"content-length", b"6"), *CLAUDE[2:]])[0]
    assert other is not first_early and other.credential == "sk-ant-other"
    as_tuple = tuple([(b"x-api-key", b"sk-ant-early"), (b"content-length", b"7"), *CLAUDE[2:]])
    assert split_head(as_tuple)[0] is first_early  # not a list: found by the pass, not the slices


def test_no_length_and_a_refused_head_leave_the_slices_alone():
    first = _kept(_with_length(b"1"))
    split_head(_with_length(b"2"))
    split = H._split[0]
    no_length = [h for h in CLAUDE if h[0] != b"content-length"]
    assert split_head(no_length)[0] is first and H._split[0] is split
    stranger = [(b"host", b"127.0.0.1:8787"), (b"content-length", b"3"), (b"x-api-key", b"sk-ant-s")]
    assert split_head(stranger)[0].credential == "sk-ant-s" and H._split[0] is split  # read, not kept: not the latest
    H.forget_heads()
    assert H._split[0] is None and split_head(_with_length(b"4"))[0] is not first


def test_a_head_is_not_kept_until_its_request_is_let_in():
    first = head_of(CLAUDE)
    assert head_of(CLAUDE) is not first  # read again: nothing kept
    assert not H._HEADS
    keep_head(first)
    assert head_of(CLAUDE) is first


def test_a_head_without_content_length_says_so():
    assert split_head([(b"host", b"x")])[1] == ""
    assert split_head([(b"content-length", b"5"), (b"content-length", b"6")])[1] == "5"  # the first, as read_body reads it


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
    assert head_of([]).credential == head_of([(b"content-length", b"0")]).credential == ""


def test_the_first_of_each_for_the_log_and_the_checks_cut_to_what_the_log_keeps():
    h = head_of([(b"user-agent", b"u" * 500), (b"user-agent", b"second"), (b"host", b"a"), (b"host", b"b"),
                 (b"x-claude-code-session-id", b"s" * 300), (b"x-nonstop-token", b"t1"), (b"x-nonstop-token", b"t2"),
                 (b"cookie", b"c1"), (b"cookie", b"c2")])
    assert h.client == "u" * H.CLIENT_CHARS
    assert h.session == "s" * H.SESSION_CHARS
    assert (h.host, h.token, h.cookie) == (b"a", b"t1", b"c1")


def test_heads_that_differ_only_in_a_credential_never_share_a_reading():
    """A, B, A: the latest head's shortcut and the kept heads' lookup each tell them apart."""
    a = [(b"host", b"h"), (b"x-api-key", b"sk-ant-a"), (b"x-nonstop-token", b"ta")]
    b = [(b"host", b"h"), (b"x-api-key", b"sk-ant-b"), (b"x-nonstop-token", b"tb")]
    bearer = [(b"host", b"h"), (b"authorization", b"Bearer sk-ant-oat01-c")]
    for raw, credential, token in [(a, "sk-ant-a", b"ta"), (b, "sk-ant-b", b"tb"), (a, "sk-ant-a", b"ta"),
                                   (bearer, "sk-ant-oat01-c", b""), (b, "sk-ant-b", b"tb"), (b, "sk-ant-b", b"tb")]:
        h = _kept(raw)
        assert (h.credential, h.token) == (credential, token)
        assert H._last[0] is h


def test_heads_kept_are_bounded_in_number_headers_and_bytes():
    for i in range(H._MAX_HEADS * 2 + 3):
        _kept([(b"x-trace", str(i).encode())])
    assert len(H._HEADS) <= H._MAX_HEADS
    many = [(b"x-h%d" % i, b"v") for i in range(H.MAX_KEPT_HEADERS + 1)]
    huge = [(b"x-big", b"x" * (H.MAX_KEPT_BYTES + 1))]
    for raw in (many, huge):
        h = _kept(raw)
        assert h.forwarded  # read and used for its request
        assert tuple(raw) not in H._HEADS and H._last[0] is not h  # but not kept


def test_headers_as_lists_are_read_and_not_kept():
    """ASGI allows a header as a two-item list (another server's scope)."""
    h, length = split_head([[b"x-api-key", b"sk-ant-l"], [b"content-length", b"3"]])  # type: ignore[list-item]
    assert (h.credential, length) == ("sk-ant-l", "3")
    assert not H._HEADS


def test_a_heads_repr_shows_no_credential():
    text = repr(head_of(CLAUDE))
    assert "sk-ant-k" not in text and "tok" not in text and "nonstop_token" not in text


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
    assert ex.read_head().credential == "sk-ant-k"
    given = head_of([(b"x-api-key", b"other")])
    ex2 = Exchange(method="POST", path="/v1/messages", raw_path=b"/v1/messages", query=b"", headers=CLAUDE,
                   body=b"{}", req={}, stream=False, head=given)
    assert ex2.read_head() is given


async def test_the_cloud_gets_the_kept_headers_and_extra_ones_go_on_a_copy(monkeypatch):
    """CloudBackend.send: an inference request goes up with the head's identity-coded copy
    as it is; headers a front door adds (cloud_headers) go on a copy, never on the head
    shared by the client's other requests."""
    import aiohttp

    from nonstop.backends.cloud import CloudBackend
    from nonstop.config import CloudConfig
    from nonstop.routing.plan import Step

    sent: list[object] = []

    async def request(self, method, path, query, headers, body, **kw):  # type: ignore[no-untyped-def]
        sent.append(headers)
        return None

    monkeypatch.setattr(CloudBackend, "request", request)
    head = _kept(CLAUDE)
    async with aiohttp.ClientSession() as session:
        backend = CloudBackend(CloudConfig(url="http://127.0.0.1:9"), session)

        def exchange(**extra: object) -> Exchange:
            return Exchange(method="POST", path="/v1/messages", raw_path=b"/v1/messages", query=b"", headers=CLAUDE,
                            body=b"{}", req={}, stream=False, head=head, **extra)  # type: ignore[arg-type]

        await backend.send(exchange(), Step("cloud", "default", ""))
        await backend.send(exchange(cloud_headers={"x-extra": "1", "anthropic-version": "other"}), Step("cloud", "default", ""))
    assert sent[0] is head.reading
    extra = sent[1]
    assert isinstance(extra, CIMultiDict) and extra["x-extra"] == "1"
    assert extra["anthropic-version"] == "2023-06-01"  # the client's own stays (setdefault)
    assert "x-extra" not in head.reading and "x-extra" not in head.forwarded
