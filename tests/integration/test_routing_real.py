"""The planner against two real llama-servers with different windows.

A small-window server listed first and a large-window one second: a request too large for
the small window goes to the large one and is never processed by the small one; with one
server busy, a new request goes to the idle one; the window nonstop plans with is the one
the server really runs, not the one in the config.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from tests.integration.llama import require_llama, start_llama_server
from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

SMALL, LARGE = 2048, 8192


@pytest.fixture(scope="module")
def servers():
    require_llama()
    small = start_llama_server(ctx=SMALL, parallel=1, extra_args=["--metrics"])
    large = start_llama_server(ctx=LARGE, parallel=1, extra_args=["--metrics"])
    yield small, large
    small.stop()
    large.stop()


def prompt_tokens(server) -> float:
    """Prompt tokens the server has processed so far (its own Prometheus counter)."""
    text = rawhttp.request("GET", server.url + "/metrics")[2].decode()
    m = re.search(r"^llamacpp:prompt_tokens_total\s+([0-9.e+]+)", text, re.M)
    return float(m.group(1)) if m else 0.0


def status(ns) -> dict:
    return json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])


def wait_until(pred, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ask(ns, text: str, max_tokens: int = 8, stream: bool = False) -> tuple[int, dict[str, str], bytes]:
    body = {"model": "claude-sonnet-4-5", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": text}]}
    return rawhttp.request("POST", ns.url + "/v1/messages", body, {"x-api-key": procs.PLANTED_KEY}, timeout=300)


@pytest.fixture
def gateway(servers, cloud, nonstop_factory):
    small, large = servers
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(nonstop_config(cloud.url, local=[
        # The small server is first in the user's order, and its configured window is
        # larger than the one it really runs: nonstop must plan with the real one.
        {"name": "small", "url": small.url, "context_window": 16384, "max_output_tokens": 256},
        {"name": "large", "url": large.url, "context_window": LARGE, "max_output_tokens": 256},
    ]))
    wait_until(lambda: all(b["window"] and b["token_ratio"] for b in status(ns)["local"]), 60,
               "nonstop to read both servers' windows and calibrate their token counts")
    return ns


def test_plans_with_the_servers_real_window(gateway):
    by_name = {b["name"]: b for b in status(gateway)["local"]}
    assert by_name["small"]["window"] == SMALL  # configured 16384; the server runs 2048
    assert by_name["large"]["window"] == LARGE


def test_large_request_goes_to_the_large_window_and_never_to_the_small_one(gateway, servers):
    small, large = servers
    before_small, before_large = prompt_tokens(small), prompt_tokens(large)
    text = " ".join(f"word{i} is part of a long document about routing." for i in range(200))
    status_code, headers, _ = ask(gateway, text)
    assert status_code == 200
    assert headers["x-nonstop-backend"] == "large"
    assert "large;" in headers["x-nonstop-route"]
    assert prompt_tokens(large) > before_large
    assert prompt_tokens(small) == before_small, "the small-window server processed a request it cannot hold"
    # The decision is in the request log, with the small one skipped for its window.
    rows = json.loads(rawhttp.request("GET", gateway.url + "/_nonstop/api/requests?limit=1")[2])["requests"]
    skipped = {s["target"]: s for s in rows[-1]["route"]["skipped"]}
    assert skipped["small"]["rule"] == "context"


def test_busy_backend_sends_new_requests_to_the_idle_one(gateway, servers):
    small, _ = servers
    # A long answer keeps "small" (first in order, one slot) busy.
    long_answer = threading.Thread(target=ask, args=(gateway, "Tell a long story about a ship."),
                                   kwargs={"max_tokens": 240, "stream": True}, daemon=True)
    long_answer.start()
    wait_until(lambda: next(b for b in status(gateway)["local"] if b["name"] == "small")["inflight"] >= 1, 30,
               "the long request to start on small")
    status_code, headers, _ = ask(gateway, "hi")
    assert status_code == 200
    assert headers["x-nonstop-backend"] == "large", headers.get("x-nonstop-route")
    assert "busy" in headers["x-nonstop-route"] or "large;" in headers["x-nonstop-route"]
    long_answer.join(120)
    wait_until(lambda: all(b["inflight"] == 0 and b["free_slots"] != 0 for b in status(gateway)["local"]), 15,
               "every backend to be idle again, by nonstop's count and the server's own")
    # Idle again: the user's order wins.
    status_code, headers, _ = ask(gateway, "hi")
    assert headers["x-nonstop-backend"] == "small"
