"""Local model servers: Anthropic-native (`api = "anthropic"`) and OpenAI Chat
Completions (`api = "openai"`).

Each send() takes the parsed client request (Anthropic Messages), never the client's
headers: cloud credentials cannot reach a local server by construction. Replies come
back as Anthropic-format bytes, normalised for strict clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from nonstop.backends.base import Attempt, Reply, TooLong, Usage, single
from nonstop.config import LocalBackendConfig
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.wire.anthropic import Event, estimate_tokens, new_message_id, to_local_request
from nonstop.wire.local_stream import LocalStreamNormalizer, message_start, normalize_message
from nonstop.wire.sse import JSONEventDecoder, encode_event

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
# Smallest room left for output before a request counts as too long for a window.
MIN_OUTPUT_ROOM = 256
# How long to wait for a local stream's head before committing and sending pings.
COMMIT_AFTER = 3.0


@dataclass
class Health:
    ok: bool | None = None
    checked: float = 0.0
    error: str = ""
    model: str = ""


def _encode(events: list[Event]) -> bytes:
    return b"".join(encode_event(t, orjson.dumps(d)) for t, d in events)


class LocalBackend:
    """Shared plumbing; subclasses say how to talk to the server."""

    def __init__(self, cfg: LocalBackendConfig, session: aiohttp.ClientSession, *, ping_interval: float = 10.0):
        self.cfg = cfg
        self.name = cfg.name
        self.session = session
        self.base = cfg.url.rstrip("/")
        self.health = Health()
        self.ping_interval = ping_interval
        self._server_counts: bool | None = None if cfg.count_tokens == "auto" else cfg.count_tokens == "server"

    # --- things subclasses provide ------------------------------------------------------

    def model_for(self, client_model: str) -> str:
        return self.cfg.model or client_model

    async def count_tokens(self, local_req: dict) -> int:
        return estimate_tokens(local_req)

    async def _post(self, local_req: dict, stream: bool, tokens: int, original: dict) -> Attempt:
        raise NotImplementedError

    # --- the common path ------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
        if self.cfg.api_key:
            h["x-api-key"] = self.cfg.api_key
            h["authorization"] = f"Bearer {self.cfg.api_key}"
        return h

    def timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, connect=self.cfg.connect_timeout, sock_connect=self.cfg.connect_timeout,
            sock_read=self.cfg.idle_timeout,
        )

    async def send(self, req: dict, *, stream: bool) -> Attempt:
        local_req = to_local_request(req, model=self.model_for(str(req.get("model", ""))), max_tokens=self.cfg.max_output_tokens)
        try:
            tokens = await self.count_tokens(local_req)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = _describe_exc(exc, self.base)
            self._mark(False, detail)
            return Verdict(FailureKind.NETWORK, True, None, detail)
        room = self.cfg.context_window - tokens
        if room < min(MIN_OUTPUT_ROOM, local_req["max_tokens"]):
            return TooLong(self.name, tokens, self.cfg.context_window)
        local_req["max_tokens"] = min(local_req["max_tokens"], room)
        local_req["stream"] = stream
        return await self._post(local_req, stream, tokens, req)

    def _mark(self, ok: bool, error: str = "") -> None:
        self.health.ok = ok
        self.health.checked = time.time()
        self.health.error = error

    async def check_health(self) -> Health:
        try:
            async with self.session.get(self.base + "/v1/models", headers=self.headers(), timeout=aiohttp.ClientTimeout(total=3)) as r:
                if r.status < 500:
                    self._mark(True)
                    if r.status == 200:
                        try:
                            data = await r.json(loads=orjson.loads, content_type=None)
                            models = [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict) and m.get("id")]
                            self.health.model = self.cfg.model or (models[0] if models else "")
                        except (ValueError, AttributeError, aiohttp.ClientError):
                            pass
                else:
                    self._mark(False, f"HTTP {r.status}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._mark(False, _describe_exc(exc, self.base))
        return self.health

    async def _open(self, path: str, body: dict, stream: bool) -> aiohttp.ClientResponse | Verdict:
        """POST and wait for the head. For streams, give up waiting after COMMIT_AFTER
        and let the caller commit with pings (prompt processing on CPU is slow)."""
        try:
            async with asyncio.timeout(self.cfg.connect_timeout + self.cfg.first_byte_timeout):
                resp = await self.session.post(self.base + path, data=orjson.dumps(body), headers=self.headers(), timeout=self.timeout())
        except (aiohttp.ClientError, OSError) as exc:
            self._mark(False, _describe_exc(exc, self.base))
            return Verdict(FailureKind.NETWORK, True, None, _describe_exc(exc, self.base))
        except TimeoutError:
            self._mark(False, "timed out")
            return Verdict(FailureKind.TIMEOUT, True, None, f"no answer from {self.base}")
        if resp.status >= 400:
            text = (await resp.content.read(4096)).decode("utf-8", "replace")
            resp.release()
            return _local_error(resp.status, text)
        self._mark(True)
        return resp


def _describe_exc(exc: BaseException, base: str) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return f"connection refused at {base} — is the server running?"
    if isinstance(exc, TimeoutError):
        return f"no answer from {base} in time"
    return f"{type(exc).__name__} at {base}: {exc}"[:300]


def _local_error(status: int, text: str) -> Verdict:
    low = text.lower()
    too_long = (
        "context" in low and ("exceed" in low or "too long" in low or "overflow" in low or "too large" in low)
    ) or "prompt is too long" in low
    if too_long:
        # LM Studio reports a context overflow as HTTP 500.
        return Verdict(FailureKind.CLIENT_ERROR, True, None, f"context overflow: {text[:200]}", status)
    kind = FailureKind.SERVER_ERROR if status >= 500 else FailureKind.CLIENT_ERROR
    return Verdict(kind, True, None, f"HTTP {status}: {text[:200]}", status)


async def _with_pings(source: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """Relay source; during silences longer than interval, send ping events."""
    ping = encode_event("ping", b'{"type":"ping"}')
    it = source.__aiter__()
    nxt: asyncio.Task | None = None
    try:
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({nxt}, timeout=interval)
            if not done:
                yield ping
                continue
            try:
                chunk = nxt.result()
            except StopAsyncIteration:
                return
            finally:
                if done:
                    nxt = None
            yield chunk
    finally:
        if nxt is not None:
            nxt.cancel()
            with contextlib.suppress(BaseException):
                await nxt
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


class _EventSource:
    """Turns one local server's stream events into Anthropic events (sans-IO)."""

    def feed(self, event: str, doc: dict[str, Any]) -> list[Event]:
        return [(event, doc)]

    def finish(self) -> list[Event]:
        return []


