"""How a reply reaches each kind of client: Anthropic bytes as they are, or translated
to OpenAI Chat Completions for the OpenAI front door; and errors in each protocol, as a
whole response or, once a stream has started, as its last event."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import orjson

from nonstop.backends.base import Reply
from nonstop.server.asgi import Send, send_bytes
from nonstop.wire import openai as oa
from nonstop.wire.errors import (
    anthropic_error,
    anthropic_error_event,
    context_exceeded,
    openai_error,
    openai_error_dict,
)
from nonstop.wire.sse import JSONEventDecoder

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
JSON_HEADERS = [(b"content-type", b"application/json")]
_OPENAI_CODES = {401: "invalid_api_key", 413: "request_too_large"}
# The headers of an upstream error an OpenAI client is given (relayed names are lower case).
_ERROR_KEPT = frozenset({b"retry-after", b"retry-after-ms", b"x-should-retry", b"request-id"})


class Writer:
    """The client's protocol. Subclasses say how replies and errors look in it."""

    def headers(self, reply: Reply) -> list[tuple[bytes, bytes]]:
        raise NotImplementedError

    def body(self, reply: Reply) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def error(self, send: Send, status: int, message: str, etype: str = "", request_id: str = "",
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """A whole error response (nothing has been sent yet)."""
        raise NotImplementedError

    def stream_error(self, message: str, etype: str = "api_error") -> bytes:
        """The last event of a stream that cannot finish."""
        raise NotImplementedError

    def ended(self, last: bytes) -> bool:
        """Whether a stream whose last bytes sent were `last` has already ended in this
        protocol: nothing, not even an error, may follow."""
        raise NotImplementedError


class AnthropicWriter(Writer):
    def headers(self, reply: Reply) -> list[tuple[bytes, bytes]]:
        return reply.headers

    def body(self, reply: Reply) -> AsyncIterator[bytes]:
        return reply.body

    async def error(self, send: Send, status: int, message: str, etype: str = "", request_id: str = "",
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        await send_bytes(send, status, anthropic_error(status, message, etype or None, request_id=request_id), extra=extra)

    def stream_error(self, message: str, etype: str = "api_error") -> bytes:
        return anthropic_error_event(message, etype)

    def ended(self, last: bytes) -> bool:
        final = last.replace(b"\r\n", b"\n").rstrip(b"\n").rpartition(b"\n\n")[2]
        name = final.partition(b"\n")[0].replace(b" ", b"")
        return name in (b"event:message_stop", b"event:error")


class OpenAIWriter(Writer):
    def __init__(self, model: str, include_usage: bool, legacy: bool = False):
        self.model = model
        self.include_usage = include_usage
        self.legacy = legacy  # the request offered the legacy `functions`: calls go out as `function_call`

    def headers(self, reply: Reply) -> list[tuple[bytes, bytes]]:
        if reply.status < 400:
            return list(SSE_HEADERS) if reply.stream else list(JSON_HEADERS)
        # An error keeps what says when (and whether) to retry, and the id to quote: the
        # OpenAI SDK reads retry-after(-ms) and x-should-retry as the cloud sent them.
        return [*JSON_HEADERS, *((k, v) for k, v in reply.headers if k in _ERROR_KEPT)]

    async def body(self, reply: Reply) -> AsyncIterator[bytes]:
        if reply.status >= 400 or not reply.stream:
            yield await self._whole(reply)
            return
        tr = oa.AnthropicToOpenAIStream(model=self.model, completion_id="chatcmpl-" + secrets.token_hex(12),
                                        include_usage=self.include_usage, legacy=self.legacy)
        decoder = JSONEventDecoder()
        async for chunk in reply.body:
            events = decoder.feed(chunk)
            out = [b"data: " + orjson.dumps(c) + b"\n\n" for ev, data in events for c in tr.feed(ev.event, data)]
            if out:
                yield b"".join(out)
            elif any(ev.event == "ping" for ev, _ in events):
                # A local model reading a long prompt: Chat Completions has no ping, but
                # an SSE comment keeps the client's read timeout and any proxy from
                # closing a connection that is only quiet.
                yield b": ping\n\n"
        tail = [b"data: " + orjson.dumps(c) + b"\n\n" for c in tr.finish()]
        yield b"".join(tail) + b"data: [DONE]\n\n"

    async def _whole(self, reply: Reply) -> bytes:
        raw = b"".join([c async for c in reply.body])
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if reply.status >= 400:
            message = _error_message(doc) or raw[:300].decode("utf-8", "replace")
            return openai_error(reply.status, message, _openai_code(reply.status, message))
        if not isinstance(doc, dict):
            return openai_error(502, "the upstream reply was not valid JSON")
        return orjson.dumps(oa.anthropic_response_to_openai(doc, model=self.model, legacy=self.legacy))

    async def error(self, send: Send, status: int, message: str, etype: str = "", request_id: str = "",
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        await send_bytes(send, status, openai_error(status, message, _openai_code(status, message)), extra=extra)

    def stream_error(self, message: str, etype: str = "api_error") -> bytes:
        return b"data: " + orjson.dumps(openai_error_dict(500, message)) + b"\n\ndata: [DONE]\n\n"

    def ended(self, last: bytes) -> bool:
        return last.rstrip().endswith(b"data: [DONE]")


def _openai_code(status: int, message: str) -> str | None:
    """The OpenAI error code for an error, whoever wrote it: clients trim the conversation
    on `context_length_exceeded`, whether nonstop or the cloud found the prompt too long."""
    if status == 400 and context_exceeded(message):
        return "context_length_exceeded"
    return _OPENAI_CODES.get(status)


def _error_message(doc: object) -> str:
    """The words of an upstream error body: `error.message`, or `error` itself when an
    upstream (a proxy, a gateway) sends it as a string; "" when neither is text."""
    err = doc.get("error") if isinstance(doc, dict) else None
    msg = err.get("message") if isinstance(err, dict) else err
    return msg if isinstance(msg, str) else ""
