"""The ASGI application: checks every request's head and token, routes it to a front
door (or nonstop's own pages), and guards the whole exchange: no exception reaches the
server library; the client always gets a well-formed answer in its own protocol.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from itertools import chain
from typing import Any
from urllib.parse import parse_qs, unquote

from nonstop.backends.head import Head, keep_head, split_head
from nonstop.config import Config
from nonstop.server import dashboard
from nonstop.server.asgi import (
    BODY_PACE,
    BODY_READ,
    CONTENT_LENGTH,
    HEAD,
    REQUEST_ROW,
    TOKEN_VIA,
    BodyPace,
    BodyTimeout,
    Message,
    Receive,
    Scope,
    Send,
    send_bytes,
    send_json,
)
from nonstop.server.doors.anthropic import AnthropicDoor
from nonstop.server.doors.openai import OpenAIDoor
from nonstop.server.pipeline import Pipeline
from nonstop.server.relay import Relay
from nonstop.server.runtime import Runtime
from nonstop.server.writers import AnthropicWriter, OpenAIWriter, Writer
from nonstop.store.db import RequestRow
from nonstop.wire.errors import new_request_id

log = logging.getLogger("nonstop")

MAX_HEADER_BYTES = 64 * 1024
# The OpenAI door's paths: an OpenAI client set to nonstop's address with or without /v1.
OPENAI_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Watched:
    """The send channel, watched: has the response started, and is it a stream? A
    response that starts before the request's body has been read closes the connection,
    so that a body still trickling in cannot hold it open."""

    __slots__ = ("send", "scope", "started", "ended", "stream")

    def __init__(self, send: Send, scope: Scope):
        self.send = send
        self.scope = scope
        self.started = False
        self.ended = False
        self.stream = False

    async def __call__(self, msg: Message) -> None:
        if msg["type"] == "http.response.start":
            self.started = True
            headers = msg.get("headers", ())
            # Read here, not kept: a stream's head is not held while it relays. The first
            # content-type says (it comes first in nonstop's own replies and the cloud's).
            for k, v in headers:  # (a loop, not next(): a generator step per header)
                if k == b"content-type":
                    self.stream = v.startswith(b"text/event-stream")
                    break
            if BODY_READ not in self.scope and _has_body(self.scope):
                msg["headers"] = [*headers, (b"connection", b"close")]
        elif msg["type"] == "http.response.body" and not msg.get("more_body", False):
            self.ended = True
        await self.send(msg)


class App:
    """Plain ASGI: a dictionary of routes, everything else proxied to the cloud."""

    def __init__(self, cfg: Config, runtime: Runtime | None = None):
        self.cfg = cfg
        self.rt = runtime or Runtime(cfg)
        self.pipeline = Pipeline(self.rt)
        relay = Relay(cfg, self.rt.request_log)
        self.anthropic = AnthropicDoor(self.rt, self.pipeline, relay)
        self.openai = OpenAIDoor(self.rt, self.pipeline, relay)
        self._token = cfg.token.encode() if cfg.token else b""
        # Per-user tokens of a shared instance; the global token is the administrator's.
        self._users = [(u.token.encode(), u.name) for u in cfg.users]
        self._hosts = {"localhost", "127.0.0.1", "::1", cfg.host.lower()}
        self._hosts_seen: set[bytes] = set()  # Host values found allowed, as sent
        self._body_pace = BodyPace(cfg.body_timeout, cfg.body_min_rate)
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/messages"): self.anthropic.messages,
            ("POST", "/v1/messages/count_tokens"): self.anthropic.count_tokens,
            ("GET", "/v1/models"): self.anthropic.models,
            ("GET", "/api/hello"): self.anthropic.hello,
            ("HEAD", "/api/hello"): self.anthropic.hello,
            ("POST", "/v1/chat/completions"): self.openai.chat_completions,
            ("POST", "/chat/completions"): self.openai.chat_completions,
            ("GET", "/health"): self.health,
            ("HEAD", "/health"): self.health,
            ("GET", "/metrics"): self.metrics,
            ("HEAD", "/metrics"): self.metrics,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.lifespan(receive, send)
            return
        if kind != "http":
            return
        rid = new_request_id()
        scope["nonstop.request_id"] = rid
        scope[BODY_PACE] = self._body_pace
        watched = _Watched(send, scope)
        try:
            await self.dispatch(scope, receive, watched)
        except BodyTimeout as exc:
            await self.body_late(scope, watched, rid, exc)
        except Exception as exc:
            await self.last_guard(scope, watched, rid, exc)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = self._check_head(scope)
        if problem:
            await self._writer(scope).error(send, problem[0], problem[1])
            return
        if self._token or self._users:
            user = self._authorized(scope)
            if user is None:
                await self._unauthorized(scope, send)
                return
            scope["nonstop.user"] = user
        keep_head(scope[HEAD])  # let in: its head is kept for the client's next request
        path = scope["path"]
        handler = self.routes.get((scope["method"], path))
        if handler is not None:
            await handler(scope, receive, send)
        elif path in OPENAI_PATHS:  # nonstop's own door, not the cloud's: another method is not its
            await self._writer(scope).error(send, 405, f"{scope['method']} is not allowed on {path}; use POST",
                                            "invalid_request_error", extra=[(b"allow", b"POST")])
        elif path.startswith("/_nonstop"):
            await dashboard.handle(self.rt, scope, receive, send)
        else:
            await self.anthropic.passthrough(scope, receive, send)

    async def last_guard(self, scope: Scope, sent: _Watched, rid: str, exc: Exception) -> None:
        """An exception nothing else caught: log it with the request id, and end the
        exchange well-formed in the client's protocol, whatever stage it reached."""
        log.error("%s %s %s failed inside nonstop: %s", rid, scope.get("method"), scope.get("path", "")[:100],
                  type(exc).__name__, exc_info=exc)
        writer = self._writer(scope)
        message = f"nonstop failed on this request ({type(exc).__name__}); request id {rid}"
        answered = sent.started  # before this guard's own answer
        with contextlib.suppress(Exception):
            if not answered:
                await writer.error(sent, 500, message, "api_error", request_id=rid)
            elif not sent.ended:
                body = writer.stream_error(message) if sent.stream else b""
                await sent({"type": "http.response.body", "body": body, "more_body": False})
        row: RequestRow | None = scope.get(REQUEST_ROW)
        if row is not None and row.total_ms is None:  # a door made it, and no relay recorded it
            if not answered:
                row.status = 500
            row.outcome, row.error = "error", message
            row.total_ms = (time.time() - row.ts) * 1000
            with contextlib.suppress(Exception):
                self.rt.request_log.record(row)

    async def body_late(self, scope: Scope, sent: _Watched, rid: str, exc: BodyTimeout) -> None:
        """A body that did not keep pace: a 408 in the client's protocol, and the
        connection is closed (the body was not read to its end)."""
        log.warning("%s %s %s: %s", rid, scope.get("method"), scope.get("path", "")[:100], exc)
        if not sent.started:
            with contextlib.suppress(Exception):
                await self._writer(scope).error(sent, 408, str(exc), "timeout_error", request_id=rid)

    def _writer(self, scope: Scope) -> Writer:
        return OpenAIWriter("", False) if scope.get("path") in OPENAI_PATHS else AnthropicWriter()

    # --- lifespan, head checks, auth ------------------------------------------------------------

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.rt.start()
                except Exception as exc:  # report, do not hide
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                self.rt.draining = True
                await self.rt.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _check_head(self, scope: Scope) -> tuple[int, str] | None:
        """Why the request's head is refused (status, message), or None. A head within the
        size limit is read on the way (scope[HEAD], scope[CONTENT_LENGTH])."""
        headers = scope["headers"]
        if sum(map(len, chain.from_iterable(headers))) > MAX_HEADER_BYTES:  # names and values, counted in C
            return 431, f"request headers are larger than {MAX_HEADER_BYTES} bytes"
        if scope["path"][:1] != "/":  # `OPTIONS *`: nothing here, or upstream, answers for the server as a whole
            return 400, f"the request target must be a path starting with /, not {scope['path'][:100]!r}"
        scope[HEAD], scope[CONTENT_LENGTH] = split_head(headers)
        if not self._token and not self._users:
            # Without a token only loopback is served; a foreign Host is a web page
            # trying DNS rebinding against this port. (With users' tokens every request
            # needs one, and a team reaches the gateway by its own name.)
            raw = scope[HEAD].host
            if raw in self._hosts_seen:  # a client sends the same Host every time
                return None
            host = raw.decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.startswith("[") and "]" in name:
                name = name[1 : name.index("]")]
            if host and name not in self._hosts:
                return 403, f"nonstop does not serve the host name {host[:100]!r}; use http://127.0.0.1:{self.cfg.port}"
            if len(self._hosts_seen) < 64:  # the few a machine's clients use, not every one tried
                self._hosts_seen.add(raw)
        return None

    def _authorized(self, scope: Scope) -> str | None:
        """Who the request's token belongs to: "" for the administrator's (the global
        token), a user's name, or None for no valid token. Each credential offered is
        tried (the header, then for the dashboard the address's ?token=, then its cookie):
        a stale cookie from another nonstop on this host does not hide the right token."""
        for via, given in self._offered(scope):
            who = self._whose(given.encode())
            if who is not None:
                scope[TOKEN_VIA] = via
                return who
        return None

    @staticmethod
    def _offered(scope: Scope) -> Iterator[tuple[str, str]]:
        head: Head = scope[HEAD]
        if head.token:
            yield "header", head.token.decode("latin-1")
        if not scope["path"].startswith("/_nonstop"):
            return
        query = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [""])[0]
        if query:
            yield "query", query
        # Each `nonstop_token` among the cookies, read on its own: a cookie of another site
        # on this host that a strict parser refuses (a space, JSON, no `=`) hides nothing.
        for part in head.cookie.decode("latin-1").split(";"):
            name, eq, value = part.strip().partition("=")
            if eq and name == "nonstop_token":
                value = value.strip()
                if len(value) > 1 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                yield "cookie", unquote(value)

    def _whose(self, raw: bytes) -> str | None:
        if self._token and hmac.compare_digest(raw, self._token):
            return ""
        found = None
        for token, name in self._users:  # compare with every one: no early exit to time
            if hmac.compare_digest(raw, token):
                found = name
        return found

    async def _unauthorized(self, scope: Scope, send: Send) -> None:
        msg = ("nonstop requires an access token here: send it in the x-nonstop-token header "
               "(for Claude Code: ANTHROPIC_CUSTOM_HEADERS='x-nonstop-token: ...')")
        if scope["path"] in OPENAI_PATHS:
            await self._writer(scope).error(send, 401, msg)
        else:
            await AnthropicWriter().error(send, 401, msg, "authentication_error")

    # --- nonstop's own small endpoints ------------------------------------------------------------

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.rt
        body: dict[str, Any] = {
            "status": "draining" if rt.draining else "ok",
            "cloud": rt.quota.state.value,
            "local": [{"name": b.name, "healthy": b.state.healthy} for b in rt.locals],
            "pid": os.getpid(),
        }
        await send_json(send, 200, body)

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.rt.request_log.flush()  # the requests recorded in the last moment count too
        await send_bytes(send, 200, self.rt.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")


def _has_body(scope: Scope) -> bool:
    for k, v in scope["headers"]:
        if (k == b"content-length" and v.strip() != b"0") or k == b"transfer-encoding":
            return True
    return False


def create_app(cfg: Config) -> App:
    return App(cfg)


__all__ = ["App", "create_app"]