class _OpenAIEventSource(_EventSource):
    def __init__(self, name: str, translator: Any):
        self.name = name
        self.translator = translator

    def feed(self, event: str, doc: dict[str, Any]) -> list[Event]:
        if "error" in doc and "choices" not in doc:
            err = doc["error"]
            msg = err.get("message") if isinstance(err, dict) else str(err)
            return [("error", {"type": "error", "error": {"type": "api_error", "message": f"{self.name}: {msg}"}})]
        return self.translator.feed(doc)

    def finish(self) -> list[Event]:
        return list(self.translator.finish())


@dataclass
class _Call:
    """One request to a local server, and what its reply needs to be read back."""

    path: str
    body: dict
    model: str
    tokens: int
    capped: bool
    name_map: dict | None = None


class _StreamingBackend(LocalBackend):
    """The request flow both protocols share: decide before committing, ping while a
    slow prompt is processed, normalise every event for strict clients."""

    def prepare(self, local_req: dict, stream: bool, tokens: int, original: dict) -> _Call:
        raise NotImplementedError

    def message_from(self, doc: Any, call: _Call) -> dict | None:
        raise NotImplementedError

    def events(self, call: _Call) -> _EventSource:
        return _EventSource()

    async def _post(self, local_req: dict, stream: bool, tokens: int, original: dict) -> Attempt:
        call = self.prepare(local_req, stream, tokens, original)
        if not stream:
            return await self._whole(call)
        task = asyncio.ensure_future(self._open(call.path, call.body, True))
        done, _ = await asyncio.wait({task}, timeout=COMMIT_AFTER)
        usage = Usage(input_tokens=tokens)
        if done:
            opened = task.result()
            if isinstance(opened, Verdict):
                return opened
            body = self._relay(opened, call, usage, started=False)
            return Reply(200, list(SSE_HEADERS), _with_pings(body, self.ping_interval), self.name, True, usage, close=opened.close)
        # Still processing the prompt: commit now, keep the client alive with pings.
        return Reply(200, list(SSE_HEADERS), _with_pings(self._late(task, call, usage), self.ping_interval),
                     self.name, True, usage, close=task.cancel)

    async def _whole(self, call: _Call) -> Attempt:
        opened = await self._open(call.path, call.body, False)
        if isinstance(opened, Verdict):
            return opened
        try:
            raw = await opened.read()
            doc = orjson.loads(raw)
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            opened.close()
            return Verdict(FailureKind.BAD_RESPONSE, True, None, f"{self.name}: unreadable reply ({type(exc).__name__})")
        msg = self.message_from(doc, call)
        if msg is None:
            return Verdict(FailureKind.BAD_RESPONSE, True, None, f"{self.name}: unexpected reply {raw[:200]!r}")
        msg = normalize_message(msg, model=call.model, input_tokens_estimate=call.tokens, capped=call.capped)
        u = msg["usage"]
        usage = Usage(u["input_tokens"], u["output_tokens"], str(msg.get("stop_reason") or ""), complete=True)
        return Reply(200, list(JSON_HEADERS), single(orjson.dumps(msg)), self.name, False, usage)

    async def _late(self, task: asyncio.Future, call: _Call, usage: Usage) -> AsyncIterator[bytes]:
        yield _encode([message_start(call.model, call.tokens)])
        opened = await task
        if isinstance(opened, Verdict):
            usage.error = opened.detail
            yield _encode([("error", {"type": "error", "error": {"type": "api_error", "message": f"{self.name}: {opened.detail}"}})])
            return
        async for chunk in self._relay(opened, call, usage, started=True):
            yield chunk

    async def _relay(self, resp: aiohttp.ClientResponse, call: _Call, usage: Usage, *, started: bool) -> AsyncIterator[bytes]:
        norm = LocalStreamNormalizer(model=call.model, input_tokens_estimate=call.tokens, started=started, capped=call.capped)
        source = self.events(call)
        decoder = JSONEventDecoder()
        try:
            try:
                async for chunk in resp.content.iter_any():
                    out: list[Event] = []
                    for ev, doc in decoder.feed(chunk):
                        for t, d in source.feed(ev.event, doc):
                            out.extend(norm.feed(t, d))
                    if out:
                        yield _encode(out)
                    if norm.finished:
                        break
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                norm.error = f"{self.name} stream failed: {type(exc).__name__}"
            if not norm.finished and not norm.error:
                tail = [e for t, d in source.finish() for e in norm.feed(t, d)]
                if tail:
                    yield _encode(tail)
            yield _encode(norm.finish())
        finally:
            resp.close()
            usage.input_tokens = norm.input_tokens
            usage.output_tokens = norm.output_tokens
            usage.stop_reason = norm.stop_reason
            usage.error = norm.error
            if norm.cut:
                usage.note = "the local output cap ended the answer; reported as end of turn"
            usage.complete = not norm.error


