"""The cloud passthrough: bytes in, bytes out, with the client's own credentials.

Everything is decided before the first byte reaches the client: the response head;
for streams, the events before the first content; any other reply, whole. After that,
stream chunks are relayed as they come, cut only at event boundaries so that a stream
that dies can still be closed with a well-formed `event: error`.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from itertools import compress
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import aiohttp
import orjson
from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from nonstop.aio import Deadline, Silence
from nonstop.backends.base import (
    MAX_WHOLE_BODY,
    Attempt,
    Exchange,
    Reply,
    Usage,
    forget_tracebacks,
    read_limited,
    single,
    taken_over,
)
from nonstop.backends.head import HOP_BY_HOP, Headers, identity_coded
from nonstop.backends.reader import coded, relay_reader
from nonstop.config import CloudConfig
from nonstop.redact import redact
from nonstop.routing.classify import (
    FailureKind,
    Verdict,
    classify_response,
    classify_stream_error,
    error_of,
    network_failure,
)
from nonstop.routing.deadline import FirstByteDeadlines, answer_wait
from nonstop.routing.view import Capabilities
from nonstop.wire.anthropic import token_count
from nonstop.wire.errors import anthropic_error, anthropic_error_event
from nonstop.wire.framing import (
    CR,
    complete_events_end,
    first_malformed_event,
    lf_framed,
    wrong_content_type,
)
from nonstop.wire.hygiene import for_cloud, without_thinking
from nonstop.wire.splice import StreamTracker, splice
from nonstop.wire.sse import SSEDecoder, SSEEvent

if TYPE_CHECKING:
    from nonstop.routing.plan import Step

log = logging.getLogger("nonstop")
MAX_ERROR_BODY = 1024 * 1024
# Seconds a cold connection may add to the first-byte deadline.
CONNECT_SLACK = 1.0
CLOUD_CAPABILITIES = Capabilities(api="cloud", tools=True, thinking=True, images=True)
_INFERENCE_PATHS = ("/v1/messages", "/v1/chat/completions")
# Small answers the cloud writes whole right behind their head, by path, with the field a
# 200 must carry: the body is bound by the same deadline as the head, and one that stalls,
# is cut, empty or not what was asked for is a broken cloud (nonstop has a local answer
# for both).
_SMALL_REPLIES = {"/v1/messages/count_tokens": ("input_tokens", int), "/v1/models": ("data", list)}
# Usage for the request log, read with regexes from the few places it appears, so the
# stream itself is never parsed.
_IN = re.compile(rb'"input_tokens"\s*:\s*(\d{1,16})(?!\d)')  # longer: no count (int() refuses 4,300 digits)
_OUT = re.compile(rb'"output_tokens"\s*:\s*(\d{1,16})(?!\d)')
_STOP = re.compile(rb'"stop_reason"\s*:\s*"([a-z_]+)"')
# The events that end a stream, and those that carry usage, by their `event:` lines in
# LF-framed SSE (the space after the colon is optional). One regex pass finds them all:
# its literal prefix is searched in C, so it reads the chunk once, where a bytes.find
# per line form read it eight times (and a regex without a prefix tries every position).
_NOTABLE_NAMES = rb"message_start|message_delta|message_stop|error"
_NOTABLE = re.compile(rb"event: ?(" + _NOTABLE_NAMES + rb")\n")
_STOP_EVENTS = frozenset({b"message_stop"})
_ERROR_EVENTS = frozenset({b"error"})
_TERMINAL = _STOP_EVENTS | _ERROR_EVENTS
_USAGE_EVENTS = frozenset({b"message_start", b"message_delta"})


def _notable(data: bytes) -> list[tuple[bytes, int]]:
    """The events that end a stream or carry usage, in order: each one's name and where
    its data starts (just after its `event:` line)."""
    return [(m.group(1), m.end()) for m in _NOTABLE.finditer(data)
            if m.start() == 0 or data[m.start() - 1] == 0x0A]  # at the start of a line


def _event_lines(data: bytes, names: frozenset[bytes]) -> Iterator[int]:
    """Where each event named in `names` starts its data."""
    return (at for name, at in _notable(data) if name in names)


# The most of one event held while waiting for its end (as the SSE decoder allows).
MAX_EVENT = 16 * 1024 * 1024
# What a stream may hold before its first content event: the cloud's first content comes
# within a few KiB (message_start, a ping). More is a broken stream, read no further: a
# flood of blank lines or pings (a few KiB on the wire when a middlebox compresses it)
# would otherwise keep the event loop busy for seconds while nothing is decided.
MAX_BEFORE_CONTENT = 256 * 1024
_SKIP_AUTO = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")
# The events a peek commits a stream on. A block's start counts, though the cloud starts a
# text block empty: waiting for its first delta would hold every stream's first bytes back
# by the gap between them (a model's token time; the paced benchmark's 25 ms), for an
# error that lands in that gap (docs/reliability.md, Known gaps).
_CONTENT_EVENTS = frozenset({"content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"})
_UNIFIED_STATUS = "anthropic-ratelimit-unified-status"
# A data line's value that is one JSON object, as far as a line shows it (see _scan).
_ONE_OBJECT = rb"[ \t\x0b\x0c]*\{[^\n]*\}[ \t\x0b\x0c]*(?:\n|$)"
_GOOD_FIRST = re.compile(rb"data:" + _ONE_OBJECT)
# In LF-framed SSE, after the first line: a notable event's `event:` line (its name, the
# data starting after the line's end) or a data line that is not one JSON object. One
# pass finds both, a line at a time (its literal prefix, the line end, is searched in C).
_SCAN = re.compile(rb"\n(?:event: ?(" + _NOTABLE_NAMES + rb")(?=\n)|data:(?!" + _ONE_OBJECT + rb"))")
# A read of whole plain events, as a stream at a model's pace comes: one or a few events a
# read, LF-framed (the caller checks for CRs), each event one `event:` line that is none of
# the notable ones (_NOTABLE) and one data line that is one JSON object (as _SCAN reads
# it). Such a read is relayed as it came, with nothing to cut, check or record (see
# _relay_stream). Only short reads are tried: Python's regex engine reads this pattern at
# about 2 ns a byte, and a long read (a burst of events, the end of a stream) costs as
# little per byte through the full checks, which find their few lines by literal search,
# so a failed try on it would be waste.
_PLAIN_RUN = re.compile(
    rb"(?:event:(?! ?(?:message_start|message_delta|message_stop|error)\n)[^\n]*\n"
    rb"data:[ \t\x0b\x0c]*\{[^\n]*\}[ \t\x0b\x0c]*\n\n)+")
PLAIN_READ_MAX = 2048


def _plain_read(data: bytes) -> bool:
    """Whether a read is whole plain events (_PLAIN_RUN), short enough to be worth asking."""
    return len(data) <= PLAIN_READ_MAX and CR not in data and _PLAIN_RUN.fullmatch(data) is not None

# Header names seen before, in replies: the lower-case name to relay (None: hop-by-hop).
# Bounded: names come from upstreams.
_REPLY_NAMES: dict[bytes, bytes | None] = {}
_MAX_NAMES = 512
# The names of a whole reply, in order, seen before: the names it relays and which of its
# headers those are. An upstream sends the same names in the same order reply after reply,
# so a reply's headers are mostly rebuilt in C (map, compress, zip), not a loop of Python.
# Bounded: a few shapes per upstream; emptied when full.
_REPLY_SHAPES: dict[tuple[bytes, ...], tuple[tuple[bytes, ...], tuple[bool, ...]]] = {}
_MAX_SHAPES = 64
_name_of = operator.itemgetter(0)
_value_of = operator.itemgetter(1)


def response_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A reply's headers as they are relayed: names lower-cased, hop-by-hop ones dropped."""
    shape = tuple(map(_name_of, raw))
    try:
        lows, keep = _REPLY_SHAPES[shape]
    except KeyError:
        lows, keep = _shape(shape)
        if len(_REPLY_SHAPES) >= _MAX_SHAPES:
            _REPLY_SHAPES.clear()  # as the heads are: the shapes in use now come back at once
        _REPLY_SHAPES[shape] = (lows, keep)
    return list(zip(lows, compress(map(_value_of, raw), keep), strict=True))


