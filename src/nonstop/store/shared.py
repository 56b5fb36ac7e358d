"""A fleet of nonstop instances that agree through Redis (`[shared] redis_url`).

- **Account states, versioned.** Each account's cloud state lives at
  `<prefix>acct:<account>` with the time it was observed; a Lua script replaces it only
  with a newer observation, so an old "serving" never overwrites a newer "out until 17:00".
  Changes are published on `<prefix>events`; every instance applies the newer ones.
- **One probe per account.** After a deadline, the instance that takes the lease
  `<prefix>probe:<account>` (SET NX with a TTL) probes; the others stay local until the
  result is published.
- **Heartbeats.** Each instance keeps `<prefix>instance:<id>` alive (a TTL of three beats,
  and never less than one beat can take while Redis is slow: `heartbeat_ttl`) with its
  version, address, in-flight requests and per-backend counts.
- **A shared local pool.** Requests in flight per local backend (by URL) are counted in
  `<prefix>inflight:<backend>`, one field per instance, so N gateways in front of one GPU box
  respect its slots and `max_inflight` holds fleet-wide. Fields of instances whose heartbeat
  has expired do not count.

Redis is a helper, never a dependency: if it is down at start-up or lost later, every call
here answers as if this instance were alone (and says so in the log); when it returns, the
states are reconciled (the newer wins) and the fleet carries on. A Redis that answers, but
slower than REQUEST_WAIT, counts as away the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from nonstop.redact import hidden_url

log = logging.getLogger("nonstop")

RETRY_EVERY = 2.0
# How long a request waits for Redis (its probe lease, its local slot). Redis answers in
# well under a millisecond; one slower than this is treated as away for the request (it
# is served as if this instance were alone), and until it answers this fast again, so a
# Redis that answers but slowly cannot add seconds to every local request.
REQUEST_WAIT = 0.25
# The subscription is pinged every heartbeat; heard from (a message or the pong) in none of
# this many, its connection is taken as gone without a word (a crashed host, a partition,
# a load balancer dropping the flow): subscribed again, which reconciles.
SILENT_BEATS = 3
# A request's wait for Redis that ends later than this past its time ended late because
# this process's event loop was held (a large body, a busy moment), not because Redis
# was slow: Redis does not count as away for it.
LOOP_LAG = 0.05
# How long close() waits for each round of cancelling the background tasks.
CLOSE_WAIT = 1.0
# The fleet listing (`nonstop status --fleet`, the dashboard) waits this long for Redis in
# all; what it read by then is shown, said to be partial.
FLEET_TIMEOUT = 3.0
# How long one command may wait for Redis' answer.
SOCKET_TIMEOUT = 2.0
# Commands a beat sends one after the other (the heartbeat, the recount, the clock).
BEAT_COMMANDS = 3
# Account states read from Redis at a time when an instance pulls the fleet's.
PULL_BATCH = 200
STATE_TTL = 8 * 86400  # longer than the longest window (7 days)

# How far in Redis' future a stored observation may be and still be believed (clocks
# drift a little; one written in milliseconds, or by a clock days ahead, is not believed).
FUTURE_SLACK = 300.0

# A key of nonstop's own namespace that holds another type than nonstop keeps there
# (another program's, a hand-made one) is removed by the script that finds it, before it
# reads it: left, it would fail every call on it, and Redis would count as away at each.
_OWN_TYPE = """
local function own_type(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= kind and t ~= 'none' then
    redis.call('DEL', key)
  end
end
"""

# Replace an account's state only with a newer observation; publish what was written. A
# stored observation that is no number, or is further in the future than FUTURE_SLACK
# (on Redis' clock), is unreadable and replaced.
_CAS = _OWN_TYPE + """
own_type(KEYS[1], 'string')
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  if ok and type(doc) == 'table' and type(doc['observed']) == 'number'
      and doc['observed'] <= now + (tonumber(ARGV[4]) or 300) and doc['observed'] > tonumber(ARGV[2]) then
    return cur
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]))
redis.call('PUBLISH', KEYS[2], ARGV[1])
return false
"""

# Count one more request on a backend unless the fleet is at its limit (0: no limit).
# Fields of instances without a live heartbeat are dropped. Returns {taken, total}.
_ACQUIRE = _OWN_TYPE + """
own_type(KEYS[1], 'hash')
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if redis.call('EXISTS', ARGV[3] .. fields[i]) == 1 then
    total = total + math.max(0, tonumber(fields[i + 1]) or 0)
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
local limit = tonumber(ARGV[2])
if limit > 0 and total >= limit then
  return {0, total}
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], 86400)
return {1, total + 1}
"""

# One request fewer on a backend for this instance, never below none (a field lost to a
# restart of Redis, or never counted while it was away, stays away).
_RELEASE_SLOT = _OWN_TYPE + """
own_type(KEYS[1], 'hash')
local v = tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0
if v > 1 then
  return redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 0
