"""Sending the suite: each task as a real Messages request, through the same path the
gateway uses, and the reply read back into an `Answer` for the scorer.

A local backend is the gateway's own `LocalBackend` (built from the config by
`make_local_backend`): `send_request` fits the request to the window, normalises the
stream and repairs tool calls written as text, exactly as for live traffic. The cloud is
`CloudBackend.request` with the user's own credentials from the environment.

    target = LocalTarget(backend)                 # or CloudTarget(cloud, headers)
    results = await run_suite(target, tasks)      # one request at a time, streamed
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from multidict import CIMultiDict

from nonstop.backends import server_report
from nonstop.backends.base import Attempt, Reply, TooLong
from nonstop.backends.cloud import CloudBackend
from nonstop.backends.local import LocalBackend
from nonstop.quality.identity import ModelIdentity, identify
from nonstop.quality.score import (
    Answer,
    Scorecard,
    TaskResult,
    Unanswered,
    no_answers,
    score_task,
    scorecard,
)
from nonstop.quality.tasks import LONG_CONTEXT_SHARE, Task, long_context_task, suite
from nonstop.routing.classify import Verdict
from nonstop.wire.anthropic import estimate_tokens
from nonstop.wire.sse import JSONEventDecoder

# The cloud's long-context task is sized like a common local window, not the cloud's
# own: a baseline to compare with, without spending 150k tokens of quota on one task.
CLOUD_LONG_CONTEXT_TOKENS = 24_000


class Target(Protocol):
    """What the suite is sent to."""

    name: str

    async def send(self, req: dict[str, Any]) -> Attempt: ...

    async def prompt_tokens(self, req: dict[str, Any]) -> int:
        """The request's size as the target counts it (nonstop's estimate where it cannot)."""
        ...

    def long_context_tokens(self) -> int: ...

    def output_cap(self) -> int: ...


class LocalTarget:
    def __init__(self, backend: LocalBackend):
        self.backend = backend
        self.name = backend.name

    async def send(self, req: dict[str, Any]) -> Attempt:
        return await self.backend.send_request(req, stream=True)

    async def prompt_tokens(self, req: dict[str, Any]) -> int:
        return await self.backend.count_tokens(self.backend.local_request(req))

    def long_context_tokens(self) -> int:
        return int(self.backend.window() * LONG_CONTEXT_SHARE)

    def output_cap(self) -> int:
        return self.backend.cfg.max_output_tokens


class CloudTarget:
    """The cloud with the user's own credentials (`headers` carries x-api-key or
    authorization; they are sent to the cloud only and never stored)."""

    name = "cloud"

    def __init__(self, cloud: CloudBackend, headers: dict[str, str], model: str):
        self.cloud = cloud
        self.headers = headers
        self.model = model

    async def send(self, req: dict[str, Any]) -> Attempt:
        headers: CIMultiDict[str] = CIMultiDict(self.headers)
        headers.setdefault("content-type", "application/json")
        headers.setdefault("anthropic-version", "2023-06-01")
        body = orjson.dumps({**req, "model": self.model})
        return await self.cloud.request("POST", b"/v1/messages", b"", headers, body, stream=True, expect="stream")

    async def prompt_tokens(self, req: dict[str, Any]) -> int:
        return estimate_tokens(req)

    def long_context_tokens(self) -> int:
        return CLOUD_LONG_CONTEXT_TOKENS

    def output_cap(self) -> int:
        return 0


# --- reading a reply ---------------------------------------------------------------------------


@dataclass
class ReplyReader:
    """Anthropic stream events in, the assistant message out (sans-IO): the content
    blocks with tool inputs parsed, the stop reason, the usage, and when the first
    content arrived."""

    clock: Callable[[], float] = time.perf_counter
    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    partial: dict[int, list[str]] = field(default_factory=dict)
    stop_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    first_content: float | None = None
    error: str = ""
    stopped: bool = False  # the stream's message_stop came: the answer is whole

    def feed(self, event: str, data: dict[str, Any]) -> None:
        kind = data.get("type", event)
        index = data.get("index")
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage") or {}
            self.input_tokens = _int(usage.get("input_tokens"), self.input_tokens)
        elif kind == "content_block_start" and isinstance(index, int):
            self.blocks[index] = dict(data.get("content_block") or {})
        elif kind == "content_block_delta" and isinstance(index, int):
            if self.first_content is None:
                self.first_content = self.clock()
            self._delta(index, data.get("delta") or {})
        elif kind == "message_delta":
            self.stop_reason = str((data.get("delta") or {}).get("stop_reason") or self.stop_reason)
            usage = data.get("usage") or {}
            self.output_tokens = _int(usage.get("output_tokens"), self.output_tokens)
            self.input_tokens = _int(usage.get("input_tokens"), self.input_tokens)
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            err = data.get("error")
            self.error = str(err.get("message") if isinstance(err, dict) else err)[:300]

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self.blocks.setdefault(index, {"type": "text", "text": ""})
        dtype = delta.get("type")
        if dtype == "text_delta":
            block["text"] = str(block.get("text", "")) + str(delta.get("text", ""))
        elif dtype == "input_json_delta":
            self.partial.setdefault(index, []).append(str(delta.get("partial_json", "")))

    def content(self) -> list[dict[str, Any]]:
        out = []
        for index in sorted(self.blocks):
            block = dict(self.blocks[index])
            if block.get("type") == "tool_use" and index in self.partial:
                raw = "".join(self.partial[index])
                try:
                    block["input"] = orjson.loads(raw) if raw.strip() else {}
                except orjson.JSONDecodeError:
                    block["input"] = raw  # not an object: the schema check says so
            out.append(block)
        return out


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


async def read_answer(attempt: Attempt, sent: float, *, cap: int = 0,
                      clock: Callable[[], float] = time.perf_counter) -> Answer:
    """The Answer in `attempt`: a streamed reply read to its end, or what went wrong."""
    if isinstance(attempt, Verdict):
        return Answer(error=attempt.describe(), cap=cap)
    if isinstance(attempt, TooLong):
        return Answer(error=f"does not fit the window ({attempt.tokens} tokens for a {attempt.window}-token window)", cap=cap)
    reply: Reply = attempt
    reader = ReplyReader(clock=clock)
    raw = bytearray()
    try:
        decoder = JSONEventDecoder()
        async for chunk in reply.body:
            if reply.status != 200 or not reply.stream:
                raw += chunk
                continue
            for ev, data in decoder.feed(chunk):
                reader.feed(ev.event, data)
    finally:
        if reply.close is not None:
            reply.close()
    ended = clock()
    if reply.status != 200 or not reply.stream:
        return Answer(error=_error_text(reply.status, bytes(raw)), cap=cap)
    first = reader.first_content - sent if reader.first_content is not None else None
    # An error event after content, or a stream that just stops before its message_stop
    # (the server died, the connection was cut): no answer of the model's to score.
    error = reader.error or ("" if reader.stopped else "the stream ended before its message_stop (cut)")
    return Answer(content=reader.content(), stop_reason=reader.stop_reason, output_tokens=reader.output_tokens,
                  input_tokens=reader.input_tokens, first_token_s=first, total_s=ended - sent,
                  error=error, cap=cap)


def _error_text(status: int, body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        err = doc.get("error") if isinstance(doc, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
    except orjson.JSONDecodeError:
        message = None
    return f"HTTP {status}: {message or body[:200].decode('utf-8', 'replace')}"


# --- the suite ------------------------------------------------------------------------------------

Progress = Callable[[Task, TaskResult], None]


async def sized_long_context(target: Target, probe_files: int = 20) -> Task:
    """The long-context task at the size that fills most of the target's window,
    measured with the target's own token counts where it has them: the fixed part and
    the size of a file are counted, not guessed (a chat template that drops the tools,
    as some do, makes the fixed part far smaller than the request's text)."""
    size = target.long_context_tokens()
    base = await target.prompt_tokens(long_context_task(0).request())
    probe = await target.prompt_tokens(long_context_task(probe_files).request())
    per_file = max(1.0, (probe - base) / probe_files)
    return long_context_task(max(0, int((size - base) / per_file)))


async def run_task(target: Target, task: Task, *, clock: Callable[[], float] = time.perf_counter) -> TaskResult:
    req = task.request()
    try:
        prompt = await target.prompt_tokens(req)
    except (aiohttp.ClientError, OSError, TimeoutError):
        prompt = estimate_tokens(req)  # the send below says what is wrong, in words
    try:
        sent = clock()
        attempt = await target.send(req)
        answer = await read_answer(attempt, sent, cap=min(task.max_tokens, target.output_cap() or task.max_tokens), clock=clock)
        # The prompt's whole size: a server reports only what its cache did not hold.
        answer.input_tokens = prompt
    except (OSError, TimeoutError) as exc:
        answer = Answer(error=f"{type(exc).__name__}: {exc}"[:300])
    return score_task(task, answer)


async def run_suite(target: Target, tasks: Sequence[Task], *, long_context: bool = True,
                    progress: Progress | None = None,
                    keep_going: Callable[[], Awaitable[bool] | bool] | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> list[TaskResult] | None:
    """Every task, one at a time (so the speeds are the model's own, not a queue's).
    None when `keep_going` said to stop (the backend got real work meanwhile)."""
    todo = list(tasks)
    if long_context:
        todo.append(await sized_long_context(target))
    results = []
    for task in todo:
        if keep_going is not None:
            go = keep_going()
            if not (await go if isinstance(go, Awaitable) else go):
                return None
        result = await run_task(target, task, clock=clock)
        results.append(result)
        if progress is not None:
            progress(task, result)
    return results


async def evaluate_backend(backend: LocalBackend, session: aiohttp.ClientSession, *, quick: bool = False,
                           progress: Progress | None = None,
                           keep_going: Callable[[], Awaitable[bool] | bool] | None = None,
                           ) -> tuple[ModelIdentity, Scorecard | None]:
    """The model `backend` serves and its scorecard (None when `keep_going` stopped the
    run). The backend first learns what its server reports (its real window), as the
    gateway's does, so requests are fitted to the window live traffic gets; the quick
    suite leaves out the long-context task, the slowest by far on a CPU."""
    found = await server_report.identify(session, backend.base, model=backend.cfg.model)
    if found is not None:
        backend.state.reported(found)
    identity = await identify(session, backend.cfg)
    results = await run_suite(LocalTarget(backend), suite(quick), long_context=not quick, progress=progress,
                              keep_going=keep_going)
    if results is None:
        return identity, None
    why = no_answers(results)
    if why:
        raise Unanswered(f"no task got an answer ({why})")
    return identity, scorecard(results)

