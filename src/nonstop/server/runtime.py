"""Everything that lives as long as the process: the configuration, the cloud's state per
account (server/cloud_state.py), the backends and their live state, the request log,
metrics and the event bus; start-up and shutdown; the background loops (each local
backend's identity, health and load).

`view()` is the world as the planner sees it at this instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import os
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any

import aiohttp

from nonstop import __version__
from nonstop.backends import server_report
from nonstop.backends.cloud import CloudBackend
from nonstop.backends.local import LocalBackend
from nonstop.backends.registry import make_local_backend
from nonstop.config import Config, LocalBackendConfig, state_dir_fix
from nonstop.quality.auto import EvalWatch
from nonstop.routing.backend_state import INF, BackendState, ServerReport
from nonstop.routing.plan import Skip
from nonstop.routing.policy import Policy, policy_from_config
from nonstop.routing.quota import QuotaState
from nonstop.routing.view import CloudState, RoutingView
from nonstop.server.autoconfig import auto_backends, embedded_server
from nonstop.server.cloud_state import CloudStates, salt_fingerprint
from nonstop.server.events import EventBus
from nonstop.server.metrics import Metrics
from nonstop.server.request_log import RequestLog
from nonstop.server.shadow import Shadow
from nonstop.server.status import backend_entry, start_of_day, status_document
from nonstop.server.warmer import Loads, Warmer
from nonstop.store.db import OpenFailed, Store

log = logging.getLogger("nonstop")
# The longest a real request waits for cancelled background work to let go of a slot.
PREEMPT_WAIT = 1.0
HEALTH_EVERY = 15.0
IDENTIFY_EVERY = 60.0
# Seconds between saves of the learned first-byte deadlines while they change.
DEADLINES_SAVE_EVERY = 5.0
LOAD_EVERY = 2.0
TICK = 0.5
# Shadow comparisons shown in the status: the last week's.
SHADOW_WINDOW = 7 * 86400.0


def cannot_open(cfg: Config, exc: OpenFailed) -> str:
    """The one line that says the request log cannot be opened: which file, why, what
    nonstop does without it, and the fix."""
    if exc.full:
        fix = f"free space on its disk, or {state_dir_fix(cfg)}"
    elif exc.unwritable and exc.reason.startswith(f"{exc.path}"):  # the folder is fine, the file is not nonstop's to write
        fix = f"make {exc.path.name} writable by this user, or {state_dir_fix(cfg)}"
    elif exc.unwritable:
        fix = state_dir_fix(cfg)
    else:  # the folder is fine, the file is not (not a database, damaged)
        fix = f"move {exc.path} aside (nonstop makes a new one)"
    return (f"the request log {exc.path} cannot be opened: {exc.reason}; serving without it (no `nonstop logs`, "
            f"and the cloud's state is not kept across restarts). Fix: {fix}; or turn the log off with "
            f"[log] enabled = false")


class Runtime:
    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clock = clock
        self.metrics = Metrics()
        self.bus = EventBus()
        self.store = Store(cfg.state_dir, retention_days=cfg.log.retention_days) if cfg.log.enabled else None
        self._held: dict[str, int] = {}  # requests in flight per local backend URL (see take_slot)
        self.request_log = RequestLog(self.store, self.metrics, self.bus)
        self.clouds = CloudStates(cfg, clock=clock, metrics=self.metrics, bus=self.bus, store=self.store, spawn=self.spawn)
        self.cloud: CloudBackend = None  # type: ignore[assignment]  # set in start()
        self.locals: list[LocalBackend] = []
        self._by_name: dict[str, LocalBackend] = {}
        self._view: RoutingView | None = None  # the last view, kept while its parts are the same
        self._view_changes = -1  # BackendState.changes when its backends' part was last read
        self._view_until = 0.0  # when the first of those backend views goes stale
        self.policy: Policy = policy_from_config(cfg)
        self.local_session: aiohttp.ClientSession | None = None
        self.embedded: Any = None
        self.discovered: list[Any] = []
        self.inflight = 0
        self.draining = False
        self.started = clock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._noted: dict[str, int] = {}
        self.warmer: Warmer | None = None
        self.evals: EvalWatch | None = None
        self.shadow = Shadow(self)

    @property
    def quota(self) -> QuotaState:
        """The cloud's state for the latest request's account (all there is for one user)."""
        return self.clouds.accounts.current()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.open)
            except OpenFailed as exc:  # the log is a courtesy: serve without it
                log.warning("%s", cannot_open(self.cfg, exc))
                self.store = self.request_log.store = self.clouds.store = None
        await self.clouds.start(self.instance_info, self.held_slots)
        self.cloud = CloudBackend(self.cfg.cloud, CloudBackend.make_session(self.cfg.cloud), observe_headers=self.clouds.observe)
        if self.store is not None:
            self.cloud.deadlines.restore(await asyncio.to_thread(self.store.load_state, "first_byte"))
            self.spawn(self._save_deadlines(self.store))
        self.local_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        backends = list(self.cfg.local)
        guessed: set[str] = set()
        if not backends or self.cfg.embedded.mode == "always":
            auto = await auto_backends(self.cfg, self.local_session, have_configured=bool(backends), wait=False)
            self.discovered, self.embedded = auto.discovered, auto.embedded
            backends.extend(auto.backends)
            guessed = auto.guessed_windows
            if auto.embedded is not None:  # it loads while the gateway serves (and can be stopped)
                self.spawn(self._embedded_started(auto.embedded.begin()))
        self.set_local_backends(backends, guessed)
        for b in self.locals:
            if self.embedded is not None and b.name == "embedded":
                self._attach_embedded(b)
            self.spawn(self._watch(b))
        self.warmer = Warmer(self.cfg.warmup, lambda: [q.view() for q in self.clouds.accounts.states.values()],
                             lambda: self.locals, Loads(self.local_session), embedded=self.embedded, clock=self.clock)
        self.clouds.on_switch = self.warmer.nudge
        self.spawn(self.warmer.run())
        emb = self.cfg.embedded
        if self.discovered and self.locals and self.embedded is None and not self.cfg.local \
                and emb.mode == "auto" and emb.standby_after > 0:
            self.spawn(self._standby(emb.standby_after))
        self.evals = EvalWatch(self.cfg, self.local_session)
        self.spawn(self._scores(self.evals))

    def _attach_embedded(self, b: LocalBackend) -> None:
        assert self.embedded is not None
        b.until_ready = self.embedded.until_ready  # a request waits for it to load
        b.unavailable = self.embedded.unavailable  # and none goes to its port while it is down
        self.embedded.on_moved = b.moved_to  # nor to its old port once it has moved

    async def _standby(self, after: float) -> None:
        """The servers discovery found (none configured), watched: once every one of them
        has been down for `after` seconds (failing its health checks, or demoted after
        failed requests), the embedded server starts and joins them as the last local
        backend, for as long as nonstop runs (a server that comes back is first again)."""
        loop = asyncio.get_running_loop()
        since: float | None = None
        while True:
            await asyncio.sleep(TICK)
            if any(not _down(b.state) for b in self.locals):
                since = None
                continue
            now = loop.time()  # (monotonic: a change of the wall clock does not start it)
            since = now if since is None else since
            if now - since >= after:
                if self._start_standby(now - since):
                    return
                since = None  # a fault of the moment: tried again once they have been down as long

    def _start_standby(self, down_for: float) -> bool:
        """Start the embedded server beside the discovered ones; whether this is settled
        (started, or nothing to start: said once), or worth trying again later."""
        from nonstop.backends.embedded import EmbeddedUnavailable

        names = ", ".join(b.name for b in self.locals)
        server = embedded_server(self.cfg)
        try:
            cfg = server.prepare()
        except EmbeddedUnavailable as exc:
            log.warning("%s down for %.0f s, and no embedded model can stand in: %s", names, down_for, exc)
            return True
        except Exception as exc:  # (no free port, out of file descriptors...)
            log.warning("%s down for %.0f s, and the embedded model could not be prepared to stand in (%s: %s); "
                        "trying again later", names, down_for, type(exc).__name__, exc)
            return False
        log.warning("%s down for %.0f s: starting the embedded model as the last local fallback", names, down_for)
        assert self.local_session is not None
        b = make_local_backend(cfg, self.local_session, ping_interval=self.cfg.ping_interval)
        self.embedded = server
        if self.warmer is not None:
            self.warmer.embedded = server
        self._attach_embedded(b)
        self.use_backends([*self.locals, b])
        self.spawn(self._watch(b))
        self.spawn(self._embedded_started(server.begin()))
        return True

    async def _embedded_started(self, starting: asyncio.Future[None]) -> None:
        from nonstop.backends.embedded import EmbeddedUnavailable

        try:
            await starting
        except EmbeddedUnavailable as exc:
            log.warning("no local model available: %s", exc)

    async def _save_deadlines(self, store: Store) -> None:
        """The learned first-byte deadlines, saved while they change, so that a crash
        loses at most DEADLINES_SAVE_EVERY seconds of them (a clean stop saves them too)."""
        last = self.cloud.deadlines
        saved = last.recorded
        while True:
            await asyncio.sleep(DEADLINES_SAVE_EVERY)
            deadlines = self.cloud.deadlines  # tests may swap the cloud backend
            if deadlines is not last or deadlines.recorded != saved:
                last, saved = deadlines, deadlines.recorded
                store.save_state("first_byte", deadlines.snapshot())

    async def _scores(self, evals: EvalWatch) -> None:
        """Each backend's last eval score (stale ones do not count) for the planner's
        `best` preference and the status document; a re-run when [eval] auto asks."""
        while True:
            with contextlib.suppress(Exception):  # scores are a courtesy: never stop the gateway
                scores = await evals.check(self.locals, cloud_serving=self.quota.state is CloudState.SERVING)
                for b in self.locals:
                    s = scores.get(b.name)
                    b.state.score = s.for_routing if s is not None else None
            await asyncio.sleep(IDENTIFY_EVERY)

    def instance_info(self) -> dict[str, Any]:
        """What this instance's heartbeat tells the fleet."""
        # Backends by name: a URL may carry a password (http://user:pass@host), and the
        # heartbeat is read by anyone with Redis or the fleet page.
        return {"version": __version__, "pid": os.getpid(), "listen": self.cfg.listen, "inflight": self.inflight,
                "started": self.started, "draining": self.draining,
                "backends": {b.name: b.state.inflight for b in self.locals},
                "labels": salt_fingerprint(self.clouds.accounts.salt)}

    def held_slots(self) -> dict[str, int]:
        """This instance's requests in flight per local backend URL, as counted for the fleet."""
        return {b.cfg.url: self._held.get(b.cfg.url, 0) for b in self.locals}

    def set_local_backends(self, cfgs: list[LocalBackendConfig], guessed: Collection[str] = ()) -> None:
        """`guessed`: the backends whose window is a guess, for the server's reading to replace."""
        assert self.local_session is not None
        self.use_backends([make_local_backend(c, self.local_session, ping_interval=self.cfg.ping_interval) for c in cfgs])
        for b in self.locals:
            b.state.window_guessed = b.name in guessed

    def use_backends(self, locals_: list[LocalBackend], cloud: CloudBackend | None = None) -> None:
        """The backends to serve with: the one seam for I/O (tests pass fakes here)."""
        if cloud is not None:
            self.cloud = cloud
        self.locals = list(locals_)
        self._view = None
        self._by_name = {b.name: b for b in self.locals}
        self.policy = policy_from_config(self.cfg, order=tuple(self._by_name))

    async def stop(self) -> None:
        self.request_log.flush()  # the last requests' console lines
        self.clouds.catch_up()  # a last switch's line and hooks, before the tasks are stopped
        for t in list(self._tasks):
            t.cancel()
        if self.evals is not None:
            await self.evals.close()
        if self.embedded is not None:
            with contextlib.suppress(Exception):
                await self.embedded.stop()
        await self.clouds.stop()
        if self.cloud is not None:
            await self.cloud.session.close()
        if self.local_session is not None:
            await self.local_session.close()
        if self.store is not None:
            if self.cloud is not None:
                self.store.save_state("first_byte", self.cloud.deadlines.snapshot())
            await asyncio.to_thread(self.store.close)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self, b: LocalBackend) -> None:
        """One backend's background readings: what the server is (its kind, real window,
        tools) every IDENTIFY_EVERY seconds, its health every HEALTH_EVERY (a demoted
        backend as soon as its backoff allows, restored when it answers), and its load
        every LOAD_EVERY where the server reports it."""
        known: ServerReport | None = None
        due = {"identify": 0.0, "health": 0.0, "load": 0.0}
        failed = False
        while True:
            try:
                known = await self._watch_once(b, known, due)
            except Exception as exc:  # a server's odd answer must never end its watch
                if not failed:
                    log.warning("reading %s failed (%s: %s); still watching it", b.name, type(exc).__name__,
                                str(exc)[:200], exc_info=log.isEnabledFor(logging.DEBUG))
                failed = True
            else:
                failed = False
            await asyncio.sleep(TICK)

    async def _watch_once(self, b: LocalBackend, known: ServerReport | None, due: dict[str, float]) -> ServerReport | None:
        """The readings that are due (each is made due again first, so one that fails is
        not retried before its time); what the server is known to be."""
        assert self.local_session is not None
        session = self.local_session
        if b.unavailable is not None and b.unavailable():
            return known  # whatever answers on its port meanwhile is not its server: read it once it is back
        now = self.clock()
        if now >= due["identify"]:
            due["identify"] = now + IDENTIFY_EVERY
            found = await server_report.identify(session, b.base, model=b.cfg.model)
            if found is not None:
                known = found
                b.state.reported(found)
                self._note_window(b, found)
                if b.state.token_ratio is None:
                    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                        await b.calibrate()
        if b.state.probe_due() or now >= due["health"]:
            due["health"] = now + HEALTH_EVERY
            ok = await b.check_health()
            self.metrics.local_up.labels(b.name).set(1 if ok else 0)
        if known is not None and known.kind in server_report.LOAD_KINDS and now >= due["load"]:
            due["load"] = now + LOAD_EVERY
            b.state.reported(await server_report.read_load(session, b.base, known.kind, b.headers(), known))
        return known

    def _note_window(self, b: LocalBackend, r: ServerReport) -> None:
        if r.context_window == self._noted.get(b.name):
            return
        self._noted[b.name] = r.context_window or 0
        if r.context_window and r.context_window < b.cfg.context_window:
            log.warning("%s: configured with a %d-token window, but the server runs %d: planning with %d",
                        b.name, b.cfg.context_window, r.context_window, r.context_window)

    # --- what the planner sees -------------------------------------------------------------------

    def view(self, account: str = "") -> RoutingView:
        """What the planner sees now. The cloud's and each backend's part are kept until
        they change (QuotaState.view, BackendState.view); while every part is the same
        object as last time, so is the whole. While no backend state has changed at all
        and none of their views has gone stale, the backends' part is not asked again."""
        cloud = self.clouds.view(account)
        last = self._view
        if last is not None and last.cloud is cloud and self._view_changes == BackendState.changes \
                and self.clock() <= self._view_until:
            return last
        changes = BackendState.changes
        states = [b.state for b in self.locals]
        backends = tuple([s.view() for s in states])
        self._view_changes = changes
        self._view_until = min([s.view_until for s in states], default=INF)
        if last is not None and last.cloud is cloud and len(last.backends) == len(backends) \
                and all(map(operator.is_, last.backends, backends)):
            return last
        self._view = RoutingView(self.clock(), cloud, backends)
        return self._view

    def backend(self, name: str) -> LocalBackend | None:
        return self._by_name.get(name)

    # --- the shared local pool ---------------------------------------------------------------

    async def take_slot(self, b: LocalBackend, url: str | None = None) -> Skip | None:
        """Count a request on a local backend, fleet-wide when shared; a Skip when the
        backend is at its max_inflight. Shadow work and a background eval give way first.
        `url`: the backend's URL as the caller read it, to give the slot back under the
        same one (the embedded server's can change while a request holds a slot)."""
        url = b.cfg.url if url is None else url
        await self._preempt()
        limit = b.cfg.max_inflight
        shared = self.clouds.shared
        if shared is not None and shared.available:
            self._held[url] = self._held.get(url, 0) + 1  # counted before the wait: a heartbeat meanwhile sees it
            try:
                taken, total = await shared.acquire_slot(url, limit)
            except BaseException:  # cancelled while Redis counted (a client gone, a shutdown)
                self._held[url] -= 1  # a count Redis took anyway is set right by the next heartbeat
                raise
            if total is not None:
                b.state.fleet_counted(total - (1 if taken else 0))
                if not taken:
                    self._held[url] -= 1
                    return Skip(b.name, "load", f"at its limit of {limit} requests in flight across the fleet")
                return None
            # Redis did not count it (away, or too slow): this instance's own limit holds.
            self._held[url] -= 1
        if limit and b.state.inflight >= limit:
            return Skip(b.name, "load", f"at its limit of {limit} requests in flight")
        self._held[url] = self._held.get(url, 0) + 1
        return None

    async def _preempt(self) -> None:
        """Background work on the local backends (shadow replays, an automatic eval) gives
        its slots back before a real request is counted: cancelled, and waited for (at
        most PREEMPT_WAIT), so that its lease is gone when the limit is checked."""
        tasks = self.shadow.preempt()
        if self.evals is not None:
            tasks += self.evals.preempt()
        if tasks:
            await asyncio.wait(tasks, timeout=PREEMPT_WAIT)

    def give_slot(self, b: LocalBackend, url: str | None = None) -> None:
        """Give back a slot take_slot counted (under `url`, when it was given one)."""
        url = b.cfg.url if url is None else url
        self._held[url] = max(0, self._held.get(url, 0) - 1)
        shared = self.clouds.shared
        if shared is not None and shared.available:
            self.spawn(shared.release_slot(url))

    # --- status ------------------------------------------------------------------------------

    async def status(self, session: str = "") -> dict[str, Any]:
        """The status document; with a Claude Code session id, that session's account."""
        now = self.clock()
        _, quota = self.clouds.current(session)
        today: dict[str, Any] = {}
        shadow: dict[str, Any] = {}
        if self.store is not None:
            try:
                today = await asyncio.to_thread(self.store.totals_since, start_of_day(now))
                if self.cfg.shadow.sample:
                    shadow = await asyncio.to_thread(self.store.shadow_agreement, now - SHADOW_WINDOW)
            except Exception as exc:  # the status lives on without the log's totals
                log.warning("the request log could not be read: %s", exc)
        local = [
            backend_entry(b.cfg, model=b.state.model, healthy=b.state.healthy, checked=b.state.checked,
                          error=b.state.health_error, embedded=bool(self.embedded is not None and b.name == "embedded"),
                          live=b.state.view(), verdict=self.evals.verdict(b.name) if self.evals is not None else None,
                          folds_turns=b.fold_turns,
                          window_assumed=b.state.window_guessed and not b.state.report.context_window)
            for b in self.locals
        ]
        return status_document(
            self.cfg, quota.snapshot(), local, today, running=True, version=__version__, now=now,
            pid=os.getpid(), uptime=now - self.started, inflight=self.inflight,
            log=str(self.store.path) if self.store is not None else "",
            forecast=quota.view().windows, conserving=quota.forecast.conserving,
            decisions=[r for r in self.request_log.recent if r.get("route")][-20:],
            first_byte=self.cloud.deadlines.describe() if self.cloud is not None else {},
            accounts=self.clouds.entries(),
            shadow={"sample": self.cfg.shadow.sample, "days": SHADOW_WINDOW / 86400, "by_class": shadow,
                    "preempted": self.shadow.preempted} if self.cfg.shadow.sample else None,
            fleet="redis " + ("connected" if self.clouds.shared.available else "unreachable")
            if self.clouds.shared is not None else "",
        )


def _down(state: BackendState) -> bool:
    """A local backend that cannot serve now: its health check fails, or failed requests
    have demoted it."""
    return state.healthy is False or state.demoted
