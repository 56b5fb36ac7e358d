"""The Anthropic front door: /v1/messages, count_tokens, models, the connection warm-up,
and every other path, passed to the cloud unchanged."""

from __future__ import annotations

import time

import orjson

from nonstop.backends.base import Reply, UnreadableRequest
from nonstop.backends.pdfs import read_pdfs
from nonstop.routing.plan import CLOUD
from nonstop.server.asgi import Receive, Scope, Send, send_bytes, send_json
from nonstop.server.doors.base import Door
from nonstop.server.pipeline import Outcome, RequestContext
from nonstop.server.recovery import recovering
from nonstop.server.relay import safe_header
from nonstop.server.shadow import Tap
from nonstop.server.writers import AnthropicWriter
from nonstop.wire.anthropic import estimate_tokens
from nonstop.wire.errors import anthropic_error
from nonstop.wire.hygiene import clean_history_for_cloud
from nonstop.wire.outline import outline
from nonstop.wire.validate import validate_messages_request

WRITER = AnthropicWriter()


class AnthropicDoor(Door):
    async def messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self.read(scope, receive, send, WRITER)
        if body is None:
            return
        # The outline is enough while the history needs no cleaning: the request is parsed
        # whole only if a backend other than the cloud needs it (wire/outline.py).
        shape = outline(body)
        if shape is not None:
            problem, cleaned, req = shape.problem, None, shape.facts
        else:
            parsed = await self.parse_json(body, send, WRITER)
            if parsed is None:
                return
            req = parsed[0]
            problem = validate_messages_request(req)
            cleaned = clean_history_for_cloud(req) if not problem else None
        if problem:
            await WRITER.error(send, 400, problem, "invalid_request_error")
            return
        try:
            cloud_body = orjson.dumps(cleaned) if cleaned is not None else None
        except orjson.JSONEncodeError:  # orjson reads 1,024 levels, writes 255
            await WRITER.error(send, 400, "the request is nested too deeply to send on", "invalid_request_error")
            return
        ctx = self.context(scope, body, req, "/v1/messages", lazy=shape is not None, cloud_body=cloud_body)
        if shape is not None:
            ctx.facts = self.pipeline.facts(ctx.ex, req=shape.facts)
        ctx.row.overhead_ms = (time.perf_counter() - ctx.t0) * 1000
        self.rt.inflight += 1
        tap: Tap | None = None  # sampled for the shadow: its place is given back unless replayed
        try:
            outcome = await self.run(ctx)
            if outcome is None:  # the client left before its answer started
                return
            reply = outcome.reply
            served = reply is not None and reply.backend == CLOUD and reply.status == 200
            tap = Tap(reply) if served and reply is not None and self.rt.shadow.sample() else None
            recover = served and reply is not None and reply.stream and self.cfg.recovery.continue_locally
            # Recovery and the shadow need the whole request; nothing else does from here.
            try:
                whole = ctx.ex.request() if recover or tap is not None else None
            except UnreadableRequest:  # the cloud took it; recovery and the shadow cannot
                whole = None
            # The request is no longer needed once a reply is chosen: do not hold ~50 KB
            # per open stream for its whole life (unless recovery or body logging needs it).
            del body, cleaned, req, shape
            ctx.ex.cloud_body = None
            ctx.ex.req = {}
            if not self.cfg.log.store_bodies:
                ctx.ex.body = b""
            if recover and reply is not None and whole is not None:
                reply.body = recovering(reply, reply.body, whole,
                                        lambda r: self.pipeline.continue_locally(ctx, r, whole))
            await self.relay.commit(ctx, outcome, receive, send, WRITER)
            # (An answer a local model went on with, the cloud's stream having failed before
            # any content, is no cloud answer to compare with.)
            if tap is not None and whole is not None and reply is not None and reply.backend == CLOUD:
                shadowed, tap = tap, None
                self.rt.shadow.after(whole, shadowed, ctx.row.workload, ctx.row.request_id)
        finally:
            self.rt.inflight -= 1
            if tap is not None:
                self.rt.shadow.drop()

    async def count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        got = await self.read_json(scope, receive, send, WRITER)
        if got is None:
            return
        body, req = got
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
            await WRITER.error(send, 400, "messages: a list of messages is required", "invalid_request_error")
            return
        cleaned = clean_history_for_cloud(req)  # the cloud counts the history it would be sent
        # The request as the client sent it: a count has no `stream`, and one sent on with
        # `thinking` taken off must not gain one.
        ctx = self.context(scope, body, req, "/v1/messages/count_tokens",
                           cloud_body=orjson.dumps(cleaned) if cleaned is not None else None)
        ctx.ex.stream = False
        ctx.facts = self.pipeline.facts(ctx.ex, side=True, count_tokens=True)
        p = self.pipeline.plan(ctx.facts)
        if p.first is not None and p.first.target == CLOUD:
            res = await self.pipeline.attempt(ctx, p.first)
            if isinstance(res, Reply):
                await self.relay.commit(ctx, Outcome(reply=res, plan=p, step=p.first), receive, send, WRITER)
                return
        tokens = 0
        await read_pdfs(req)  # counted as the local model gets them: as text
        for step in p.steps:
            b = self.rt.backend(step.target)
            if b is None:
                continue
            try:
                # As the server would get the request: folded for a template that needs it,
                # which a count would otherwise be refused for.
                tokens = await b.count_tokens(b.local_request(req))
                break
            except Exception:  # a count is a courtesy: an estimate will do
                continue
        tokens = tokens or estimate_tokens(req)
        await send_json(send, 200, {"input_tokens": tokens},
                        extra=[(b"x-nonstop-backend", b"local"), (b"x-nonstop-route", safe_header(_local_route(p)))])

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self.context(scope, b"", {}, "/v1/models")
        ctx.facts = self.pipeline.facts(ctx.ex, side=True)
        p = self.pipeline.plan(ctx.facts)
        if p.first is not None and p.first.target == CLOUD:
            res = await self.pipeline.attempt(ctx, p.first)
            if isinstance(res, Reply) and res.status < 500:
                await self.relay.commit(ctx, Outcome(reply=res, plan=p, step=p.first), receive, send, WRITER)
                return
        data = []
        for b in self.rt.locals:
            name = b.cfg.model or b.state.model or b.name
            data.append({"type": "model", "id": name, "display_name": f"{name} (local: {b.name})", "created_at": "1970-01-01T00:00:00Z"})
        await send_json(send, 200, {
            "data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
        }, extra=[(b"x-nonstop-backend", b"local"), (b"x-nonstop-route", safe_header(_local_route(p)))])

    async def hello(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Claude Code's connection warm-up: the cloud's answer while it serves."""
        ctx = self.context(scope, b"", {}, "/api/hello")
        p = self.pipeline.plan(self.pipeline.facts(ctx.ex, side=True))
        if p.first is not None and p.first.target == CLOUD:
            res = await self.rt.cloud.request(scope["method"], ctx.ex.raw_path, ctx.ex.query, ctx.ex.read_head().forwarded, b"")
            if isinstance(res, Reply):
                await self.relay.pump(ctx, res, WRITER, [(b"x-nonstop-backend", b"cloud")], receive, send, time.perf_counter())
                return
        await send_bytes(send, 200, b"{}", extra=[(b"x-nonstop-backend", b"nonstop")])

    async def passthrough(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Anything nonstop does not know goes to the cloud unchanged."""
        body = await self.read(scope, receive, send, WRITER, coded=True)
        if body is None:
            return
        ctx = self.context(scope, body, {}, scope["path"][:200])
        res = await self.rt.cloud.request(scope["method"], ctx.ex.raw_path, ctx.ex.query, ctx.ex.read_head().forwarded, body)
        if isinstance(res, Reply):
            extra = [(b"x-nonstop-backend", b"cloud"), (b"x-nonstop-route", b"cloud; rule=passthrough; a path nonstop passes through")]
            await self.relay.pump(ctx, res, WRITER, extra, receive, send, time.perf_counter())
            return
        await send_bytes(send, 502, anthropic_error(502, f"nonstop could not reach the cloud for {scope['path'][:100]}: {res.describe()}"))


def _local_route(p: object) -> str:
    skipped = getattr(p, "skipped", ())
    cloud = next((s for s in skipped if s.target == CLOUD), None)
    return f"nonstop; rule={cloud.rule}; {cloud.reason}" if cloud else "nonstop; rule=local; answered by nonstop"


__all__ = ["AnthropicDoor", "RequestContext"]
