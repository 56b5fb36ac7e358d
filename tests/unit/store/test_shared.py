"""The fleet's Redis client (store/shared.py): what it does when Redis flaps, and, against
a real redis-server, what the fleet keeps true when Redis restarts or stalls, when other
programs or versions write under nonstop's keys, and when the machines' clocks differ."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from nonstop.config.parse import parse_config
from nonstop.routing.accounts import ORG_HEADER
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.routing.view import CloudState
from nonstop.server.cloud_state import CloudStates, salt_fingerprint
from nonstop.server.events import EventBus
from nonstop.server.metrics import Metrics
from nonstop.server.runtime import Runtime
from nonstop.store import shared as shared_module
from nonstop.store.shared import BEAT_COMMANDS, SOCKET_TIMEOUT, SharedState, heartbeat_ttl

redis_asyncio = pytest.importorskip("redis.asyncio")


async def test_a_reconcile_that_meets_a_lost_redis_is_logged_and_tried_again(monkeypatch, caplog):
    calls: list[int] = []

    async def reconcile() -> None:
        calls.append(1)
        raise ConnectionError("Error while reading from 127.0.0.1:6379 : (104, 'Connection reset by peer')")

    shared = SharedState("redis://127.0.0.1:1/0", "test:", apply=lambda *a: None, info=dict, on_reconnect=reconcile)

    async def redis_time() -> tuple[int, int]:  # what _check asks: Redis' clock (it answers)
        return 1_800_000_000, 0

    monkeypatch.setattr(shared.client, "time", redis_time)
    shared._tasks.add(asyncio.ensure_future(asyncio.sleep(3600)))  # started: it reconciles on return
    try:
        assert await shared._check() is True  # Redis answers again: a reconcile is spawned
        spawned = [t for t in shared._tasks if not t.get_coro().__qualname__.startswith("sleep")]
        await asyncio.gather(*spawned)  # it must not end in an exception (logged as a traceback)
        assert calls == [1] and shared.available is False
        assert any("reconciling with Redis" in r.getMessage() for r in caplog.records)
        assert await shared._check() is True and len(calls) == 1  # the next check reconciles again
        await asyncio.gather(*[t for t in shared._tasks if not t.get_coro().__qualname__.startswith("sleep")])
        assert calls == [1, 1]
    finally:
        for t in shared._tasks:
            t.cancel()
        await shared.client.aclose()


PREFIX = "fleet:"
GPU = "http://gpu-1.internal:8000"
ANN = "sk-ant-api03-ANN-team-key-0123456789abcdefghijklmnopqrstuvwxyz-aaaa"


async def _wait(pred: Callable[[], Any], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred() if asyncio.iscoroutinefunction(pred) else pred():
            return True
        await asyncio.sleep(0.02)
    return False


async def _shared(url: str, heartbeat: float = 0.5, held: Callable[[], dict[str, int]] | None = None) -> SharedState:
    s = SharedState(url, PREFIX, apply=lambda *a: None, info=lambda: {"version": "test"}, heartbeat=heartbeat, held=held)
    await s.start()
    return s


async def _beating(url: str, *instances: SharedState) -> None:
    """Until every instance's heartbeat key is in Redis and each sees Redis."""
    ctl = redis_asyncio.from_url(url)
    try:
        async def ok() -> bool:
            for s in instances:
                if not s.available:
                    await s._check()
            alive = [await ctl.exists(PREFIX + "instance:" + s.instance) for s in instances]
            return all(alive) and all(s.available for s in instances)

        assert await _wait(ok, 10), "the instances did not beat"
    finally:
        await ctl.aclose()


async def _clouds(tmp_path: Path, url: str, name: str, clock: Callable[[], float] = time.time) -> CloudStates:
    cfg = parse_config({"state_dir": str(tmp_path / name), "log": {"enabled": False},
                        "shared": {"redis_url": url, "key_prefix": PREFIX, "heartbeat": 0.5,
                                   "account_salt": "one-salt-for-the-fleet"}})
    clouds = CloudStates(cfg, clock=clock, metrics=Metrics(), bus=EventBus(), store=None, spawn=asyncio.ensure_future)
    await clouds.start(lambda: {"version": "test"})
    assert clouds.shared is not None
    return clouds


