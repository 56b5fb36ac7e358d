"""A local model server as a backend: the request flow every local kind shares.

send() takes the parsed client request (Anthropic Messages), never the client's
headers: cloud credentials cannot reach a local server by construction. It decides
before committing (the window, the server's answer to the request), pings while a slow
prompt is processed, and normalises every event for strict clients. Replies come back
as Anthropic-format bytes whose tool-call ids say which local backend made them.

A kind of server is a subclass that says how to talk to it (`prepare`, `message_from`,
`events`): local_anthropic.py and local_openai.py; registry.py maps `api` to a kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from nonstop.backends.base import (
    MAX_WHOLE_BODY,
    Attempt,
    Exchange,
    Reply,
    TooLong,
    UnreadableRequest,
    Usage,
    forget_tracebacks,
    read_capped,
    read_limited,
    single,
    taken_over,
)
from nonstop.backends.pdfs import read_pdfs
from nonstop.backends.reader import coded, relay_reader
from nonstop.config import LocalBackendConfig
from nonstop.routing.backend_state import BackendState
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.routing.fit import Fitted, deferred_tool_names, fit_request
from nonstop.routing.plan import MIN_OUTPUT_ROOM
from nonstop.routing.view import Capabilities
from nonstop.wire.anthropic import Event, estimate_tokens, fold_beside_results, to_local_request
from nonstop.wire.errors import error_event, prompt_too_long_message
from nonstop.wire.framing import CR
from nonstop.wire.local_stream import (
    LocalStreamNormalizer,
    cache_counts,
    message_events,
    message_start,
    normalize_message,
)
from nonstop.wire.prompt_cache import normalize_for_prompt_cache
from nonstop.wire.repair import Repair
from nonstop.wire.sse import JSONEventDecoder, encode_event, loads_with_lone_surrogates
from nonstop.wire.tool_ids import backend_tag

if TYPE_CHECKING:
    from nonstop.routing.plan import Step

log = logging.getLogger("nonstop")

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
# Fittings tried, each with the scale the server's count of the last one gave.
REFITS = 4
# A server that ignores max_tokens would stream for ever: past this many characters for
# each token asked for (about twice a token's length), the answer ends as if at max_tokens.
RUNAWAY_CHARS_PER_TOKEN = 8
# How long to wait for a local stream's head before committing and sending pings.
COMMIT_AFTER = 3.0
# In count_tokens = "auto", the server is not asked to count a request that would fit
# with its whole answer even were nonstop's estimate (in the server's tokens) this many
# times short: no count could change what is sent.
COUNT_MARGIN = 1.5
# A prompt a server reports at or above this share of its window may have been cut to
# fit it (Ollama does so silently): its size teaches nothing about the server's tokens.
REPORTED_SHARE = 0.9


# A small request shaped like a coding agent's (prose, code, a tool schema), counted by a
# server at start-up to calibrate nonstop's token estimate against its tokenizer.
CALIBRATION_REQUEST: dict[str, Any] = {
    "model": "",
    "system": [{"type": "text", "text": (
        "You are an interactive coding assistant. Use the tools available to read files, "
        "search the code and run commands; keep answers short and precise. "
        "When you change code, follow the style of the surrounding file. ") * 6}],
    "tools": [{"name": "Read", "description": "Read a file from the local filesystem by absolute path.",
               "input_schema": {"type": "object", "properties": {
                   "file_path": {"type": "string", "description": "The absolute path to the file to read"},
                   "offset": {"type": "number", "description": "The line number to start reading from"},
                   "limit": {"type": "number", "description": "The number of lines to read"}},
                   "required": ["file_path"]}}],
    "messages": [{"role": "user", "content": (
        "def handle(request: dict[str, Any]) -> Response:\n    body = json.loads(request['body'])\n"
        "    return Response(status=200, headers={'content-type': 'application/json'}, body=body)\n"
        "Why does this fail for an empty body? Look at src/app/server.py and run the tests. ") * 4}],
    "max_tokens": 1,
}




def _encode(events: list[Event]) -> bytes:
    return b"".join(encode_event(t, orjson.dumps(d)) for t, d in events)


class EventSource:
    """Turns one local server's stream events into Anthropic events (sans-IO)."""

    # Words in a read that may make a failure of it: a read that holds one is decoded
    # whole before any of its content goes out (see _pieces).
    fails_on: tuple[bytes, ...] = (b"error",)

    def feed(self, event: str, doc: dict[str, Any]) -> list[Event]:
        return [(event, doc)]

    def finish(self, ended: bool = False) -> list[Event]:
        """The server's stream is over; `ended`: it said so (OpenAI's `[DONE]`)."""
        return []


@dataclass
class Call:
    """One request to a local server, and what its reply needs to be read back."""

    path: str
    body: dict
    model: str
    tokens: int
    capped: bool
    name_map: dict | None = None
    sent: float = 0.0  # perf_counter() when it was sent
    fitted: Fitted | None = None  # how the request was fitted to the window, if it was
    tools: list[dict[str, Any]] | None = None  # the offered tools, for repairing calls
    max_tokens: int = 0  # the output asked of the server
    estimate: int = 0  # nonstop's estimate of the request as sent (before scaling to the server's tokens)
    request: dict | None = None  # the request as nonstop sized it (before any translation)
    cut: bool = False  # a whole reply ran out of tokens inside a tool call
    data: bytes = b""  # the body as sent
    # The request sent once more, for a refusal that says how (LocalBackend._again): kept
    # for one that comes after the client's stream began.
    again: Callable[[Verdict | TooLong], Awaitable[Attempt] | None] | None = None


