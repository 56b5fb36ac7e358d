"""Two nonstop instances share the cloud's state through a real Redis server."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.conftest import _need
from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url():
    binary = shutil.which("redis-server")
    _need(binary is not None, "redis-server (Debian package redis-server)")
    port = procs.free_port()
    folder = tempfile.mkdtemp(prefix="redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


def cfg(cloud_url: str, local_url: str, redis_url: str) -> str:
    return nonstop_config(cloud_url, local=[{"name": "rec", "url": local_url}], shared={"redis_url": redis_url})


def post(ns: procs.Proc) -> dict[str, str]:
    body = {"model": "claude-sonnet-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    status, headers, _ = rawhttp.request("POST", ns.url + "/v1/messages", body, {"x-api-key": procs.PLANTED_KEY})
    assert status == 200
    return headers


def state(ns: procs.Proc) -> str:
    return json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["cloud"]["state"]


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_one_instance_meets_the_limit_all_go_local(cloud, recorder_proc, nonstop_factory, redis_url):
    a = nonstop_factory(cfg(cloud.url, recorder_proc.url, redis_url))
    b = nonstop_factory(cfg(cloud.url, recorder_proc.url, redis_url))
    assert post(a)["x-nonstop-backend"] == "cloud"
    procs.set_mode(cloud, "subscription_limit", reset_in=2)
    assert post(a)["x-nonstop-backend"] == "rec"
    assert wait_for(lambda: state(b) == "out")
    procs.set_mode(cloud, "ok")
    before = len(procs.cloud_requests(cloud))
    assert post(b)["x-nonstop-backend"] == "rec"  # b never asked the cloud
    assert len(procs.cloud_requests(cloud)) == before
    # A third instance started now learns the state at start-up.
    c = nonstop_factory(cfg(cloud.url, recorder_proc.url, redis_url))
    assert state(c) == "out"
    # After the reset, one probe on b brings everyone back.
    time.sleep(2.2)
    assert post(b)["x-nonstop-backend"] == "cloud"
    assert wait_for(lambda: state(a) == "serving" and state(c) == "serving")


def test_unreachable_redis_is_a_clear_startup_error(cloud, recorder_proc):
    with pytest.raises(RuntimeError) as info:
        procs.start_nonstop(cfg(cloud.url, recorder_proc.url, f"redis://127.0.0.1:{procs.free_port()}/0"), timeout=15)
    assert "redis" in str(info.value).lower()