class AnthropicLocalBackend(_StreamingBackend):
    """A server with a native /v1/messages (llama.cpp, Ollama >= 0.14, LM Studio >= 0.4.1)."""

    async def count_tokens(self, local_req: dict) -> int:
        if self._server_counts is False:
            return estimate_tokens(local_req)
        body = {k: v for k, v in local_req.items() if k not in ("max_tokens", "stream", "stop_sequences", "temperature", "top_p", "top_k")}
        try:
            async with self.session.post(
                self.base + "/v1/messages/count_tokens", data=orjson.dumps(body), headers=self.headers(),
                timeout=aiohttp.ClientTimeout(total=30, connect=self.cfg.connect_timeout),
            ) as r:
                if r.status == 200:
                    data = await r.json(loads=orjson.loads, content_type=None)
                    n = data.get("input_tokens") if isinstance(data, dict) else None
                    if isinstance(n, int) and n > 0:
                        self._server_counts = True
                        return n
                if r.status in (404, 405, 501) and self._server_counts is None:
                    self._server_counts = False
        except (ValueError, aiohttp.ContentTypeError):
            pass
        return estimate_tokens(local_req)

    def prepare(self, local_req: dict, stream: bool, tokens: int, original: dict) -> _Call:
        return _Call("/v1/messages", local_req, local_req["model"], tokens, _capped(local_req, original))

    def message_from(self, doc: Any, call: _Call) -> dict | None:
        return doc if isinstance(doc, dict) and doc.get("type") != "error" else None