def _usage_limit(until: float) -> Verdict:
    return Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, until, "5-hour limit reached", 429)


# --- the shared local pool ------------------------------------------------------------------------


async def test_a_slot_released_after_a_redis_restart_does_not_let_the_fleet_pass_max_inflight(redis_server):
    """`max_inflight` holds fleet-wide. A request in flight when Redis restarts (its keys
    gone) ends with a release that finds no count: it counts nothing, rather than leaving
    -1 for the instance that would let one request more onto a one-slot GPU box."""
    a = await _shared(redis_server.url)
    b = await _shared(redis_server.url)
    try:
        await _beating(redis_server.url, a, b)
        assert await a.acquire_slot(GPU, 1) == (True, 1)  # A serves a request on the GPU box
        redis_server.restart()  # Redis restarts meanwhile: every key is gone
        await _beating(redis_server.url, a, b)
        await a.release_slot(GPU)  # A's request ends
        first = await b.acquire_slot(GPU, 1)  # B serves one request: the box's only slot
        second = await b.acquire_slot(GPU, 1)  # another request on B while that one runs
        assert first[0] is True
        assert second[0] is False, (
            f"max_inflight = 1 but the fleet admitted a second request (count {second[1]}): "
            "A's release after the restart left a -1 in the pool")
    finally:
        await a.close()
        await b.close()


async def test_a_release_lost_to_a_slow_redis_is_made_good_by_the_next_heartbeat(redis_server):
    """A release that Redis does not take (slower than the socket timeout for a moment: a
    failover, a CLIENT PAUSE) is made good within one heartbeat, which writes the
    instance's requests in flight as they are: a backend with one slot is not refused
    fleet-wide for a request that has ended."""
    held = {GPU: 0}
    a = await _shared(redis_server.url, heartbeat=0.5, held=lambda: held)
    b = await _shared(redis_server.url, heartbeat=0.5)
    ctl = redis_asyncio.from_url(redis_server.url)
    try:
        await _beating(redis_server.url, a, b)
        held[GPU] = 1
        assert await a.acquire_slot(GPU, 1) == (True, 1)
        await ctl.execute_command("CLIENT", "PAUSE", 2500, "ALL")  # Redis stalls for 2.5 s
        held[GPU] = 0
        await a.release_slot(GPU)  # A's request ends during the stall: times out after 2 s
        await asyncio.sleep(0.8)  # Redis answers again
        await _beating(redis_server.url, a, b)
        await asyncio.sleep(1.2)  # a heartbeat of A's writes its count as it is
        held = await ctl.hget(PREFIX + "inflight:" + _backend_key(GPU), a.instance)
        taken, total = await b.acquire_slot(GPU, 1)
        assert taken, (
            f"nothing is in flight on the GPU box, yet the fleet counts {total} (A's field is {held!r}): "
            "the release lost to the stall is never made good")
    finally:
        await ctl.aclose()
        await a.close()
        await b.close()


async def test_a_redis_that_answers_slowly_costs_a_local_request_at_most_the_request_wait(redis_server, caplog):
    """A Redis that answers, but slowly (a stall under the socket timeout, a swapping host),
    counts as away: a request waits at most REQUEST_WAIT for its slot and is then served
    as if this instance were alone; the requests after it do not wait at all, and the
    fleet comes back once Redis answers fast again."""
    from nonstop.store.shared import REQUEST_WAIT

    held = {GPU: 0}
    a = await _shared(redis_server.url, heartbeat=0.5, held=lambda: held)
    ctl = redis_asyncio.from_url(redis_server.url)
    try:
        await _beating(redis_server.url, a)
        await ctl.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # every answer ~1.5 s late (under the 2 s timeout)
        t0 = time.monotonic()
        assert await a.acquire_slot(GPU, 1) == (True, None)  # served as if alone
        first = time.monotonic() - t0
        assert first < REQUEST_WAIT + 0.2, f"a local request waited {first:.2f} s for a slow Redis"
        assert not a.available
        assert any(f"took over {REQUEST_WAIT:g} s" in r.getMessage() for r in caplog.records)
        t0 = time.monotonic()
        assert await a.acquire_slot(GPU, 1) == (True, None)
        assert await a.acquire_probe("acct", 5.0) is True
        assert time.monotonic() - t0 < 0.05, "the requests after the first waited for Redis too"
        assert await _wait(lambda: a.available, 6), "the fleet did not come back once Redis answered fast again"
        assert await a.acquire_slot(GPU, 1) == (True, 1)
    finally:
        await ctl.aclose()
        await a.close()