def _shape(shape: tuple[bytes, ...]) -> tuple[tuple[bytes, ...], tuple[bool, ...]]:
    """The names a reply of these header names relays, and which of its headers those are:
    hop-by-hop ones dropped, and a second content-type (what the reply is was decided on
    the first, as aiohttp reads it: the client must not be told two things)."""
    names = _REPLY_NAMES
    lows: list[bytes] = []
    keep: list[bool] = []
    typed = False
    for k in shape:
        try:
            low = names[k]
        except KeyError:
            low = k.lower()
            if low.decode("latin-1") in HOP_BY_HOP:
                low = None
            if len(names) < _MAX_NAMES:
                names[k] = low
        if low == b"content-type":
            low, typed = (None if typed else low), True
        keep.append(low is not None)
        if low is not None:
            lows.append(low)
    return tuple(lows), tuple(keep)


def relayed_headers(resp: aiohttp.ClientResponse, decoded: bool) -> list[tuple[bytes, bytes]]:
    """The reply's headers as the client gets them. `decoded`: its body was coded and
    aiohttp decoded it; it goes out decoded, without its coding and coded length."""
    out = response_headers(resp.raw_headers)
    if decoded:
        out = [(k, v) for k, v in out if k not in (b"content-encoding", b"content-length")]
    return out


class _ForwardedRequest(aiohttp.ClientRequest):
    """aiohttp's request, its headers copied in C. aiohttp's own `update_headers` adds
    them one at a time in a Python loop (to let a Host header replace the URL's), and a
    forwarded request carries the client's twenty or so. These are the same headers in
    the same order: Host from the URL, then the request's as given; a request that
    carries a Host of its own goes aiohttp's way."""

    def update_headers(self, headers: Any) -> None:
        host = self.url.host_port_subcomponent
        if type(headers) is not CIMultiDict or host is None or hdrs.HOST in headers:
            super().update_headers(headers)
            return
        self.headers = CIMultiDict(((hdrs.HOST, host),))
        self.headers.extend(headers)


