"""A request's head as nonstop reads it: read once for each head a client sends.

A client sends the same headers on every request of a session (its key, its version, its
session id, its beta flags); only content-length changes. Everything nonstop reads from
them is read in one pass the first time a head is seen, and kept:

- the headers the cloud gets (`forwarded`: hop-by-hop ones and nonstop's own dropped);
- the cloud credential (x-api-key, else the bearer token) and the headers the planner
  reads (`facts`, by lower-case name);
- what the request log names (the client's User-Agent, its session id);
- what the application checks first (the Host, nonstop's own token, the dashboard's
  cookie).

The last three serve the server's layer; they live here so that one reading serves every
layer, and the backends are the lowest layer that needs it.

`split_head` reads a head, or finds it kept. The next request with the latest head costs
two comparisons of slices in C: the headers before its content-length and those after
(`_Split`). Another client's costs one pass that sets content-length aside, and a
dictionary lookup. A head is kept only once its request has been let in (`keep_head`,
after the application's size, Host and token checks), so a client that is refused leaves
nothing behind. Bounded: at most 128 heads of at most 64 headers and 8 KiB
each, emptied when full (about 3 MB filled with the largest, by tracemalloc). A client
that sends a new value on every request (a trace id) finds no head kept: each request
pays the reading (the forwarded headers built, the credential and the others picked out)
and a look in the dictionary. The heads kept hold credentials; they never leave the
process, and a Head's repr does not show them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import chain
from types import MappingProxyType
from typing import NamedTuple

from multidict import CIMultiDict, CIMultiDictProxy, istr

from nonstop.routing.accounts import CREDENTIAL_HEADERS, credential_of
from nonstop.routing.facts import AGENT_HEADER, HINT_HEADER, SESSION_HEADER

RawHeaders = Iterable[tuple[bytes, bytes]]
# Headers as aiohttp takes them: nonstop's own copy, or a Head's shared read-only one.
Headers = CIMultiDict[str] | CIMultiDictProxy[str]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
    # nonstop has read the whole body before it sends: a 100-continue is not the cloud's.
    "expect",
})
# nonstop's own headers never leave it.
OWN_REQUEST_HEADERS = frozenset({"x-nonstop-token"})
# The headers the planner reads (routing/facts.py), besides the credential's.
FACT_HEADERS = frozenset(h.encode() for h in (HINT_HEADER, AGENT_HEADER, SESSION_HEADER)) | CREDENTIAL_HEADERS
# How much of the client's name and session id a request's log row keeps.
CLIENT_CHARS = 200
SESSION_CHARS = 100
# The headers of which the first is read as sent (Host, token, cookie) or for the log.
_SESSION = SESSION_HEADER.encode()
_FIRSTS = frozenset({b"host", b"x-nonstop-token", b"cookie", b"user-agent", _SESSION})

# Header names seen before: the name to send on (None: not forwarded). Bounded: names
# come from clients. A name to send on is an `istr`, which aiohttp's header copies take
# as it is: a plain str would make each copy lower-case its own key.
_REQUEST_NAMES: dict[bytes, istr | None] = {}
_MAX_NAMES = 512
# Short header values seen before, decoded. aiohttp keeps a request's headers for as long
# as the reply streams: shared, they cost an open stream nothing. Bounded in count and in
# size (emptied when full).
_REQUEST_VALUES: dict[bytes, str] = {}
_MAX_VALUES = 1024
_MAX_VALUE_BYTES = 256


def forward_headers(raw: RawHeaders) -> CIMultiDict[str]:
    """The headers the cloud gets: the client's, but hop-by-hop ones and nonstop's own."""
    out: CIMultiDict[str] = CIMultiDict()
    names, values = _REQUEST_NAMES, _REQUEST_VALUES
    for k, v in raw:
        try:
            name = names[k]
        except KeyError:
            decoded = k.decode("latin-1")
            low = decoded.lower()
            name = None if low in HOP_BY_HOP or low in OWN_REQUEST_HEADERS else istr(decoded)
            if len(names) < _MAX_NAMES:
                names[k] = name
        if name is None:
            continue
        value = values.get(v)
        if value is None:
            value = v.decode("latin-1")
            if len(v) <= _MAX_VALUE_BYTES:
                if len(values) >= _MAX_VALUES:
                    values.clear()
                values[v] = value
        out.add(name, value)
    return out


def identity_coded(headers: Headers) -> Headers:
    """`headers` saying Accept-Encoding: identity (for a reply nonstop reads): a copy,
    unless they say only that already."""
    if headers.getall("Accept-Encoding", None) == ["identity"]:
        return headers
    out = CIMultiDict(headers)
    out["Accept-Encoding"] = "identity"
    return out


class Head(NamedTuple):
    """What nonstop reads from a request's headers (all but content-length)."""

    # What it was read from (the headers as sent, content-length left out): its key.
    key: tuple[tuple[bytes, bytes], ...]
    # The headers the cloud gets (read-only: shared by every request with this head), and
    # the same asking for no content coding, for a reply nonstop reads (CloudBackend.request).
    forwarded: CIMultiDictProxy[str]
    reading: CIMultiDictProxy[str]
    credential: str
    # The headers the planner reads, by lower-case name (the last of each), read-only.
    facts: Mapping[str, str]
    # The first of each, as sent (b"" when absent).
    host: bytes
    token: bytes
    cookie: bytes
    # The first of each, decoded and cut to what the log keeps ("" when absent).
    client: str
    session: str
    # The body's content coding as sent (`gzip`, ...; "" when absent or `identity`).
    coding: str = ""

    def __repr__(self) -> str:  # it holds credentials and tokens: never shown
        return f"Head({len(self.key)} headers, client={self.client!r})"


