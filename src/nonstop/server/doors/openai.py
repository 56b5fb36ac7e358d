"""The OpenAI front door: /v1/chat/completions, translated to Anthropic Messages for the
pipeline and back to Chat Completions (JSON or chunks) for the client."""

from __future__ import annotations

import orjson

from nonstop.server.asgi import Receive, Scope, Send
from nonstop.server.doors.base import Door
from nonstop.server.writers import OpenAIWriter
from nonstop.wire import openai as oa
from nonstop.wire.hygiene import for_cloud
from nonstop.wire.validate import validate_messages_request

CLOUD_HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json"}


class OpenAIDoor(Door):
    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        errors = OpenAIWriter("", False)
        got = await self.read_json(scope, receive, send, errors)
        if got is None:
            return
        _, oreq = got
        if not isinstance(oreq, dict):
            await errors.error(send, 400, "the request body must be a JSON object")
            return
        try:
            areq = oa.openai_request_to_anthropic(oreq)
            problem = validate_messages_request(areq)
            body = b"" if problem else orjson.dumps(for_cloud(areq))
        except oa.TranslationError as exc:
            await errors.error(send, 400, str(exc))
            return
        except (orjson.JSONEncodeError, RecursionError):  # orjson reads 1,024 levels, writes 255
            await errors.error(send, 400, "the request is nested too deeply to send on")
            return
        if problem:
            await errors.error(send, 400, problem)
            return
        ctx = self.context(scope, body, areq, "/v1/chat/completions", cloud_path=b"/v1/messages",
                           cloud_headers=CLOUD_HEADERS)
        options = oreq.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        legacy = oa.legacy_functions(oreq)
        self.rt.inflight += 1
        try:
            outcome = await self.run(ctx)
            if outcome is None:  # the client left before its answer started
                return
            # As on /v1/messages: do not hold the request for the life of the stream.
            del got, oreq, areq, body
            ctx.ex.req = {}
            if not self.cfg.log.store_bodies:
                ctx.ex.body = b""
            await self.relay.commit(ctx, outcome, receive, send, OpenAIWriter(ctx.row.model, include_usage, legacy))
        finally:
            self.rt.inflight -= 1