class OpenAILocalBackend(_StreamingBackend):
    """A server that speaks OpenAI Chat Completions (vLLM, LM Studio, llama.cpp, Ollama /v1)."""

    def prepare(self, local_req: dict, stream: bool, tokens: int, original: dict) -> _Call:
        from nonstop.wire import openai as oa

        # The reasoning switch and parallel-call setting read the client's own fields,
        # which the generic local sanitiser drops.
        source = {**local_req, "thinking": original.get("thinking"), "output_config": original.get("output_config")}
        tc = original.get("tool_choice")
        if isinstance(source.get("tool_choice"), dict) and isinstance(tc, dict) and "disable_parallel_tool_use" in tc:
            source["tool_choice"] = {**source["tool_choice"], "disable_parallel_tool_use": tc["disable_parallel_tool_use"]}
        body = oa.anthropic_to_openai_request(
            source, model=local_req["model"], max_tokens=local_req["max_tokens"], stream=stream,
            reasoning_param=self.cfg.reasoning_param,
        )
        name_map = body.pop(oa.TOOL_NAME_MAP_KEY, None)
        return _Call("/v1/chat/completions", body, local_req["model"], tokens, _capped(local_req, original), name_map)

    def message_from(self, doc: Any, call: _Call) -> dict | None:
        from nonstop.wire import openai as oa

        if not isinstance(doc, dict) or "choices" not in doc:
            return None
        return oa.openai_to_anthropic_response(doc, model=call.model, input_tokens_estimate=call.tokens, tool_name_map=call.name_map)

    def events(self, call: _Call) -> _EventSource:
        from nonstop.wire import openai as oa

        translator = oa.OpenAIStreamTranslator(
            model=call.model, message_id=new_message_id(), input_tokens_estimate=call.tokens, tool_name_map=call.name_map
        )
        return _OpenAIEventSource(self.name, translator)


def _capped(local_req: dict, original: dict) -> bool:
    asked = original.get("max_tokens")
    return not isinstance(asked, int) or local_req["max_tokens"] < asked


def make_local_backend(cfg: LocalBackendConfig, session: aiohttp.ClientSession, *, ping_interval: float = 10.0) -> LocalBackend:
    cls: Callable[..., LocalBackend] = AnthropicLocalBackend if cfg.api == "anthropic" else OpenAILocalBackend
    return cls(cfg, session, ping_interval=ping_interval)