class LocalBackend:
    """Shared plumbing; subclasses say how to talk to the server."""

    def __init__(self, cfg: LocalBackendConfig, session: aiohttp.ClientSession, *, ping_interval: float = 10.0,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.name = cfg.name
        self.session = session
        self.base = cfg.url.rstrip("/")
        self.ping_interval = ping_interval
        self.tag = backend_tag(cfg.name)
        caps = Capabilities(api=cfg.api, context_window=cfg.context_window, max_output=cfg.max_output_tokens)
        self.state = BackendState(cfg.name, caps, tag=self.tag, clock=clock)
        self._server_counts: bool | None = None if cfg.count_tokens == "auto" else cfg.count_tokens == "server"
        # Set for a server nonstop starts: until it is ready, a request waits (within its deadline).
        self.until_ready: Callable[[], Awaitable[None]] | None = None
        # Set for a server nonstop starts: why nothing may be sent to its URL now ("" when
        # it may), as whatever listens there while it is down is not it.
        self.unavailable: Callable[[], str] | None = None
        # The server's chat template refused a user message after tool results: the text
        # beside them goes inside the last one (wire.anthropic.fold_beside_results).
        self.fold_turns = False
        # The server answered a stream request whole (said once in the log).
        self.whole_streams = False

    # --- what subclasses provide ----------------------------------------------------------

    def prepare(self, local_req: dict, stream: bool, tokens: int, original: dict) -> Call:
        raise NotImplementedError

    def message_from(self, doc: Any, call: Call) -> dict | None:
        raise NotImplementedError

    def events(self, call: Call) -> EventSource:
        return EventSource()

    async def count_tokens(self, local_req: dict) -> int:
        return await self._count(local_req, estimate_tokens(local_req))

    async def _count(self, local_req: dict, estimate: int) -> int:
        """count_tokens, with nonstop's own estimate of `local_req` in hand."""
        return self.in_server_tokens(estimate)

    def estimate(self, local_req: dict) -> int:
        return self.in_server_tokens(estimate_tokens(local_req))

    def in_server_tokens(self, estimate: int) -> int:
        """nonstop's estimate, in this server's tokens where it has said how the two compare
        (its counts, or the size it named when a prompt was over its window)."""
        ratio = self.state.token_ratio
        return estimate if ratio is None else max(1, math.ceil(estimate * ratio))

    async def calibrate(self) -> None:
        """Measure the server's tokens against nonstop's estimate (where it can count)."""

    # --- the protocol ---------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return self.state.capabilities()

    def window(self) -> int:
        return self.capabilities().context_window or self.cfg.context_window

    def model_for(self, client_model: str) -> str:
        return self.cfg.model or client_model

    def local_request(self, req: dict) -> dict:
        """The request as this server gets it: sanitised, its per-request noise removed
        so the server's prompt cache keeps hitting from turn to turn."""
        local = to_local_request(req, model=self.model_for(str(req.get("model", ""))), max_tokens=self.cfg.max_output_tokens)
        if self.fold_turns:
            local = fold_beside_results(local) or local
        return normalize_for_prompt_cache(local)

    def output_room(self, window: int) -> int:
        """Tokens kept free for the answer when a request is fitted to the window."""
        return min(self.cfg.max_output_tokens, max(MIN_OUTPUT_ROOM, window // 4))

    async def send(self, ex: Exchange, step: Step) -> Attempt:
        return await self.send_request(ex.request(), stream=ex.stream)

    async def send_request(self, req: dict, *, stream: bool) -> Attempt:
        try:
            return await self._send_request(req, stream=stream)
        except (RecursionError, orjson.JSONEncodeError) as exc:  # nested deeper than JSON tools go
            raise UnreadableRequest(f"the request is nested too deeply for a local model ({type(exc).__name__})") from None

    def _uncounted(self, local_req: dict, estimate: int) -> int | None:
        """The request's size without asking the server, where no count could change what
        is sent (see COUNT_MARGIN): in "auto", for a server whose tokens have been compared
        with the estimate (`estimate`: nonstop's, of `local_req`). That saves a local round
        trip on each request that sits well inside a large window. None: ask."""
        if self.cfg.count_tokens != "auto" or self.state.token_ratio is None:
            return None
        tokens = self.in_server_tokens(estimate)
        return tokens if self.window() - math.ceil(tokens * COUNT_MARGIN) >= local_req["max_tokens"] else None

    def moved_to(self, url: str) -> None:
        """The server now listens at `url` (a server nonstop runs, moved off a taken port)."""
        self.cfg = replace(self.cfg, url=url)
        self.base = url.rstrip("/")

    async def _send_request(self, req: dict, *, stream: bool, count: bool = False, told: int = 0) -> Attempt:
        """`req` sent to the server, sized (counted or estimated) and fitted to its window.
        `told`: the server's size of this request, as it named it refusing it once."""
        down = self.unavailable() if self.unavailable is not None else ""
        if down:  # not even counted: the server on its port is not this one
            self.state.failed(down)
            return Verdict(FailureKind.NETWORK, True, None, down)
        folding = self.fold_turns
        await read_pdfs(req)  # the text of the PDFs in its history, which local_request puts in their place
        local_req = self.local_request(req)
        estimate = estimate_tokens(local_req)  # once: deciding whether to count, and counting
        if told:
            tokens: int | None = told
        else:
            tokens = None if count else self._uncounted(local_req, estimate)
        uncounted = tokens is not None and not told
        if tokens is None:
            try:
                tokens = await self._count(local_req, estimate)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                detail = _describe_exc(exc, self.base)
                self.state.failed(detail)
                return Verdict(FailureKind.NETWORK, True, None, detail)
        window = self.window()
        fitted = None
        # Fitted when it leaves the answer less room than fitting keeps for one (a quarter
        # of the window, at most the backend's max_output_tokens) and the client asked for
        # more: an answer cut at a few hundred tokens would end a file write half made.
        if window - tokens < min(self.output_room(window), local_req["max_tokens"]):
            fitted = await self._fit(local_req, tokens, window, req)
            if fitted is None:
                return TooLong(self.name, tokens, window)
            local_req, tokens = fitted.request, fitted.tokens
        room = window - tokens
        local_req["max_tokens"] = min(local_req["max_tokens"], room)
        local_req["stream"] = stream
        call = self.prepare(local_req, stream, tokens, req)
        call.data = orjson.dumps(call.body)  # here, where a body it cannot write is the client's
        call.fitted = fitted
        call.max_tokens = local_req["max_tokens"]
        call.request = local_req
        call.estimate = estimate if fitted is None else estimate_tokens(local_req)
        tools = local_req.get("tools")
        call.tools = tools if isinstance(tools, list) else None
        call.again = partial(self._again, req, stream=stream, count=count, folding=folding, uncounted=uncounted,
                             sized=tokens, told=told)
        was_idle = self.state.inflight == 0
        release = self.state.lease()
        try:
            res = await (self._stream(call, release, was_idle) if stream else self._whole(call, was_idle))
        except BaseException:
            release()
            raise
        if not isinstance(res, Reply) or not res.stream:
            release()  # a whole reply is already read; a stream releases when it ends
        if isinstance(res, Verdict | TooLong):
            again = call.again(res)
            call.again = None
            if again is not None:
                return await again
        return res

    def _again(self, req: dict, failure: Verdict | TooLong, *, stream: bool, count: bool, folding: bool,
               uncounted: bool, sized: int, told: int) -> Awaitable[Attempt] | None:
        """The request once more, for a refusal that says how to send it, before or after
        the client's stream began (then its answer continues that stream); None otherwise.
        (`sized`: the request's size as nonstop sent it; `told`: a size the server named
        for it before, when this was already the resend that size asked for.)"""
        if self.fold_turns and not folding and isinstance(failure, Verdict):
            # Refused for a user message after tool results (see _open): once more, folded.
            return self._send_request(req, stream=stream, count=count, told=told)
        if not isinstance(failure, TooLong):
            return None
        if uncounted:
            # Over the window after all (text the estimate reads short, such as long numbers): the
            # size the server named has corrected the scale; once more, counted and fitted.
            return self._send_request(req, stream=stream, count=True)
        if not told and failure.named > sized and not self._server_counts:
            # A server that cannot count (Ollama, vLLM, LM Studio) named the request's size
            # refusing it: larger than the estimate, which this request reads short. Once
            # more, fitted to the window by that size (once: a second refusal stands).
            return self._send_request(req, stream=stream, told=failure.named)
        return None

    async def _fit(self, local_req: dict, tokens: int, window: int, original: dict) -> Fitted | None:
        """The request fitted to the window, tier by tier, or None when even the
        strongest fitting leaves it too long (the client is then told, and compacts).

        The tiers are sized by nonstop's estimate, scaled to the server's own count. One
        scale does not hold for every part of a request: a chat template that leaves the
        tools out counts them as nothing, so cutting tools moves the estimate and not the
        server's count. When the server counts a fitted request over the window, the scale
        is taken again from that request, and the fitting goes deeper.

        The answer's room is output_room() when the request can be fitted that small, and
        otherwise the planner's floor (MIN_OUTPUT_ROOM): a request the planner sent here
        as fitting is not refused for wanting more room than it needs (its max_tokens is
        then lowered to what is left)."""
        estimate = estimate_tokens(local_req)
        ratio = tokens / estimate if estimate else 1.0
        room = self.output_room(window)
        least = min(MIN_OUTPUT_ROOM, room)
        budget = window - room
        deferred = deferred_tool_names(original)
        for _ in range(REFITS):
            fitted = fit_request(dict(local_req), budget, partial(_scaled, ratio), drop_turns=True, deferred=deferred)
            if not fitted.fits and budget < window - least:
                budget = window - least  # less room for the answer, rather than no answer
                fitted = fit_request(dict(local_req), budget, partial(_scaled, ratio), drop_turns=True, deferred=deferred)
            if not fitted.fits:
                return None
            request = dict(fitted.request)
            if not self._server_counts:
                return Fitted(request, fitted.tokens, True, fitted.tiers)
            try:  # the server's own count of what it will get
                counted = await self.count_tokens(request)
            except (aiohttp.ClientError, OSError, TimeoutError):
                return Fitted(request, fitted.tokens, True, fitted.tiers)
            if counted <= window - least:
                return Fitted(request, counted, True, fitted.tiers)
            estimate = estimate_tokens(request)
            if not estimate or counted / estimate <= ratio:
                return None  # the scale cannot explain it: fitting further would not help
            ratio = counted / estimate
        return None

    def _reported(self, call: Call, input_tokens: int, cache: Mapping[str, int]) -> None:
        """The prompt's size as the server reported it in its answer's usage. A server
        that cannot count teaches by it how its tokens compare with the estimate, as a
        count would; only upwards (a prompt cache some servers leave out of the count
        would read as small), and not from a prompt near the window (Ollama truncates one
        silently and reports the truncated size). A usage the server did not report is
        nonstop's own estimate (call.tokens), which teaches nothing."""
        if self._server_counts or call.estimate < 64:
            return
        prompt = input_tokens + sum(cache.values())
        if prompt <= call.tokens or prompt >= self.window() * REPORTED_SHARE:
            return
        self.state.counted(call.estimate, prompt)

    # --- health -----------------------------------------------------------------------------

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

    async def check_health(self) -> bool:
        try:
            async with self.session.get(self.base + "/v1/models", headers=self.headers(), timeout=aiohttp.ClientTimeout(total=3)) as r:
                if r.status >= 500:
                    self.state.health_checked(False, f"HTTP {r.status}")
                    return False
                model = ""
                if r.status == 200:
                    with contextlib.suppress(ValueError, aiohttp.ClientError):
                        data = orjson.loads(await read_capped(r))
                        listed = data.get("data") if isinstance(data, dict) else None
                        models = [str(m.get("id")) for m in (listed if isinstance(listed, list) else ()) if isinstance(m, dict) and m.get("id")]
                        model = self.cfg.model or (models[0] if models else "")
                self.state.health_checked(True, model=model)
                return True
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.state.health_checked(False, _describe_exc(exc, self.base))
            return False

    # --- one request -----------------------------------------------------------------------------

    def _head_deadline(self) -> float:
        """When a request sent now must have its head (the event loop's clock)."""
        return asyncio.get_running_loop().time() + self.cfg.connect_timeout + self.cfg.first_byte_timeout

    async def _open(self, call: Call, deadline: float | None = None) -> aiohttp.ClientResponse | Verdict | TooLong:
        """POST and wait for the head, until `deadline` (by default, _head_deadline()). A
        server that says the prompt is over its window gives TooLong (the request's size as
        the server names it, else as nonstop counted it); a size it names teaches nonstop
        how its tokens compare with the estimate."""
        try:
            async with asyncio.timeout_at(self._head_deadline() if deadline is None else deadline):
                if self.until_ready is not None:  # a server still loading (the embedded one)
                    await self.until_ready()
                resp = await self.session.post(self.base + call.path, data=call.data or orjson.dumps(call.body),
                                               headers=self.headers(),
                                               timeout=self.timeout())
        except (aiohttp.ClientError, OSError) as exc:
            detail = _describe_exc(exc, self.base)
            self.state.failed(detail)
            return Verdict(FailureKind.NETWORK, True, None, detail)
        except TimeoutError:
            self.state.failed("timed out")
            return Verdict(FailureKind.TIMEOUT, True, None, f"no answer from {self.base}")
        if not coded(resp):  # (this session decompresses what comes coded: then the stock reader)
            relay_reader(resp)
        if resp.status >= 400:
            text = (await resp.content.read(4096)).decode("utf-8", "replace")
            resp.release()
            if (not self.fold_turns and _TURNS_REFUSED.search(text) and call.request is not None
                    and fold_beside_results(call.request) is not None):
                # Not a failure of the server: the request is sent again, folded (_send_request).
                self.fold_turns = True
                log.warning("%s: its chat template refuses a user message right after tool results (%s); "
                            "the text beside tool results now goes inside the last result",
                            self.name, server_words(text, 120))
                return _local_error(resp.status, text)
            overflow = context_overflow(text)
            if overflow is not None:  # LM Studio says so with a 500
                named, window = overflow[0], overflow[1] or self.window()
                if named and call.request is not None:
                    estimate = estimate_tokens(call.request)
                    # Only a size above the estimate says the server's tokens run larger; one
                    # at or below it says the window is smaller than nonstop was told.
                    if named > estimate:
                        self.state.counted(estimate, named)
                # Over the window, as the words say, even where the server names no size
                # (or the prompt fit and only the room for output did not).
                return TooLong(self.name, max(named or call.tokens, window + 1), window, named)
            verdict = _local_error(resp.status, text)
            if verdict.kind is FailureKind.SERVER_ERROR or cannot_serve(resp.status, text):
                self.state.failed(verdict.detail)
            return verdict
        return resp

    async def _stream(self, call: Call, release: Callable[[], None], was_idle: bool) -> Attempt:
        """For streams, stop waiting for the head after COMMIT_AFTER and commit with
        pings: prompt processing on a CPU is slow, and the client needs bytes."""
        call.sent = time.perf_counter()
        task = asyncio.ensure_future(self._open(call))
        try:
            done, _ = await asyncio.wait({task}, timeout=COMMIT_AFTER)
        except BaseException:  # cancelled while waiting (a client gone mid-handover): no orphan request
            task.cancel()
            if task.done() and not task.cancelled() and task.exception() is None:
                opened = task.result()
                if isinstance(opened, aiohttp.ClientResponse):
                    opened.close()
            raise
        usage = Usage(input_tokens=call.tokens)
        if done:
            opened = task.result()
            if isinstance(opened, Verdict | TooLong):
                return opened
            wrong = await self._not_a_stream(opened, call)
            if isinstance(wrong, tuple):  # a whole answer: streamed from it, and the server's part is over
                release()
                msg, usage = wrong
                return Reply(200, list(SSE_HEADERS), single(_encode(message_events(msg))), self.name, True, usage)
            if wrong is not None:
                return wrong
            resp = opened

            def close() -> None:
                resp.close()
                release()
                reply.instead = None  # it holds the request: not past the stream's end, read or not

            reply = Reply(200, list(SSE_HEADERS), _no_body(), self.name, True, usage, close=close, handover=True)
            reply.body = _with_pings(self._served(resp, call, reply, release, was_idle, started=False), self.ping_interval)
            return reply

        def cancel() -> None:
            task.cancel()
            release()
            reply.instead = None

        reply = Reply(200, list(SSE_HEADERS), _no_body(), self.name, True, usage, close=cancel, handover=True)
        reply.body = _with_pings(self._late(task, call, reply, release, was_idle), self.ping_interval)
        return reply

    async def _not_a_stream(self, resp: aiohttp.ClientResponse, call: Call) -> Verdict | tuple[dict, Usage] | None:
        """A 200 to a stream request that is not an event stream. A whole answer (a server
        that ignores `stream`): the client's message and its usage, which the caller
        streams. Anything else (an error as JSON, an HTML page, nothing): a broken reply,
        with the server's own words, and the next backend is tried. None for a stream."""
        ctype = resp.headers.get("content-type", "").lower()
        if ctype.startswith("text/event-stream"):
            return None
        if ctype.startswith("application/json"):
            got = await self._answer_of(resp, call, self._head_deadline())
            if isinstance(got, tuple):
                if not self.whole_streams:
                    self.whole_streams = True
                    log.warning("%s answered a stream request whole (it ignores `stream`); its answers are streamed to "
                                "the client from the whole reply", self.name)
                self.state.succeeded()
            return got
        try:
            async with asyncio.timeout(self.cfg.connect_timeout):
                text = (await resp.content.read(4096)).decode("utf-8", "replace")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            forget_tracebacks(exc)
            text = ""
        finally:
            resp.close()
        detail = f"{self.name} answered a stream request with {ctype[:60] or 'no content type'}"
        words = server_words(text)
        self.state.failed(detail)
        return Verdict(FailureKind.BAD_RESPONSE, True, None, f"{detail}: {words}" if words else detail)

    async def _whole(self, call: Call, was_idle: bool) -> Attempt:
        """A reply that is not a stream. Its body is the answer, so it shares the head's
        deadline (a server writes it right behind its head), and it is read up to
        MAX_WHOLE_BODY: a body that stalls, trickles or never ends is a broken server."""
        call.sent = time.perf_counter()
        deadline = self._head_deadline()
        opened = await self._open(call, deadline)
        if isinstance(opened, Verdict | TooLong):
            return opened
        got = await self._answer_of(opened, call, deadline)
        if isinstance(got, Verdict):
            return got
        msg, usage = got
        # No speed is learnt: a whole reply's time holds the prompt and the answer together
        # (a long answer would read as a slow prompt).
        self.state.succeeded()
        u = msg["usage"]
        self._reported(call, u["input_tokens"], cache_counts(u))
        return Reply(200, list(JSON_HEADERS), single(orjson.dumps(msg)), self.name, False, usage)

    async def _answer_of(self, opened: aiohttp.ClientResponse, call: Call, deadline: float) -> tuple[dict, Usage] | Verdict:
        """A whole reply's body read (by `deadline`, up to MAX_WHOLE_BODY) and made the
        client's message, with its usage; or the Verdict on a body that is not one."""
        try:
            async with asyncio.timeout_at(deadline):
                raw = await read_limited(opened, MAX_WHOLE_BODY + 1)
        except TimeoutError:
            opened.close()
            self.state.failed("the reply's body timed out")
            return Verdict(FailureKind.TIMEOUT, True, None,
                           f"{self.name}: the reply's body did not arrive within first_byte_timeout "
                           f"({self.cfg.first_byte_timeout:g} s)")
        except (aiohttp.ClientError, OSError) as exc:
            forget_tracebacks(exc)
            opened.close()
            self.state.failed(f"unreadable reply ({type(exc).__name__})")
            return Verdict(FailureKind.BAD_RESPONSE, True, None, f"{self.name}: unreadable reply ({type(exc).__name__})")
        except BaseException:  # cancelled (its client left): the connection is not left open
            opened.close()
            raise
        opened.release()
        if len(raw) > MAX_WHOLE_BODY:
            self.state.failed("reply too large")
            return Verdict(FailureKind.BAD_RESPONSE, True, None,
                           f"{self.name}: the reply is larger than nonstop reads whole ({MAX_WHOLE_BODY} bytes)")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = loads_with_lone_surrogates(raw.decode("utf-8", "replace"))  # as in a stream (wire/sse.py)
            if doc is None:
                self.state.failed("unreadable reply (JSONDecodeError)")
                return Verdict(FailureKind.BAD_RESPONSE, True, None, f"{self.name}: unreadable reply (JSONDecodeError)")
        msg = self.message_from(doc, call)
        if msg is None:
            self.state.failed("unexpected reply")
            return Verdict(FailureKind.BAD_RESPONSE, True, None, f"{self.name}: unexpected reply {raw[:200]!r}")
        repairs: list[Repair] = []
        # A call the limit cut is not one to run: the client hears the limit, as the cloud
        # would say it, even where nonstop lowered max_tokens (as for streams).
        msg = normalize_message(msg, model=call.model, input_tokens_estimate=call.tokens, capped=call.capped,
                                tag=self.tag, tools=call.tools, on_repair=repairs.append, cut=call.cut,
                                tool_names=call.name_map)
        u = msg["usage"]
        now = time.perf_counter()
        return msg, Usage(u["input_tokens"], u["output_tokens"], str(msg.get("stop_reason") or ""), complete=True,
                          first_content=now, ended=now, fitted=call.fitted, repairs=repairs)

    async def _late(self, task: asyncio.Future, call: Call, reply: Reply, release: Callable[[], None],
                    was_idle: bool) -> AsyncIterator[bytes]:
        """The stream of a request whose head was late: the client's stream begins at once,
        and the server's answer follows (see _served)."""
        yield _encode([message_start(call.model, call.tokens)])
        try:
            opened = await task
        except BaseException:
            release()
            raise
        if isinstance(opened, aiohttp.ClientResponse):
            wrong = await self._not_a_stream(opened, call)
            if isinstance(wrong, tuple):  # a whole answer: the rest of the client's stream, from it
                release()
                msg, usage = wrong
                reply.instead = None
                reply.usage.__dict__.update(usage.__dict__)
                yield _encode(message_events(msg)[1:])  # the client has its message_start
                return
            opened = opened if wrong is None else wrong
        async for chunk in self._served(opened, call, reply, release, was_idle, started=True):
            yield chunk

    async def _served(self, opened: aiohttp.ClientResponse | Verdict | TooLong, call: Call, reply: Reply,
                      release: Callable[[], None], was_idle: bool, *, started: bool) -> AsyncIterator[bytes]:
        """The rest of `reply`'s stream, from the server's answer `opened` (`started`: the
        client has its message_start already). A server that fails before any content, its
        head or its stream, hands the message to the next local backend (reply.instead,
        set by the pipeline), or ends it with a well-formed error."""
        usage = reply.usage
        instead, reply.instead = reply.instead, None  # asked at most once, then let go
        again, call.again = call.again, None  # the resend: it holds the request, so neither is kept
        end = b""  # how the message ends when no backend takes it over
        failure: Verdict | TooLong
        if isinstance(opened, aiohttp.ClientResponse):
            again = None  # a stream that broke is not a refusal that says how to resend
            spare = _Spare(instead)
            del instead  # the relay lets it go once content begins
            async for chunk in self._relay(opened, call, usage, started=started, release=release, was_idle=was_idle,
                                           spare=spare):
                yield chunk
            if spare.end is None:  # the stream ended as it would have, content or not
                return
            instead, end, failure = spare.instead, spare.end, Verdict(FailureKind.BAD_RESPONSE, True, None, usage.error)
            del spare
        else:
            release()
            failure = opened
        why = failure.detail if isinstance(failure, Verdict) else f"prompt is {failure.tokens} tokens, window {failure.window}"
        resent = again(failure) if again is not None else None
        del again
        taken = None
        if resent is not None:  # refused in a way that says how to send it (as before a commit)
            res = await resent
            if isinstance(res, Reply):
                # Its own failure before content may still go to the next backend.
                res.instead, instead = instead, None
                taken, why = res, f"{why}; sent again"
            else:
                failure = res
        taken = taken or (await instead(failure) if instead is not None else None)
        del instead  # it holds the request: not for the rest of the stream
        if taken is not None:
            async for chunk in taken_over(reply, taken, f"{self.name} failed after the stream began ({why})"):
                yield chunk
        elif end:
            yield end
        elif isinstance(failure, TooLong):  # Claude Code compacts on these words
            usage.error = "context overflow"
            yield _encode([error_event(prompt_too_long_message(failure.tokens, failure.window), "invalid_request_error")])
        else:
            usage.error = failure.detail
            yield _encode([error_event(f"{self.name}: {failure.detail}")])

    async def _relay(self, resp: aiohttp.ClientResponse, call: Call, usage: Usage, *, started: bool,
                     release: Callable[[], None], was_idle: bool, spare: _Spare | None = None) -> AsyncIterator[bytes]:
        """The server's stream, normalised, to its end. With `spare`, a stream that fails
        before any content keeps its end (the error) back in spare.end, for the caller to
        hand the message over; once content begins, spare lets go."""
        norm = LocalStreamNormalizer(model=call.model, input_tokens_estimate=call.tokens, started=started,
                                     capped=call.capped, tag=self.tag, tools=call.tools, tool_names=call.name_map)
        source = self.events(call)
        decoder = JSONEventDecoder(strict=True)
        runaway = RUNAWAY_CHARS_PER_TOKEN * max(call.max_tokens, 1) + 4096
        pending = spare  # while set, nothing but pings has gone out: another backend may take the message over
        held: list[Event] = []
        quiet: list[Event] = []  # empty blocks, kept back while another backend may go on instead

        def before_content() -> bool:  # read as `pending` changes
            return pending is not None

        try:
            try:
                async for chunk in resp.content.iter_any():
                    out: list[Event] = []
                    # Until content begins, a read is taken an event at a time: the first
                    # content goes out without waiting for the events read behind it.
                    for piece in (chunk,) if pending is None else _pieces(chunk, before_content, source.fails_on):
                        try:
                            for ev, doc in decoder.feed(piece):
                                for t, d in source.feed(ev.event, doc):
                                    out.extend(norm.feed(t, d))
                        except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
                            # An event too large, or of a shape nothing here expects: what came
                            # before it goes out, then a well-formed error, never a fault of nonstop's.
                            log.warning("%s sent a stream nonstop cannot read (%s: %s)", self.name, type(exc).__name__,
                                        str(exc)[:200])
                            norm.error = f"{self.name} sent a stream nonstop cannot read ({type(exc).__name__})"
                        if norm.produced > runaway and not norm.finished and not norm.error:
                            log.warning("%s went on past max_tokens (%d); its answer was ended there", self.name,
                                        call.max_tokens)
                            out += norm.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}})
                            out += norm.feed("message_stop", {"type": "message_stop"})
                        if pending is not None:
                            if norm.error:  # failed before any content went out
                                break
                            if not _shows_content(out):
                                quiet += [e for e in out if e[0] not in _AT_ONCE]
                                out = [e for e in out if e[0] in _AT_ONCE]
                                if norm.finished or decoder.done:
                                    break
                                continue
                            pending.instead = None  # the request is let go
                            pending = None
                            out, quiet = _after_start(out, quiet), []
                        if out:
                            if usage.first_content is None and norm.content_started:
                                usage.first_content = time.perf_counter()
                            yield _encode(out)
                            out = []
                        if norm.finished or norm.error or decoder.done:
                            break
                    if pending is not None and norm.error:  # what the error brought out with
                        held = out  # it (a held call as text) stays with the error
                        break
                    if out:  # a start, while nothing shows yet
                        yield _encode(out)
                    if norm.finished or norm.error or decoder.done:
                        break
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                forget_tracebacks(exc)
                norm.error = f"{self.name} stream failed: {type(exc).__name__}"
            tail: list[Event] = []
            if not (norm.finished or norm.error):
                try:  # a last event without its blank line is still an event
                    tail = [e for ev, doc in decoder.flush() for t, d in source.feed(ev.event, doc) for e in norm.feed(t, d)]
                except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
                    norm.error = f"{self.name} sent a stream nonstop cannot read ({type(exc).__name__})"
            if not (norm.finished or norm.error):
                tail += [e for t, d in source.finish(decoder.done) for e in norm.feed(t, d)]
            end = norm.finish()
            if pending is not None:
                # Nothing but a start and pings went out, and no stop reason came: the
                # stream failed. (Empty blocks show nothing; nor does a text block the
                # normaliser holds back while it may still turn out to be a tool call.)
                if not norm.stop_reason:
                    rest = held + tail + end
                    begun = [e for e in rest if e[0] == "message_start"]
                    if begun:  # the client's message begins whoever goes on with it
                        yield _encode(begun)
                    pending.end = _encode(quiet + [e for e in rest if e[0] != "message_start"])
                    return
                pending.instead = None
                tail = _after_start(tail, quiet)
            if tail:
                yield _encode(tail)
            yield _encode(end)
        finally:
            resp.close()
            release()
            self._account(norm, call, usage, was_idle)

    def _account(self, norm: LocalStreamNormalizer, call: Call, usage: Usage, was_idle: bool) -> None:
        usage.ended = time.perf_counter()
        usage.fitted = call.fitted
        usage.repairs = list(norm.repairs)
        usage.input_tokens = norm.input_tokens
        usage.output_tokens = norm.output_tokens
        usage.stop_reason = norm.stop_reason
        usage.error = norm.error
        if norm.cut:
            usage.note = ("the local output cap ended the answer; reported as "
                          + ("a finished tool call" if norm.stop_reason == "tool_use" else "end of turn"))
        usage.complete = not norm.error
        if not norm.error:
            self._reported(call, norm.input_tokens, norm.cache)
        if norm.error and not norm.output_tokens:
            self.state.failed(norm.error)
        elif usage.first_content is not None:
            self.state.succeeded(prompt_tokens=call.tokens, first_token_s=usage.first_content - call.sent,
                                 output_tokens=usage.output_tokens, generate_s=usage.ended - usage.first_content,
                                 was_idle=was_idle)