_HEADS: dict[tuple[tuple[bytes, bytes], ...], Head] = {}
_MAX_HEADS = 128
# The largest head kept: a client's is a dozen or two headers, about a KiB.
MAX_KEPT_HEADERS = 64
MAX_KEPT_BYTES = 8 * 1024
# The latest head kept or found: most requests come from one client.
_last: list[Head | None] = [None]


class _Split(NamedTuple):
    """The latest head kept or found, as its client sends it: the headers before and after
    its one content-length, at `at`. The next request with the same head is then told by
    two comparisons of slices in C, without a pass over its headers."""

    head: Head
    at: int
    before: list[tuple[bytes, bytes]]
    after: list[tuple[bytes, bytes]]


_split: list[_Split | None] = [None]


def forget_heads() -> None:
    """Keep no head (tests; nothing in serving needs it)."""
    _HEADS.clear()
    _last[0] = None
    _split[0] = None


def split_head(raw: list[tuple[bytes, bytes]]) -> tuple[Head, str]:
    """The request's Head (kept or read now), and its first content-length as sent ("" when
    absent). A head read now is not kept until keep_head()."""
    s = _split[0]
    if s is not None and type(raw) is list:  # the latest head again, its content-length in the same place
        at = s.at
        if len(raw) > at:
            h = raw[at]
            if h[0] == b"content-length" and raw[at + 1:] == s.after and raw[:at] == s.before:
                return s.head, h[1].decode("latin-1")
    rest: list[tuple[bytes, bytes]] = []
    length = None
    at = -1
    for h in raw:
        if h[0] == b"content-length":
            if length is None:
                length, at = h[1], len(rest)
            else:
                at = -1  # more than one: the slices above would not say so
        else:
            rest.append(h)
    declared = "" if length is None else length.decode("latin-1")
    key = tuple(rest)
    last = _last[0]
    if last is not None and key == last.key:  # the same client again: equal bytes, no hashing
        head = last
    else:
        try:
            found = _HEADS.get(key)
        except TypeError:  # headers as lists (another server's scope): read, never kept
            return _read(tuple(map(tuple, rest))), declared  # type: ignore[arg-type]
        if found is None:
            return _read(key), declared
        head = _last[0] = found
    if at >= 0 and type(raw) is list:
        _split[0] = _Split(head, at, rest[:at], rest[at:])
    return head, declared


def keep_head(head: Head) -> None:
    """Keep a head read by split_head(), now that its request is let in (bounded)."""
    if head is _last[0]:
        return
    key = head.key
    if key in _HEADS:
        _last[0] = _HEADS[key]
        return
    if len(key) > MAX_KEPT_HEADERS or sum(map(len, chain.from_iterable(key))) > MAX_KEPT_BYTES:
        return  # read for this request only
    if len(_HEADS) >= _MAX_HEADS:
        _HEADS.clear()
    _HEADS[key] = head
    _last[0] = head


def head_of(raw: list[tuple[bytes, bytes]]) -> Head:
    """The Head of these headers (content-length set aside), kept or read now."""
    return split_head(raw)[0]


def _read(key: tuple[tuple[bytes, bytes], ...]) -> Head:
    facts: dict[str, str] = {}
    credential = credential_of(key, collect=facts, names=FACT_HEADERS)
    first: dict[bytes, bytes] = {}
    codings: list[bytes] = []  # every content-encoding header (RFC 9110 8.4)
    for k, v in key:
        if k in _FIRSTS and k not in first:
            first[k] = v
        elif k == b"content-encoding":
            codings.append(v)
    forwarded = forward_headers(key)
    return Head(
        key=key,
        forwarded=CIMultiDictProxy(forwarded),
        reading=CIMultiDictProxy(identity_coded(forwarded)),
        credential=credential,
        facts=MappingProxyType(facts),
        host=first.get(b"host", b""),
        token=first.get(b"x-nonstop-token", b""),
        cookie=first.get(b"cookie", b""),
        client=first.get(b"user-agent", b"").decode("latin-1")[:CLIENT_CHARS],
        session=first.get(_SESSION, b"").decode("latin-1")[:SESSION_CHARS],
        coding=_coding(codings),
    )


def _coding(values: list[bytes]) -> str:
    """The body's content codings, each header's list items read, `identity` set aside:
    "" for a plain body."""
    codings = [c for v in values for c in (p.strip().lower() for p in v.decode("latin-1").split(","))
               if c and c != "identity"]
    return ", ".join(codings)[:40]
