"""`nonstop explain` against a running instance: the live state, nothing sent anywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration


def test_explain_uses_the_live_state_and_sends_nothing(cloud, recorder_proc, nonstop_factory, tmp_path):
    ns = nonstop_factory(nonstop_config(cloud.url, local=[{"name": "rec", "url": recorder_proc.url}]))
    procs.set_mode(cloud, "subscription_limit", reset_in=3600)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    assert rawhttp.request("POST", ns.url + "/v1/messages", body, {"x-api-key": procs.PLANTED_KEY})[0] == 200
    cloud_before = len(procs.cloud_requests(cloud))
    local_before = len(procs.answered(recorder_proc))
    saved = tmp_path / "request.json"
    saved.write_text(json.dumps(body))
    r = subprocess.run([sys.executable, "-m", "nonstop", "explain", str(saved), "--config", str(ns.extra["config"])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"plan against the running instance at 127.0.0.1:{ns.port}" in r.stdout
    assert "1. rec — order:" in r.stdout
    assert "skip cloud — cloud: out until" in r.stdout and "subscription_limit" in r.stdout
    assert len(procs.cloud_requests(cloud)) == cloud_before
    assert len(procs.answered(recorder_proc)) == local_before
    # A request the gateway would refuse is refused here too, with the reason.
    saved.write_text(json.dumps({"model": "", "messages": []}))
    r = subprocess.run([sys.executable, "-m", "nonstop", "explain", str(saved), "--config", str(ns.extra["config"])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "model" in r.stderr


def test_explain_endpoint_says_what_is_wrong_with_a_body(cloud, nonstop_factory):
    ns = nonstop_factory(nonstop_config(cloud.url))
    status, _, body = rawhttp.request("POST", ns.url + "/_nonstop/api/explain", b"{not json")
    assert status == 400 and b"not valid JSON" in body
    status, _, body = rawhttp.request("POST", ns.url + "/_nonstop/api/explain", {"request": {"model": 5}})
    assert status == 400 and b"model" in body