async def test_while_redis_is_too_slow_a_backends_max_inflight_still_holds_on_this_instance(redis_server, tmp_path):
    """A request served as if alone (Redis too slow to count it) is still counted here: a
    one-slot backend takes no second request from this instance meanwhile, and the slot
    comes back when the request ends."""
    local = {"name": "gpu-1", "url": GPU, "api": "openai", "max_inflight": 1}
    async with redis_asyncio.from_url(redis_server.url) as ctl, _runtime_in_fleet(redis_server.url, tmp_path, local) as rt:
        assert await _wait(lambda: rt.clouds.shared.available, 5)
        [b] = rt.locals
        assert await rt.take_slot(b) is None  # counted fleet-wide
        b.state.inflight += 1  # as the local backend counts the request it serves
        await ctl.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        second = await rt.take_slot(b)  # Redis too slow to count it
        assert second is not None and second.rule == "load", f"a one-slot backend took a second request: {second}"
        b.state.inflight -= 1
        rt.give_slot(b)
        assert await rt.take_slot(b) is None  # the slot is back, Redis or not


@contextlib.asynccontextmanager
async def _runtime_in_fleet(url: str, tmp_path: Path, local: dict[str, Any]) -> AsyncIterator[Runtime]:
    """A gateway's runtime with one local backend, in the fleet of the Redis at `url`."""
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "local": [local],
                        "shared": {"redis_url": url, "key_prefix": PREFIX, "heartbeat": 0.5,
                                   "account_salt": "one-salt-for-the-fleet"}})
    rt = Runtime(cfg)
    rt.local_session = aiohttp.ClientSession()
    try:
        rt.set_local_backends(list(cfg.local))
        await rt.clouds.start(rt.instance_info)
        yield rt
    finally:
        await rt.clouds.stop()
        await rt.local_session.close()


def _backend_key(url: str) -> str:
    from nonstop.store.shared import backend_key

    return backend_key(url)


# --- what other writers leave under nonstop's keys --------------------------------------------


def _newer_version_doc(account: str, observed: float) -> bytes:
    """An account state as a newer (or older) nonstop might write it: the same shape,
    with `since` as an ISO date instead of epoch seconds."""
    return orjson.dumps({"account": account, "observed": observed, "by": "gw-9-newer-version",
                         "snapshot": {"state": "out", "until": observed + 3600, "reason": "subscription_limit",
                                      "detail": "5-hour limit", "since": "2026-12-01T10:00:00Z",
                                      "observed": observed}})


async def test_one_malformed_account_doc_does_not_make_an_instance_deaf_to_the_fleet(redis_server, tmp_path):
    """An account state that another version wrote differently (here `since` as an ISO
    date) is passed over: the instance still subscribes, pulls the rest and hears every
    later change (Ann's limit seen on A reaches B)."""
    ctl = redis_asyncio.from_url(redis_server.url)
    await ctl.set(PREFIX + "acct:key:000000legacy", _newer_version_doc("key:000000legacy", time.time()))
    a = await _clouds(tmp_path, redis_server.url, "a")
    b = await _clouds(tmp_path, redis_server.url, "b")
    try:
        await asyncio.sleep(0.3)
        ann = a.account_for(ANN)
        assert b.account_for(ANN) == ann
        a.state(ann).record_failure(_usage_limit(time.time() + 3600))  # Ann's limit, seen on A
        assert a.view(ann).state is CloudState.OUT
        learned = await _wait(lambda: b.view(ann).state is CloudState.OUT, 1.5)
        assert learned, "B never heard of Ann's limit: one malformed doc in Redis keeps B's listener from ever running"
    finally:
        await ctl.aclose()
        await a.stop()
        await b.stop()