class CloudBackend:
    """The cloud as a backend: the client's request, forwarded with its own credentials."""

    name = "cloud"

    def __init__(self, cfg: CloudConfig, session: aiohttp.ClientSession, *,
                 observe_headers: Callable[[str, Mapping[str, str]], None] | None = None,
                 deadlines: FirstByteDeadlines | None = None):
        self.cfg = cfg
        self.session = session
        self.base = cfg.url.rstrip("/")
        self.observe_headers = observe_headers
        # How long to wait for the first byte, learned from answers by request size.
        self.deadlines = deadlines or FirstByteDeadlines(cfg.first_byte_floor, cfg.first_byte_timeout,
                                                         cfg.first_byte_multiplier)
        self._urls: dict[tuple[bytes, bytes], URL] = {}

    def capabilities(self) -> Capabilities:
        return CLOUD_CAPABILITIES

    @staticmethod
    def make_session(cfg: CloudConfig) -> aiohttp.ClientSession:
        # No sock_read: aiohttp would arm a timer for every chunk that arrives. The
        # silences of a body are bound by a Silence where it is read (idle_timeout), the
        # head and what is read before anything is relayed by the first-byte Deadline.
        timeout = aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout, sock_connect=cfg.connect_timeout)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        return aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO,
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=2**16,
            request_class=_ForwardedRequest,
        )

    def url_for(self, raw_path: bytes, query: bytes) -> URL:
        key = (raw_path, query)
        url = self._urls.get(key)
        if url is None:
            target = raw_path.decode("latin-1")
            if query:
                target += "?" + query.decode("latin-1")
            url = URL(self.base + target, encoded=True)
            if len(self._urls) < _MAX_NAMES:  # the few paths clients use, not every one
                self._urls[key] = url
        return url

    async def send(self, ex: Exchange, step: Step) -> Attempt:
        expect = ("stream" if ex.stream else "json") if ex.path in _INFERENCE_PATHS else ""
        small = _SMALL_REPLIES.get(ex.path)
        head = ex.read_head()
        headers: Headers = head.reading if expect or small else head.forwarded  # (see request())
        if ex.cloud_headers:
            headers = CIMultiDict(headers)
            for k, v in ex.cloud_headers.items():
                headers.setdefault(k, v)
        body = ex.cloud_body if ex.cloud_body is not None else ex.body
        if step.strip_thinking and ex.request():
            body = orjson.dumps(for_cloud(without_thinking(ex.request())))
        path = ex.cloud_path or ex.raw_path
        return await self.request(ex.method, path, ex.query, headers, body, stream=ex.stream, expect=expect,
                                  account=ex.account, small=small,
                                  answer_tokens=ex.max_tokens if expect == "json" else None)

    async def request(self, method: str, raw_path: bytes, query: bytes, headers: Headers, body: bytes,
                      *, stream: bool = False, expect: str = "", account: str = "",
                      small: tuple[str, type] | None = None, answer_tokens: object = None) -> Reply | Verdict:
        """One try at the cloud. A Reply to commit, or the Verdict to fail over on.

        Before anything reaches the client: the head, for streams the events up to the
        first content, and every other reply whole (a body that is cut, short or not
        what was asked for is a broken upstream, not an answer). `answer_tokens`: a
        non-streamed answer's max_tokens (its head comes once it is written whole)."""
        url = self.url_for(raw_path, query)
        reads = bool(expect or small)
        if reads:
            # nonstop reads these replies (to tell an answer from a broken one, and a
            # stream's first events): they must come as sent, not compressed. Without the
            # header any coding would be acceptable (RFC 9110), so identity is said.
            headers = identity_coded(headers)
        resp: aiohttp.ClientResponse | None = None
        decoded = False  # the reply came coded, and aiohttp decodes it (only one nonstop reads)
        sent = time.perf_counter()
        loop = asyncio.get_running_loop()
        wait = self.deadlines.deadline(len(body))
        try:
            # The first-byte deadline includes connecting: a slow connect is trouble too.
            # aiohttp's own connect timeout still ends a connect that never completes. A
            # non-streamed answer's head comes only once the answer is whole: its wait
            # allows for writing it (routing/deadline.py answer_wait).
            head_wait = answer_wait(wait, answer_tokens, self.cfg.answer_timeout) if expect == "json" else wait
            with Deadline(loop.time() + head_wait + min(CONNECT_SLACK, self.cfg.connect_timeout)):
                # A reply nonstop reads is decoded if it comes compressed though identity was
                # asked for (a proxy or CDN that ignores Accept-Encoding): its headers then
                # lose the coding (relayed_headers). Any other reply's bytes go as they came.
                resp = await self.session.request(method, url, headers=headers, data=body or None, allow_redirects=False,
                                                  auto_decompress=reads)
                decoded = reads and coded(resp)
                if not decoded:
                    relay_reader(resp)
                if self.observe_headers is not None:
                    # What the quota headers teach (utilization, the forecast) decides
                    # nothing about this reply, whose "rejected" is read below: it is
                    # learned once the reply is on its way. The loop runs it before it
                    # reads another request.
                    loop.call_soon(self._observe, account, resp.headers)
                if resp.status >= 400:
                    return await self._refusal(resp, decoded, ours=reads)
                ctype = resp.headers.get("content-type", "").lower()
                wrong = wrong_content_type(expect, ctype)
                if wrong:
                    resp.close()
                    return Verdict(FailureKind.BAD_RESPONSE, True, None, wrong, resp.status)
                verdict = _success_verdict(resp)
                if stream and ctype.startswith("text/event-stream"):
                    peeked = await _peek_stream(resp)
                    if isinstance(peeked, Verdict):
                        resp.close()
                        return peeked
                    if expect:  # learned on the loop's next turn, as the quota headers are
                        loop.call_soon(self.deadlines.record, len(body), time.perf_counter() - sent)
                    usage = Usage()
                    # A Messages stream: until its first content, a failure hands the
                    # message to a local model (see _relay_stream).
                    reply = Reply(resp.status, relayed_headers(resp, decoded), _NO_BODY, self.name, True, usage,
                                  close=resp.close, verdict=verdict, handover=bool(expect) and _bare(peeked.data))
                    reply.body = _relay_stream(resp, peeked.data, usage, self.cfg.idle_timeout, peeked.scan, reply)
                    _let_go_of_head(resp)
                    return reply
                if ctype.startswith("text/event-stream"):
                    usage = Usage()
                    reply = Reply(resp.status, relayed_headers(resp, decoded), _relay_stream(resp, b"", usage, self.cfg.idle_timeout),
                                  self.name, True, usage, close=resp.close, verdict=verdict)
                    _let_go_of_head(resp)
                    return reply
                if expect or small:
                    # The cloud writes an answer whole, its body right behind its head: a
                    # body that stalls is a hung cloud, bound by the first-byte deadline
                    # from its head. (A non-streamed answer's time is not learned: it says
                    # how long the answer was, not how long the cloud takes to start.)
                    if expect == "json" and not resp.content.is_eof():  # (usually the body came with its head)
                        with Deadline(loop.time() + wait):
                            return await self._whole(resp, expect, verdict, small, decoded=decoded)
                    return await self._whole(resp, expect, verdict, small, decoded=decoded)
            return await self._whole(resp, expect, verdict, bodiless=method == "HEAD" or resp.status in (204, 304),
                                     idle=self.cfg.idle_timeout)
        except TimeoutError:
            if resp is not None:
                resp.close()
                if resp.status >= 400:  # a refusal whose body never came: its head says what it is
                    return self._refused(resp, None, decoded)
            return network_failure(TimeoutError(), timeout=True)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            forget_tracebacks(exc)
            if resp is not None:
                resp.close()
            return network_failure(exc)

    def _observe(self, account: str, headers: Mapping[str, str]) -> None:
        assert self.observe_headers is not None
        try:
            self.observe_headers(account, headers)
        except Exception:  # a reply's headers never take a request down: said, and skipped
            log.exception("reading the cloud's quota headers failed")

    async def _refusal(self, resp: aiohttp.ClientResponse, decoded: bool, *, ours: bool = False) -> Reply | Verdict:
        try:
            err: bytes | None = await read_limited(resp, MAX_ERROR_BODY)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            forget_tracebacks(exc)
            err = None  # a refusal whose body was cut: its status and headers still say what it is
        resp.release()
        if ours and err is not None and not _an_error_document(err):
            # On an API nonstop speaks for (Messages, counts, models): a refusal whose body
            # is empty or not the API's error JSON (a proxy's HTML page) reaches the
            # client in its own protocol, saying what came.
            return self._refused(resp, err, decoded, said=_what_came(err))
        return self._refused(resp, err, decoded)

    def _refused(self, resp: aiohttp.ClientResponse, err: bytes | None, decoded: bool = False,
                 said: str = "") -> Reply | Verdict:
        """A refusal (status >= 400) as a Verdict to fail over on, or a Reply to relay.
        `err`: its body, None when it never came whole (then nonstop says so in its
        place). `said`: the body was not the API's error JSON, and this says what it was
        (nonstop's error goes in its place). `decoded`: see relayed_headers."""
        verdict = classify_response(resp.status, _lower(resp.headers), err or b"", time.time(),
                                    failover_on_auth=self.cfg.failover_on_auth)
        headers_out = relayed_headers(resp, decoded)
        if verdict is not None and verdict.failover:
            return verdict
        if err is None or said:
            err = anthropic_error(resp.status, f"the cloud answered {resp.status} with {said}" if said
                                  else f"the cloud's {resp.status} reply was cut before its body ended")
            headers_out = [(k, v) for k, v in headers_out if k not in (b"content-length", b"content-type", b"content-encoding")]
            headers_out.append((b"content-type", b"application/json"))
        return Reply(resp.status, headers_out, single(err), self.name, False,
                     Usage(error=verdict.describe() if verdict else ""), verdict=verdict)

    async def _whole(self, resp: aiohttp.ClientResponse, expect: str, verdict: Verdict | None,
                     small: tuple[str, type] | None = None, *, bodiless: bool = False,
                     idle: float | None = None, decoded: bool = False) -> Reply | Verdict:
        """A reply read whole before its head goes to the client: bounded by MAX_WHOLE_BODY,
        and by the first-byte deadline for an answer (`expect`) or a small reply
        (`small`, from _SMALL_REPLIES, the caller's Deadline), by `idle` seconds of silence
        for anything else. `bodiless`: a reply that has no body whatever its
        content-length says (to HEAD; a 204, a 304)."""
        try:
            if idle is None:
                data = await read_limited(resp, MAX_WHOLE_BODY + 1)
            else:
                with Silence(idle) as silence:
                    data = await read_limited(resp, MAX_WHOLE_BODY + 1, silence)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            forget_tracebacks(exc)
            return Verdict(FailureKind.BAD_RESPONSE, True, None, f"the cloud's reply was cut ({type(exc).__name__})", resp.status)
        finally:
            resp.release()
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) != len(data) and not bodiless and not decoded:
            return Verdict(FailureKind.BAD_RESPONSE, True, None,
                           f"the cloud's reply was cut: {len(data)} of {declared} bytes", resp.status)
        if len(data) > MAX_WHOLE_BODY:
            return Verdict(FailureKind.BAD_RESPONSE, True, None, "the cloud's reply is larger than nonstop relays whole", resp.status)
        usage = Usage(complete=True)
        problem = ""
        if expect == "json":
            problem = _not_a_message(data, usage)
        elif small is not None and resp.status == 200:
            problem = _not_a_small_reply(data, small)
        if problem:
            return Verdict(FailureKind.BAD_RESPONSE, True, None, problem, resp.status)
        return Reply(resp.status, relayed_headers(resp, decoded), single(data), self.name, False, usage, verdict=verdict)


