"""What the running gateway does about quality, now and then: read which model each local
backend runs, notice when one changes (its old score goes stale, and the log says so),
and, with `[eval] auto = true`, re-run the quick suite on a backend that needs it once
the backend has been idle for `[eval] idle_after` seconds, in the background.

The runtime calls it every minute or so:

    watch = EvalWatch(cfg, session)                   # at start-up
    scores = await watch.check(locals, cloud_serving=...)    # now and then
    for b in locals:                                  # the planner's BackendView.score
        s = scores.get(b.name); b.state.score = s.for_routing if s else None
    backend_entry(..., verdict=watch.verdict(b.name))  # each backend in the status document
    await watch.close()                               # at shutdown

An automatic run goes to the backend as live traffic does, one task at a time, and stops
(without storing anything) as soon as the backend gets real work or the cloud stops
serving: it never competes with a client for a local model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from nonstop.backends.local import LocalBackend
from nonstop.config import Config
from nonstop.quality.identity import ModelIdentity, identify
from nonstop.quality.results import Score, latest_scores, save_result
from nonstop.quality.runner import evaluate_backend
from nonstop.quality.score import Unanswered
from nonstop.quality.verdict import verdict_entry
from nonstop.store import db_path
from nonstop.store.db import connect, last_request_at

log = logging.getLogger("nonstop")


class EvalWatch:
    def __init__(self, cfg: Config, session: aiohttp.ClientSession, *, clock: Callable[[], float] = time.time,
                 note: Callable[[str], None] = log.warning):
        self.db = db_path(cfg.state_dir)
        self.auto = cfg.eval.auto
        self.idle_after = cfg.eval.idle_after
        self.session = session
        self.clock = clock
        self.note = note
        self.current: dict[str, ModelIdentity] = {}
        self.scores: dict[str, Score] = {}
        self.running: asyncio.Task[None] | None = None
        self._idle_since: dict[str, float] = {}
        self._told: dict[str, str] = {}
        self._serving = True

    async def check(self, backends: Sequence[LocalBackend], *, cloud_serving: bool = True) -> dict[str, Score]:
        """Read the models, mark stale scores, maybe start an automatic run. Returns the
        scores (a backend never evaluated has none)."""
        now = self.clock()
        self._serving = cloud_serving
        found = await asyncio.gather(*(identify(self.session, b.cfg) for b in backends))
        for b, ident in zip(backends, found, strict=True):
            if ident.reachable:
                self.current[b.name] = ident
            else:  # down now: neither evaluated nor judged by what it ran before
                self.current.pop(b.name, None)
            if b.state.inflight:
                self._idle_since.pop(b.name, None)
            else:
                self._idle_since.setdefault(b.name, now)
        self.scores = await asyncio.to_thread(latest_scores, self.db, self.current)
        self._tell_stale()
        if self.auto and cloud_serving and (self.running is None or self.running.done()):
            due = await asyncio.to_thread(self._due, list(backends), now)
            if due is not None:
                self.running = asyncio.ensure_future(self._evaluate(due))
        return self.scores

    def verdict(self, name: str, now: float | None = None) -> dict[str, Any]:
        """The backend's `eval` entry for the status document, from the last check."""
        return verdict_entry(name, self.scores.get(name), self.clock() if now is None else now)

    def preempt(self) -> list[asyncio.Task[Any]]:
        """A real local request is coming: a background run stops (the task cancelled,
        for the caller to wait on); it runs again once the backends are idle."""
        if self.running is None or self.running.done():
            return []
        self.running.cancel()
        self._idle_since.clear()
        log.info("the background eval stopped: a real request needs the local backend")
        return [self.running]

    async def close(self) -> None:
        if self.running is not None and not self.running.done():
            self.running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.running

    # --- internals ---

    def _tell_stale(self) -> None:
        for name, score in self.scores.items():
            key = self.current[name].key if name in self.current else ""
            if score.stale and self._told.get(name) != key:
                self._told[name] = key
                self.note(f"{name}: {score.stale_why}: its eval score is stale"
                          + ("; re-evaluating when it is idle" if self.auto else "; run `nonstop eval`"))

    def _due(self, backends: list[LocalBackend], now: float) -> LocalBackend | None:
        """The first backend that needs a run and has been idle long enough."""
        for b in backends:
            score = self.scores.get(b.name)
            if b.name not in self.current or (score is not None and not score.stale):
                continue
            since = self._idle_since.get(b.name)
            if since is None or now - since < self.idle_after or self._served_lately(b.name, now):
                continue
            return b
        return None

    def _served_lately(self, name: str, now: float) -> bool:
        if not self.db.exists():
            return False
        try:
            conn = connect(self.db, readonly=True)
        except sqlite3.Error:
            return False
        try:
            return last_request_at(conn, name, now - self.idle_after) is not None
        except sqlite3.Error:
            return False
        finally:
            conn.close()

    async def _evaluate(self, b: LocalBackend) -> None:
        self.note(f"{b.name}: evaluating {self.current[b.name].label()} in the background (quick suite)")

        def keep_going() -> bool:
            return self._serving and b.state.inflight == 0

        try:
            identity, card = await evaluate_backend(b, self.session, quick=True, keep_going=keep_going)
        except (aiohttp.ClientError, OSError, TimeoutError, Unanswered) as exc:
            self.note(f"{b.name}: the background eval failed ({type(exc).__name__}); it is tried again later")
            return
        if card is None:
            self.note(f"{b.name}: the background eval stopped: the backend got work")
            self._idle_since.pop(b.name, None)
            return
        try:
            await asyncio.to_thread(save_result, self.db, identity, card, quick=True, now=self.clock())
        except (sqlite3.Error, OSError) as exc:  # a read-only state folder, a full disk, a lock
            self.note(f"{b.name}: the background eval failed: its result could not be stored ({exc}); "
                      "it is tried again once the backend has been idle again")
            self._idle_since.pop(b.name, None)
            return
        self.scores = await asyncio.to_thread(latest_scores, self.db, self.current)
        score = self.scores.get(b.name)
        if score is not None:
            log.info("%s: eval done: overall %.0f%%", b.name, (score.overall or 0) * 100)
