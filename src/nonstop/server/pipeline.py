"""The plan executor: learn the request's facts, ask the planner, run its steps in order
until one gives a reply, and feed every outcome back into the state it changes.

    facts = facts_from_request(...)             # cheap; sizes measured only if needed
    plan  = plan(facts, runtime.view(), policy) # pure
    for each step: attempt -> Reply (commit) | Verdict | TooLong (next step)

After a failed step the world has changed (the cloud is out, a backend is demoted), so
the executor plans again with what it has tried; the planner lists those as skipped.
Nothing here writes to the client: the relay commits the reply it returns.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from nonstop.backends.base import Attempt, Exchange, Reply, TooLong, UnreadableRequest
from nonstop.redact import redact
from nonstop.routing.classify import LONGEST_OUT, FailureKind, Verdict
from nonstop.routing.facts import SESSION_HEADER, RequestFacts, facts_from_request
from nonstop.routing.fit import RequestSize
from nonstop.routing.plan import CLOUD, Plan, Skip, Step, plan
from nonstop.routing.view import CloudState
from nonstop.store.db import RequestRow
from nonstop.wire.errors import prompt_too_long_message

if TYPE_CHECKING:
    from nonstop.backends.local import LocalBackend
    from nonstop.server.asgi import Connection
    from nonstop.server.runtime import Runtime

log = logging.getLogger("nonstop")
# How long one instance may hold the fleet's probe of an account.
PROBE_LEASE = 120.0


@dataclass
class RequestContext:
    ex: Exchange
    row: RequestRow
    t0: float
    facts: RequestFacts | None = None
    # The client's connection, when the server is nonstop's own (server/asgi.Connection).
    connection: Connection | None = None


@dataclass
class Outcome:
    """What the pipeline decided: a reply to commit, or an error to send."""

    reply: Reply | None = None
    status: int = 0
    etype: str = ""
    message: str = ""
    reason: str = ""  # why the cloud did not serve (the failover reason)
    # With an error and the cloud out until a known time: the seconds until then.
    retry_after: int | None = None
    tried: list[tuple[str, str]] = field(default_factory=list)
    plan: Plan | None = None
    step: Step | None = None  # the step whose attempt gave the reply

    def route(self) -> str:
        """`x-nonstop-route`: the backend that answered and the rule that chose it."""
        if self.step is not None:
            return f"{self.step.target}; rule={self.step.rule}; {self.step.reason}"
        last = self.plan.skipped[-1] if self.plan is not None and self.plan.skipped else None
        return f"none; rule={last.rule}; {last.reason}" if last else "none"


class Held:
    """A cloud stream's hand-over (backends/cloud.py: a failure after an empty text or thinking block),
    which keeps the request until the stream's first content. Every stream the cloud
    starts that way keeps one until its first delta: a token's time after a text block,
    as long as the cloud thinks without sending thinking text after a thinking block
    (the pings between do not let it go); what is kept at once is bounded
    (MAX_COUNT requests, MAX_BYTES), so a burst of streams does not hold a body each:
    past it, a stream ends with the cloud's error as before. Counted while it lives
    (let go: `__del__`)."""

    MAX_COUNT = 4  # a session's main agent and its subagents starting in the same moment
    MAX_BYTES = 8 * 1024 * 1024
    count = 0  # kept now, in this process
    held = 0  # their bytes

    __slots__ = ("call", "size")

    def __init__(self, size: int, call: Callable[[Verdict | TooLong], Awaitable[Reply | None]]) -> None:
        self.call, self.size = call, size
        Held.count += 1
        Held.held += size

    @classmethod
    def of(cls, size: int, call: Callable[[Verdict | TooLong], Awaitable[Reply | None]]) -> Held | None:
        """One more kept, when the bounds allow (None: not kept)."""
        return cls(size, call) if cls.count < cls.MAX_COUNT and cls.held + size <= cls.MAX_BYTES else None

    def __call__(self, res: Verdict | TooLong) -> Awaitable[Reply | None]:
        return self.call(res)

    def __del__(self) -> None:
        Held.count -= 1
        Held.held -= self.size


class Pipeline:
    def __init__(self, rt: Runtime):
        self.rt = rt

    # --- facts ------------------------------------------------------------------------------

    def facts(self, ex: Exchange, *, side: bool = False, count_tokens: bool = False,
              req: Mapping[str, Any] | None = None) -> RequestFacts:
        """`req`: what the facts are read from when not the parsed request (a request's
        outline: see wire/outline.py)."""
        req = ex.req if req is None else req
        head = ex.read_head()
        headers = head.facts
        ex.account = self.rt.clouds.account_for(head.credential, headers.get(SESSION_HEADER, ""))

        # The sizes read the request when asked, not the request as it was: the facts live as
        # long as the exchange, and must not keep a parsed request its door has let go.
        return facts_from_request(req, headers, body_len=len(ex.cloud_body or ex.body),
                                  measure=RequestSize(ex.request), side=side,
                                  count_tokens=count_tokens, account=ex.account)

    def plan(self, facts: RequestFacts, tried: dict[str, str] | None = None) -> Plan:
        return plan(facts, self.rt.view(facts.account), self.rt.policy, tried)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, ctx: RequestContext) -> Outcome:
        facts = ctx.facts or self.facts(ctx.ex)
        ctx.facts = facts
        out = Outcome()
        too_long: list[TooLong] = []
        try:
            await self._walk(ctx, facts, out, too_long)
        except UnreadableRequest as exc:  # found only when a backend needed the whole request
            out.reply, out.status, out.etype, out.message = None, 400, "invalid_request_error", str(exc)
            return out
        if out.reply is None:
            self._no_reply(ctx, out, too_long)
        elif out.reply.backend != CLOUD and not out.reason:
            cloud_skip = next((s for s in out.plan.skipped if s.target == CLOUD), None) if out.plan else None
            out.reason = cloud_skip.reason if cloud_skip else (out.step.reason if out.step else "")
        return out

    async def _walk(self, ctx: RequestContext, facts: RequestFacts, out: Outcome, too_long: list[TooLong]) -> None:
        """Try the plan's steps, planning again after each failure, until one replies."""
        tried: dict[str, str] = {}
        while True:
            p = self.plan(facts, tried)
            out.plan = p
            step = p.first
            if step is None:
                break
            if step.target != CLOUD and not facts.size.known and not p.as_sent:
                # Measured now: the local steps depend on the size a local model sees. (One
                # that fits every window as sent is not measured: the backend sizes what it
                # sends, and the plan would not change.)
                _ = facts.size.local
                continue
            res = await self.attempt(ctx, step)
            if isinstance(res, Reply):
                out.reply, out.step = res, step
                if res.handover and step.target != CLOUD:  # the door lets the request go: the hand-over keeps its own
                    res.instead = partial(self._instead, ctx, facts, out, tried, step.target, ctx.ex.request())
                elif res.handover:  # (a cloud stream's is rarely asked: the body kept as it came, within a bound)
                    res.instead = Held.of(len(ctx.ex.body), partial(self._instead, ctx, facts, out, tried, CLOUD,
                                                                    ctx.ex.request_later()))
                break
            if isinstance(res, Skip):  # not tried after all (another instance probes; a full pool)
                tried[step.target] = res.reason
                out.tried.append((step.target, res.reason))
                continue
            why = _describe(res)
            tried[step.target] = why
            out.tried.append((step.target, why))
            if isinstance(res, TooLong):
                too_long.append(res)
            if step.target == CLOUD and not out.reason:
                out.reason = why

    async def attempt(self, ctx: RequestContext, step: Step) -> Attempt | Skip:
        rt = self.rt
        account = ctx.ex.account
        if step.target == CLOUD:
            quota = rt.clouds.state(account)
            if step.probe:
                if not await rt.clouds.may_probe(account, PROBE_LEASE):
                    quota.await_probe()  # another instance is probing: wait for its answer
                    return Skip(CLOUD, "cloud", "another instance is checking whether the cloud is back")
                quota.begin_probe()
            sent = quota.clock()
            try:
                res = await rt.cloud.send(ctx.ex, step)
                # A probe's answer always counts; another's only if it is not older news
                # than what moved the state last (QuotaState.basis).
                self.cloud_outcome(res, account, sent=None if step.probe else sent)
            except UnreadableRequest:  # never sent: a probe learned nothing, and ends as such
                if step.probe:
                    quota.record_failure(Verdict(FailureKind.CLIENT_ERROR, False, None, "the request could not be read"))
                raise
            except asyncio.CancelledError:  # its client left (Door.run): a probe learned nothing
                if step.probe:
                    quota.record_failure(Verdict(FailureKind.CLIENT_ERROR, False, None, "the probe's client left"))
                raise
            finally:
                if step.probe:
                    await rt.clouds.probed(account)
            return res
        backend = rt.backend(step.target)
        if backend is None:
            return _GONE
        return await self._on_local(backend, lambda: backend.send(ctx.ex, step))

    async def _stream_on(self, target: str, req: dict[str, Any]) -> Attempt | Skip:
        """`req` streamed by the local backend `target`, within its slots. Asked while a
        client's stream is under way: a request no local model can be sent is a "no"
        here, not an error that would end that stream."""
        backend = self.rt.backend(target)
        if backend is None:
            return _GONE
        try:
            return await self._on_local(backend, partial(backend.send_request, req, stream=True))
        except UnreadableRequest as exc:
            return Verdict(FailureKind.CLIENT_ERROR, False, None, str(exc))

    async def _on_local(self, backend: LocalBackend, send: Callable[[], Awaitable[Attempt]]) -> Attempt | Skip:
        """`send` to a local backend within its slots: counted (fleet-wide when shared)
        while it runs, and for a stream until the stream is closed."""
        rt = self.rt
        url = backend.cfg.url  # the slot is given back under the URL it was taken under
        taken = await rt.take_slot(backend, url)
        if taken is not None:
            return taken
        try:
            res = await send()
        except BaseException:
            rt.give_slot(backend, url)
            raise
        if isinstance(res, Reply) and res.stream:
            close = res.close
            given = False

            def closed() -> None:
                nonlocal given
                if given:  # the slot goes back once, however many ends close the stream
                    return
                given = True
                if close is not None:
                    close()
                rt.give_slot(backend, url)

            res.close = closed
        else:
            rt.give_slot(backend, url)
        return res

    async def _instead(self, ctx: RequestContext, facts: RequestFacts, out: Outcome, tried: dict[str, str],
                       failed: str, req: dict[str, Any] | Callable[[], dict[str, Any]],
                       res: Verdict | TooLong) -> Reply | None:
        """Another local stream for the request `req`, whose stream began for the client
        and that `failed` then could not serve before any content (LocalBackend._served;
        the cloud's: backends/cloud.py, an empty text or thinking block and then an error or a cut):
        the plan's next local steps, planned again as after any failure. Not the cloud: its
        stream is a message of its own, and the client has this one's start."""
        tried = {**tried, failed: _describe(res)}
        out.tried.append((failed, tried[failed]))
        if failed == CLOUD:  # a "no" like any other: the cloud's state learns it
            if isinstance(res, Verdict):
                self.cloud_outcome(res, ctx.ex.account)
            out.reason = out.reason or tried[failed]
        if callable(req):
            try:
                req = req()
            except UnreadableRequest:  # the cloud took it; no local model can be sent it
                return None
        facts = _sized(facts, req)
        while True:
            p = self.plan(facts, tried)
            step = next((s for s in p.steps if s.target != CLOUD), None)
            if step is None:
                return None
            out.plan = p
            got = await self._stream_on(step.target, req)
            if isinstance(got, Reply):
                out.step = step
                if got.handover:
                    got.instead = partial(self._instead, ctx, facts, out, tried, step.target, req)
                return got
            why = got.reason if isinstance(got, Skip) else _describe(got)
            tried[step.target] = why
            out.tried.append((step.target, why))

    def cloud_outcome(self, res: Attempt, account: str = "", sent: float | None = None) -> None:
        """What a cloud attempt (a request sent at `sent`) teaches the account's cloud state."""
        quota = self.rt.clouds.state(account)
        if isinstance(res, Reply):
            if res.status < 400:
                if res.verdict is not None:  # served, but the quota is now rejected
                    quota.record_failure(res.verdict, sent)
                else:
                    quota.record_success(sent)
            elif res.verdict is not None:
                quota.record_failure(res.verdict, sent)
            else:
                quota.record_failure(Verdict(FailureKind.CLIENT_ERROR, False, None, res.usage.error), sent)
        elif isinstance(res, Verdict):
            quota.record_failure(res, sent)

    def _no_reply(self, ctx: RequestContext, out: Outcome, too_long: list[TooLong]) -> None:
        facts = ctx.facts
        skipped = out.plan.skipped if out.plan is not None else ()
        windows = [(s.target, s.reason) for s in skipped if s.rule == "context"]
        if too_long or windows:
            if too_long:
                worst = max(too_long, key=lambda t: t.window)
                tokens, window = worst.tokens, worst.window
            else:
                found = [b for b in (self.rt.backend(n) for n, _ in windows) if b is not None]
                window = max((b.window() for b in found), default=0)
                tokens = facts.size.floor if facts is not None else 0
            out.status, out.etype = 400, "invalid_request_error"
            out.message = prompt_too_long_message(tokens, window)
            return
        reasons = out.tried + [(s.target, s.reason) for s in skipped if s.rule != "tried"]
        if not self.rt.locals:
            reasons.append(("local", "no local backend is configured or running — run `nonstop doctor`"))
        out.status, out.etype = 503, "api_error"
        out.message = redact("nonstop could not get an answer from any backend. " + "; ".join(
            f"{name}: {why}" for name, why in reasons))
        if not out.reason:
            cloud = next((why for name, why in reasons if name == CLOUD), "")
            out.reason = cloud
        # The cloud is out until a known time, and nothing else answered: say when (the
        # SDKs wait that long when it is a minute or less, their own backoff beyond).
        quota = self.rt.clouds.state(ctx.ex.account)
        if quota.state is CloudState.OUT and (wait := quota.until - quota.clock()) > 0:
            out.retry_after = math.ceil(min(wait, LONGEST_OUT))

    # --- mid-stream recovery -------------------------------------------------------------------

    async def continue_locally(self, ctx: RequestContext, req: dict[str, Any],
                               original: dict[str, Any] | None = None) -> Reply | None:
        """A streaming local reply for a prefilled request, or None if no backend can.
        `original`: the request as the client sent it, which the plan sizes (a prefill
        ends with the assistant's turn, which the fitting tiers cannot drop turns before)."""
        facts = _sized(ctx.facts or self.facts(ctx.ex), original or req)
        p = self.plan(facts, {CLOUD: "the cloud stream failed"})
        for step in p.steps:
            res = await self._stream_on(step.target, req)  # the cloud's step: no local backend
            if isinstance(res, Reply):
                return res
        return None


_GONE = Verdict(FailureKind.NETWORK, True, None, "the backend is gone")


def _sized(facts: RequestFacts, req: dict[str, Any]) -> RequestFacts:
    """`facts` whose sizes not measured yet are read from `req`: by now the door has let
    the exchange's own request go. The local size is measured now (the steps planned
    from here are all local: the windows decide)."""
    size = facts.size.reading(RequestSize(lambda: req))
    _ = size.local
    return facts._replace(size=size)


def _describe(res: Verdict | TooLong) -> str:
    if isinstance(res, TooLong):
        return f"prompt is {res.tokens} tokens, window {res.window}"
    return res.describe()

