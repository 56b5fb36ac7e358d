"""The planner and the state it reads at their edges: images the size as sent does not
count, quota windows that reset while nothing was read from the cloud, and backends
that just failed."""

from __future__ import annotations

import base64

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.config import CloudConfig
from nonstop.config.model import WarmupConfig
from nonstop.routing.facts import RequestFacts, Size, Workload, facts_from_request
from nonstop.routing.fit import RequestSize
from nonstop.routing.plan import CLOUD, MIN_OUTPUT_ROOM, plan
from nonstop.routing.policy import Policy
from nonstop.routing.quota import QuotaState
from nonstop.routing.view import (
    BackendView,
    Capabilities,
    CloudState,
    CloudView,
    RoutingView,
    WindowForecast,
)
from nonstop.server.warmer import warm_reason
from tests.support.clock import Clock

T0 = 1_800_000_000.0
U = "anthropic-ratelimit-unified-"

# A 1x1 PNG: Claude Code's Read of a small icon or a cropped screenshot is this kind of block.
_PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f0e0000000049454e44ae426082")).decode()
_IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": _PNG}}


def _image_request(n_images: int) -> tuple[dict, bytes]:
    req = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [
        {"role": "user", "content": [_IMAGE] * n_images + [{"type": "text", "text": "Which icon is the odd one?"}]}]}
    return req, orjson.dumps(req)


# --- context rule: the size as sent is not an upper bound of the local size -------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=4, max_value=30), st.sampled_from([CloudView(), CloudView(state=CloudState.OUT, until=T0 + 3600)]))
def test_small_images_are_measured_before_a_window_is_said_to_fit(n_images: int, cloud: CloudView) -> None:
    """Small images take a few bytes each as sent but a fixed count of tokens in the local
    estimate: a request with images is not said to fit a window from its size as sent; it is
    measured before a local backend is tried unfitted."""
    req, body = _image_request(n_images)
    facts = facts_from_request(req, {}, body_len=len(body), measure=RequestSize(lambda: req))
    small = BackendView("small", Capabilities(context_window=4096, images=True), tag="small", token_ratio=1.0)
    big = BackendView("big", Capabilities(context_window=16384 * 4, images=True), tag="big", token_ratio=1.0)
    p = plan(facts, RoutingView(T0, cloud, (small, big)), Policy(order=("small", "big")))
    windows = {"small": 4096, "big": 16384 * 4}
    local = facts.size.local
    for s in p.steps:
        if s.target != CLOUD and not s.fit:
            assert local <= windows[s.target] - MIN_OUTPUT_ROOM, (
                f"{s.target} planned unfitted ({s.reason!r}) for a request of {local} tokens by nonstop's own estimate")


# --- forecast / conserve: judged at the last reading, never at the time it is read -------------


def test_conserving_ends_when_the_window_it_was_about_resets() -> None:
    """Conserving for a window forecast to run out ends when that window resets, even with no
    cloud reply in between (only deferrable work might come, and it would stay local)."""
    clock = Clock(T0)
    q = QuotaState(CloudConfig(), clock=clock)
    q.record_headers({U + "status": "allowed", U + "5h-utilization": "0.95", U + "5h-reset": str(int(T0 + 3600)),
                      U + "7d-utilization": "0.30", U + "7d-reset": str(int(T0 + 5 * 86400))})
    assert q.view().conserving  # the high-water rule: right
    clock.advance(2 * 3600)  # the 5h window reset an hour ago; no reply since
    v = q.view()
    stale = [w for w in v.windows if w.runs_out is not None and w.resets is not None and w.resets <= clock.now]
    assert not stale, f"forecast still says out ~{stale[0].runs_out} for a window that reset at {stale[0].resets}"
    assert not v.conserving
    subagent = RequestFacts(model="claude-sonnet-4-5", size=Size(2000), workload=Workload.SUBAGENT)
    local = BackendView("llama", Capabilities(context_window=32768), tag="llama", token_ratio=1.0)
    assert plan(subagent, RoutingView(clock.now, v, (local,)), Policy(order=("llama",))).first.target == CLOUD


def test_conserving_restored_from_disk_after_the_reset_ends() -> None:
    """The same for a state restored from disk after the reset."""
    clock = Clock(T0)
    q = QuotaState(CloudConfig(), clock=clock)
    q.record_headers({U + "status": "allowed", U + "5h-utilization": "0.95", U + "5h-reset": str(int(T0 + 3600))})
    assert q.view().conserving
    snap = q.snapshot()
    later = Clock(T0 + 12 * 3600)
    q2 = QuotaState(CloudConfig(), clock=later)
    q2.restore(snap)
    assert not q2.view().conserving


def test_the_warmer_stops_for_a_window_that_has_reset() -> None:
    """The warmer stops warming for a window that has reset: its old use says nothing of the
    new window."""
    clock = Clock(T0)
    q = QuotaState(CloudConfig(), clock=clock)
    q.record_headers({U + "status": "allowed", U + "5h-utilization": "0.85", U + "5h-reset": str(int(T0 + 1800))})
    cfg = WarmupConfig(at_utilization=0.8)
    assert warm_reason(cfg, [q.view()])  # right: 85% used
    clock.advance(10 * 3600)  # reset 9.5 h ago; nobody used the cloud since
    assert warm_reason(cfg, [q.view()]) == ""


# --- health: a demoted backend ahead of one that can serve ---------------------------------------


def test_conserving_puts_the_serving_cloud_before_a_demoted_local_backend() -> None:
    """Conserving (and a class that uses local models first) puts a serving cloud before a
    local backend that has just failed: such a backend is tried only when nothing else can serve."""
    cloud = CloudView(conserving=True, windows=(WindowForecast("5h", 0.93, T0 + 3600, T0, "high-water"),))
    down = BackendView("llama", Capabilities(context_window=32768), tag="llama", token_ratio=1.0,
                       demoted=True, demoted_why="timed out")
    f = RequestFacts(model="claude-sonnet-4-5", size=Size(2000), workload=Workload.SUBAGENT)
    p = plan(f, RoutingView(T0, cloud, (down,)), Policy(order=("llama",)))
    assert p.first.target == CLOUD, p.lines()


def test_a_local_tool_loop_goes_to_a_healthy_backend_before_its_demoted_origin() -> None:
    """A tool loop a local model started goes to another healthy local backend when its origin
    has just failed (as when it is gone), not to the one that failed."""
    origin = BackendView("qwen", Capabilities(context_window=32768), tag="qwen01", token_ratio=1.0,
                         demoted=True, demoted_why="connection refused")
    other = BackendView("llama", Capabilities(context_window=32768), tag="llama1", token_ratio=1.0)
    f = RequestFacts(model="claude-sonnet-4-5", size=Size(2000), local_loop="qwen01")
    p = plan(f, RoutingView(T0, CloudView(), (origin, other)), Policy(order=("qwen", "llama")))
    assert p.first.target != "qwen", p.lines()
