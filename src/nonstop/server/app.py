"""The ASGI application: routes, the Anthropic and OpenAI front doors, commit and relay."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import orjson

from nonstop.backends.base import Reply
from nonstop.config import Config
from nonstop.server.asgi import (
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_bytes,
    send_json,
)
from nonstop.server.gateway import Gateway, Outcome, RequestContext
from nonstop.store.db import RequestRow
from nonstop.wire.anthropic import estimate_tokens
from nonstop.wire.errors import anthropic_error, openai_error
from nonstop.wire.hygiene import clean_history_for_cloud
from nonstop.wire.sse import JSONEventDecoder
from nonstop.wire.validate import MAX_MODEL_NAME, validate_messages_request

log = logging.getLogger("nonstop")

MAX_HEADER_BYTES = 64 * 1024


def _stored_body(data: bytes) -> str:
    """A body for the opt-in request log: capped by the caller, secrets redacted."""
    from nonstop.redact import redact

    return redact(data.decode("utf-8", "replace"))


def _safe_header(value: str) -> bytes:
    from nonstop.redact import redact

    return redact(value).encode("ascii", "replace")[:300].replace(b"\r", b" ").replace(b"\n", b" ")


class App:
    """Plain ASGI: a dictionary of routes, everything else proxied to the cloud."""

    def __init__(self, cfg: Config, gateway: Gateway | None = None):
        self.cfg = cfg
        self.gw = gateway or Gateway(cfg)
        self._token = cfg.token.encode() if cfg.token else b""
        self._hosts = {"localhost", "127.0.0.1", "::1", cfg.host.lower()}
        self.routes = {
            ("POST", "/v1/messages"): self.messages,
            ("POST", "/v1/messages/count_tokens"): self.count_tokens,
            ("GET", "/v1/models"): self.models,
            ("GET", "/api/hello"): self.hello,
            ("HEAD", "/api/hello"): self.hello,
            ("GET", "/health"): self.health,
            ("HEAD", "/health"): self.health,
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("GET", "/metrics"): self.metrics,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.lifespan(receive, send)
            return
        if kind != "http":
            return
        problem = self._check_head(scope)
        if problem:
            await send_bytes(send, problem[0], anthropic_error(problem[0], problem[1]))
            return
        if self._token and not self._authorized(scope):
            await self._unauthorized(scope, send)
            return
        path = scope["path"]
        handler = self.routes.get((scope["method"], path))
        if handler is not None:
            await handler(scope, receive, send)
            return
        if path.startswith("/_nonstop"):
            from nonstop.server import dashboard

            await dashboard.handle(self, scope, receive, send)
            return
        await self.passthrough(scope, receive, send)

    # --- lifespan & auth ---------------------------------------------------------------------

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.gw.start()
                except Exception as exc:  # report, do not hide
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                self.gw.draining = True
                await self.gw.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _check_head(self, scope: Scope) -> tuple[int, str] | None:
        headers = scope["headers"]
        if sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
            return 431, f"request headers are larger than {MAX_HEADER_BYTES} bytes"
        if not self._token:
            # Without a token only loopback is served; a foreign Host is a web page
            # trying DNS rebinding against this port.
            host = header(scope, b"host").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.startswith("[") and "]" in name:
                name = name[1 : name.index("]")]
            if host and name not in self._hosts:
                return 403, f"nonstop does not serve the host name {host[:100]!r}; use http://127.0.0.1:{self.cfg.port}"
        return None

    def _authorized(self, scope: Scope) -> bool:
        given = header(scope, b"x-nonstop-token")
        if not given:
            cookie = header(scope, b"cookie")
            if cookie:
                c: SimpleCookie = SimpleCookie()
                with contextlib.suppress(Exception):
                    c.load(cookie)
                if "nonstop_token" in c:
                    given = c["nonstop_token"].value
        if not given and scope["path"].startswith("/_nonstop"):
            given = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [""])[0]
        return bool(given) and hmac.compare_digest(given.encode(), self._token)

    async def _unauthorized(self, scope: Scope, send: Send) -> None:
        msg = "nonstop requires an access token here: send it in the x-nonstop-token header (for Claude Code: ANTHROPIC_CUSTOM_HEADERS='x-nonstop-token: ...')"
        if scope["path"] == "/v1/chat/completions":
            await send_bytes(send, 401, openai_error(401, msg, "invalid_api_key"))
        else:
            await send_bytes(send, 401, anthropic_error(401, msg, "authentication_error"))

    # --- the Anthropic front door ------------------------------------------------------------

    def _context(self, scope: Scope, body: bytes, req: dict, path: str) -> RequestContext:
        now = time.time()
        row = RequestRow(
            ts=now, path=path, client=header(scope, b"user-agent")[:200],
            session_id=header(scope, b"x-claude-code-session-id")[:100],
            model=str(req.get("model", ""))[:MAX_MODEL_NAME], stream=req.get("stream") is True,
        )
        return RequestContext(
            path=path, method=scope["method"], raw_path=scope.get("raw_path") or scope["path"].encode(),
            query=scope.get("query_string", b""), headers=scope["headers"], body=body, req=req,
            stream=req.get("stream") is True, model=row.model, t0=time.perf_counter(), row=row,
        )

    async def _read_json(self, scope: Scope, receive: Receive, send: Send, openai: bool = False) -> tuple[bytes, Any] | None:
        err = openai_error if openai else anthropic_error
        try:
            body = await read_body(scope, receive, self.cfg.max_body_bytes)
        except BodyTooLarge as exc:
            status = 413
            await send_bytes(send, status, err(status, f"request body is larger than the {exc.limit} byte limit (max_body_bytes)", "request_too_large"))
            return None
        except ClientGone:
            return None
        try:
            return body, orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            await send_bytes(send, 400, err(400, f"the request body is not valid JSON: {exc}"))
            return None

    async def messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        got = await self._read_json(scope, receive, send)
        if got is None:
            return
        body, req = got
        problem = validate_messages_request(req)
        if problem:
            await send_bytes(send, 400, anthropic_error(400, problem, "invalid_request_error"))
            return
        ctx = self._context(scope, body, req, "/v1/messages")
        cloud_body = None
        cleaned = clean_history_for_cloud(req)
        if cleaned is not None:
            cloud_body = orjson.dumps(cleaned)
        ctx.row.overhead_ms = (time.perf_counter() - ctx.t0) * 1000
        self.gw.inflight += 1
        try:
            outcome = await self.gw.run(ctx, cloud_body=cloud_body)
            # The request is no longer needed once a reply is chosen: do not hold ~50 KB
            # per open stream for its whole life (unless recovery or body logging needs it).
            del got, body, cloud_body, cleaned
            if not self.cfg.log.store_bodies:
                ctx.body = b""
            reply = outcome.reply
            if self.cfg.recovery.continue_locally and reply is not None and reply.backend == "cloud" and reply.stream and reply.status == 200:
                from nonstop.server.recovery import recovering

                reply.body = recovering(reply, reply.body, req, lambda r: self.gw.continue_locally(ctx, r))
            else:
                ctx.req = {}
                del req
            await self._commit(ctx, outcome, receive, send, AnthropicWriter())
        finally:
            self.gw.inflight -= 1

    async def _commit(self, ctx: RequestContext, outcome: Outcome, receive: Receive, send: Send, writer: Writer) -> None:
        row = ctx.row
        row.reason = outcome.reason if (outcome.reply is None or outcome.reply.backend != "cloud") else ""
        t_head = time.perf_counter()
        reply = outcome.reply
        try:
            if reply is None:
                row.backend, row.status, row.outcome, row.error = "", outcome.status, "error", outcome.message[:500]
                await writer.error(send, outcome.status, outcome.message, outcome.etype)
                row.ttfb_ms = (time.perf_counter() - ctx.t0) * 1000
                return
            row.backend, row.status = reply.backend, reply.status
            extra = [(b"x-nonstop-backend", reply.backend.encode())]
            if row.reason:
                extra.append((b"x-nonstop-failover", _safe_header(row.reason)))
            gone = await self._pump(ctx, reply, writer, extra, receive, send, t_head)
            u = reply.usage
            row.input_tokens, row.output_tokens, row.stop_reason = u.input_tokens, u.output_tokens, u.stop_reason
            if gone:
                row.outcome, row.error = "client_gone", "the client disconnected"
            elif reply.status >= 400:
                row.outcome, row.error = "error", u.error[:500]
            elif u.error:
                row.outcome, row.error = "incomplete", u.error[:500]
            else:
                row.outcome = "ok"
            for note in (reply.note, u.note):
                if note:
                    row.error = (row.error + "; " if row.error else "") + note
        finally:
            row.total_ms = (time.perf_counter() - ctx.t0) * 1000
            self.gw.record(row)

    async def _pump(self, ctx: RequestContext, reply: Reply, writer: Writer, extra: list[tuple[bytes, bytes]],
                    receive: Receive, send: Send, t_head: float) -> bool:
        """Send the reply; True if the client went away first (upstream work is then
        cancelled by closing the upstream response)."""
        task = asyncio.current_task()
        gone = asyncio.Event()
        finished = False
        watcher = None
        if reply.stream:
            async def watch() -> None:
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        if not finished:
                            gone.set()
                            if task is not None:
                                task.cancel()
                        return

            watcher = asyncio.ensure_future(watch())
        capture: list[bytes] | None = [] if self.cfg.log.store_bodies else None
        captured = 0
        try:
            first = True
            async for chunk in writer.body(reply):
                if capture is not None and captured < self.cfg.log.body_cap_bytes:
                    capture.append(chunk[: self.cfg.log.body_cap_bytes - captured])
                    captured += len(capture[-1])
                if first:
                    first = False
                    await send({"type": "http.response.start", "status": reply.status, "headers": writer.headers(reply) + extra})
                    now = time.perf_counter()
                    ctx.row.ttfb_ms = (now - ctx.t0) * 1000
                    if ctx.row.overhead_ms is not None:
                        ctx.row.overhead_ms += (now - t_head) * 1000
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if first:
                await send({"type": "http.response.start", "status": reply.status, "headers": writer.headers(reply) + extra})
                ctx.row.ttfb_ms = (time.perf_counter() - ctx.t0) * 1000
            finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if task is not None:
                task.uncancel()
            if not gone.is_set():
                # Shutdown ran past drain_timeout: close the stream with a well-formed
                # error instead of cutting it silently.
                ctx.row.error = "nonstop shut down before the answer was complete"
                if not first and reply.stream and not finished:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1):
                            await send({"type": "http.response.body", "body": writer.shutdown_event(), "more_body": False})
                reply.usage.error = reply.usage.error or "shut down mid-stream"
        except OSError:
            gone.set()
        finally:
            if capture is not None:
                ctx.row.response_body = _stored_body(b"".join(capture))
                ctx.row.request_body = _stored_body(ctx.body[: self.cfg.log.body_cap_bytes])
            if watcher is not None:
                watcher.cancel()
            if reply.close is not None:
                with contextlib.suppress(Exception):
                    reply.close()
            aclose = getattr(reply.body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        return gone.is_set()

    # --- other Anthropic endpoints ----------------------------------------------------------------

    async def count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        got = await self._read_json(scope, receive, send)
        if got is None:
            return
        body, req = got
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
            await send_bytes(send, 400, anthropic_error(400, "messages: a list of messages is required"))
            return
        ctx = self._context(scope, body, {**req, "stream": False}, "/v1/messages/count_tokens")
        ctx.stream = False
        if self.gw.quota.serving:
            res = await self.gw._try_cloud(ctx, None, None, None)
            if isinstance(res, Reply):
                await self._commit(ctx, Outcome(reply=res), receive, send, AnthropicWriter())
                return
        tokens = 0
        for b in self.gw.local_order(ctx.model):
            from nonstop.wire.anthropic import to_local_request

            with contextlib.suppress(Exception):
                tokens = await b.count_tokens(to_local_request(req, model=b.model_for(ctx.model), max_tokens=1))
                break
        tokens = tokens or estimate_tokens(req)
        await send_json(send, 200, {"input_tokens": tokens}, extra=[(b"x-nonstop-backend", b"local")])

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.gw.quota.serving:
            ctx = self._context(scope, b"", {}, "/v1/models")
            res = await self.gw._try_cloud(ctx, None, None, None)
            if isinstance(res, Reply) and res.status < 500:
                await self._commit(ctx, Outcome(reply=res), receive, send, AnthropicWriter())
                return
        data = []
        for b in self.gw.locals:
            name = b.cfg.model or b.health.model or b.name
            data.append({"type": "model", "id": name, "display_name": f"{name} (local: {b.name})", "created_at": "1970-01-01T00:00:00Z"})
        await send_json(send, 200, {
            "data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
        }, extra=[(b"x-nonstop-backend", b"local")])

    async def hello(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.gw.quota.serving:
            ctx = self._context(scope, b"", {}, "/api/hello")
            assert self.gw.cloud is not None
            from nonstop.backends.cloud import forward_headers

            res = await self.gw.cloud.send(scope["method"], ctx.raw_path, ctx.query, forward_headers(ctx.headers), b"",
                                           peek_stream=False, failover_on_auth=False)
            if isinstance(res, Reply):
                await self._pump(ctx, res, AnthropicWriter(), [(b"x-nonstop-backend", b"cloud")], receive, send, time.perf_counter())
                return
        await send_bytes(send, 200, b"{}", extra=[(b"x-nonstop-backend", b"nonstop")])

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        body = {
            "status": "draining" if gw.draining else "ok",
            "cloud": gw.quota.state.value,
            "local": [{"name": b.name, "healthy": b.health.ok} for b in gw.locals],
            "pid": __import__("os").getpid(),
        }
        await send_json(send, 200, body)

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self.gw.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")

    async def passthrough(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Anything nonstop does not know goes to the cloud unchanged."""
        try:
            body = await read_body(scope, receive, self.cfg.max_body_bytes)
        except BodyTooLarge as exc:
            await send_bytes(send, 413, anthropic_error(413, f"request body is larger than the {exc.limit} byte limit", "request_too_large"))
            return
        except ClientGone:
            return
        ctx = self._context(scope, body, {}, scope["path"][:200])
        assert self.gw.cloud is not None
        from nonstop.backends.cloud import forward_headers

        res = await self.gw.cloud.send(scope["method"], ctx.raw_path, ctx.query, forward_headers(ctx.headers), body,
                                       peek_stream=False, failover_on_auth=False, observe_headers=self.gw.observe_headers)
        if isinstance(res, Reply):
            await self._pump(ctx, res, AnthropicWriter(), [(b"x-nonstop-backend", b"cloud")], receive, send, time.perf_counter())
            return
        await send_bytes(send, 502, anthropic_error(502, f"nonstop could not reach the cloud for {scope['path'][:100]}: {res.describe()}"))

    # --- the OpenAI front door -----------------------------------------------------------------

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        from nonstop.wire import openai as oa

        got = await self._read_json(scope, receive, send, openai=True)
        if got is None:
            return
        _, oreq = got
        if not isinstance(oreq, dict):
            await send_bytes(send, 400, openai_error(400, "the request body must be a JSON object"))
            return
        try:
            areq = oa.openai_request_to_anthropic(oreq)
        except oa.TranslationError as exc:
            await send_bytes(send, 400, openai_error(400, str(exc)))
            return
        problem = validate_messages_request(areq)
        if problem:
            await send_bytes(send, 400, openai_error(400, problem))
            return
        body = orjson.dumps(areq)
        ctx = self._context(scope, body, areq, "/v1/chat/completions")
        include_usage = bool((oreq.get("stream_options") or {}).get("include_usage")) if isinstance(oreq.get("stream_options"), dict) else False
        self.gw.inflight += 1
        try:
            outcome = await self.gw.run(
                ctx, cloud_path=b"/v1/messages", cloud_body=body,
                extra_headers={"anthropic-version": "2023-06-01", "content-type": "application/json"},
            )
            # As on /v1/messages: do not hold the request for the life of the stream.
            del got, oreq, areq, body
            ctx.req = {}
            if not self.cfg.log.store_bodies:
                ctx.body = b""
            await self._commit(ctx, outcome, receive, send, OpenAIWriter(ctx.model, include_usage))
        finally:
            self.gw.inflight -= 1


