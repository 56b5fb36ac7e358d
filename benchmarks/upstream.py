"""A fast fake upstream for the benchmarks: the Anthropic cloud and the local model servers.

A raw asyncio protocol on uvloop with the httptools parser (the same parser nonstop's
server uses), answering from prebuilt bytes, so that it costs far less per request than
the gateway it measures. The benchmark report shows its CPU time per request next to
nonstop's.

One process can listen on several ports, each with its own default mode:

    python benchmarks/upstream.py --listen 127.0.0.1:9100=ok --listen 127.0.0.1:9101=limit-past

A request header `x-fake-mode: MODE` overrides the mode for one request. Like the real
cloud, it parses every JSON body it is sent (a body that is not JSON gets a 400), and every
reply carries the `anthropic-ratelimit-unified-*` headers. `x-bench-tag: T` counts the
request under "tag T" in /_stats (which instance reached the cloud, and how often; the time
a "limit" 429 went out is under "limited_at"). `x-fake-delay: SECONDS` holds the reply that
long (a probe that takes a while).

Modes for POST /v1/messages:
    ok          a Messages reply; streamed when the body asks for `"stream": true`
    limit       429, subscription limit (five_hour), unified reset one hour from now
                (`x-fake-reset-in: SECONDS` for another deadline)
    limit-past  429, subscription limit, unified reset one second ago
    slow        a stream that sends its head, then one delta every `x-fake-interval`
                seconds (default 1, at least 0.005) for `x-fake-hold` seconds (default 30,
                at most 600): held streams, or a model's pace
    paced:I:N   a stream of exactly N deltas, one due every I seconds after its head (a
                local model producing 1/I tokens a second; as a port's mode, since nonstop
                does not pass the client's headers to a local server)
Other routes: POST /v1/messages/count_tokens, GET /v1/models, POST /v1/chat/completions
(OpenAI format, streamed or not), GET /_stats (requests served, per mode), anything else
200 `{}`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
import time
from typing import Any

import httptools
import orjson

STREAM_DELTAS = 30
MAX_HOLD = 600.0
_WORD_TEXT = "the gateway relays each event as it comes and adds almost nothing to the request path"
_WORDS = _WORD_TEXT.split()


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _message(model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    return {
        "id": "msg_01BenchUpstream000000000", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Done: the test passes now."}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12850, "output_tokens": 9, "cache_read_input_tokens": 0,
                  "cache_creation_input_tokens": 0},
    }


def _stream_head(model: str = "claude-sonnet-4-5") -> bytes:
    start = {"type": "message_start", "message": {**_message(model), "content": [], "stop_reason": None,
                                                   "usage": {"input_tokens": 12850, "output_tokens": 1}}}
    return (_sse("message_start", start) + _sse("ping", {"type": "ping"})
            + _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}))


def _delta(i: int) -> bytes:
    word = _WORDS[i % len(_WORDS)]
    return _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": (" " if i else "") + word}})


def _stream_tail(n: int) -> bytes:
    return (_sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            + _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                     "usage": {"output_tokens": n}})
            + _sse("message_stop", {"type": "message_stop"}))


def quota_headers(now: float) -> bytes:
    """The `anthropic-ratelimit-unified-*` set the cloud sends on every reply to a
    subscription (docs: wire-facts.md §2), with the other headers of its replies."""
    five, seven = int(now // 3600 * 3600 + 3 * 3600), int(now // 86400 * 86400 + 4 * 86400)
    return (b"anthropic-ratelimit-unified-status: allowed\r\n"
            b"anthropic-ratelimit-unified-5h-status: allowed\r\n"
            b"anthropic-ratelimit-unified-5h-reset: %d\r\n"
            b"anthropic-ratelimit-unified-5h-utilization: 0.42\r\n"
            b"anthropic-ratelimit-unified-7d-status: allowed\r\n"
            b"anthropic-ratelimit-unified-7d-reset: %d\r\n"
            b"anthropic-ratelimit-unified-7d-utilization: 0.17\r\n"
            b"anthropic-ratelimit-unified-representative-claim: five_hour\r\n"
            b"anthropic-ratelimit-unified-fallback-percentage: 0.5\r\n"
            b"anthropic-ratelimit-unified-reset: %d\r\n"
            b"anthropic-ratelimit-unified-overage-status: rejected\r\n"
            b"anthropic-ratelimit-unified-overage-disabled-reason: org_level_disabled\r\n"
            b"anthropic-organization-id: 00000000-bench-4000-8000-000000000000\r\n"
            b"request-id: req_011BenchUpstream0000000\r\n"
            b"strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n"
            b"via: 1.1 google\r\n"
            b"cf-cache-status: DYNAMIC\r\n"
            b"x-robots-tag: none\r\n"
            b"server: cloudflare\r\n"
            b"cf-ray: 9a0000000bench00-SJC\r\n") % (five, seven, five)


QUOTA_OK = quota_headers(time.time())


def _head(status: str, ctype: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    h = b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + ctype + b"\r\n" + extra
    if length is None:
        h += b"transfer-encoding: chunked\r\n"
    else:
        h += b"content-length: %d\r\n" % length
    return h + b"\r\n"


def _whole(status: str, body: bytes, extra: bytes = b"", ctype: bytes = b"application/json") -> bytes:
    return _head(status, ctype, extra, len(body)) + body


class Replies:
    """Everything answered from prebuilt bytes."""

    def __init__(self, deltas: int) -> None:
        self.deltas = deltas
        self.message = _whole("200 OK", orjson.dumps(_message()), QUOTA_OK)
        sse = b"text/event-stream; charset=utf-8"
        self.stream_first = _head("200 OK", sse, QUOTA_OK + b"cache-control: no-cache\r\n") + _chunk(_stream_head() + _delta(0))
        self.stream_deltas = [_chunk(_delta(i)) for i in range(1, deltas)]
        self.stream_last = _chunk(_stream_tail(deltas)) + b"0\r\n\r\n"
        self.slow_first = _head("200 OK", sse, QUOTA_OK) + _chunk(_stream_head())
        self.models = _whole("200 OK", orjson.dumps({"object": "list", "data": [
            {"id": "local-model", "object": "model", "type": "model", "display_name": "local-model",
             "created_at": "2025-01-01T00:00:00Z"}], "has_more": False}), QUOTA_OK)
        self.empty = _whole("200 OK", b"{}")
        self.not_found = _whole("404 Not Found", b'{"type":"error","error":{"type":"not_found_error","message":"no such route"}}')
        self.bad_json = _whole("400 Bad Request", b'{"type":"error","error":{"type":"invalid_request_error",'
                               b'"message":"The request body is not valid JSON"}}', QUOTA_OK)
        err = (b'{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed your '
               b'account\'s rate limit. Please try again later."},"request_id":"req_011BenchLimit"}')
        self.limit_body = err
        # OpenAI Chat Completions.
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764000000, "model": "local-model"}

        def oc(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _chunk(b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n")

        self.oa_first = _head("200 OK", sse) + oc({"role": "assistant", "content": _WORDS[0]})
        self.oa_deltas = [oc({"content": " " + _WORDS[i % len(_WORDS)]}) for i in range(1, deltas)]
        usage = {**base, "choices": [], "usage": {"prompt_tokens": 12850, "completion_tokens": deltas, "total_tokens": 12850 + deltas}}
        self.oa_last = (oc({}, "stop") + _chunk(b"data: " + orjson.dumps(usage) + b"\n\n")
                        + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        self.oa_whole = _whole("200 OK", orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1764000000, "model": "local-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Done: the test passes now."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12850, "completion_tokens": 9, "total_tokens": 12859}}))

    def limit(self, reset: float) -> bytes:
        extra = (b"anthropic-ratelimit-unified-status: rejected\r\n"
                 b"anthropic-ratelimit-unified-representative-claim: five_hour\r\n"
                 b"anthropic-ratelimit-unified-reset: %d\r\n"
                 b"anthropic-ratelimit-unified-5h-utilization: 1.02\r\n"
                 b"retry-after: %d\r\n"
                 b"request-id: req_011BenchLimit\r\n") % (int(reset), max(0, int(reset - time.time())))
        return _whole("429 Too Many Requests", self.limit_body, extra)


STATS: dict[str, int] = {}
# When a "limit" 429 was written, by x-bench-tag (epoch seconds): where a fleet's news starts.
LIMITED_AT: dict[str, float] = {}


class Conn(asyncio.Protocol):
    __slots__ = ("mode", "replies", "transport", "parser", "url", "headers", "body", "task")

    def __init__(self, mode: str, replies: Replies) -> None:
        self.mode = mode
        self.replies = replies
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.task: asyncio.Task | None = None

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    # httptools
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        delay = self.headers.get(b"x-fake-delay")
        if delay:
            asyncio.get_running_loop().call_later(min(MAX_HOLD, float(delay)), self._answer,
                                                  self.parser.get_method(), self.url, self.headers, self.body,
                                                  self.parser.should_keep_alive())
        else:
            self._answer(self.parser.get_method(), self.url, self.headers, self.body, self.parser.should_keep_alive())

    def _answer(self, method: bytes, url: bytes, headers: dict[bytes, bytes], chunks: list[bytes], keep_alive: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        path = url.split(b"?", 1)[0]
        mode = headers.get(b"x-fake-mode", b"").decode() or self.mode
        r = self.replies
        key = f"{method.decode()} {path.decode()[:40]} {mode}"
        STATS[key] = STATS.get(key, 0) + 1
        tag = headers.get(b"x-bench-tag", b"").decode()
        if tag:
            STATS["tag " + tag] = STATS.get("tag " + tag, 0) + 1
        streamed = False
        if method == b"POST" and path in (b"/v1/messages", b"/v1/chat/completions", b"/v1/messages/count_tokens"):
            # The real cloud parses every request it is sent; so does this one.
            try:
                doc = orjson.loads(b"".join(chunks))
            except orjson.JSONDecodeError:
                doc = None
                path = b"bad json"
            streamed = isinstance(doc, dict) and doc.get("stream") is True
        if method == b"POST" and path == b"/v1/messages":
            if mode == "limit-past":
                t.write(r.limit(time.time() - 1))
                if tag:
                    LIMITED_AT[tag] = time.time()
            elif mode == "limit":
                t.write(r.limit(time.time() + float(headers.get(b"x-fake-reset-in", b"3600"))))
                if tag:
                    LIMITED_AT[tag] = time.time()
            elif mode == "slow":
                hold = min(MAX_HOLD, float(headers.get(b"x-fake-hold", b"30")))
                interval = max(0.005, float(headers.get(b"x-fake-interval", b"1")))
                self.task = asyncio.ensure_future(self._slow(hold, interval))
            elif mode.startswith("paced"):
                _, interval_s, count = (mode.split(":") + ["0.02", "100"])[:3]
                self.task = asyncio.ensure_future(self._paced(float(interval_s), int(count)))
            elif streamed:
                t.write(r.stream_first)
                for d in r.stream_deltas:
                    t.write(d)
                t.write(r.stream_last)
            else:
                t.write(r.message)
        elif method == b"POST" and path == b"/v1/chat/completions":
            if streamed:
                t.write(r.oa_first)
                for d in r.oa_deltas:
                    t.write(d)
                t.write(r.oa_last)
            else:
                t.write(r.oa_whole)
        elif path == b"/v1/messages/count_tokens":
            # A token is about four bytes of request, as with a real tokenizer; a fixed
            # count would skew nonstop's calibration of its own estimate.
            t.write(_whole("200 OK", b'{"input_tokens": %d}' % max(1, sum(map(len, chunks)) // 4), QUOTA_OK))
        elif path == b"bad json":
            t.write(r.bad_json)
        elif path == b"/v1/models":
            t.write(r.models)
        elif path == b"/_stats":
            ru = resource.getrusage(resource.RUSAGE_SELF)
            t.write(_whole("200 OK", orjson.dumps({"counts": STATS, "limited_at": LIMITED_AT,
                                                   "cpu": ru.ru_utime + ru.ru_stime, "pid": os.getpid()})))
        elif path == b"/_reset":
            STATS.clear()
            LIMITED_AT.clear()
            t.write(r.empty)
        else:
            t.write(r.empty)
        if not keep_alive:
            t.close()

    async def _paced(self, interval: float, count: int) -> None:
        """A model's pace, exactly: `count` deltas, the i-th due `i * interval` after the
        head, whatever the load (a late one does not delay the next)."""
        t = self.transport
        assert t is not None
        loop = asyncio.get_running_loop()
        t.write(self.replies.slow_first)
        began = loop.time()
        try:
            for i in range(count):
                await asyncio.sleep(max(0.0, began + (i + 1) * interval - loop.time()))
                if t.is_closing():
                    return
                t.write(_chunk(_delta(i)))
            t.write(_chunk(_stream_tail(count)) + b"0\r\n\r\n")
        except asyncio.CancelledError:
            pass
        finally:
            self.task = None

    async def _slow(self, hold: float, interval: float) -> None:
        t = self.transport
        assert t is not None
        t.write(self.replies.slow_first)
        deadline = time.monotonic() + hold
        i = 0
        try:
            while time.monotonic() < deadline and not t.is_closing():
                await asyncio.sleep(interval)
                t.write(_chunk(_delta(i)))
                i += 1
            if not t.is_closing():
                t.write(_chunk(_stream_tail(i)) + b"0\r\n\r\n")
        except asyncio.CancelledError:
            pass
        finally:
            self.task = None


async def serve(listens: list[tuple[str, int, str]], deltas: int) -> None:
    loop = asyncio.get_running_loop()
    replies = Replies(deltas)
    servers = []
    for host, port, mode in listens:
        servers.append(await loop.create_server(lambda m=mode: Conn(m, replies), host, port, backlog=4096, reuse_address=True))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def parse_listen(text: str) -> tuple[str, int, str]:
    addr, _, mode = text.partition("=")
    host, _, port = addr.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--listen {text}: benchmarks listen on 127.0.0.1 only")
    return host, int(port), mode or "ok"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", action="append", required=True, help="HOST:PORT=MODE (repeatable)")
    p.add_argument("--deltas", type=int, default=STREAM_DELTAS, help="text deltas per streamed reply")
    args = p.parse_args()
    listens = [parse_listen(x) for x in args.listen]
    try:
        import uvloop
    except ImportError:
        print("uvloop missing: the fake upstream runs on asyncio", file=sys.stderr)
        asyncio.run(serve(listens, args.deltas))
        return
    uvloop.run(serve(listens, args.deltas))


if __name__ == "__main__":
    main()