# What goes to the client at once while a stream may still be handed over.
_AT_ONCE = frozenset(("message_start", "ping"))
_NOTHING_SHOWN = frozenset(("message_start", "ping", "error", "content_block_stop"))


def _pieces(chunk: bytes, split: Callable[[], bool], fails_on: tuple[bytes, ...]) -> Iterator[bytes]:
    """`chunk` cut after each event while `split()` holds, then the rest of it at once.
    Only LF-framed bytes are cut (a CR may end a line, or be half of a CRLF whose LF is in
    the next read); the decoder reads pieces as it reads the whole. A read that holds a
    word of `fails_on` (the server's way of saying it failed: an error event, a finish
    that gives up) is not cut: content and such a failure in one read hand the message
    over whole, before any of it has gone out."""
    pos = 0
    if CR not in chunk and not any(chunk.find(w) >= 0 for w in fails_on):
        while split():
            end = chunk.find(b"\n\n", pos) + 2
            if end < 2 or end >= len(chunk):
                break
            yield chunk[pos:end]
            pos = end
    yield chunk[pos:] if pos else chunk


def _shows_content(events: list[Event]) -> bool:
    """Whether these events show the client any of the answer: anything but a start, a
    ping, an error or an empty text block (a start and its stop with no text)."""
    for t, d in events:
        if t in _NOTHING_SHOWN:
            continue
        block = d.get("content_block") if t == "content_block_start" else None
        if isinstance(block, dict) and block.get("type") == "text" and not block.get("text"):
            continue
        return True
    return False


