"""The gateway's shared state and the attempt pipeline: cloud first, then local
backends, deciding everything before the first byte reaches the client."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from nonstop.backends.base import Reply, TooLong
from nonstop.backends.cloud import CloudBackend, forward_headers
from nonstop.backends.local import LocalBackend, make_local_backend
from nonstop.config import Config, LocalBackendConfig
from nonstop.redact import redact
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.routing.quota import CloudState, QuotaState, Route
from nonstop.server.metrics import Metrics
from nonstop.store.db import RequestRow, Store
from nonstop.wire.errors import prompt_too_long_message

log = logging.getLogger("nonstop")

# A session told "prompt is too long" that comes back still too long within this window
# (Claude Code's compaction request) gets its history trimmed to fit instead.
TRIM_AFTER_REJECT = 300.0


@dataclass
class Outcome:
    """What the pipeline decided: a reply to commit, or an error to send."""

    reply: Reply | None = None
    status: int = 0
    etype: str = ""
    message: str = ""
    reason: str = ""  # why the cloud did not serve (failover reason)
    tried: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RequestContext:
    path: str
    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    req: dict[str, Any]
    stream: bool
    model: str
    t0: float
    row: RequestRow


def hhmm(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M UTC")


class Gateway:
    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clock = clock
        self.metrics = Metrics()
        self.store = Store(cfg.state_dir, retention_days=cfg.log.retention_days) if cfg.log.enabled else None
        self.quota = QuotaState(cfg.cloud, clock=clock, on_change=self._on_quota_change)
        self.cloud: CloudBackend | None = None
        self.locals: list[LocalBackend] = []
        self.local_session: aiohttp.ClientSession | None = None
        self.subscribers: set[asyncio.Queue] = set()
        self.recent_rows: deque[dict[str, Any]] = deque(maxlen=200)
        self.too_long_sessions: dict[str, float] = {}
        self.inflight = 0
        self.draining = False
        self.started = clock()
        self.embedded: Any = None
        self.shared: Any = None
        self.discovered: list[Any] = []
        self._tasks: set[asyncio.Task] = set()
        self._next_id = 0

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.store is not None:
            await asyncio.to_thread(self.store.open)
            snap = await asyncio.to_thread(self.store.load_state, "quota")
            if isinstance(snap, dict):
                self.quota.restore(snap)
                if self.quota.state is not CloudState.SERVING:
                    log.info("cloud state restored: %s until %s (%s)", self.quota.state.value, hhmm(self.quota.until), self.quota.reason)
        if self.cfg.shared.redis_url:
            from nonstop.store.shared import SharedState

            try:
                import redis  # noqa: F401
            except ImportError:
                raise RuntimeError("shared.redis_url is set but the Redis client is missing: pip install 'nonstop[redis]'") from None
            self.shared = SharedState(self.cfg.shared.redis_url, self.cfg.shared.key_prefix, self._apply_shared)
            try:
                snap = await self.shared.start()
            except Exception as exc:
                raise RuntimeError(
                    f"shared.redis_url: cannot reach Redis at {self.cfg.shared.redis_url} ({type(exc).__name__}); "
                    "start Redis or remove [shared] redis_url"
                ) from None
            if snap:
                self._apply_shared(snap)
        self._publish_quota()
        self.cloud = CloudBackend(self.cfg.cloud, CloudBackend.make_session(self.cfg.cloud))
        self.local_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        backends = list(self.cfg.local)
        if not backends or self.cfg.embedded.mode == "always":
            backends.extend(await self._auto_backends(bool(backends)))
        self.set_local_backends(backends)
        self._spawn(self._health_loop())

    def set_local_backends(self, cfgs: list[LocalBackendConfig]) -> None:
        assert self.local_session is not None
        self.locals = [make_local_backend(c, self.local_session, ping_interval=self.cfg.ping_interval) for c in cfgs]

    async def _auto_backends(self, have_configured: bool) -> list[LocalBackendConfig]:
        """Discovery, then the embedded server (issue: works out of the box)."""
        from nonstop.server import autoconfig

        return await autoconfig.auto_backends(self, have_configured)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.embedded is not None:
            with contextlib.suppress(Exception):
                await self.embedded.stop()
        if self.shared is not None:
            await self.shared.close()
        if self.cloud is not None:
            await self.cloud.session.close()
        if self.local_session is not None:
            await self.local_session.close()
        if self.store is not None:
            self.store.save_state("quota", self.quota.snapshot())
            await asyncio.to_thread(self.store.close)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _health_loop(self) -> None:
        while True:
            for b in self.locals:
                h = await b.check_health()
                self.metrics.local_up.labels(b.name).set(1 if h.ok else 0)
            await asyncio.sleep(15)

    # --- quota state --------------------------------------------------------------------

    def _apply_shared(self, snap: dict[str, Any]) -> None:
        """Another instance changed the cloud state."""
        before = self.quota.state
        self.quota.restore(snap)
        if self.store is not None:
            self.store.save_state("quota", self.quota.snapshot())
        self._publish_quota()
        if self.quota.state is not before:
            log.warning("cloud state from another instance: %s%s", self.quota.state.value,
                        f" until {hhmm(self.quota.until)} ({self.quota.reason})" if self.quota.state is CloudState.OUT else "")
            self.broadcast({"type": "status"})

    def _on_quota_change(self, quota: QuotaState, why: str) -> None:
        if self.shared is not None:
            self.shared.publish(quota.snapshot())
        if self.store is not None:
            self.store.save_state("quota", quota.snapshot())
        self._publish_quota()
        if not why:
            return
        if quota.state is CloudState.OUT:
            line = f"switched to local: cloud out until {hhmm(quota.until)} ({quota.reason}: {quota.detail})"
            to = "local"
        elif quota.state is CloudState.SERVING:
            line = "switched to cloud: the cloud answered again"
            to = "cloud"
        else:
            line = f"probing the cloud ({why})"
            to = ""
        log.warning(line)
        if to:
            self.metrics.switches.labels(to).inc()
            self.broadcast({"type": "switch", "to": to, "line": line, "ts": self.clock()})
            from nonstop.server import hooks

            self._spawn(hooks.notify(self.cfg.hooks, {"event": "switch", "to": to, "message": line, "cloud": quota.snapshot()}))
        self.broadcast({"type": "status"})

    def _publish_quota(self) -> None:
        u = self.quota.utilization
        self.metrics.set_cloud(self.quota.state.value, self.quota.until, u.five_hour, u.seven_day)

    def observe_headers(self, headers: Any) -> None:
        before = (self.quota.utilization.five_hour, self.quota.utilization.seven_day)
        self.quota.record_headers(headers)
        u = self.quota.utilization
        if (u.five_hour, u.seven_day) != before:
            self._publish_quota()

    # --- the pipeline ---------------------------------------------------------------------

    def local_order(self, model: str) -> list[LocalBackend]:
        pool = self.locals
        for route in self.cfg.routes:
            if fnmatch.fnmatchcase(model, route.match):
                pool = [b for n in route.backends for b in self.locals if b.name == n]
                break
        # Healthy first; a backend whose health check failed is still tried, last.
        return sorted(pool, key=lambda b: 0 if b.health.ok is not False else 1)

    async def run(self, ctx: RequestContext, *, cloud_path: bytes | None = None, cloud_body: bytes | None = None,
                  extra_headers: dict[str, str] | None = None) -> Outcome:
        out = Outcome()
        route = self.quota.route()
        if route is Route.LOCAL:
            out.reason = f"cloud out until {hhmm(self.quota.until)} ({self.quota.reason})"
            out.tried.append(("cloud", f"{self.quota.reason or 'out'} until {hhmm(self.quota.until)}"))
        else:
            res = await self._try_cloud(ctx, cloud_path, cloud_body, extra_headers)
            if isinstance(res, Reply):
                out.reply = res
                return out
            out.reason = res.describe()
            until = f" until {hhmm(self.quota.until)}" if self.quota.state is CloudState.OUT else ""
            out.tried.append(("cloud", res.describe() + until))
        return await self._try_locals(ctx, out)

    async def _try_cloud(self, ctx: RequestContext, cloud_path: bytes | None, cloud_body: bytes | None,
                         extra_headers: dict[str, str] | None) -> Reply | Verdict:
        assert self.cloud is not None
        headers = forward_headers(ctx.headers)
        if extra_headers:
            for k, v in extra_headers.items():
                headers.setdefault(k, v)
        body = cloud_body if cloud_body is not None else ctx.body
        res = await self.cloud.send(
            ctx.method, cloud_path or ctx.raw_path, ctx.query, headers, body,
            peek_stream=ctx.stream, failover_on_auth=self.cfg.cloud.failover_on_auth,
            expect=("stream" if ctx.stream else "json") if ctx.path in ("/v1/messages", "/v1/chat/completions") else "",
            observe_headers=self.observe_headers,
        )
        if isinstance(res, Reply):
            if res.status < 400:
                if res.note:  # e.g. a 200 that says the unified quota is now rejected
                    self.quota.record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, False, None, res.note))
                else:
                    self.quota.record_success()
            elif res.status in (401, 403):
                self.quota.record_failure(Verdict(FailureKind.AUTH, False, None, res.usage.error))
            else:
                # The request itself was refused: nothing learned about capacity, but a
                # probe must not stay open waiting for an answer it already got.
                self.quota.record_failure(Verdict(FailureKind.CLIENT_ERROR, False, None, res.usage.error))
            return res
        self.quota.record_failure(res)
        return res

    async def _try_locals(self, ctx: RequestContext, out: Outcome) -> Outcome:
        too_long: list[TooLong] = []
        backends = self.local_order(ctx.model)
        if not backends:
            out.tried.append(("local", "no local backend is configured or running — run `nonstop doctor`"))
        req = ctx.req
        trimmed = False
        for backend in backends:
            res = await backend.send(req, stream=ctx.stream)
            if isinstance(res, TooLong) and self._may_trim(ctx):
                from nonstop.routing.fit import trim_to_fit

                fitted = trim_to_fit(req, res.tokens, backend.cfg.context_window - min(1024, backend.cfg.max_output_tokens))
                if fitted is not None:
                    trimmed = True
                    res = await backend.send(fitted, stream=ctx.stream)
            if isinstance(res, Reply):
                out.reply = res
                if trimmed:
                    res.note = "history trimmed to fit the local window"
                return out
            if isinstance(res, TooLong):
                too_long.append(res)
                out.tried.append((backend.name, f"prompt is {res.tokens} tokens, window {res.window}"))
            else:
                out.tried.append((backend.name, res.detail))
        if too_long:
            worst = max(too_long, key=lambda t: t.window)
            if ctx.row.session_id:
                self.too_long_sessions[ctx.row.session_id] = self.clock()
            out.status, out.etype = 400, "invalid_request_error"
            out.message = prompt_too_long_message(worst.tokens, worst.window)
            return out
        out.status, out.etype = 503, "api_error"
        out.message = redact("nonstop could not get an answer from any backend. " + "; ".join(
            f"{name}: {why}" for name, why in out.tried
        ))
        return out

    async def continue_locally(self, ctx: RequestContext, req: dict[str, Any]) -> Reply | None:
        """A streaming local reply for a prefilled request, or None if no backend can."""
        for backend in self.local_order(ctx.model):
            res = await backend.send(req, stream=True)
            if isinstance(res, Reply):
                return res
        return None

    def _may_trim(self, ctx: RequestContext) -> bool:
        sid = ctx.row.session_id
        if not sid:
            return False
        told = self.too_long_sessions.get(sid)
        return told is not None and self.clock() - told < TRIM_AFTER_REJECT

    # --- the request log ---------------------------------------------------------------------

    def record(self, row: RequestRow) -> None:
        # Upstream error messages can quote what the client sent, keys included.
        row.error, row.reason = redact(row.error), redact(row.reason)
        self._next_id += 1
        self.metrics.observe(row)
        if self.store is not None:
            self.store.log_request(row)
        pub = row.public()
        pub["seq"] = self._next_id
        self.recent_rows.append(pub)
        if self.subscribers:
            self.broadcast({"type": "request", "row": pub})
        log.info(
            "%s %s model=%s backend=%s outcome=%s status=%d%s ttfb=%s total=%s in=%d out=%d%s",
            row.path, "stream" if row.stream else "json", row.model or "-", row.backend or "-", row.outcome,
            row.status, f" reason={row.reason!r}" if row.reason else "",
            _ms(row.ttfb_ms), _ms(row.total_ms), row.input_tokens, row.output_tokens,
            f" error={row.error!r}" if row.error else "",
            extra={"redacted": True},  # its free-text fields were redacted above
        )

    def broadcast(self, event: dict[str, Any]) -> None:
        for q in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)

    # --- status ---------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        from nonstop.server.status import backend_entry, start_of_day, status_document

        now = self.clock()
        today: dict[str, Any] = {}
        if self.store is not None:
            with contextlib.suppress(Exception):
                today = await asyncio.to_thread(self.store.totals_since, start_of_day(now))
        local = [
            backend_entry(b.cfg, model=b.health.model, healthy=b.health.ok, checked=b.health.checked,
                          error=b.health.error, embedded=bool(self.embedded is not None and b.name == "embedded"))
            for b in self.locals
        ]
        return status_document(
            self.cfg, self.quota.snapshot(), local, today, running=True, version=_version(), now=now,
            pid=os.getpid(), uptime=now - self.started, inflight=self.inflight,
            log=str(self.store.path) if self.store is not None else "",
        )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}ms"


def _version() -> str:
    from nonstop import __version__

    return __version__