async def test_a_malformed_newer_doc_returned_by_the_compare_and_set_does_not_stop_the_writer(redis_server, tmp_path):
    """When the compare-and-set hands back a newer state that cannot be read, the writer
    goes on: the instance's later changes still reach Redis for the rest of the fleet."""
    ctl = redis_asyncio.from_url(redis_server.url)
    a = await _clouds(tmp_path, redis_server.url, "a")
    tasks = list(a.shared._tasks)  # the writer's exception is read below, not left to the collector
    try:
        await asyncio.sleep(0.2)
        other = "key:0123456789ab"
        await ctl.set(PREFIX + "acct:" + other, _newer_version_doc(other, time.time() + 30))
        # A sees a limit on that account; the stored doc is newer: A applies it, and fails.
        a.state(other).record_failure(_usage_limit(time.time() + 600))
        await asyncio.sleep(0.3)
        # Later, A sees Ann's limit: it must reach Redis for the others.
        ann = a.account_for(ANN)
        a.state(ann).record_failure(_usage_limit(time.time() + 3600))
        stored = await _wait(_exists(ctl, PREFIX + "acct:" + ann), 1.5)
        assert stored, "A's writer task died on the malformed doc: no later state change of A ever reaches Redis"
    finally:
        await ctl.aclose()
        await a.stop()
        _retrieve(tasks)


def _retrieve(tasks: list[asyncio.Task[Any]]) -> None:
    """Read the exceptions of background tasks that died, so that asyncio does not log
    them from a finalizer in the middle of pytest's report (which trips CPython 3.11's AST
    recursion check)."""
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()
    gc.collect()


def _exists(ctl: Any, key: str) -> Callable[[], Any]:
    async def check() -> bool:
        return bool(await ctl.exists(key))

    return check


# --- versions and clocks ----------------------------------------------------------------------


async def test_an_instance_whose_clock_runs_ahead_does_not_override_newer_states_of_the_others(redis_server, tmp_path):
    """States are ordered on Redis' clock, not each machine's: an instance whose clock
    runs 30 s ahead does not make its older "out" outweigh another instance's newer
    "serving" (the cloud answered B's probe; the fleet keeps the cloud)."""
    real = time.time
    later = [0.0]
    a = await _clouds(tmp_path, redis_server.url, "a", clock=lambda: real() + 30.0)  # 30 s ahead
    b = await _clouds(tmp_path, redis_server.url, "b", clock=lambda: real() + later[0])
    try:
        await asyncio.sleep(0.3)
        ann = a.account_for(ANN)
        b.account_for(ANN)
        a.state(ann).record_failure(Verdict(FailureKind.THROTTLE, True, real() + 5, "rate limited", 429))
        assert await _wait(lambda: b.view(ann).state is CloudState.OUT, 3)
        later[0] = 10.0  # ten seconds later, the throttle has passed: B probes and the cloud answers
        q = b.state(ann)
        assert b.view(ann).probe_due
        q.begin_probe()
        q.record_success()
        assert q.state is CloudState.SERVING
        await asyncio.sleep(0.5)
        assert b.view(ann).state is CloudState.SERVING, (
            f"B's fresh 'serving' was replaced by A's older 'out' ({b.view(ann).state.value}): "
            "A's clock is ahead, so its stale observation counts as newer")
    finally:
        await a.stop()
        await b.stop()


# --- accounts ------------------------------------------------------------------------------------