"""

# Take a probe lease unless another instance holds it. A key there without an expiry is
# no lease (every lease has one): left, it would keep every instance from probing.
_TAKE_PROBE = _OWN_TYPE + """
own_type(KEYS[1], 'string')
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('DEL', KEYS[1])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then
  return 1
end
return 0
"""

# This instance's requests in flight on a backend, as they are (see _recount).
_SET_COUNT = _OWN_TYPE + """
own_type(KEYS[1], 'hash')
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], 86400)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Release a probe lease only if this instance holds it.
_RELEASE = _OWN_TYPE + """
own_type(KEYS[1], 'string')
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def backend_key(url: str) -> str:
    return hashlib.sha256(url.rstrip("/").lower().encode()).hexdigest()[:16]


class SharedState:
    def __init__(self, url: str, prefix: str, *, apply: Callable[[str, dict[str, Any], float, list[str]], None],
                 info: Callable[[], dict[str, Any]], heartbeat: float = 5.0,
                 on_reconnect: Callable[[], Awaitable[None]] | None = None,
                 held: Callable[[], Mapping[str, int]] | None = None, clock: Callable[[], float] = time.time):
        import redis.asyncio as redis

        self.url = url
        self.client = redis.from_url(url, socket_connect_timeout=1, socket_timeout=SOCKET_TIMEOUT, socket_keepalive=True)
        self.prefix = prefix
        self.pattern = _glob_escape(prefix)  # the prefix inside SCAN's MATCH patterns
        self.channel = prefix + "events"
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.apply = apply
        self.info = info
        self.beat = heartbeat
        self.on_reconnect = on_reconnect
        self.held = held  # this instance's requests in flight per local backend (by URL)
        self.clock = clock  # the clock the states' observations are stamped with
        # Redis' clock minus this machine's: states are ordered on Redis' clock, so a
        # machine whose clock runs ahead cannot make its old observations look newer.
        self.offset = 0.0
        self._lag_said = -math.inf  # when a wait cut short by this process's own load was last logged
        self.available = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set by close(): the background loops end at their next turn even when a cancel
        # does not reach them (one that lands inside the Redis client can be lost there).
        self._closed = False
        self._cas = self.client.register_script(_CAS)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._release = self.client.register_script(_RELEASE)
        self._release_slot = self.client.register_script(_RELEASE_SLOT)
        self._take_probe = self.client.register_script(_TAKE_PROBE)
        self._set_count = self.client.register_script(_SET_COUNT)
        self._queue: asyncio.Queue[tuple[str, bytes, float]] = asyncio.Queue(maxsize=1000)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect if Redis answers; never raises: without it this instance runs alone
        and keeps retrying."""
        await self._check()
        if not self.available:
            log.error("shared state: Redis at %s does not answer; running with this instance's own state "
                      "and retrying every %g s (other instances do not learn what this one sees meanwhile)",
                      hidden_url(self.url), RETRY_EVERY)
        for coro in (self._listen(), self._heartbeats(), self._writer()):
            self._spawn(coro)

    async def close(self) -> None:
        """Stop the background work, and wait (briefly) until it has stopped: a task left
        running past its loop's end holds the shutdown, or the test, that ends it."""
        self._closed = True
        tasks = list(self._tasks)
        for _ in range(3):
            for t in tasks:
                t.cancel()
            tasks = [t for t in tasks if not t.done()]
            if not tasks:
                break
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT)
            tasks = list(pending)
        if tasks:
            log.warning("shared state: %d background task(s) did not stop on close", len(tasks))
        with contextlib.suppress(Exception):
            await self.client.delete(self.prefix + "instance:" + self.instance)
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self) -> bool:
        was = self.available
        try:
            async with asyncio.timeout(REQUEST_WAIT):  # answering slowly is not answering
                await self._clock()
            self.available = True
        except Exception:
            self.available = False
        if self.available and not was and self._tasks:
            log.warning("shared state: Redis at %s answers again; reconciling", hidden_url(self.url))
            if self.on_reconnect is not None:
                self._spawn(self._reconcile(self.on_reconnect))
        elif was and not self.available:
            log.error("shared state: lost Redis at %s; serving with this instance's own state meanwhile", hidden_url(self.url))
        return self.available

    async def _clock(self) -> None:
        """Ask Redis the time (which also tells that it answers): the offset of its clock."""
        before = self.clock()
        seconds, micros = await self.client.time()
        after = self.clock()
        self.offset = seconds + micros / 1e6 - (before + after) / 2

    async def _reconcile(self, reconcile: Callable[[], Awaitable[None]]) -> None:
        """Reconcile with a Redis that answers again; if it goes away meanwhile (it may
        flap), the next check that reaches it reconciles again."""
        try:
            await reconcile()
        except Exception as exc:
            log.error("shared state: reconciling with Redis at %s failed (%s); again when it answers",
                      hidden_url(self.url), type(exc).__name__)
            self.available = False

    async def _safely(self, what: str, op: Awaitable[Any], default: Any, wait: float | None = None) -> Any:
        """`op`, or `default` when Redis fails it (or, with `wait`, takes longer): Redis
        then counts as away until a check reaches it again."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            if wait is None:
                return await op
            async with asyncio.timeout(wait):
                return await op
        except Exception as exc:
            if isinstance(exc, TimeoutError) and wait is not None and loop.time() - start - wait > LOOP_LAG:
                # The wait ended this late because this process was busy (its loop held by
                # other work), not Redis slow: the request goes on alone, Redis stays in use.
                # Said once a minute at most: a loaded gateway would say it per request.
                if loop.time() - self._lag_said >= 60:
                    self._lag_said = loop.time()
                    log.warning("shared state: %s ran out of time while this process was busy for %.2f s; "
                                "Redis still counts as answering", what, loop.time() - start)
                return default
            if self.available:
                why = f"took over {wait:g} s" if isinstance(exc, TimeoutError) and wait is not None else f"failed ({type(exc).__name__})"
                log.error("shared state: %s %s; serving with this instance's own state", what, why)
            self.available = False
            return default

    # --- account states ------------------------------------------------------------------------

    def _doc(self, account: str, snapshot: dict[str, Any], observed: float, aliases: list[str]) -> tuple[bytes, float]:
        """An account's state as the fleet stores it, and its version (on Redis' clock)."""
        version = observed + self.offset
        doc = {"account": account, "snapshot": snapshot, "observed": version, "by": self.instance}
        if aliases:  # the API keys whose organization this is: other instances file them here too
            doc["aliases"] = aliases
        return orjson.dumps(doc), version

    def publish(self, account: str, snapshot: dict[str, Any], observed: float, aliases: list[str] | None = None) -> None:
        """Queue a state change; written in order, newer-wins, in the background."""
        doc, version = self._doc(account, snapshot, observed, aliases or [])
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((account, doc, version))

    async def _writer(self) -> None:
        while not self._closed:
            account, doc, version = await self._queue.get()
            if not self.available:
                continue  # reconciled from the local state when Redis returns
            newer = await self._safely("publishing a state change", self._cas(
                keys=[self.prefix + "acct:" + account, self.channel], args=[doc, version, STATE_TTL, FUTURE_SLACK]), None)
            if newer:
                self._received(newer)

    async def push(self, account: str, snapshot: dict[str, Any], observed: float, aliases: list[str] | None = None) -> None:
        """Write now (reconciliation): the newer of this and the stored one wins."""
        doc, version = self._doc(account, snapshot, observed, aliases or [])
        newer = await self._safely("reconciling", self._cas(
            keys=[self.prefix + "acct:" + account, self.channel], args=[doc, version, STATE_TTL, FUTURE_SLACK]), None)
        if newer:
            self._received(newer)

    async def pull(self) -> None:
        """Apply every account state the fleet holds (newer ones win locally)."""
        keys = [key async for key in self.client.scan_iter(match=self.pattern + "acct:*", count=PULL_BATCH)]
        for i in range(0, len(keys), PULL_BATCH):
            # A batch at a time: one round trip, and its states applied (and saved) together.
            # (MGET answers nil for a key of another type: not a state.)
            for raw in await self.client.mget(keys[i:i + PULL_BATCH]):
                if raw:
                    self._received(raw)

    def _received(self, raw: bytes | str) -> None:
        """Apply another instance's account state. What cannot be read (written by another
        program, or a version that writes it differently) is passed over, never raised:
        one such document must not stop this instance hearing the fleet."""
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc, dict) or doc.get("by") == self.instance or not isinstance(doc.get("snapshot"), dict):
                return
            observed = doc.get("observed")
            version = float(observed) if isinstance(observed, int | float) and not isinstance(observed, bool) else 0.0
            if version - self.offset > self.clock() + FUTURE_SLACK:  # in the future: not believed
                log.warning("shared state: passed over an account state observed %.0f s in the future",
                            version - self.offset - self.clock())
                return
            aliases = doc.get("aliases")
            aliases = [a for a in aliases if isinstance(a, str)] if isinstance(aliases, list) else []
            self.apply(str(doc.get("account", "")), doc["snapshot"], version - self.offset, aliases)
        except Exception as exc:
            log.warning("shared state: passed over an account state nonstop cannot read (%s: %s)",
                        type(exc).__name__, str(exc)[:200])

    async def _listen(self) -> None:
        subscribed = False
        while not self._closed:
            try:
                if not self.available and not await self._check():
                    await asyncio.sleep(RETRY_EVERY)
                    continue
                async with self.client.pubsub() as ps:
                    await ps.subscribe(self.channel)
                    if subscribed and self.on_reconnect is not None:
                        # Subscribed again: the connection was lost, and Redis may be
                        # another (empty) server now, though it never counted as away.
                        await self._reconcile(self.on_reconnect)
                    subscribed = True
                    await self.pull()
                    await self._hear(ps)
            except asyncio.CancelledError:
                raise
            except Exception:  # a lost connection must not stop the gateway
                await self._check()
                await asyncio.sleep(RETRY_EVERY)

    async def _hear(self, ps: Any) -> None:
        """The subscription's messages, until its connection is found gone: a wait for a
        message never ends by itself on a connection that died without a FIN (the read
        has no timeout), so it is pinged every beat and given up when silent."""
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while not self._closed:
            msg = await ps.get_message(timeout=self.beat)
            now = loop.time()
            if msg is not None:
                heard = now
                if msg.get("type") == "message":
                    self._received(msg["data"])
            elif now - heard > SILENT_BEATS * self.beat:
                raise ConnectionError(f"the subscription was silent for {now - heard:.0f} s")
            if now - pinged >= self.beat:
                pinged = now
                await ps.ping()

    # --- probes --------------------------------------------------------------------------------

    def _probe_key(self, account: str) -> str:
        return self.prefix + "probe:" + account

    def _slots_key(self, url: str) -> str:
        """The fleet's requests in flight on a local backend: a field per instance."""
        return self.prefix + "inflight:" + backend_key(url)

    async def acquire_probe(self, account: str, ttl: float) -> bool:
        """True when this instance may probe the account's cloud (always, without Redis)."""
        if not self.available:
            return True
        got = await self._safely("taking the probe lease", self._take_probe(
            keys=[self._probe_key(account)], args=[self.instance, max(1000, int(ttl * 1000))]), 1,
            REQUEST_WAIT)
        return bool(got)

    async def release_probe(self, account: str) -> None:
        # Tried even while Redis counts as away (one slow answer makes it so): a lease left
        # behind would keep every instance, this one too, from probing until it expires.
        await self._safely("releasing the probe lease", self._release(
            keys=[self._probe_key(account)], args=[self.instance]), 0, REQUEST_WAIT)

    # --- the shared local pool -----------------------------------------------------------------

    async def acquire_slot(self, url: str, limit: int) -> tuple[bool, int | None]:
        """(taken, fleet-wide in flight after it) for a local backend; (True, None) alone."""
        if not self.available:
            return True, None
        res = await self._safely("counting a local request", self._acquire(
            keys=[self._slots_key(url)],
            args=[self.instance, limit, self.prefix + "instance:"]), None, REQUEST_WAIT)
        if not res:
            return True, None
        return bool(int(res[0])), int(res[1])

    async def release_slot(self, url: str) -> None:
        if self.available:
            await self._safely("counting a local request", self._release_slot(
                keys=[self._slots_key(url)], args=[self.instance]), 0)

    # --- heartbeats and the fleet ----------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while not self._closed:
            if self.available or await self._check():
                doc = orjson.dumps({**self.info(), "instance": self.instance, "beat": time.time()})
                await self._safely("the heartbeat", self.client.set(
                    self.prefix + "instance:" + self.instance, doc, ex=heartbeat_ttl(self.beat)), None)
                await self._safely("the heartbeat", self._recount(), None)
                await self._safely("the heartbeat", self._clock(), None)
            await asyncio.sleep(self.beat)

    async def _recount(self) -> None:
        """Write this instance's requests in flight per backend as they are: a count a
        release lost (Redis slow or away for a moment) is made good within one beat."""
        if self.held is None:
            return
        pipe = self.client.pipeline(transaction=False)
        for url, n in self.held().items():
            await self._set_count(keys=[self._slots_key(url)], args=[self.instance, max(0, n)],
                                  client=pipe)
        await pipe.execute()

    async def fleet(self) -> dict[str, Any]:
        """Every live instance and every shared account state."""
        if not self.available:
            return {"redis": "unreachable", "instances": [], "accounts": {}}
        instances: list[dict[str, Any]] = []
        accounts: dict[str, Any] = {}
        whole = "ok"
        try:
            async with asyncio.timeout(FLEET_TIMEOUT):
                async for key in self.client.scan_iter(match=self.pattern + "instance:*", count=200):
                    doc = await self._object(key)
                    if doc is not None:
                        instances.append(doc)
                async for key in self.client.scan_iter(match=self.pattern + "acct:*", count=200):
                    doc = await self._object(key)
                    if doc is not None:
                        accounts[str(doc.get("account", ""))] = doc
        except TimeoutError:
            whole = f"partial (no answer within {FLEET_TIMEOUT:g} s)"
        except Exception as exc:  # Redis went away during the listing: say what was read is not all
            whole = f"partial ({type(exc).__name__})"
        return {"redis": whole, "instances": sorted(instances, key=lambda i: str(i.get("instance"))), "accounts": accounts}

    async def _object(self, key: Any) -> dict[str, Any] | None:
        """The JSON object a key holds; None for anything else (another program's value)."""
        try:
            raw = await self.client.get(key)
            doc = orjson.loads(raw) if raw else None
        except Exception as exc:
            if "WRONGTYPE" in str(exc) or isinstance(exc, orjson.JSONDecodeError):
                return None
            raise
        return doc if isinstance(doc, dict) else None


def heartbeat_ttl(beat: float) -> int:
    """Seconds an instance's heartbeat key lives: three beats, and never less than a beat
    can take from one heartbeat to the next while Redis answers each command only at its
    timeout (with `heartbeat = 1`, three beats would let a live instance's key expire, and
    the fleet would stop counting its requests on the shared local backends)."""
    return max(math.ceil(beat * 3), math.ceil(beat + BEAT_COMMANDS * SOCKET_TIMEOUT) + 1)


def _glob_escape(text: str) -> str:
    """`text` matched as it is inside a Redis glob pattern (SCAN's MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