def _after_start(events: list[Event], quiet: list[Event]) -> list[Event]:
    """`events` with the blocks kept back (`quiet`) put before them, after a message_start."""
    if not quiet:
        return events
    starts = [e for e in events if e[0] == "message_start"]
    return starts + quiet + [e for e in events if e[0] != "message_start"]


def _scaled(ratio: float, req: dict) -> int:
    return int(estimate_tokens(req) * ratio)


def _describe_exc(exc: BaseException, base: str) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return f"connection refused at {base} — is the server running?"
    if isinstance(exc, TimeoutError):
        return f"no answer from {base} in time"
    return f"{type(exc).__name__} at {base}: {exc}"[:300]


# The sizes a server names when a prompt is over its window: llama-server's JSON fields,
# vLLM's and OpenAI's wording.
# The prompt's size and the window in a server's overflow: llama-server's fields, LM
# Studio's words, and vLLM's, which changed over its releases ("(N in the messages, ...)";
# "your request has N input tokens"; "your prompt contains N input tokens"; with
# --max-prompt-length, "maximum prompt length is W tokens ... N prompt tokens").
_N_PROMPT = re.compile(r'"n_prompt_tokens"\s*:\s*(\d+)|\((\d+) in the messages|resulted in (\d+) tokens'
                       r'|(?:request has|prompt contains) (\d+) (?:input|prompt) tokens')