# --- writers: how a reply reaches each kind of client ---------------------------------------------


class Writer:
    def shutdown_event(self) -> bytes:
        return b"data: " + orjson.dumps({"error": {"message": "nonstop is shutting down; the response is incomplete.", "type": "server_error", "param": None, "code": None}}) + b"\n\n"

    def headers(self, reply: Reply) -> list[tuple[bytes, bytes]]:
        raise NotImplementedError

    def body(self, reply: Reply) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def error(self, send: Send, status: int, message: str, etype: str) -> None:
        raise NotImplementedError


class AnthropicWriter(Writer):
    def shutdown_event(self) -> bytes:
        from nonstop.wire.errors import anthropic_error_event

        return anthropic_error_event("nonstop is shutting down; the response is incomplete.", "overloaded_error")

    def headers(self, reply: Reply) -> list[tuple[bytes, bytes]]:
        return reply.headers

    def body(self, reply: Reply) -> AsyncIterator[bytes]:
        return reply.body

    async def error(self, send: Send, status: int, message: str, etype: str) -> None:
        await send_bytes(send, status, anthropic_error(status, message, etype))


class OpenAIWriter(Writer):
    def __init__(self, model: str, include_usage: bool):
        self.model = model
        self.include_usage = include_usage

    def headers(self, reply: Reply) -> list[tuple[bytes, bytes]]:
        if reply.status >= 400:
            return [(b"content-type", b"application/json")]
        if reply.stream:
            return [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        return [(b"content-type", b"application/json")]

    async def body(self, reply: Reply) -> AsyncIterator[bytes]:
        from nonstop.wire import openai as oa

        if reply.status >= 400 or not reply.stream:
            raw = b"".join([c async for c in reply.body])
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                doc = None
            if reply.status >= 400:
                msg = ((doc or {}).get("error") or {}).get("message") if isinstance(doc, dict) else None
                yield openai_error(reply.status, str(msg or raw[:300].decode("utf-8", "replace")))
                return
            if not isinstance(doc, dict):
                yield openai_error(502, "the upstream reply was not valid JSON")
                return
            yield orjson.dumps(oa.anthropic_response_to_openai(doc, model=self.model))
            return
        import secrets

        tr = oa.AnthropicToOpenAIStream(model=self.model, completion_id="chatcmpl-" + secrets.token_hex(12), include_usage=self.include_usage)
        decoder = JSONEventDecoder()
        async for chunk in reply.body:
            out = [b"data: " + orjson.dumps(c) + b"\n\n" for ev, data in decoder.feed(chunk) for c in tr.feed(ev.event, data)]
            if out:
                yield b"".join(out)
        tail = [b"data: " + orjson.dumps(c) + b"\n\n" for c in tr.finish()]
        yield b"".join(tail) + b"data: [DONE]\n\n"

    async def error(self, send: Send, status: int, message: str, etype: str) -> None:
        code = "context_length_exceeded" if message.startswith("prompt is too long") else None
        await send_bytes(send, status, openai_error(status, message, code))


def create_app(cfg: Config) -> App:
    return App(cfg)


__all__ = ["App", "create_app"]