async def test_an_organizations_limit_reaches_an_instance_that_has_not_met_the_organization(redis_server, tmp_path):
    """The API keys an organization's state is filed under travel with it: B, which has
    not had a cloud reply for Ann yet, files her key under the organization as soon as
    A publishes it, and so keeps her requests off a cloud that refused her on A."""
    a = await _clouds(tmp_path, redis_server.url, "a")
    b = await _clouds(tmp_path, redis_server.url, "b")
    try:
        await asyncio.sleep(0.3)
        key = a.account_for(ANN)
        org_headers = {ORG_HEADER: "7f3e2d1c-team-4000-8000-000000000001",
                       "anthropic-ratelimit-unified-status": "allowed"}
        a.observe(key, org_headers)  # an earlier cloud reply for Ann on A named her organization
        org = a.account_for(ANN)
        assert org.startswith("org:")
        a.state(org).record_failure(_usage_limit(time.time() + 3600))  # later: Ann's 5-hour limit, on A
        await asyncio.sleep(0.5)
        on_b = b.account_for(ANN)  # Ann's next request lands on B
        assert b.view(on_b).state is CloudState.OUT, (
            f"B files Ann under {on_b!r}, A published her limit under {org!r}: B sends her request to the cloud")
    finally:
        await a.stop()
        await b.stop()


# --- the fleet listing ---------------------------------------------------------------------------


async def test_a_foreign_value_under_an_instance_key_does_not_break_the_fleet_listing(redis_server, tmp_path):
    """A value under a heartbeat key that is not an object (another program sharing the
    prefix) is left out of the fleet listing, which still lists every instance."""
    ctl = redis_asyncio.from_url(redis_server.url)
    a = await _clouds(tmp_path, redis_server.url, "a")
    try:
        await ctl.set(PREFIX + "instance:stray", b"[1, 2, 3]", ex=60)
        await asyncio.sleep(0.2)
        doc = await a.fleet()
        assert doc["redis"] == "ok"
        assert any(i.get("instance") == a.shared.instance for i in doc["instances"] if isinstance(i, dict))
    finally:
        await ctl.aclose()
        await a.stop()


# --- secrets ----------------------------------------------------------------------------------------


async def test_a_backend_password_in_its_url_is_not_written_to_redis(redis_server, tmp_path):
    """A backend URL with basic auth (`http://user:pass@gpu-1...`) is never written to
    Redis: the heartbeat names backends by name, and anyone with Redis or the fleet page
    reads no password."""
    url = "http://nonstop:s3cret-pass@gpu-1.internal:8000"
    local = {"name": "gpu-1", "url": url, "api": "openai"}
    async with redis_asyncio.from_url(redis_server.url) as ctl, _runtime_in_fleet(redis_server.url, tmp_path, local) as rt:
        key = PREFIX + "instance:" + rt.clouds.shared.instance
        assert await _wait(_exists(ctl, key), 5)
        beat = (await ctl.get(key)).decode()
        assert '"gpu-1"' in beat  # the backend by its name
        assert "s3cret-pass" not in beat and "gpu-1.internal" not in beat, f"the backend's password is in Redis in clear: {beat}"


# --- the key prefix ---------------------------------------------------------------------------------


async def test_a_key_prefix_with_glob_characters_still_finds_the_fleets_keys(redis_server):
    """A `key_prefix` with glob characters (`nonstop[team-a]:`) is matched as it is in
    SCAN's patterns: a starting instance pulls the fleet's states, and the fleet listing
    finds its instances and accounts (and never another fleet's keys)."""
    prefix = "nonstop[team-a]:"
    a = SharedState(redis_server.url, prefix, apply=lambda *x: None, info=lambda: {"version": "test"}, heartbeat=0.5)
    await a.start()
    try:
        await asyncio.sleep(0.2)
        a.publish("key:0123456789ab", {"state": "out", "until": time.time() + 60}, time.time())
        await asyncio.sleep(0.2)
        doc = await a.fleet()
        assert [i.get("instance") for i in doc["instances"]] == [a.instance]
        assert list(doc["accounts"]) == ["key:0123456789ab"]
    finally:
        await a.close()