def _an_error_document(body: bytes) -> bool:
    """Whether a refusal's body is the API's error JSON: an object with an `error`."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and "error" in doc


def _what_came(body: bytes) -> str:
    """A refusal's body that is not the API's error JSON, in a few words for the client."""
    if not body.strip():
        return "an empty body"
    text = redact(body[:300].decode("utf-8", "replace"))
    return f"a body that is not the API's error JSON: {' '.join(text.split())[:200]!r}"


def _not_a_message(data: bytes, usage: Usage) -> str:
    """Why a 200 to an inference request is not an answer ("" when it is one)."""
    if not data:
        return "the cloud's reply had an empty body"
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "the cloud's reply was not valid JSON (cut or garbled)"
    if not isinstance(doc, dict) or doc.get("type") != "message" or not isinstance(doc.get("content"), list):
        return "the cloud's reply was JSON but not a message"
    u = doc.get("usage")
    if isinstance(u, dict):
        usage.input_tokens = token_count(u.get("input_tokens")) or 0
        usage.output_tokens = token_count(u.get("output_tokens")) or 0
    stop = doc.get("stop_reason")
    usage.stop_reason = stop if isinstance(stop, str) else ""
    return ""


def _not_a_small_reply(data: bytes, small: tuple[str, type]) -> str:
    """Why a 200 to a token count or a model list is not one ("" when it is)."""
    field, kind = small
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "the cloud's reply was empty or not valid JSON (cut or garbled)"
    value = doc.get(field) if isinstance(doc, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        return f"the cloud's reply was JSON without its {field!r}"
    if isinstance(value, int) and value < 0:
        return f"the cloud's reply had a negative {field!r}"
    return ""


def _success_verdict(resp: aiohttp.ClientResponse) -> Verdict | None:
    """classify_response for a success, without copying the headers when the quota
    status says there is nothing to learn (one value, not "rejected")."""
    status = resp.headers.getall(_UNIFIED_STATUS, ())
    if "rejected" not in status:
        return None
    headers = _lower(resp.headers)
    headers[_UNIFIED_STATUS] = "rejected"  # whichever copy said so
    return classify_response(resp.status, headers, b"", time.time())


# What a stream's response holds of its head once the head is read (_let_go_of_head).
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _let_go_of_head(resp: aiohttp.ClientResponse) -> None:
    """A stream's response keeps its head for as long as its body is read: the cloud's
    thirty-odd headers twice (as bytes, and as a CIMultiDict of str), a few KB of objects
    a stream. nonstop has read what it needs of them (the verdict, the content type, the
    quota headers: their reader holds the CIMultiDict it was given until it runs) and
    relays its own copy (Reply.headers), so the response lets them go: it reads on, is
    released and closed as before, and says it has no headers if asked. (aiohttp's own
    attributes, set by ClientResponse.start: tests/unit/backends/test_cloud_memory.py
    fails if they are no longer where this looks.)"""
    resp._headers = _NO_HEADERS
    resp._raw_headers = ()
    cache = getattr(resp, "_cache", None)  # (aiohttp's `reify` keeps what the properties gave)
    if isinstance(cache, dict):
        cache.pop("headers", None)
        cache.pop("raw_headers", None)


def _lower(headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class _Scanned(NamedTuple):
    """`_scan` of the first `upto` bytes of a stream's first reads: their whole events."""

    bad: int
    notable: list[tuple[bytes, int]]
    upto: int