_N_CTX = re.compile(r'"n_ctx"\s*:\s*(\d+)|maximum (?:context|prompt) length is (\d+)')


def context_overflow(text: str) -> tuple[int, int] | None:
    """Whether a local server's error says the prompt is over its window, and if so the
    prompt's size and the window as the server names them (0 where it does not):
    llama-server (`exceed_context_size_error`), Ollama, LM Studio, vLLM."""
    low = text.lower()
    over = (
        "context" in low and ("exceed" in low or "too long" in low or "overflow" in low or "too large" in low)
    ) or "prompt is too long" in low or "maximum context length" in low or "maximum prompt length" in low
    if not over:
        return None

    def first(pattern: re.Pattern[str]) -> int:
        m = pattern.search(text)
        return int(next(g for g in m.groups() if g)) if m else 0

    return first(_N_PROMPT), first(_N_CTX)


# What a chat template or validator says when a user message follows tool results: the
# alternation check of Mistral-family and Gemma templates, and older mistral_common versions'.
_TURNS_REFUSED = re.compile(r"roles must alternate|unexpected role '(?:roles\.)?user' after role '(?:roles\.)?tool'", re.I)


# What a server says when it cannot serve the model nonstop names, whatever the request,
# as its message begins: Ollama ("model 'x' not found"), vLLM ("The model `x` does not
# exist."), LM Studio ("No models loaded"), others ("unknown model", "model 'x' is not
# loaded"). Anchored, with the model named in quotes: a message about one request that
# only mentions a model (a validation error echoing the prompt, "the model called a tool
# that is not available") is not one of these.
_MODEL_REFUSED = re.compile(
    r"(?:the )?model\s+(?:'[^']{1,200}'|\"[^\"]{1,200}\"|`[^`]{1,200}`)\s+"
    r"(?:not found|does not exist|(?:is )?not (?:loaded|available|served|found))\b"
    r"|no models? (?:is |are )?loaded\b|unknown model\b", re.I)


