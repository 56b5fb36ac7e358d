"""A cloud that breaks in ways a client cannot read: non-streaming replies cut before or
during their body, empty, garbled or not a message; a cloud that accepts the request and
never answers. Every one is answered locally, as a failure before the first byte."""

from __future__ import annotations

import json
import time

import pytest

from tests.support import procs, rawhttp, wirecheck
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01"}


def gateway(nonstop_factory, cloud, recorder_proc, **cloud_settings):
    return nonstop_factory(nonstop_config(cloud.url, cloud=cloud_settings or None,
                                          local=[{"name": "rec", "url": recorder_proc.url}]))


@pytest.mark.parametrize("mode", ["json_cut_empty", "json_cut_half", "json_empty", "json_garbled", "json_not_message"])
def test_a_broken_json_reply_fails_over(cloud, recorder_proc, nonstop_factory, mode):
    ns = gateway(nonstop_factory, cloud, recorder_proc)
    procs.set_mode(cloud, mode)
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=MESSAGE, headers=HEADERS, timeout=30)
    assert r.status == 200, r.body[:300]
    assert r.headers["x-nonstop-backend"] == "rec"
    assert "bad_response" in r.headers["x-nonstop-failover"], r.headers
    doc = json.loads(r.body)
    assert doc["type"] == "message" and doc["content"]
    # A broken reply is a blip, not a reason to leave the cloud: the next one goes there.
    procs.set_mode(cloud, "ok")
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=MESSAGE, headers=HEADERS, timeout=30)
    assert r.headers["x-nonstop-backend"] == "cloud"


@pytest.mark.parametrize("mode", ["json_cut_half", "json_garbled"])
def test_a_broken_json_reply_through_the_openai_door(cloud, recorder_proc, nonstop_factory, mode):
    ns = gateway(nonstop_factory, cloud, recorder_proc)
    procs.set_mode(cloud, mode)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    r = rawhttp.exchange("POST", ns.url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=30)
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "rec"
    assert json.loads(r.body)["choices"][0]["message"]["content"]


def warm(ns, n: int = 6, stream: bool = True) -> None:
    for _ in range(n):
        r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": stream}, headers=HEADERS, timeout=30)
        assert r.headers["x-nonstop-backend"] == "cloud"


@pytest.mark.parametrize("stream", [True, False])
def test_a_hung_cloud_is_answered_locally_within_15_s_with_the_defaults(cloud, recorder_proc, nonstop_factory, stream):
    ns = gateway(nonstop_factory, cloud, recorder_proc)
    # The cloud starts its streams in milliseconds here: that is what is learned (a
    # non-streamed answer's time is how long it took to write, and is not). A
    # non-streamed request waits that deadline, the 10 s floor, plus its 20 tokens'
    # writing at the slowest pace (2 s).
    warm(ns)
    procs.set_mode(cloud, "hang", hang_for=120)
    started = time.monotonic()
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": stream}, headers=HEADERS, timeout=60)
    took = time.monotonic() - started
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "rec"
    assert "timeout" in r.headers["x-nonstop-failover"]
    assert took < 15, f"the hung cloud held the request for {took:.1f} s"
    if stream:
        assert wirecheck.check_anthropic_stream(r.body).outcome == "ok"
    learned = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["cloud"]["first_byte_deadlines"]
    assert learned and min(learned.values()) == pytest.approx(10.0), learned  # the default floor


def test_a_json_body_that_stalls_after_its_head_is_answered_locally_within_the_deadline(cloud, recorder_proc,
                                                                                       nonstop_factory):
    # The head arrives at once; half the body follows, then nothing (the connection stays
    # open for a minute, and idle_timeout is 120 s).
    ns = gateway(nonstop_factory, cloud, recorder_proc)
    warm(ns)  # the learned first-byte deadline (the 10 s floor) bounds the body behind its head
    procs.set_mode(cloud, "json_stall_body", hang_for=60)
    started = time.monotonic()
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=MESSAGE, headers=HEADERS, timeout=60)
    took = time.monotonic() - started
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "rec", r.body[:300]
    assert "timeout" in r.headers["x-nonstop-failover"]
    assert took < 15, f"the stalled body held the request for {took:.1f} s"
    assert json.loads(r.body)["type"] == "message"


def test_a_slow_but_working_cloud_is_not_abandoned(cloud, recorder_proc, nonstop_factory):
    """Large requests take ~1.5 s to their first byte on this cloud; small ones are fast.
    Scaled down from the real case (a long context taking 20 s): the learned deadline
    for large requests is 4 x 1.5 s, so they wait; a small one on a hung cloud still
    fails over at the floor."""
    ns = gateway(nonstop_factory, cloud, recorder_proc, first_byte_floor=0.5, first_byte_multiplier=4.0,
                 first_byte_timeout=30.0)
    big = {**MESSAGE, "messages": [{"role": "user", "content": "x" * 200_000}], "stream": True}
    procs.set_mode(cloud, "ok", first_byte_per_kb=0.0075)  # ~1.5 s for 200 KB, ~0 for 1 KB
    warm(ns)
    for _ in range(5):
        r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=big, headers=HEADERS, timeout=60)
        assert r.headers["x-nonstop-backend"] == "cloud"
    # Slower than usual today (2.4 s, above the 0.5 s floor): still the cloud's answer.
    procs.set_mode(cloud, "ok", first_byte_per_kb=0.012)
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=big, headers=HEADERS, timeout=60)
    assert r.headers["x-nonstop-backend"] == "cloud", r.headers.get("x-nonstop-failover")
    procs.set_mode(cloud, "hang", hang_for=60)
    started = time.monotonic()
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": True}, headers=HEADERS, timeout=60)
    assert r.headers["x-nonstop-backend"] == "rec" and time.monotonic() - started < 5