class _Peeked(NamedTuple):
    """What a stream's first reads held (through its first content event), and `_scan` of
    their whole events when the peek read them so (the relay's first cut is those bytes,
    and need not read them again)."""

    data: bytes
    scan: _Scanned | None = None


async def _peek_stream(resp: aiohttp.ClientResponse) -> _Peeked | Verdict:
    """Read until the first content event. An error before it means: fail over, and so
    does a stream with no content in its first MAX_BEFORE_CONTENT bytes."""
    decoder = SSEDecoder()
    buf = b""
    fast = True  # LF-framed plain events so far: read by _peek_plain, not the decoder
    while True:
        if len(buf) > MAX_BEFORE_CONTENT:
            return Verdict(FailureKind.BAD_RESPONSE, True, None,
                           f"no content in the stream's first {MAX_BEFORE_CONTENT // 1024} KiB")
        chunk = await resp.content.readany()
        if not chunk:
            return Verdict(FailureKind.BAD_RESPONSE, True, None, "stream ended before any content")
        buf = buf + chunk if buf else chunk
        if fast:
            seen = _peek_plain(buf)
            if seen is None and len(buf) <= MAX_EVENT:
                continue
            if seen is not None and seen is not False:
                return seen
            # Framed otherwise, or no deciding event in MAX_EVENT bytes: the decoder reads
            # them from the start (and refuses an event past its limit, as it always has).
            fast = False
            chunk = buf
        for ev in _events_until_content(decoder, chunk):
            if ev.event == "error":
                return classify_stream_error(ev.data)
            if first_malformed_event(b"data: " + ev.data.encode()) >= 0:
                return _malformed_before_content(ev.event)
            if ev.event in _CONTENT_EVENTS:
                return _error_in_hand(buf, _notable(buf)) or _Peeked(buf)


# The first event line that decides a peek: an error, or content.
_DECIDING = re.compile(rb"event: ?(error|content_block_start|content_block_delta|content_block_stop|message_delta|message_stop)\n")


