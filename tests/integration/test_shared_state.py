"""A team's gateway: three nonstop instances, a real redis-server, two accounts.

Quota is per account: one account out never sends the other to a local model. The fleet
agrees: a state learned on one instance reaches the others, a newer deadline is never
replaced by an older view, and exactly one instance probes after a deadline. Redis is a
helper, not a dependency: down at start-up or lost later, every instance keeps serving,
and the states reconcile when it returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support import procs, rawhttp
from tests.support.config import nonstop_config
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ANN = "sk-ant-api03-ANN-team-key-0123456789abcdefghijklmnopqrstuvwxyz-aaaa"
BOB = "sk-ant-api03-BOB-team-key-0123456789abcdefghijklmnopqrstuvwxyz-bbbb"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer.running() as r:
        yield r


def cfg(cloud_url: str, local_url: str, redis_url: str, **local: object) -> str:
    return nonstop_config(cloud_url, local=[{"name": "rec", "url": local_url, **local}],
                          shared={"redis_url": redis_url, "heartbeat": 0.5})


def post(ns: procs.Proc, key: str = ANN, mode: str = "") -> dict[str, str]:
    body = {"model": "claude-sonnet-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": key, **({"x-fake-mode": mode} if mode else {})}
    status, hdrs, raw = rawhttp.request("POST", ns.url + "/v1/messages", body, headers, timeout=30)
    assert status == 200, raw[:300]
    return hdrs


def status(ns: procs.Proc) -> dict:
    return json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])


def account_states(ns: procs.Proc) -> dict[str, str]:
    return {a["account"]: a["state"] for a in status(ns)["accounts"]}


def wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def cloud_messages(cloud: procs.Proc, since: int = 0) -> list[dict]:
    return [r for r in procs.cloud_requests(cloud)[since:] if r["path"] == "/v1/messages"]


def key_of(request: dict) -> str:
    return next((v for k, v in request["headers"] if k.lower() == "x-api-key"), "")


@pytest.fixture
def fleet(cloud, recorder_proc, nonstop_factory, redis):
    config = cfg(cloud.url, recorder_proc.url, redis.url)
    return [nonstop_factory(config) for _ in range(3)]


def test_one_account_out_does_not_send_the_other_local(cloud, fleet):
    a, b, c = fleet
    procs.set_mode(cloud, "ok")
    assert post(a, ANN)["x-nonstop-backend"] == "cloud"
    assert post(a, BOB)["x-nonstop-backend"] == "cloud"
    # Ann's subscription hits its 5-hour limit on instance A.
    assert post(a, ANN, mode="subscription_limit")["x-nonstop-backend"] == "rec"
    # Bob is still served by the cloud, on every instance.
    for ns in fleet:
        assert post(ns, BOB)["x-nonstop-backend"] == "cloud"
    # Ann is local on B and C without them asking the cloud: A told them.
    assert wait_for(lambda: all("out" in account_states(ns).values() for ns in (b, c)))
    before = len(cloud_messages(cloud))
    assert post(b, ANN)["x-nonstop-backend"] == "rec"
    assert post(c, ANN)["x-nonstop-backend"] == "rec"
    assert not [r for r in cloud_messages(cloud, before) if key_of(r) == ANN]
    # The accounts are labels (salted hashes), never the keys; the same on every instance.
    labels = [sorted(account_states(ns)) for ns in fleet]
    assert labels[0] == labels[1] == labels[2] and len(labels[0]) >= 2
    text = json.dumps(status(a))
    assert ANN not in text and BOB not in text and "sk-ant" not in text


def test_exactly_one_instance_probes_after_a_deadline(cloud, fleet):
    a, b, c = fleet
    procs.set_mode(cloud, "subscription_limit", reset_in=2)
    assert post(a, ANN)["x-nonstop-backend"] == "rec"
    assert wait_for(lambda: all("out" in account_states(ns).values() for ns in fleet))
    # Back, and slow enough that the nine requests overlap the probe even on a loaded machine.
    procs.set_mode(cloud, "ok", first_byte=4.0)
    until = max(e["until"] or 0 for e in status(a)["accounts"])
    wait_until(until, "Ann's reset time")
    before = len(cloud_messages(cloud))
    results: list[str] = []
    threads = [threading.Thread(target=lambda ns=ns: results.append(post(ns, ANN)["x-nonstop-backend"]))
               for ns in fleet for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    probes = [r for r in cloud_messages(cloud, before) if key_of(r) == ANN]
    assert len(probes) == 1, f"{len(probes)} instances probed the cloud"
    assert results.count("cloud") == 1 and len(results) == 9
    # The probe's answer brings every instance back.
    assert wait_for(lambda: all(set(account_states(ns).values()) == {"serving"} for ns in fleet))
    assert all(post(ns, ANN)["x-nonstop-backend"] == "cloud" for ns in fleet)


def test_an_older_view_never_replaces_a_newer_deadline(cloud, fleet, redis):
    a, b, _ = fleet
    procs.set_mode(cloud, "ok")
    post(a, ANN)
    procs.set_mode(cloud, "subscription_limit", reset_in=3600)
    post(b, ANN)  # B learns "out until +1 h"
    assert wait_for(lambda: "out" in account_states(a).values())
    # A publishes an old "serving" for the account (as a slow instance would): rejected.
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis.url)
    key = next(k for k in client.scan_iter("nonstop:acct:*"))
    stored = json.loads(client.get(key))
    stale = {**stored, "snapshot": {**stored["snapshot"], "state": "serving", "until": 0},
             "observed": stored["observed"] - 60, "by": "a-slow-instance"}
    script = client.register_script(_CAS_FROM_SOURCE())
    kept = script(keys=[key, "nonstop:events"], args=[json.dumps(stale), stale["observed"], 3600])
    assert json.loads(kept)["snapshot"]["state"] == "out"
    assert json.loads(client.get(key))["snapshot"]["state"] == "out"
    assert "out" in account_states(a).values()


def _CAS_FROM_SOURCE() -> str:  # noqa: N802
    from nonstop.store.shared import _CAS

    return _CAS


def test_status_fleet_lists_the_instances(fleet):
    a = fleet[0]
    assert wait_for(lambda: len(json.loads(rawhttp.request("GET", a.url + "/_nonstop/api/fleet")[2])["instances"]) == 3)
    r = subprocess.run([sys.executable, "-m", "nonstop", "status", "--fleet", "--config", str(a.extra["config"])],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "3 instances sharing state through Redis" in r.stdout
    assert r.stdout.count(" in flight (") == 3
    assert "label accounts differently" not in r.stdout  # one redis_url, spelled alike: one salt


def test_max_inflight_holds_across_the_fleet(cloud, recorder_proc, nonstop_factory, redis):
    procs.set_mode(cloud, "subscription_limit")
    config = cfg(cloud.url, recorder_proc.url, redis.url, max_inflight=1)
    a, b = nonstop_factory(config), nonstop_factory(config)
    slow = {"model": "claude-sonnet-5", "max_tokens": 20, "messages": [{"role": "user", "content": "[slow] tell me"}]}
    holder = threading.Thread(target=rawhttp.request, args=("POST", a.url + "/v1/messages", slow, {"x-api-key": ANN}),
                              kwargs={"timeout": 30}, daemon=True)
    holder.start()
    assert wait_for(lambda: next(x for x in status(a)["local"])["inflight"] == 1, 5)
    st, hdrs, raw = rawhttp.request("POST", b.url + "/v1/messages",
                                    {**slow, "messages": [{"role": "user", "content": "hi"}]}, {"x-api-key": ANN}, timeout=30)
    assert st == 503, raw[:300]  # the one slot the server has is taken, on the other instance
    assert b"limit of 1 requests in flight across the fleet" in raw
    holder.join(30)

    def served_by_rec() -> bool:
        st, hdrs, _ = rawhttp.request("POST", b.url + "/v1/messages", {**slow, "messages": [{"role": "user", "content": "hi"}]},
                                      {"x-api-key": ANN}, timeout=30)
        return st == 200 and hdrs["x-nonstop-backend"] == "rec"

    assert wait_for(served_by_rec, 10)  # the slot is free again once A's request ended


def test_redis_down_at_start_up_then_back(cloud, recorder_proc, nonstop_factory):
    redis = RedisServer()  # not started yet
    config = cfg(cloud.url, recorder_proc.url, redis.url)
    a = nonstop_factory(config, timeout=30)
    b = nonstop_factory(config, timeout=30)
    try:
        procs.set_mode(cloud, "ok")
        assert post(a, ANN)["x-nonstop-backend"] == "cloud"  # serving without Redis
        assert "unreachable" in status(a)["fleet"]
        procs.set_mode(cloud, "subscription_limit", reset_in=3600)
        assert post(a, ANN)["x-nonstop-backend"] == "rec"  # learned alone, meanwhile
        redis.start()
        # A pushes what it learned when Redis answers; B takes it.
        assert wait_for(lambda: "out" in account_states(b).values(), 20)
        assert "connected" in status(a)["fleet"]
    finally:
        redis.stop()
    assert "does not answer" in a.output() and "answers again" in a.output()


def test_redis_lost_under_load_keeps_serving_and_reconciles(cloud, fleet, redis):
    a, b, _ = fleet
    procs.set_mode(cloud, "ok")
    stop = threading.Event()
    failures: list[str] = []

    def load(ns: procs.Proc) -> None:
        while not stop.is_set():
            try:
                post(ns, BOB)
            except AssertionError as exc:
                failures.append(str(exc))

    workers = [threading.Thread(target=load, args=(ns,), daemon=True) for ns in fleet]
    for w in workers:
        w.start()
    time.sleep(0.5)
    redis.stop()
    time.sleep(1.0)
    assert post(a, ANN, mode="subscription_limit")["x-nonstop-backend"] == "rec"  # learned while Redis is gone
    redis.start()
    assert wait_for(lambda: "out" in account_states(b).values(), 20), "the state learned without Redis did not reach B"
    stop.set()
    for w in workers:
        w.join(10)
    assert not failures, failures[:3]