def test_a_quota_reset_past_any_calendar_is_not_believed(cloud, recorder_proc, nonstop_factory):
    # A 429 naming a reset in the year 11476 (and a retry-after as long): the cloud is out
    # for the default cooldown, requests are answered locally, and the status still reads.
    ns = gateway(nonstop_factory, cloud, recorder_proc)
    procs.set_mode(cloud, "subscription_limit", reset_in=3e11)
    for path, body in (("/v1/messages", MESSAGE), ("/v1/messages", {**MESSAGE, "stream": True}),
                       ("/v1/chat/completions", MESSAGE), ("/v1/messages/count_tokens", MESSAGE)):
        r = rawhttp.exchange("POST", ns.url + path, json=body, headers=HEADERS, timeout=30)
        assert r.status == 200 and r.headers["x-nonstop-backend"] != "cloud", (path, r.status, r.body[:300])
    status, _, body = rawhttp.request("GET", ns.url + "/_nonstop/api/status")
    cloud_state = json.loads(body)["cloud"]
    assert status == 200 and cloud_state["state"] == "out"
    assert cloud_state["until"] < time.time() + 8 * 86400 + 60


@pytest.mark.parametrize("path,stream", [("/v1/messages", False), ("/v1/messages", True),
                                         ("/v1/chat/completions", False), ("/v1/messages/count_tokens", False)])
def test_a_client_that_accepts_gzip_still_gets_the_clouds_answer(cloud, recorder_proc, nonstop_factory, path, stream):
    # SDKs send Accept-Encoding: gzip, and a CDN in front of the cloud honours it; nonstop
    # reads these replies, so it asks for them as sent.
    ns = gateway(nonstop_factory, cloud, recorder_proc)
    procs.set_mode(cloud, "ok", compress=True)
    r = rawhttp.exchange("POST", ns.url + path, json={**MESSAGE, "stream": stream},
                         headers={**HEADERS, "accept-encoding": "gzip, deflate"}, timeout=30)
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "cloud", (r.headers, r.body[:200])
    assert "content-encoding" not in r.headers
    if not stream:
        assert json.loads(r.body)
    sent = procs.cloud_requests(cloud)[-1]
    assert dict((k.lower(), v) for k, v in sent["headers"])["accept-encoding"] == "identity"


@pytest.mark.parametrize("path,stream", [("/v1/messages", False), ("/v1/messages", True),
                                         ("/v1/chat/completions", False), ("/v1/chat/completions", True),
                                         ("/v1/messages/count_tokens", False)])
def test_a_reply_compressed_against_identity_is_still_the_clouds_answer(cloud, recorder_proc, nonstop_factory,
                                                                         path, stream):
    # A middlebox (a corporate proxy, a CDN) that gzips replies though nonstop asked for
    # identity: the answer is the cloud's all the same, decoded for the client (it did
    # not ask for gzip), not a failover on bytes nonstop could not read.
    ns = gateway(nonstop_factory, cloud, recorder_proc)
    procs.set_mode(cloud, "ok", compress="force")
    r = rawhttp.exchange("POST", ns.url + path, json={**MESSAGE, "stream": stream}, headers=HEADERS, timeout=30)
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "cloud", (r.headers, r.body[:200])
    assert "content-encoding" not in r.headers and "x-nonstop-failover" not in r.headers
    if stream:
        assert b"message_stop" in r.body or b"[DONE]" in r.body, r.body[-300:]
    else:
        assert json.loads(r.body)
    rows = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/requests?limit=1")[2])["requests"]
    assert rows[0]["outcome"] == "ok" and rows[0]["backend"] == "cloud", rows[0]


@pytest.mark.parametrize("stream", [False, True])
def test_a_refusal_compressed_against_identity_is_still_read(cloud, recorder_proc, nonstop_factory, stream):
    # The credit balance's 400 is told from the client's own mistakes by its words: read
    # from a gzipped body, it is still a failover, not a 400 passed to the client.
    ns = gateway(nonstop_factory, cloud, recorder_proc)
    procs.set_mode(cloud, "credit", compress="force")
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": stream}, headers=HEADERS, timeout=30)
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "rec", (r.status, r.headers, r.body[:200])
    assert "credit" in r.headers["x-nonstop-failover"], r.headers


@pytest.mark.parametrize("field", ['"temperature": 1e400', '"metadata": {"user_id": 1e309}',
                                   '"tools": [{"name": "t", "input_schema": {"type": "object", "maximum": -1e999}}]'])
def test_a_number_out_of_range_in_a_skipped_field_is_a_400_when_the_request_goes_local(cloud, recorder_proc,
                                                                                      nonstop_factory, field):
    # The outline skips these fields; the whole parse a local backend needs refuses them.
    ns = gateway(nonstop_factory, cloud, recorder_proc)
    body = b'{"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}], ' \
           + field.encode() + b"}"
    procs.set_mode(cloud, "subscription_limit", reset_in=600)
    for _ in range(2):  # the failover, then straight to local
        status, _, out = rawhttp.request("POST", ns.url + "/v1/messages", body, HEADERS)
        assert status == 400, out[:300]
        doc = json.loads(out)
        assert doc["error"]["type"] == "invalid_request_error" and "not valid JSON" in doc["error"]["message"]