def _peek_plain(buf: bytes) -> _Peeked | Verdict | None | Literal[False]:
    """_peek_stream's reading of `buf` without the SSE decoder, for the stream the cloud
    sends: LF-framed, each event one `event:` line and one `data:` line. What it decides
    is what the decoder's reading decides. None: no deciding event (an error, or content)
    yet, read on; False: the bytes are framed otherwise (CR line ends, comments, events
    without a name or with several data lines...), and the decoder reads them."""
    if CR in buf:
        return False
    end = buf.rfind(b"\n\n") + 2  # the complete events' end (1: there are none)
    if end < 2:
        return None
    pos = 0
    while True:  # the first deciding event line, at the start of a line
        m = _DECIDING.search(buf, pos, end)
        if m is None or m.start() == 0 or buf[m.start() - 1] == 0x0A:
            break
        pos = m.end()
    upto = end if m is None else buf.find(b"\n\n", m.end()) + 2
    events = buf[:upto]  # the events up to the deciding one, and it
    n = events.count(b"\n\n")
    if events.count(b"\n") != 3 * n or events.count(b"event:") != n or events.count(b"\ndata:") != n - (not events.startswith(b"event:")):
        return False
    # The complete events read (more than `events` when the first read holds more): the
    # relay's first cut is these bytes, and need not read them again. A malformed event
    # after the deciding one is the relay's to answer.
    whole = buf if end == len(buf) else buf[:end]
    found = _scan(whole)
    bad = found[0] if found[0] < upto else -1
    if m is None:
        return None if bad < 0 else _malformed_before_content(_name_at(events, bad))
    start = events.rfind(b"\n\n", 0, m.start()) + 2 if m.start() > 1 else 0  # the deciding event's
    if 0 <= bad < start:
        return _malformed_before_content(_name_at(events, bad))
    if m.group(1) in _ERROR_EVENTS:
        return classify_stream_error(_error_data(events, start).decode("utf-8", "replace"))
    if bad >= 0:
        return _malformed_before_content(_name_at(events, bad))
    notable = found[1]
    if whole is not buf:  # and in the part of an event read so far (an error named there counts)
        notable = notable + [(name, at + end) for name, at in _notable(buf[end:])]
    return _error_in_hand(buf, notable) or _Peeked(buf, _Scanned(*found, end))


def _error_in_hand(buf: bytes, notable: list[tuple[bytes, int]]) -> Verdict | None:
    """The verdict on an error event already read past the first content (`notable`:
    `_notable(buf)`): it ends the stream before the client has a byte of it, so failing
    over costs nothing now."""
    for name, at in notable:
        if name in _ERROR_EVENTS:
            return classify_stream_error(_error_data(buf, at).decode("utf-8", "replace"))
    return None


def _name_at(events: bytes, at: int) -> str:
    """The name of the plain event that starts at `at` (its one `event:` line)."""
    for line in events[at : events.find(b"\n\n", at)].split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].removeprefix(b" ").decode("utf-8", "replace")
    return "message"


def _malformed_before_content(name: str) -> Verdict:
    return Verdict(FailureKind.BAD_RESPONSE, True, None, f"malformed {name} event before any content")


def _events_until_content(decoder: SSEDecoder, chunk: bytes) -> Iterator[SSEEvent]:
    """The chunk's events, decoded one at a time, so that the caller can stop at the
    first content event without decoding the rest (the cloud's first read may hold the
    whole reply). The decoder is incremental: feeding it piece by piece gives the same
    events as feeding the chunk whole."""
    if CR in chunk:  # CR or CRLF framing: the decoder's own line handling, in one go
        yield from decoder.feed(chunk)
        return
    pos = 0
    while True:
        end = chunk.find(b"\n\n", pos)
        if end < 0:
            yield from decoder.feed(chunk[pos:])
            return
        yield from decoder.feed(chunk[pos : end + 2])
        pos = end + 2


def _scan(events: bytes) -> tuple[int, list[tuple[bytes, int]]]:
    """What a relay checks in whole events before they go on, in one pass: where the first
    event with a data line that is not one JSON object starts (first_malformed_event: -1
    for none), and the notable events (_notable). Only when a data line is malformed is
    the chunk split into Python objects, to find the event that holds it; CR-framed
    events are read by first_malformed_event."""
    if CR in events:
        return first_malformed_event(events), _notable(events)
    notable = []
    if events.startswith(b"data:"):
        if _GOOD_FIRST.match(events) is None:
            return first_malformed_event(events), _notable(events)
    elif (m := _NOTABLE.match(events)) is not None:
        notable.append((m.group(1), m.end()))
    for m in _SCAN.finditer(events):
        name = m.group(1)
        if name is None:  # a malformed data line
            return first_malformed_event(events), _notable(events)
        notable.append((name, m.end() + 1))
    return -1, notable


def _ended(data: bytes, usage: Usage, notable: list[tuple[bytes, int]] | None = None) -> bool:
    """Whether `data` (whole events) holds the event that ends a stream. `message_stop`
    completes the answer; an `error` event ends it incomplete, with what the cloud said.
    `notable`: `_notable(data)`, when the caller has it."""
    found = _notable(data) if notable is None else notable
    for name, at in found:
        if name in _ERROR_EVENTS:
            etype, message = error_of(_error_data(data, at))
            usage.error = "the cloud ended the stream with an error: " + (f"{etype or 'error'}: {message[:200]}".rstrip(": "))
            return True
    if any(name in _STOP_EVENTS for name, _ in found):
        usage.complete = True
        return True
    return False


def _error_data(data: bytes, at: int) -> bytes:
    """The data of the `error` event whose data starts at `at` (its data lines, joined)."""
    end = data.find(b"\n\n", at)
    return b"".join(line[5:] for line in data[at : end if end > 0 else None].split(b"\n") if line.startswith(b"data:"))


