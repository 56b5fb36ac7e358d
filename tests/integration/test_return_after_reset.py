"""Coming back to the cloud without breaking the session.

The fake cloud enforces the real API's thinking rule: with `thinking` on, a request whose
last turn carries tool results needs the assistant turn before it to start with a
thinking block, which no local model can produce. The session: the cloud is out, a local
model answers a turn with a tool call, the quota resets while the tool runs.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support import procs, rawhttp
from tests.support.config import nonstop_config
from tests.support.fake_cloud import thinking_rule_violation

pytestmark = pytest.mark.integration

HEADERS = {"x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01",
           "x-claude-code-session-id": "return-after-reset"}
TOOLS = [{"name": "Bash", "description": "Run a shell command", "input_schema": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}]
BASE = {"model": "claude-opus-4-5", "max_tokens": 200, "thinking": {"type": "adaptive"}, "tools": TOOLS, "stream": True}


def post(ns, messages: list[dict], headers: dict[str, str] | None = None) -> tuple[rawhttp.Reply, list[tuple[str, dict]]]:
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**BASE, "messages": messages},
                         headers={**HEADERS, **(headers or {})}, timeout=60)
    events = [(name, json.loads(data)) for name, data in _events(r.body)]
    return r, events


def _events(body: bytes) -> list[tuple[str, str]]:
    out = []
    for block in body.decode().split("\n\n"):
        lines = block.strip().splitlines()
        name = next((ln[6:].strip() for ln in lines if ln.startswith("event:")), "")
        data = "".join(ln[5:].strip() for ln in lines if ln.startswith("data:"))
        if name and data:
            out.append((name, data))
    return out


def assistant_turn(events: list[tuple[str, dict]]) -> dict:
    """The assistant message a client builds from the stream."""
    blocks: dict[int, dict] = {}
    for name, data in events:
        if name == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
            if blocks[data["index"]]["type"] == "tool_use":
                blocks[data["index"]]["_json"] = ""
        elif name == "content_block_delta":
            d, b = data["delta"], blocks[data["index"]]
            if d["type"] == "text_delta":
                b["text"] = b.get("text", "") + d["text"]
            elif d["type"] == "input_json_delta":
                b["_json"] += d["partial_json"]
    content = []
    for _, b in sorted(blocks.items()):
        if b["type"] == "tool_use":
            b["input"] = json.loads(b.pop("_json") or "{}")
        content.append(b)
    return {"role": "assistant", "content": content}


def cloud_got(cloud, since: int) -> list[dict]:
    return [json.loads(r["body"]) for r in procs.cloud_requests(cloud)[since:] if r["path"] == "/v1/messages"]


@pytest.fixture
def local():
    rec = procs.start_recorder()  # its own: one test stops it
    yield rec
    rec.stop()


@pytest.fixture
def session(cloud, local, nonstop_factory):
    ns = nonstop_factory(nonstop_config(cloud.url, local=[{"name": "rec", "url": local.url}]))
    procs.set_mode(cloud, "subscription_limit", reset_in=2)
    history = [{"role": "user", "content": "list the files [tool]"}]
    r, events = post(ns, history)
    assert r.headers["x-nonstop-backend"] == "rec"
    turn = assistant_turn(events)
    call = next(b for b in turn["content"] if b["type"] == "tool_use")
    assert call["id"].startswith("toolu_nsl"), call  # marked as a local model's call
    history += [turn, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "a.py b.py"}]}]
    # The thinking rule would refuse this history on the cloud.
    assert thinking_rule_violation({**BASE, "messages": history})
    time.sleep(2.2)  # the quota resets while the tool runs
    procs.set_mode(cloud, "ok")
    return ns, history


def test_the_tool_loop_finishes_locally_and_the_next_user_turn_goes_to_the_cloud(cloud, session):
    ns, history = session
    before = len(procs.cloud_requests(cloud))
    r, events = post(ns, history)
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "rec"
    assert "rule=loop" in r.headers["x-nonstop-route"]
    assert cloud_got(cloud, before) == [], "the tool result went to the cloud"
    history += [assistant_turn(events), {"role": "user", "content": "thanks, now explain b.py"}]
    r, _ = post(ns, history)
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "cloud", r.body[:300]
    state = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["cloud"]["state"]
    assert state == "serving"


def test_when_the_tool_result_must_go_to_the_cloud_it_goes_without_thinking(cloud, local, session):
    ns, history = session
    local.stop()  # the local backend is gone while the tool ran
    before = len(procs.cloud_requests(cloud))
    r, events = post(ns, history)
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "cloud", r.body[:300]
    sent = cloud_got(cloud, before)[-1]
    assert "thinking" not in sent and not thinking_rule_violation(sent)
    assert events and events[-1][0] == "message_stop"


def test_a_request_shaped_400_during_the_probe_does_not_keep_the_cloud_away(cloud, recorder_proc, nonstop_factory):
    ns = nonstop_factory(nonstop_config(cloud.url, local=[{"name": "rec", "url": recorder_proc.url}]))
    procs.set_mode(cloud, "subscription_limit", reset_in=1)
    r, _ = post(ns, [{"role": "user", "content": "hi"}])
    assert r.headers["x-nonstop-backend"] == "rec"
    time.sleep(1.2)
    procs.set_mode(cloud, "invalid_request")
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**BASE, "messages": [{"role": "user", "content": "hi"}]},
                         headers=HEADERS, timeout=30)
    assert r.status == 400  # the probe met a 400 about the request: shown to the client
    procs.set_mode(cloud, "ok")
    r, _ = post(ns, [{"role": "user", "content": "hi again"}])
    assert r.headers["x-nonstop-backend"] == "cloud", "the cloud was kept away for a cooldown after a request-shaped 400"
