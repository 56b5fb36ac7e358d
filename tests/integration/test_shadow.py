"""Shadow comparison end to end: the fake cloud answers, the real llama-server replays
the sampled requests once idle, and the agreement shows per workload class."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

TOOLS = [{"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}]


def test_cloud_answers_are_compared_on_the_local_model(cloud, llama, nonstop_factory):
    ns = nonstop_factory(nonstop_config(cloud.url, local=[{"name": "llama", "url": llama.url, "max_output_tokens": 32}],
                                        shadow={"sample": 1.0, "wait": 60}))
    local_before = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])
    assert local_before["shadow"]["by_class"] == {}
    for text, headers in (("read src/app.py", {}), ("summarise", {"x-claude-code-request-class": "subagent"})):
        body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "tools": TOOLS, "messages": [{"role": "user", "content": text}]}
        status, hdrs, raw = rawhttp.request("POST", ns.url + "/v1/messages", body,
                                            {"x-api-key": procs.PLANTED_KEY, **headers}, timeout=60)
        assert status == 200 and hdrs["x-nonstop-backend"] == "cloud"
        assert json.loads(raw)["content"][0]["text"] == "Hello from the cloud."  # the user's answer, untouched

    def compared() -> dict:
        return json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["shadow"]["by_class"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(c["n"] for c in compared().values()) < 2:
        time.sleep(0.5)
    by_class = compared()
    assert by_class.get("main", {}).get("n") == 1 and by_class.get("subagent", {}).get("n") == 1, by_class
    for c in by_class.values():
        assert 0.0 <= c["rate"] <= 1.0  # the tiny model usually disagrees: reported, not judged
    r = subprocess.run([sys.executable, "-m", "nonstop", "status", "--config", str(ns.extra["config"])],
                       capture_output=True, text=True, timeout=30)
    assert "shadow   100% of cloud answers replayed locally" in r.stdout and "main" in r.stdout


def test_an_answer_a_local_model_went_on_with_is_not_compared(cloud, llama, nonstop_factory):
    # The cloud's stream begins (its start, an empty text block) and then overloads: the
    # real llama-server goes on with the message. That answer is no cloud answer, and the
    # shadow sample taken when the cloud's stream began is given back, not replayed.
    procs.set_mode(cloud, "overloaded_after_block_start")
    ns = nonstop_factory(nonstop_config(cloud.url, local=[{"name": "llama", "url": llama.url, "max_output_tokens": 32}],
                                        shadow={"sample": 1.0, "wait": 60}))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=body, headers={"x-api-key": procs.PLANTED_KEY})
    assert r.status == 200 and b"event: message_stop" in r.body and b"event: error" not in r.body
    rows = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/requests")[2])["requests"]
    assert next(x for x in rows if x["path"] == "/v1/messages")["backend"] == "llama"
    time.sleep(3)  # a replay would start at once: the local model is idle
    shadow = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["shadow"]
    assert shadow["by_class"] == {}, shadow
