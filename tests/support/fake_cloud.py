"""A stand-in for the Anthropic cloud: a real HTTP server that reproduces the documented
status codes, headers, error bodies and stream events of every way the cloud says "no".

Run: python -m tests.support.fake_cloud --port 9100
Control: POST /_fake/mode {"mode": "subscription_limit", ...params}
         a request header `x-fake-mode: <mode>` overrides the mode for one request
         GET /_fake/requests  -> what the cloud received (method, path, query, headers, body)
         POST /_fake/reset    -> mode ok, log cleared
Modes: see MODES below.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from datetime import UTC, datetime, timedelta

from aiohttp import web

from tests.support.standin import serve

MODES = [
    "ok", "subscription_limit", "weekly_limit", "throttle", "api_key_limit", "overloaded",
    "server_error", "bad_gateway", "unavailable", "gateway_timeout", "credit", "spend_limit",
    "auth", "forbidden", "invalid_request", "midstream_overloaded", "overloaded_after_block_start",
    "reset_after_block_start", "overloaded_after_thinking_start", "error_after_content",
    "reset_after_content", "truncate", "hang", "hang_after_head", "slow", "malformed_chunk",
    "non_json_error", "reset", "rejected_on_success", "warning", "random",
    # Hostile or broken upstreams (not in the random pool unless noted).
    "tool_then_reset", "tool_then_error", "endless_headers", "endless_stream",
    "stall_after_content", "wrong_content_type", "echo_key",
    # Non-streaming replies that are not whole: a 200 whose body is cut, empty, garbled or
    # not a message (a streamed request in these modes gets the plain stream).
    "json_cut_empty", "json_cut_half", "json_empty", "json_garbled", "json_not_message", "json_negative",
    # ... or whose body stops half-way and hangs for `hang_for` seconds (the connection open).
    "json_stall_body",
    # A good answer whose first byte comes `late_by` seconds late (3 unless told).
    "late_first_byte",
]
# Modes "random" deals from (everything a soak test should survive): dealt like cards from
# a shuffled deck, so every mode comes up once in each run of len(deck) cloud requests, however
# few requests a starved machine lets reach the cloud.
RANDOM_POOL = [m for m in MODES[: MODES.index("random")] if m != "hang"] + ["ok"] * 12
# Extra faults the soak harness can add to the pool with {"mode": "random", "extra": [...]}
# (and {"exclude": [...]} takes modes out):
# each one ends on its own within `hang_for` (or `late_by`) seconds.
RANDOM_EXTRA = ("tool_then_reset", "tool_then_error", "wrong_content_type", "stall_after_content",
                "json_cut_empty", "json_cut_half", "json_empty", "json_garbled", "json_not_message",
                "json_stall_body", "late_first_byte")


def _rid() -> str:
    return "req_" + secrets.token_hex(12)


def error_body(etype: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": etype, "message": message}, "request_id": _rid()}).encode()


def quota_headers(status: str = "allowed", five: float = 0.42, seven: float = 0.17) -> dict[str, str]:
    now = int(time.time())
    return {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-5h-utilization": str(five),
        "anthropic-ratelimit-unified-7d-utilization": str(seven),
        "anthropic-ratelimit-unified-5h-reset": str(now + 3 * 3600),
        "anthropic-ratelimit-unified-7d-reset": str(now + 4 * 86400),
        "anthropic-ratelimit-unified-fallback-percentage": "0.5",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "request-id": _rid(),
    }


def thinking_rule_violation(req: dict) -> str:
    """The real API's rule: with thinking on, a request that continues a tool loop (its
    final user turn carries tool results) needs the assistant turn before it to start
    with a thinking block. The API reads turns: consecutive user messages are one, and
    `role: "system"` messages among them stand aside. The message is the one it sends."""
    thinking = req.get("thinking")
    if not (isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")):
        return ""
    messages = req.get("messages") or []
    results, i = False, len(messages) - 1
    while i >= 0 and isinstance(messages[i], dict) and messages[i].get("role") in ("user", "system"):
        content = messages[i].get("content")
        results = results or (messages[i].get("role") == "user" and isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content))
        i -= 1
    prev = messages[i] if i >= 0 and isinstance(messages[i], dict) else {}
    content = prev.get("content")
    if not results or prev.get("role") != "assistant" or not isinstance(content, list) or not content:
        return ""
    first = content[0] if isinstance(content[0], dict) else {}
    if first.get("type") in ("thinking", "redacted_thinking"):
        return ""
    return (f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
            f"`{first.get('type', 'text')}`. When `thinking` is enabled, a final `assistant` message must start "
            "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We "
            "recommend you include thinking blocks from previous turns. To avoid this requirement, disable "
            "`thinking`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking")


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class FakeCloud:
    def __init__(self, text: str = "Hello from the cloud.", reset_in: float = 3600.0):
        self.mode = "ok"
        self.params: dict = {}
        self.text = text
        self.reset_in = reset_in
        self.log: list[dict] = []
        self.rng = random.Random(1234)
        self.deck: list[str] = []
        self.counts: dict[str, int] = {}
        # Streams currently being written, by mode (to prove a disconnect reached us).
        self.active: dict[str, int] = {}
        self.finished: dict[str, int] = {}

    # --- control ---------------------------------------------------------------------------

    async def set_mode(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.mode = data.pop("mode", "ok")
        self.params = data
        if "seed" in data:
            self.rng = random.Random(data["seed"])
        self.deck = []
        return web.json_response({"mode": self.mode})

    def random_deck(self) -> list[str]:
        extra = [m for m in self.params.get("extra", ()) if m in RANDOM_EXTRA]
        exclude = set(self.params.get("exclude", ()))
        return [m for m in RANDOM_POOL + extra if m not in exclude] or ["ok"]

    def _deal(self) -> str:
        if not self.deck:
            self.deck = self.random_deck()
            self.rng.shuffle(self.deck)
        return self.deck.pop()

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.log)

    async def reset(self, request: web.Request) -> web.Response:
        self.mode, self.params, self.log, self.counts, self.deck = "ok", {}, [], {}, []
        return web.json_response({"mode": "ok"})

    async def get_counts(self, request: web.Request) -> web.Response:
        return web.json_response(self.counts)

    async def get_active(self, request: web.Request) -> web.Response:
        return web.json_response({"active": self.active, "finished": self.finished})

    # --- the API ---------------------------------------------------------------------------

    def _compressed(self, resp: web.StreamResponse) -> web.StreamResponse:
        """With the `compress` parameter, a reply compressed as the client's Accept-Encoding
        allows (gzip or deflate), as a CDN in front of the real cloud may send it; with
        compress="force", gzip whatever the client asked for, as a middlebox that
        ignores Accept-Encoding does."""
        how = self.params.get("compress")
        if how == "force":
            resp.enable_compression(force=web.ContentCoding.gzip)
        elif how:
            resp.enable_compression()
        return resp

    def _record(self, request: web.Request, body: bytes) -> None:
        if self.params.get("no_log"):
            return
        self.log.append({
            "method": request.method, "path": request.path, "query": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
        })
        if len(self.log) > 2000:
            del self.log[:1000]

    async def unknown(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return web.Response(status=404, body=error_body("not_found_error", f"Not found: {request.path}"), content_type="application/json")

    async def hello(self, request: web.Request) -> web.Response:
        return web.Response(status=200, text="{}", content_type="application/json")

    async def _head_then_hang(self, request: web.Request) -> web.StreamResponse:
        """The head of a JSON reply, then nothing for `hang_for` seconds."""
        resp = web.StreamResponse(status=200, headers={"content-type": "application/json"})
        await resp.prepare(request)
        await asyncio.sleep(float(self.params.get("hang_for", 3600)))
        return resp

    async def _broken_small_reply(self, request: web.Request, mode: str) -> web.StreamResponse | None:
        """A token count's or model list's 200 that is not one: the head and a stall, an
        empty body, cut JSON, or JSON without the field. None for any other mode."""
        if mode == "hang_after_head":
            return await self._head_then_hang(request)
        data = {"json_empty": b"", "json_garbled": b'{"input_tokens": 1', "json_not_message": b'{"ok": true}',
                "json_negative": b'{"input_tokens": -12, "data": -12}'}.get(mode)
        return None if data is None else web.Response(status=200, body=data, content_type="application/json")

    async def models(self, request: web.Request) -> web.StreamResponse:
        broken = await self._broken_small_reply(request, request.headers.get("x-fake-mode") or self.mode)
        if broken is not None:
            return broken
        return self._compressed(web.json_response({"data": [{"type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"}], "has_more": False, "first_id": "claude-sonnet-4-5", "last_id": "claude-sonnet-4-5"}))

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._record(request, body)
        mode = request.headers.get("x-fake-mode") or self.mode
        broken = await self._broken_small_reply(request, mode)
        if broken is not None:
            return broken
        if mode != "ok":
            return web.Response(status=529, body=error_body("overloaded_error", "Overloaded"), content_type="application/json")
        return self._compressed(web.json_response({"input_tokens": max(1, len(body) // 4)}))

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._record(request, body)
        mode = request.headers.get("x-fake-mode") or self.mode
        if mode == "random":
            mode = self._deal()
        self.counts[mode] = self.counts.get(mode, 0) + 1
        try:
            req = json.loads(body)
        except ValueError:
            return web.Response(status=400, body=error_body("invalid_request_error", "invalid JSON"), content_type="application/json")
        stream = req.get("stream") is True
        model = req.get("model", "claude")
        problem = thinking_rule_violation(req)
        if problem:  # checked before anything else, as the real API validates first
            return web.Response(status=400, body=error_body("invalid_request_error", problem), content_type="application/json")
        wait = float(self.params.get("first_byte", 0)) + float(self.params.get("first_byte_per_kb", 0)) * len(body) / 1024
        if mode == "late_first_byte":
            wait = float(self.params.get("late_by", 3.0))
        if wait and mode in ("ok", "slow", "late_first_byte"):
            await asyncio.sleep(wait)
        in_tokens = max(1, len(body) // 4)
        now = time.time()
        H = "anthropic-ratelimit-"
        if mode in ("subscription_limit", "weekly_limit"):
            reset = int(now + float(self.params.get("reset_in", self.reset_in)))
            claim = "five_hour" if mode == "subscription_limit" else "seven_day"
            headers = {
                H + "unified-status": "rejected",
                H + "unified-representative-claim": claim,
                H + "unified-reset": str(reset),
                H + "unified-5h-utilization": "1.02" if claim == "five_hour" else "0.5",
                H + "unified-7d-utilization": "0.64" if claim == "five_hour" else "1.0",
                "retry-after": str(int(reset - now)),
                "request-id": _rid(),
            }
            return web.Response(status=429, body=error_body("rate_limit_error", "This request would exceed your account's rate limit. Please try again later."), content_type="application/json", headers=headers)
        if mode == "throttle":
            return web.Response(status=429, body=error_body("rate_limit_error", "Rate limited"), content_type="application/json", headers={"retry-after": str(self.params.get("retry_after", 5))})
        if mode == "api_key_limit":
            reset = (datetime.now(UTC) + timedelta(seconds=float(self.params.get("reset_in", 60)))).isoformat().replace("+00:00", "Z")
            headers = {
                H + "tokens-limit": "80000", H + "tokens-remaining": "0", H + "tokens-reset": reset,
                H + "requests-limit": "50", H + "requests-remaining": "12", H + "requests-reset": reset,
                "retry-after": str(self.params.get("api_key_retry_after", 30)),
            }
            return web.Response(status=429, body=error_body("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"), content_type="application/json", headers=headers)
        if mode == "overloaded":
            return web.Response(status=529, body=error_body("overloaded_error", "Overloaded"), content_type="application/json")
        if mode in ("server_error", "bad_gateway", "unavailable", "gateway_timeout"):
            status = {"server_error": 500, "bad_gateway": 502, "unavailable": 503, "gateway_timeout": 504}[mode]
            etype = "timeout_error" if status == 504 else "api_error"
            return web.Response(status=status, body=error_body(etype, "Internal server error"), content_type="application/json")
        if mode == "credit":
            return self._compressed(web.Response(status=400, body=error_body("invalid_request_error", "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."), content_type="application/json"))
        if mode == "spend_limit":
            if "regain_in" in self.params:
                # The message has minute precision: round down so the deadline never lies
                # further out than asked (a soak must not lose the cloud for a minute).
                at = datetime.now(UTC) + timedelta(seconds=float(self.params["regain_in"]))
                when = at.strftime("%Y-%m-%d at %H:%M")
            else:
                when = (datetime.now(UTC) + timedelta(days=6)).strftime("%Y-%m-%d") + " at 00:00"
            return web.Response(status=400, body=error_body("invalid_request_error", f"You have reached your specified API usage limits. You will regain access on {when} UTC."), content_type="application/json")
        if mode == "echo_key":
            # A broken upstream (or a proxy in front of it) that quotes the credentials
            # back in its error message.
            seen = request.headers.get("x-api-key", "") + " " + request.headers.get("authorization", "")
            status = int(self.params.get("status", 400))
            etype = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "invalid_request_error" if status < 500 else "api_error")
            return web.Response(status=status, body=error_body(etype, f"bad credentials: {seen.strip()}"), content_type="application/json")
        if mode == "endless_headers":
            return await self._endless_headers(request)
        if mode == "auth":
            return web.Response(status=401, body=error_body("authentication_error", "invalid x-api-key"), content_type="application/json")
        if mode == "forbidden":
            return web.Response(status=403, body=error_body("permission_error", "OAuth token has been revoked."), content_type="application/json")
        if mode == "invalid_request":
            return web.Response(status=400, body=error_body("invalid_request_error", "messages: field required"), content_type="application/json")
        if mode == "non_json_error":
            return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0.01)
            return web.Response(status=500)
        if mode == "hang":
            await asyncio.sleep(float(self.params.get("hang_for", 3600)))
            return web.Response(status=500)
        status_h = "allowed"
        if mode == "rejected_on_success":
            status_h = "rejected"
        elif mode == "warning":
            status_h = "allowed_warning"
        headers = quota_headers(status_h, five=float(self.params.get("five", 0.42)), seven=float(self.params.get("seven", 0.17)))
        msg_id = "msg_" + secrets.token_hex(12)
        text = self.params.get("text", self.text)
        if not stream:
            message = {
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": in_tokens, "output_tokens": 7, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
            }
            if mode.startswith("json_"):
                return await self._broken_json(request, mode, message, headers)
            return self._compressed(web.json_response(message, headers=headers))
        if mode == "wrong_content_type":
            return await self._wrong_content_type(request, stream, model, msg_id, in_tokens, text)
        if mode in ("tool_then_reset", "tool_then_error", "endless_stream", "stall_after_content"):
            return await self._long_stream(request, mode, model, msg_id, in_tokens, headers)
        resp = self._compressed(web.StreamResponse(status=200, headers={**headers, "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}))
        await resp.prepare(request)
        if mode == "hang_after_head":
            await asyncio.sleep(float(self.params.get("hang_for", 3600)))
            return resp
        start = {"type": "message_start", "message": {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": in_tokens, "output_tokens": 1}}}
        await resp.write(sse("message_start", start))
        if mode == "midstream_overloaded":
            await resp.write(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
            return resp
        await resp.write(sse("ping", {"type": "ping"}))
        if mode == "overloaded_after_thinking_start":  # (thinking on: the first block is a thinking block)
            await resp.write(sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                         "content_block": {"type": "thinking", "thinking": ""}}))
        else:
            await resp.write(sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                         "content_block": {"type": "text", "text": ""}}))
        if mode in ("overloaded_after_block_start", "reset_after_block_start", "overloaded_after_thinking_start"):
            # The block started, empty, and the cloud gives up before its first delta.
            await asyncio.sleep(0.2)
            if mode == "reset_after_block_start":
                assert request.transport is not None
                request.transport.abort()
                return resp
            await resp.write(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
            return resp
        words = text.split(" ")
        delay = float(self.params.get("delay", 0.05 if mode == "slow" else 0))
        for i, w in enumerate(words):
            piece = w if i == 0 else " " + w
            if mode == "malformed_chunk" and i == 1:
                await resp.write(b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_del\n\n")
            await resp.write(sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}))
            if delay:
                await asyncio.sleep(delay)
            if i == 1 and mode == "error_after_content":
                # After the content has gone out: an error in the same read as the first
                # content is one nothing has seen yet, and nonstop fails over on it.
                await asyncio.sleep(0.05)
                await resp.write(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
                return resp
            if i == 1 and mode == "reset_after_content":
                assert request.transport is not None
                request.transport.abort()
                return resp
            if i == 1 and mode == "truncate":
                await resp.write(b"event: content_block_delta\ndata: {\"type\": \"content_blo")
                return resp
        await resp.write(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        await resp.write(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": len(words)}}))
        await resp.write(sse("message_stop", {"type": "message_stop"}))
        return resp


    # --- hostile upstreams ------------------------------------------------------------------

    async def _broken_json(self, request: web.Request, mode: str, message: dict, headers: dict[str, str]) -> web.Response:
        """A 200 that is not a whole message: the head promises a body that is cut before
        its first byte or half-way, or stalls half-way, or the body is empty, garbled or
        another document."""
        body = json.dumps(message).encode()
        if mode in ("json_cut_empty", "json_cut_half", "json_stall_body"):
            transport = request.transport
            assert transport is not None
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            transport.write(f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode())
            if mode != "json_cut_empty":
                transport.write(body[: len(body) // 2])
            await asyncio.sleep(float(self.params.get("hang_for", 3600)) if mode == "json_stall_body" else 0.05)
            transport.abort()
            return web.Response(status=500)
        data = {"json_empty": b"", "json_garbled": b'{"id": "msg_1", "type": "message", "content": [{"ty',
                "json_not_message": b'{"ok": true}', "json_negative": b'{"input_tokens": -12, "data": -12}'}[mode]
        return web.Response(status=200, body=data, headers={**headers, "content-type": "application/json"})

    async def _endless_headers(self, request: web.Request) -> web.Response:
        """A status line, then one header after another, never the blank line."""
        transport = request.transport
        assert transport is not None
        limit = time.monotonic() + float(self.params.get("hang_for", 60))
        self.active["endless_headers"] = self.active.get("endless_headers", 0) + 1
        try:
            transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
            i = 0
            while time.monotonic() < limit and not transport.is_closing():
                transport.write(f"x-endless-{i}: {'v' * 64}\r\n".encode())
                i += 1
                await asyncio.sleep(float(self.params.get("interval", 0.05)))
        finally:
            self.active["endless_headers"] -= 1
            self.finished["endless_headers"] = self.finished.get("endless_headers", 0) + 1
            transport.abort()
        return web.Response(status=500)

    async def _wrong_content_type(self, request: web.Request, stream: bool, model: str, msg_id: str,
                                  in_tokens: int, text: str) -> web.Response:
        """A 200 whose body is right but whose content type says HTML."""
        ctype = str(self.params.get("ctype", "text/html"))
        if not stream:
            body = json.dumps({
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": in_tokens, "output_tokens": 7},
            }).encode()
        else:
            body = b"".join([
                sse("message_start", {"type": "message_start", "message": {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": in_tokens, "output_tokens": 1}}}),
                sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
                sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
                sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 5}}),
                sse("message_stop", {"type": "message_stop"}),
            ])
        return web.Response(status=200, body=body, headers={"content-type": ctype})

    async def _long_stream(self, request: web.Request, mode: str, model: str, msg_id: str, in_tokens: int,
                           headers: dict[str, str]) -> web.StreamResponse:
        """tool_then_reset / tool_then_error: text, then a tool_use block cut off half-way.
        endless_stream: text deltas every `delay` s until the reader goes away (or hang_for).
        stall_after_content: some text, then silence for hang_for seconds."""
        resp = web.StreamResponse(status=200, headers={**headers, "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"})
        await resp.prepare(request)
        self.active[mode] = self.active.get(mode, 0) + 1
        limit = time.monotonic() + float(self.params.get("hang_for", 60))
        try:
            await resp.write(sse("message_start", {"type": "message_start", "message": {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": in_tokens, "output_tokens": 1}}}))
            await resp.write(sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
            await resp.write(sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me look."}}))
            if mode in ("tool_then_reset", "tool_then_error"):
                await resp.write(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
                await resp.write(sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": "Read", "input": {}}}))
                await resp.write(sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"file_path": "/tmp/'}}))
                if mode == "tool_then_error":
                    await asyncio.sleep(0.05)  # after the call's start has gone out (see error_after_content)
                    await resp.write(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
                    return resp
                assert request.transport is not None
                request.transport.abort()
                return resp
            if mode == "stall_after_content":
                while time.monotonic() < limit and request.transport is not None and not request.transport.is_closing():
                    await asyncio.sleep(0.1)
                return resp
            delay = float(self.params.get("delay", 0.05))
            i = 0
            while time.monotonic() < limit:
                await resp.write(sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" word{i}"}}))
                i += 1
                await asyncio.sleep(delay)
            await resp.write(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
            await resp.write(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": i + 1}}))
            await resp.write(sse("message_stop", {"type": "message_stop"}))
            return resp
        except (ConnectionError, OSError):
            return resp
        finally:
            self.active[mode] -= 1
            self.finished[mode] = self.finished.get(mode, 0) + 1


def make_app(fake: FakeCloud | None = None) -> web.Application:
    fake = fake or FakeCloud()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["fake"] = fake
    app.router.add_post("/_fake/mode", fake.set_mode)
    app.router.add_get("/_fake/requests", fake.get_requests)
    app.router.add_get("/_fake/counts", fake.get_counts)
    app.router.add_get("/_fake/active", fake.get_active)
    app.router.add_post("/_fake/reset", fake.reset)
    app.router.add_route("*", "/api/hello", fake.hello)
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/messages/count_tokens", fake.count_tokens)
    app.router.add_post("/v1/messages", fake.messages)
    app.router.add_route("*", "/{tail:.*}", fake.unknown)
    return app


def main() -> None:
    serve(make_app(), default_port=9100)


if __name__ == "__main__":
    main()