def _read_usage(data: bytes, usage: Usage) -> None:
    m = _IN.search(data)
    if m:
        usage.input_tokens = token_count(int(m.group(1))) or usage.input_tokens
    m = _OUT.search(data)
    if m:
        usage.output_tokens = token_count(int(m.group(1))) or usage.output_tokens
    m = _STOP.search(data)
    if m:
        usage.stop_reason = m.group(1).decode()


# How long the end of a stream's body is waited for after its last event: long enough for
# the chunked terminator to follow it (so the connection is kept for the next request),
# short enough that a cloud holding its connection open does not hold the client.
DRAIN_WAIT = 0.25
DRAIN_MAX = 64 * 1024


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read what is left of a body after its last event, a little and briefly: a body read
    to its end leaves its connection to the pool; one that is not is closed on release."""
    if resp.content.at_eof():  # the usual case: the terminator came with the last event
        return
    left = DRAIN_MAX
    try:
        async with asyncio.timeout(DRAIN_WAIT):
            while left > 0 and not resp.content.at_eof():
                chunk = await resp.content.read(left)
                if not chunk:
                    break
                left -= len(chunk)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        forget_tracebacks(exc)


async def _relay_stream(resp: aiohttp.ClientResponse, first: bytes, usage: Usage, idle: float,
                        first_scan: _Scanned | None = None,
                        reply: Reply | None = None) -> AsyncIterator[bytes]:
    """The cloud's stream, cut at event boundaries (LF-framed), until the event that ends
    it: the client's response ends there, even if the cloud holds its connection open.
    A read that waits `idle` seconds ends it too. `first_scan`: `_scan` of `first`'s whole events,
    when the peek has it. `reply`: the Reply this is the body of. While the client has
    no more than a message's start and an empty text or thinking block (the cloud's usual first
    read), a failure (an error event, a cut, a silence) hands the message to a local
    model (reply.instead, set by the pipeline), which goes on with that block; the first
    content lets the hand-over go."""
    held = b""
    skip_lf = False  # the read before ended in a CR that was a blank line's end
    # The time spent waiting on reads since the last whole event, while part of one is
    # held: a cloud that trickles an event (a byte now and then) re-arms the silence timer
    # with every read, so that wait is added up here and bound by `idle` too.
    unfinished = 0.0
    bare = reply if reply is not None and reply.handover and reply.instead is not None else None
    reply = None  # (held as `bare` while the hand-over may come: not for the stream's life)
    shown = end = b""  # when the stream fails: what came before its end, and that end
    failure: Verdict | None = None  # an error event's verdict
    try:
        with Silence(idle) as silence:
            pending = first
            if bare is None:
                first = b""  # read again only by a hand-over: not kept for the stream's life
            it = resp.content.iter_any().__aiter__()
            while True:
                if not held and not skip_lf and _plain_read(pending):
                    # The usual read: whole plain events, each checked by the match, with
                    # nothing held before them and nothing to record: relayed as it came.
                    first_scan = None
                    if bare is not None and pending is not first and _ONLY_PINGS.fullmatch(pending) is None:
                        bare.instead = None  # content came: the hand-over (and its request) goes
                        bare, first = None, b""
                    yield pending
                else:
                    if skip_lf and pending.startswith(b"\n"):  # the LF of that CRLF
                        pending = pending[1:]
                    data = lf_framed(held + pending if held else pending)
                    # A CR right after a line's end ends a blank line, whether an LF follows or not.
                    skip_lf = data.endswith(b"\n\r")
                    if skip_lf:
                        data = data[:-1] + b"\n"
                    cut = complete_events_end(data)
                    known, first_scan = first_scan, None  # the peek's: for the first read only
                    if cut:
                        out = data[:cut]
                        bad, notable = (known.bad, known.notable) if known is not None and cut == known.upto else _scan(out)
                        if bad >= 0:
                            usage.error = "the cloud sent a malformed event mid-stream"
                            shown = out[:bad]
                            end = anthropic_error_event("The cloud sent a malformed event; the response is incomplete.", "api_error")
                            break
                        for name, at in notable:
                            if name in _USAGE_EVENTS:
                                j = out.find(b"\n\n", at)
                                _read_usage(out[at : j if j > 0 else None], usage)
                        ended = _ended(out, usage, notable)
                        if ended and bare is not None and usage.error:  # an error event: the hand-over may take it
                            shown, end, failure = _split_at_error(out, notable)
                            break
                        # Complete, and the body read to its end: nothing after this chunk
                        # waits on the cloud, and it goes out with the response's end.
                        usage.final = ended and usage.complete and resp.content.at_eof()
                        if bare is not None and pending is not first and _ONLY_PINGS.fullmatch(out) is None:
                            bare.instead = None
                            bare, first = None, b""
                        yield out
                        if ended:
                            await _drain(resp)
                            return
                        held = data[cut:]
                        unfinished = 0.0
                    else:
                        held = data
                    if len(held) > MAX_EVENT:
                        usage.error = "the cloud sent an event larger than nonstop relays"
                        end = anthropic_error_event("The cloud sent an event too large to relay; the response is incomplete.", "api_error")
                        break
                silence.reading()
                waiting = time.monotonic() if held else 0.0
                try:
                    pending = await it.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    silence.idle()
                if waiting:
                    unfinished += time.monotonic() - waiting
                    if unfinished > idle:
                        usage.error = f"the cloud sent no whole event for {idle:g} s"
                        end = anthropic_error_event("The cloud stream stalled mid-event; the response is incomplete.",
                                                    "api_error")
                        break
            if not end:
                # What is left at the end is an incomplete event: forward it only when it
                # is a whole final event missing its blank line, never a cut-off one.
                if held.endswith(b"\r"):  # a CR kept for the LF that never came ends its line
                    held = held[:-1] + b"\n"
                if held.strip() and held.endswith(b"\n") and any(_event_lines(held, _TERMINAL)):
                    last = held.rstrip(b"\n") + b"\n\n"
                    if not (_ended(last, usage) and bare is not None and usage.error):
                        yield last
                        return
                    shown, end, failure = _split_at_error(last, _notable(last))
                else:
                    usage.error = "cloud stream ended without message_stop"
                    end = anthropic_error_event("The cloud stream ended early; the response is incomplete.", "api_error")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        forget_tracebacks(exc)
        why = f"silent for {idle:g} s" if type(exc) is TimeoutError else type(exc).__name__
        usage.error = f"cloud stream failed: {why}"
        end = anthropic_error_event(f"The cloud stream failed mid-response ({why}); the response is incomplete.", "api_error")
    finally:
        resp.release()
        if bare is not None and not end:  # (the client left): the hand-over holds the request
            bare.instead = None
    if bare is not None:
        # Asked at most once, and let go here whatever comes (a client that leaves while
        # the pings go out, a start that was more than it seemed): it holds the request.
        instead, bare.instead = bare.instead, None
        if instead is not None and _ONLY_PINGS.fullmatch(shown) is not None and (start := _bare_start(first)) is not None:
            failure = failure or Verdict(FailureKind.BAD_RESPONSE, True, None, usage.error)
            async for chunk in _handed_over(bare, instead, failure, *start, shown, end):
                yield chunk
            return
        del instead
    yield shown + end if shown else end


# A reply's body until its own is made (which needs the reply): never read.
_NO_BODY: AsyncIterator[bytes] = single(b"")
# A read of nothing but pings, each named (`event: ping`) and LF-framed as the cloud
# writes them. A read of anything else (an unnamed or CRLF-framed ping too) counts as
# content and lets the hand-over go: the safe side, the stream then runs as before.
_ONLY_PINGS = re.compile(rb"(?:event: ?ping\ndata:[^\n]*\n\n)*")
# The empty block a bare start ends with, as the cloud writes it (spaces allowed): a text
# block, or (thinking on) a thinking block, with or without its empty signature.
_EMPTY_BLOCKS = ({"type": "text", "text": ""}, {"type": "thinking", "thinking": ""},
                 {"type": "thinking", "thinking": "", "signature": ""})


def _bare(first: bytes) -> bool:
    """Whether a stream's first events may be no more than a message's start and an
    empty block, cheaply (no delta, no block's end): _bare_start reads them when a
    failure asks."""
    return first.find(b"_delta") < 0 and first.find(b"content_block_stop") < 0


def _bare_start(first: bytes) -> tuple[dict[str, Any], str] | None:
    """The usage of a message whose first events (`first`, whole events) are its start,
    pings, and the start of an empty text or thinking block at index 0, and nothing else,
    with that block's type; None when they are anything more (the client has content then)."""
    usage: dict[str, Any] | None = None
    block = ""
    for ev in SSEDecoder().feed(lf_framed(first)):
        try:
            data = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        kind = data.get("type", ev.event)
        if kind == "ping":
            continue
        if kind == "message_start" and usage is None and not block:
            message = data.get("message")
            got = message.get("usage") if isinstance(message, dict) else None
            usage = got if isinstance(got, dict) else {}
        elif kind == "content_block_start" and usage is not None and not block:
            empty, index = data.get("content_block"), data.get("index")
            if type(index) is not int or index != 0 or empty not in _EMPTY_BLOCKS:  # (index: not False, not 0.0)
                return None
            block = empty["type"]
        else:
            return None
    return (usage, block) if usage is not None and block else None


def _split_at_error(out: bytes, notable: list[tuple[bytes, int]]) -> tuple[bytes, bytes, Verdict]:
    """`out` before its first error event, from it on, and what the error says."""
    at = next(at for name, at in notable if name in _ERROR_EVENTS)
    start = out.rfind(b"\n\n", 0, at) + 2  # (1: the error is the first event)
    start = max(start, 0) if start > 1 else 0
    return out[:start], out[start:], classify_stream_error(_error_data(out, at).decode("utf-8", "replace"))


async def _handed_over(reply: Reply, instead: Callable[[Verdict], Awaitable[Reply | None]], failure: Verdict,
                       start_usage: dict[str, Any], block: str, shown: bytes, end: bytes) -> AsyncIterator[bytes]:
    """The rest of a message that the cloud began with an empty `block` (text or
    thinking) and then failed (`failure`), after `shown` (pings): a local model's stream
    in that block's place (the pipeline's choice, `instead`, reply's hand-over; its first
    block of the same type goes on in it), or `end`, the cloud's failure as the client is
    to get it, when none can take it."""
    if shown:
        yield shown
    taken = await instead(failure)
    del instead  # it holds the request
    if taken is None:
        yield end
        return
    log.warning("the cloud's stream failed before any content (%s); %s goes on with it", failure.detail, taken.backend)
    tracker = StreamTracker()
    tracker.blocks[0] = block
    tracker.open.add(0)
    tracker.start_usage = start_usage
    async for chunk in taken_over(reply, taken, f"the cloud failed after its stream began ({failure.detail})",
                                  splice(tracker, taken)):
        yield chunk
