"""The cloud's state as the process keeps it: one QuotaState per account, persisted to
disk, shared with the fleet through Redis when configured, and announced on every switch
(log, dashboard, hooks, metrics).

The planner asks `view(account)`; the pipeline reports outcomes to `state(account)`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from nonstop.config import Config
from nonstop.routing.accounts import Accounts
from nonstop.routing.plan import hhmm
from nonstop.routing.quota import QuotaState
from nonstop.routing.view import CloudState, CloudView
from nonstop.server import hooks
from nonstop.server.events import EventBus
from nonstop.server.metrics import Metrics
from nonstop.server.status import account_entries
from nonstop.store.db import Store, ensure_private_dir

log = logging.getLogger("nonstop")
SALT_FILE = "account-salt"
SESSIONS = 4096


def account_salt(cfg: Config) -> bytes:
    """The salt of account labels: shared by a fleet, private to an installation."""
    if cfg.shared.account_salt:
        return cfg.shared.account_salt.encode()
    if cfg.shared.redis_url:
        return hashlib.sha256(f"nonstop-accounts:{cfg.shared.redis_url}:{cfg.shared.key_prefix}".encode()).digest()
    path = Path(cfg.state_dir) / SALT_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        salt = secrets.token_bytes(32)
        try:
            ensure_private_dir(path.parent)
            path.write_text(salt.hex())
            path.chmod(0o600)
        except OSError:
            pass
        return salt


def salt_fingerprint(salt: bytes) -> str:
    """A short, one-way mark of the account labels' salt: instances whose marks differ
    label the same API key differently, and share no account state."""
    return hashlib.sha256(b"nonstop-account-labels:" + salt).hexdigest()[:8]


class CloudStates:
    def __init__(self, cfg: Config, *, clock: Callable[[], float], metrics: Metrics, bus: EventBus,
                 store: Store | None, spawn: Callable[[Coroutine[Any, Any, Any]], Any]):
        self.cfg = cfg
        self.clock = clock
        self.metrics = metrics
        self.bus = bus
        self.store = store
        self.spawn = spawn
        self.accounts = Accounts(cfg.cloud, salt=account_salt(cfg), clock=clock, on_change=self._changed,
                                 high_water=cfg.routing.high_water, names=dict(cfg.accounts))
        self.accounts.on_forget = lambda account: metrics.forget_account(self.accounts.name(account))
        self.sessions: OrderedDict[str, str] = OrderedDict()  # session id -> account
        self.shared: Any = None
        # Told of every change of a cloud state (the warm-up reacts at once).
        self.on_switch: Callable[[], None] | None = None
        # A change's bookkeeping (the disk, the metrics, the log line, the dashboard) is
        # done a few turns of the event loop later, once: the request that changed the
        # state goes on to its backend first, and the work is done while it waits on the
        # network.
        self._due: set[str] = set()  # accounts changed since
        # Switches to announce: (account, line, to, when, the state for hooks).
        self._said: list[tuple[str, str, str, float, dict[str, Any] | None]] = []
        self._scheduled = False

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, info: Callable[[], dict[str, Any]], held: Callable[[], Mapping[str, int]] | None = None) -> None:
        if self.store is not None:
            snap = await asyncio.to_thread(self.store.load_state, "accounts")
            if snap is None:  # written by a version with one state for everyone
                legacy = await asyncio.to_thread(self.store.load_state, "quota")
                snap = {"accounts": {"": legacy}} if isinstance(legacy, dict) else None
            self.accounts.restore(snap)
            for account, q in self.accounts.states.items():
                if q.state is not CloudState.SERVING:
                    log.info("cloud state restored for %s: %s until %s (%s)", self.accounts.name(account),
                             q.state.value, hhmm(q.until), q.reason)
                self._publish_metrics(account, q)
        if self.cfg.shared.redis_url:
            if not self.cfg.shared.account_salt:
                log.warning("[shared] account_salt is not set: account labels are derived from redis_url, so "
                            "every instance must spell it exactly alike (and changing its password relabels "
                            "every account); set the same account_salt on each instance")
            await self._start_shared(info, held)

    async def _start_shared(self, info: Callable[[], dict[str, Any]], held: Callable[[], Mapping[str, int]] | None) -> None:
        try:
            from nonstop.store.shared import SharedState
        except ImportError:
            raise RuntimeError("shared.redis_url is set but the Redis client is missing: pip install 'nonstop[redis]'") from None
        self.shared = SharedState(self.cfg.shared.redis_url, self.cfg.shared.key_prefix, apply=self._remote, info=info,
                                  heartbeat=self.cfg.shared.heartbeat, on_reconnect=self.reconcile, held=held,
                                  clock=self.clock)
        await self.shared.start()

    async def stop(self) -> None:
        self.catch_up()
        if self.shared is not None:
            await self.shared.close()
        self._save()

    async def reconcile(self) -> None:
        """Redis is back: push what this instance learned meanwhile (the newer wins there)
        and take what the others did (the newer wins here)."""
        for account, q in list(self.accounts.states.items()):
            await self.shared.push(account, q.snapshot(), q.observed, self.accounts.keys_of(account))
        await self.shared.pull()

    # --- accounts --------------------------------------------------------------------------------

    def account_for(self, credential: str, session: str = "") -> str:
        """The account of a request with this credential (see credential_of) and session."""
        if not credential:  # nothing to tell it apart: the account in use (one user: theirs)
            return self.sessions.get(session, self.accounts.last) if session else self.accounts.last
        account = self.accounts.label(credential)
        self.accounts.last = account
        if session and self.sessions.get(session) != account:  # a new session, or a new account
            self.sessions[session] = account
            if len(self.sessions) > SESSIONS:
                self.sessions.popitem(last=False)
        return account

    def state(self, account: str) -> QuotaState:
        return self.accounts.get(account)

    def view(self, account: str) -> CloudView:
        return self.accounts.get(account).view()

    def current(self, session: str = "") -> tuple[str, QuotaState]:
        account = self.sessions.get(session, self.accounts.last) if session else self.accounts.last
        return account, self.accounts.get(account)

    def observe(self, account: str, headers: Mapping[str, str]) -> None:
        """Quota headers on a cloud reply for this account (and its organization)."""
        merged = self.accounts.learn_org(account, headers)
        q = self.accounts.get(merged)
        u = q.utilization
        before = (u.five_hour, u.seven_day)
        q.record_headers(headers)
        if (u.five_hour, u.seven_day) != before:
            self._publish_metrics(merged, q)

    # --- the fleet -------------------------------------------------------------------------------

    async def may_probe(self, account: str, ttl: float) -> bool:
        return True if self.shared is None else await self.shared.acquire_probe(account, ttl)

    async def probed(self, account: str) -> None:
        if self.shared is not None:
            await self.shared.release_probe(account)

    async def fleet(self) -> dict[str, Any]:
        if self.shared is None:
            return {"redis": "not configured", "instances": [], "accounts": {}}
        return dict(await self.shared.fleet())

    # --- changes ---------------------------------------------------------------------------------

    def _remote(self, account: str, snap: dict[str, Any], observed: float, aliases: list[str] | None = None) -> None:
        """Another instance changed an account's state: the newer view wins. `aliases`:
        the API keys it knows belong to this organization (filed here too from now on)."""
        for key in aliases or ():
            self.accounts.alias(key, account)
        q = self.accounts.get(account)
        if observed <= q.observed:
            return
        before, basis = q.state, q.basis
        if not q.restore(snap, live=True):  # quietly: this instance did not see it happen
            return  # nothing readable: it moves no clock either (a later valid state must still win)
        q.observed = observed  # on this machine's clock
        q.basis = max(basis, observed)  # decided then: requests sent before it are older news
        if self.on_switch is not None:
            self.on_switch()
        if q.state is not before:
            log.warning("cloud state for %s from another instance: %s%s", self.accounts.name(account), q.state.value,
                        f" until {hhmm(q.until)} ({q.reason})" if q.state is CloudState.OUT else "")
        # Saved and measured with the turn's other changes (catch_up): a pull of the
        # fleet's states applies one per account, and saving all of them for each one
        # cost a fleet of 1,000 accounts seconds of the event loop.
        self._due.add(account)
        self._schedule()

    def _changed(self, account: str, q: QuotaState, why: str) -> None:
        if self.on_switch is not None:
            self.on_switch()
        if self.shared is not None:
            self.shared.publish(account, q.snapshot(), q.observed, self.accounts.keys_of(account))
        self._due.add(account)
        if why:  # said as of this change, even if another follows before it is said
            who = f" for {self.accounts.name(account)}" if len(self.accounts.states) > 1 else ""
            if q.state is CloudState.OUT:
                line, to = f"switched to local{who}: cloud out until {hhmm(q.until)} ({q.reason}: {q.detail})", "local"
            elif q.state is CloudState.SERVING:
                line, to = f"switched to cloud{who}: the cloud answered again", "cloud"
            else:
                line, to = f"probing the cloud{who} ({why})", ""
            self._said.append((account, line, to, self.clock(),
                               q.snapshot() if to and hooks.configured(self.cfg.hooks) else None))
        self._schedule()

    def _schedule(self) -> None:
        """catch_up() soon, once for whatever changes until then."""
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside the server (a command, a test): at once
            self.catch_up()
            return
        self._scheduled = True
        # Three turns on: what this step starts goes first, such as a task that opens the
        # request to the next backend and the one that writes its body (aiohttp writes a
        # body from a task of its own).
        loop.call_soon(loop.call_soon, loop.call_soon, self.catch_up)

    def catch_up(self) -> None:
        """The bookkeeping of the changes since the last turn: saved, measured, announced."""
        self._scheduled = False
        due, self._due = self._due, set()
        said, self._said = self._said, []
        if not due and not said:
            return
        try:
            self._save()
            for account in due:
                q = self.accounts.states.get(account)
                if q is not None:
                    self._publish_metrics(account, q)
        except Exception:  # a fault of nonstop's own: the switches are still said
            log.exception("keeping the cloud's state failed")
        for account, line, to, when, snapshot in said:
            log.warning(line)
            if to:
                self.metrics.switches.labels(to).inc()
                self.bus.publish({"type": "switch", "to": to, "line": line, "ts": when, "account": account})
                if snapshot is not None:
                    self.spawn(hooks.notify(self.cfg.hooks, {"event": "switch", "to": to, "message": line,
                                                             "account": account, "cloud": snapshot}))
        self.bus.publish({"type": "status"})

    def _save(self) -> None:
        if self.store is not None:
            self.store.save_state("accounts", self.accounts.snapshot())
            # What a stopped gateway's `nonstop status` reads: the latest account's state.
            self.store.save_state("quota", self.accounts.current().snapshot())

    def _publish_metrics(self, account: str, q: QuotaState) -> None:
        u = q.utilization
        self.metrics.set_account(self.accounts.name(account), q.state.value, q.until, u.five_hour, u.seven_day)
        if account == self.accounts.last:
            self.metrics.set_cloud(q.state.value, q.until, u.five_hour, u.seven_day)
            self.metrics.set_forecast(q.forecast.conserving, q.forecast.current)

    # --- status ----------------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Each account's state for the status document (labels, never credentials)."""
        return account_entries(self.accounts.snapshot()["accounts"], self.accounts.names)