def cannot_serve(status: int, text: str) -> bool:
    """Whether a 4xx refuses every request this backend sends, not just this one: the
    endpoint or the model is not there (404), the server does not take its key (401,
    403), or its message says at its start that the model cannot be served. Such a
    backend is demoted as a failing one is, so that the requests after it go first to
    one that can answer."""
    return status in (401, 403, 404) or bool(_MODEL_REFUSED.match(server_words(text, 400)))


def _local_error(status: int, text: str) -> Verdict:
    kind = FailureKind.SERVER_ERROR if status >= 500 else FailureKind.CLIENT_ERROR
    return Verdict(kind, True, None, f"HTTP {status}: {server_words(text)}", status)


# A tag ends at the next ">" or before the next "<": text of many "<" and no ">" is read
# once, not once from each "<".
_TAGS = re.compile(r"<[^<>]*>")


def server_words(text: str, limit: int = 200) -> str:
    """What a local server said, fit to quote to the client: a JSON error's message, or
    the text without markup, and never a traceback (a server's error page may hold one)."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else doc.get("message")
        if isinstance(msg, str) and msg.strip():
            text = msg
    elif text.lstrip().startswith("<"):
        text = _TAGS.sub(" ", text)
    text = text.split("Traceback (most recent call last)", 1)[0]
    return " ".join(text.split())[:limit]


@dataclass
class _Spare:
    """A late stream's way to another backend while nothing but pings has gone to the
    client: `instead` until content begins (it holds the request), and `end`, the
    stream's own end (its error), when it failed before any content."""

    instead: Callable[[Verdict | TooLong], Awaitable[Reply | None]] | None
    end: bytes | None = None


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