async def test_a_slot_is_given_back_under_the_url_it_was_taken_under(redis_server, tmp_path: Path) -> None:
    """The embedded server can move to another port while a request holds one of its
    slots: the slot is given back where it was counted (in this instance and in Redis),
    and the new URL's count is not given a slot it never had."""
    from nonstop.server.pipeline import Pipeline

    local = {"name": "embedded", "url": GPU, "api": "openai", "max_inflight": 2}
    async with redis_asyncio.from_url(redis_server.url) as ctl, _runtime_in_fleet(redis_server.url, tmp_path, local) as rt:
        assert await _wait(lambda: rt.clouds.shared.available, 5)
        [b] = rt.locals
        moved = "http://127.0.0.1:1"

        async def send() -> Verdict:
            assert rt.held_slots()[GPU] == 1
            b.moved_to(moved)  # llama-server restarted on a free port meanwhile
            return Verdict(FailureKind.NETWORK, True, None, "the server went away")

        await Pipeline(rt)._on_local(b, send)
        assert rt._held.get(GPU) == 0 and rt._held.get(moved, 0) == 0, rt._held

        async def counted(url: str) -> int:
            fields = await ctl.hgetall(PREFIX + "inflight:" + _backend_key(url))
            return sum(int(v) for v in fields.values())

        async def given_back() -> bool:
            return await counted(GPU) == 0

        assert await _wait(given_back, 5), "the old URL's fleet count was not given back"
        assert await counted(moved) == 0


@pytest.mark.parametrize("url", ["redis://:pw-in-userinfo-123@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=pw-in-query-456"])
async def test_a_redis_password_never_reaches_the_log(url, caplog):
    """redis-py takes a password in the URL's user part or in its query: neither is logged."""
    shared = SharedState(url, "test:", apply=lambda *a: None, info=dict)
    try:
        await shared.start()
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "does not answer" in text and "127.0.0.1:1" in text
        assert "pw-in-" not in text
    finally:
        await shared.close()


async def test_a_busy_moment_of_this_process_does_not_count_as_a_slow_redis(redis_server, caplog):
    """Another task holding the event loop past the request's wait (a large body parsed, a
    tokenizer): the wait ends late, the request goes on alone, and Redis stays in use (it
    was not slow): the next request is counted fleet-wide, and the probe lease still holds."""
    import time as clock

    a = await _shared(redis_server.url, heartbeat=30)
    try:
        assert await _wait(lambda: a.available, 3)

        async def busy() -> None:
            await asyncio.sleep(0)
            clock.sleep(0.35)  # longer than REQUEST_WAIT, the loop held

        hog = asyncio.ensure_future(busy())
        assert await a.acquire_slot(GPU, 4) in ((True, None), (True, 1))
        await hog
        assert a.available, "a busy moment of this process switched the fleet off"
        assert not any("took over" in r.getMessage() for r in caplog.records)
        assert (await a.acquire_slot(GPU, 4))[1] is not None  # counted across the fleet
        assert await a.acquire_probe("acct", 5.0) is True
        assert await a.acquire_probe("acct", 5.0) is False  # the lease holds: one prober
    finally:
        await a.close()


async def test_each_heartbeat_carries_a_mark_of_the_account_labels_salt_and_never_the_salt(redis_server, tmp_path):
    local = {"name": "gpu-1", "url": "http://127.0.0.1:9", "api": "openai"}
    async with redis_asyncio.from_url(redis_server.url) as ctl, _runtime_in_fleet(redis_server.url, tmp_path, local) as rt:
        key = PREFIX + "instance:" + rt.clouds.shared.instance
        assert await _wait(_exists(ctl, key), 5)
        beat = orjson.loads(await ctl.get(key))
        assert beat["labels"] == salt_fingerprint(b"one-salt-for-the-fleet") and len(beat["labels"]) == 8
        assert "one-salt-for-the-fleet" not in orjson.dumps(beat).decode()
        assert salt_fingerprint(b"another-salt") != beat["labels"]


