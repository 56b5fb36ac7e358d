"""The last guard, against the real process: an exception raised inside nonstop at each
stage of an exchange (before the head, as the reply starts, after the head, mid-stream,
after the reply), on each front door, ends the exchange well-formed in the client's own
protocol, with the request id that nonstop logged; uvicorn never sees an unhandled
error, and nonstop keeps serving.

The faults come from tests/support/faults/sitecustomize.py, loaded through PYTHONPATH
and asked for per request with the `x-test-fault` header; nonstop has no switch for them.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import procs, rawhttp, wirecheck
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

FAULTS = procs.ROOT / "tests" / "support" / "faults"
RID = re.compile(r"req_nonstop_[0-9a-f]{24}")
STAMP = re.compile(r"\d\d:\d\d:\d\d nonstop ")
HEADERS = {"x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01"}
MESSAGES = [{"role": "user", "content": "hi"}]
# (door, path, body, stream)
DOORS = {
    "messages-stream": ("anthropic", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": MESSAGES, "stream": True}, True),
    "messages-json": ("anthropic", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": MESSAGES}, False),
    "chat-stream": ("openai", "/v1/chat/completions", {"model": "claude-sonnet-4-5", "messages": MESSAGES, "stream": True}, True),
    "chat-json": ("openai", "/v1/chat/completions", {"model": "claude-sonnet-4-5", "messages": MESSAGES}, False),
    "count_tokens": ("anthropic", "/v1/messages/count_tokens", {"model": "claude-sonnet-4-5", "messages": MESSAGES}, False),
    "passthrough": ("anthropic", "/v1/messages/batches", {"requests": []}, False),
}
LOGGED_PATHS = {"/v1/messages", "/v1/chat/completions"}
STAGES = ["before_head", "at_head", "after_head", "mid_stream", "after_reply"]


def cases() -> Iterator[tuple[str, str]]:
    for name, (_, _, _, stream) in DOORS.items():
        for stage in STAGES:
            if stage == "after_head" and not stream:
                continue  # a JSON reply goes out as its head and its whole body at once
            yield name, stage


class Gateway:
    def __init__(self, cloud: procs.Proc):
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH", "")])),
               "NONSTOP_TEST_FAULTS": "1"}
        self.proc = procs.start_nonstop(nonstop_config(cloud.url), env=env)

    def send(self, name: str, stage: str = "") -> rawhttp.Reply:
        _, path, body, _ = DOORS[name]
        headers = {**HEADERS, **({"x-test-fault": stage} if stage else {})}
        return rawhttp.exchange("POST", self.proc.url + path, json=body, headers=headers, timeout=20)


@pytest.fixture(scope="module")
def gateway(fake_cloud: procs.Proc) -> Iterator[Gateway]:
    rawhttp.request("POST", fake_cloud.url + "/_fake/reset")
    g = Gateway(fake_cloud)
    try:
        yield g
    finally:
        g.proc.stop()


def logged_fault(out: str, rid: str) -> bool:
    """Whether nonstop logged an error for `rid` whose traceback is the injected fault."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if rid in line and " ERROR " in line:
            following = []
            for more in lines[i : i + 200]:
                if more is not line and STAMP.match(more):
                    break
                following.append(more)
            if "InjectedFault" in "\n".join(following):
                return True
    return False


def rows_of(g: Gateway) -> dict[str, int]:
    db = sqlite3.connect(f"file:{Path(g.proc.extra['state_dir']) / 'nonstop.db'}?mode=ro", uri=True)
    try:
        got = db.execute("SELECT request_id, COUNT(*) FROM requests GROUP BY request_id").fetchall()
    finally:
        db.close()
    return dict(got)


def request_id_of(body: bytes) -> str:
    found = set(RID.findall(body.decode("utf-8", "replace")))
    assert len(found) == 1, f"the response should name one request id: {body[-400:]!r}"
    return found.pop()


def exercise(g: Gateway, name: str, stage: str) -> str:
    """One request with a fault; checks what the client got and returns the request id
    the response names ("" when the client got its whole answer)."""
    door, _, _, stream = DOORS[name]
    r = g.send(name, stage)
    ctype = r.headers.get("content-type", "")
    if stage in ("before_head", "at_head", "after_head"):
        # Nothing had gone out: a whole error response in the client's protocol.
        assert r.status == 500, (r.status, r.body[:300])
        v = wirecheck.check(door, r.status, ctype, r.body, stream=False)
        assert v.outcome == "error", v.problem
        assert "InjectedFault" in v.problem
        rid = request_id_of(r.body)
        if door == "anthropic":
            assert json.loads(r.body)["request_id"] == rid
        return rid
    if stage == "mid_stream" and stream:
        # The stream had begun: it ends with an error event (an error chunk and [DONE]).
        assert r.status == 200
        v = wirecheck.check(door, r.status, ctype, r.body, stream=True)
        assert v.outcome == "error", f"{v.problem}: {r.body[-300:]!r}"
        return request_id_of(r.body)
    # The whole answer had gone out (for JSON mid_stream, all but its end): it stands.
    assert r.status in (200, 404), (r.status, r.body[:300])
    if name == "count_tokens":
        assert json.loads(r.body)["input_tokens"] > 0
    else:
        v = wirecheck.check(door, r.status, ctype, r.body, stream=stream)
        assert v.outcome == ("error" if name == "passthrough" else "ok"), v.problem  # passthrough: the cloud's 404
    return ""


@pytest.mark.parametrize("name,stage", list(cases()))
def test_a_fault_at_each_stage_ends_the_exchange_well_formed(gateway, name, stage):
    rid = exercise(gateway, name, stage)
    out = gateway.proc.output()
    if rid:
        assert logged_fault(out, rid), f"no logged error names {rid} with its traceback:\n{out[-3000:]}"
    assert "Exception in ASGI application" not in out
    assert "ASGI callable returned without" not in out
    # nonstop keeps serving, on the same door.
    ok = gateway.send(name)
    assert ok.status in (200, 404), ok.body[:300]


def test_the_log_has_one_row_per_request_and_only_injected_tracebacks(fake_cloud):
    g = Gateway(fake_cloud)
    try:
        answered = {exercise(g, name, stage): f"{name} {stage}" for name, stage in cases()}
        normal = [g.send(name) for name in DOORS for _ in range(2)]
        assert all(r.status in (200, 404) for r in normal)
    finally:
        g.proc.stop()
    out = g.proc.output()
    assert procs.PLANTED_KEY not in out
    assert "Exception in ASGI application" not in out and "ASGI callable returned without" not in out
    blocks = out.split("Traceback (most recent call last):")[1:]
    assert blocks, "the faults were not injected: is the sitecustomize hook on PYTHONPATH?"
    for block in blocks:
        last = next(line for line in block.splitlines() if line and not line.startswith((" ", "\t")))
        assert "InjectedFault" in last, f"a traceback that was not injected:\n{block[:3000]}"
    rows = rows_of(g)
    for rid, what in answered.items():
        if rid and DOORS[what.split()[0]][1] in LOGGED_PATHS:
            assert rows.get(rid) == 1, f"{what}: {rows.get(rid, 0)} log rows for {rid}"
    assert all(n == 1 for n in rows.values()), {k: v for k, v in rows.items() if v != 1}
    logged = sum(1 for what in [*answered.values()] if DOORS[what.split()[0]][1] in LOGGED_PATHS)
    assert len(rows) >= logged + 8, (len(rows), logged)  # and the normal requests on both doors
