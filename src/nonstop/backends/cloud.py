"""The cloud passthrough: bytes in, bytes out, with the client's own credentials.

Only the response head and, for streams, the events before the first content are
examined (to fail over before committing). After that, chunks are relayed as they come,
cut only at event boundaries so that a stream that dies can still be closed with a
well-formed `event: error`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from nonstop.backends.base import HOP_BY_HOP, OWN_REQUEST_HEADERS, Reply, Usage, single
from nonstop.config import CloudConfig
from nonstop.routing.classify import (
    FailureKind,
    Verdict,
    classify_response,
    classify_stream_error,
    network_failure,
)
from nonstop.wire.errors import anthropic_error_event
from nonstop.wire.framing import complete_events_end, first_malformed_event, wrong_content_type
from nonstop.wire.sse import SSEDecoder

MAX_ERROR_BODY = 1024 * 1024
# Usage for the request log, read with regexes from the few places it appears, so the
# stream itself is never parsed.
_IN = re.compile(rb'"input_tokens"\s*:\s*(\d+)')
_OUT = re.compile(rb'"output_tokens"\s*:\s*(\d+)')
_STOP = re.compile(rb'"stop_reason"\s*:\s*"([a-z_]+)"')
_SKIP_AUTO = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")
_CONTENT_EVENTS = frozenset({"content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"})


def forward_headers(raw: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in raw:
        name = k.decode("latin-1")
        low = name.lower()
        if low in HOP_BY_HOP or low in OWN_REQUEST_HEADERS:
            continue
        out.add(name, v.decode("latin-1"))
    return out


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in raw if k.lower().decode("latin-1") not in HOP_BY_HOP]


class CloudBackend:
    name = "cloud"

    def __init__(self, cfg: CloudConfig, session: aiohttp.ClientSession):
        self.cfg = cfg
        self.session = session
        self.base = cfg.url.rstrip("/")

    @staticmethod
    def make_session(cfg: CloudConfig) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=cfg.connect_timeout, sock_connect=cfg.connect_timeout, sock_read=cfg.idle_timeout
        )
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        return aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO,
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=2**16,
        )

    def url_for(self, raw_path: bytes, query: bytes) -> URL:
        target = raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        return URL(self.base + target, encoded=True)

    async def send(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: CIMultiDict[str],
        body: bytes,
        *,
        peek_stream: bool,
        failover_on_auth: bool,
        observe_headers=None,
        expect: str = "",
    ) -> Reply | Verdict:
        """One try at the cloud. Returns a Reply to commit, or the Verdict to fail over on."""
        url = self.url_for(raw_path, query)
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.cfg.connect_timeout + self.cfg.first_byte_timeout):
                resp = await self.session.request(method, url, headers=headers, data=body or None, allow_redirects=False)
                if observe_headers is not None:
                    observe_headers(resp.headers)
                if resp.status >= 400:
                    err = await _read_limited(resp, MAX_ERROR_BODY)
                    verdict = classify_response(
                        resp.status, _lower(resp.headers), err, time.time(), failover_on_auth=failover_on_auth
                    )
                    if verdict is not None and verdict.failover:
                        resp.release()
                        return verdict
                    headers_out = response_headers(resp.raw_headers)
                    status = resp.status
                    resp.release()
                    return Reply(status, headers_out, single(err), self.name, False, Usage(error=verdict.describe() if verdict else ""))
                note_verdict = classify_response(resp.status, _lower(resp.headers), b"", time.time())
                note = note_verdict.describe() if note_verdict else ""
                ctype = resp.headers.get("content-type", "")
                wrong = wrong_content_type(expect, ctype)
                if wrong:
                    resp.close()
                    return Verdict(FailureKind.BAD_RESPONSE, True, None, wrong, resp.status)
                if peek_stream and ctype.startswith("text/event-stream"):
                    peeked = await _peek_stream(resp)
                    if isinstance(peeked, Verdict):
                        resp.close()
                        return peeked
                    first = peeked
                else:
                    first = b""
        except TimeoutError:
            if resp is not None:
                resp.close()
            return network_failure(TimeoutError(), timeout=True)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            if resp is not None:
                resp.close()
            return network_failure(exc)
        usage = Usage()
        is_stream = ctype.startswith("text/event-stream")
        body_iter = _relay_stream(resp, first, usage) if is_stream else _relay_plain(resp, usage)
        return Reply(resp.status, response_headers(resp.raw_headers), body_iter, self.name, is_stream, usage, close=resp.close, note=note)


def _lower(headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(min(65536, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def _peek_stream(resp: aiohttp.ClientResponse) -> bytes | Verdict:
    """Read until the first content event. An error before it means: fail over."""
    decoder = SSEDecoder()
    buf = bytearray()
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return Verdict(FailureKind.BAD_RESPONSE, True, None, "stream ended before any content")
        buf += chunk
        for ev in decoder.feed(chunk):
            if ev.event == "error":
                return classify_stream_error(ev.data)
            if first_malformed_event(b"data: " + ev.data.encode()) >= 0:
                return Verdict(FailureKind.BAD_RESPONSE, True, None, f"malformed {ev.event} event before any content")
            if ev.event in _CONTENT_EVENTS:
                return bytes(buf)


def _read_usage(data: bytes, usage: Usage) -> None:
    m = _IN.search(data)
    if m:
        usage.input_tokens = int(m.group(1))
    m = _OUT.search(data)
    if m:
        usage.output_tokens = int(m.group(1))
    m = _STOP.search(data)
    if m:
        usage.stop_reason = m.group(1).decode()


async def _relay_plain(resp: aiohttp.ClientResponse, usage: Usage) -> AsyncIterator[bytes]:
    tail = b""
    try:
        async for chunk in resp.content.iter_any():
            tail = (tail + chunk)[-2048:]
            yield chunk
        usage.complete = True
        _read_usage(tail, usage)
    finally:
        resp.release()


async def _relay_stream(resp: aiohttp.ClientResponse, first: bytes, usage: Usage) -> AsyncIterator[bytes]:
    held = b""
    seen_stop = False
    try:
        pending = first
        it = resp.content.iter_any().__aiter__()
        while True:
            data = held + pending if held else pending
            cut = complete_events_end(data)
            if cut:
                out = data[:cut]
                bad = first_malformed_event(out)
                if bad >= 0:
                    if bad:
                        yield out[:bad]
                    usage.error = "the cloud sent a malformed event mid-stream"
                    yield anthropic_error_event("The cloud sent a malformed event; the response is incomplete.", "api_error")
                    return
                for marker in (b"event: message_start", b"event: message_delta"):
                    i = out.find(marker)
                    if i >= 0:
                        j = out.find(b"\n\n", i)
                        _read_usage(out[i : j if j > 0 else None], usage)
                if not seen_stop and (b"event: message_stop" in out or b"event: error" in out):
                    seen_stop = True
                yield out
                held = data[cut:]
            else:
                held = data
            try:
                pending = await it.__anext__()
            except StopAsyncIteration:
                break
        # What is left at the end is an incomplete event: forward it only when it is a
        # whole final event missing its blank line, never a cut-off one.
        if held.strip() and held.endswith(b"\n") and (b"event: message_stop" in held or b"event: error" in held):
            seen_stop = True
            yield held + b"\n"
        if seen_stop:
            usage.complete = True
        else:
            usage.error = "cloud stream ended without message_stop"
            yield anthropic_error_event("The cloud stream ended early; the response is incomplete.", "api_error")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        usage.error = f"cloud stream failed: {type(exc).__name__}"
        yield anthropic_error_event(f"The cloud stream failed mid-response ({type(exc).__name__}); the response is incomplete.", "api_error")
    finally:
        resp.release()