async def test_a_fleet_listing_that_redis_fails_during_says_it_is_partial(redis_server, tmp_path, monkeypatch):
    a = await _clouds(tmp_path, redis_server.url, "a")
    try:
        await asyncio.sleep(0.2)
        assert a.shared is not None
        real = a.shared._object
        calls = 0

        async def fails_on_the_second(key: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise redis_asyncio.ConnectionError("Connection closed by server.")
            return await real(key)

        a.shared.publish("key:0123456789ab", {"state": "out", "until": time.time() + 60}, time.time())
        await asyncio.sleep(0.2)
        monkeypatch.setattr(a.shared, "_object", fails_on_the_second)
        doc = await a.fleet()
        assert doc["redis"] == "partial (ConnectionError)" and len(doc["instances"]) == 1 and doc["accounts"] == {}

        async def stalls(key: Any) -> Any:
            await asyncio.sleep(60)

        monkeypatch.setattr(a.shared, "_object", stalls)
        monkeypatch.setattr(shared_module, "FLEET_TIMEOUT", 0.2)
        t0 = time.monotonic()
        doc = await a.fleet()
        assert doc["redis"].startswith("partial (no answer within") and time.monotonic() - t0 < 2
    finally:
        await a.stop()


async def test_a_fleet_without_an_account_salt_is_warned_at_start(redis_server, tmp_path, caplog):
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                        "shared": {"redis_url": redis_server.url, "key_prefix": PREFIX, "heartbeat": 0.5}})
    clouds = CloudStates(cfg, clock=time.time, metrics=Metrics(), bus=EventBus(), store=None, spawn=asyncio.ensure_future)
    await clouds.start(lambda: {"version": "test"})
    try:
        assert any("account_salt is not set" in r.getMessage() for r in caplog.records)
    finally:
        await clouds.stop()
    caplog.clear()
    salted = await _clouds(tmp_path, redis_server.url, "b")
    await salted.stop()
    assert not any("account_salt" in r.getMessage() for r in caplog.records)


async def test_an_instance_joining_a_fleet_of_many_accounts_pulls_them_in_batches(redis_server, tmp_path, monkeypatch):
    """1,000 account states (and a key of another type among them): a starting instance
    reads them a batch at a time and saves its state once per batch, not once per
    account (which read every state again for each: seconds of the event loop)."""
    now = time.time()
    async with redis_asyncio.from_url(redis_server.url) as ctl:
        pipe = ctl.pipeline()
        for i in range(1000):
            account = f"key:{i:012x}"
            pipe.set(PREFIX + "acct:" + account, orjson.dumps({
                "account": account, "observed": now, "by": "gw-other",
                "snapshot": {"state": "out", "until": now + 3600, "reason": "subscription_limit",
                             "detail": "5-hour limit", "since": now, "observed": now}}))
        pipe.rpush(PREFIX + "acct:key:notastate000", b"x")
        await pipe.execute()
    saves = 0
    real = CloudStates._save

    def counted(self: CloudStates) -> None:
        nonlocal saves
        saves += 1
        real(self)

    monkeypatch.setattr(CloudStates, "_save", counted)
    a = await _clouds(tmp_path, redis_server.url, "a")
    try:
        assert await _wait(lambda: len(a.accounts.states) >= 1000, 5)
        await asyncio.sleep(0.1)
        assert all(a.view(f"key:{i:012x}").state is CloudState.OUT for i in range(1000))
        assert saves <= 10, f"{saves} saves for 1,000 accounts pulled"
    finally:
        await a.stop()


async def test_a_heartbeat_outlives_a_beat_at_redis_slowest(redis_server, tmp_path):
    """With a short heartbeat, the key lives at least as long as one beat can take while
    each of its commands waits out its timeout: a live instance never drops out of the
    fleet's counts between two beats."""
    assert heartbeat_ttl(5) == 15
    for beat in (0.5, 1, 2):
        assert heartbeat_ttl(beat) > beat + BEAT_COMMANDS * SOCKET_TIMEOUT
    local = {"name": "gpu-1", "url": "http://127.0.0.1:9", "api": "openai"}
    async with redis_asyncio.from_url(redis_server.url) as ctl, _runtime_in_fleet(redis_server.url, tmp_path, local) as rt:
        key = PREFIX + "instance:" + rt.clouds.shared.instance
        assert await _wait(_exists(ctl, key), 5)
        assert await ctl.ttl(key) > 0.5 + BEAT_COMMANDS * SOCKET_TIMEOUT  # heartbeat = 0.5