_PING = encode_event("ping", b'{"type":"ping"}')


async def _next(it: AsyncIterator[bytes]) -> bytes:
    return await it.__anext__()


def _wake(waiter: asyncio.Future[None], _: object = None) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _with_pings(source: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """Relay source; during silences longer than interval, send ping events.

    Each chunk is read by a task of its own, raced against a timer: what asyncio.wait
    does, without its sets, checks and coroutine (a third of its cost: the model's every
    token comes through here)."""
    it = source.__aiter__()
    loop = asyncio.get_running_loop()
    nxt: asyncio.Task | None = None
    try:
        while True:
            if nxt is None:
                nxt = loop.create_task(_next(it))
            if not nxt.done():
                waiter: asyncio.Future[None] = loop.create_future()
                wake = partial(_wake, waiter)
                nxt.add_done_callback(wake)
                timer = loop.call_later(interval, wake)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    nxt.remove_done_callback(wake)
                if not nxt.done():
                    yield _PING
                    continue
            task, nxt = nxt, None
            # The end is read without raising it here: raised, its traceback would hold this
            # frame, whose locals hold the task that holds it (a cycle, left to the collector).
            if isinstance(task.exception(), StopAsyncIteration):
                return
            yield task.result()
    finally:
        if nxt is not None:
            nxt.cancel()
            with contextlib.suppress(BaseException):
                await nxt
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


def capped(local_req: dict, original: dict) -> bool:
    """nonstop lowered the client's max_tokens for this backend."""
    asked = original.get("max_tokens")
    return not isinstance(asked, int) or local_req["max_tokens"] < asked
