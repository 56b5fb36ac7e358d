"""What a cloud reply teaches the account's state, through the pipeline: a limit met on
the reply that names the key's organization takes the organization out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import orjson

from nonstop.backends.base import Attempt, Exchange, Reply, single
from nonstop.config import LocalBackendConfig, parse_config
from nonstop.routing.backend_state import BackendState
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.routing.plan import Step
from nonstop.routing.view import Capabilities, CloudState
from nonstop.server.pipeline import Pipeline, RequestContext
from nonstop.server.runtime import Runtime
from nonstop.store.db import RequestRow
from nonstop.wire.tool_ids import backend_tag
from tests.support.clock import Clock

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
H = "anthropic-ratelimit-"
U = H + "unified-"


class _Local:
    """A local backend that always answers."""

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.cfg = LocalBackendConfig(name=name, url="http://127.0.0.1:1", context_window=32768)
        self.state = BackendState(name, Capabilities(context_window=32768), tag=backend_tag(name), clock=clock)
        self.sent = 0

    def capabilities(self) -> Capabilities:
        return self.state.capabilities()

    def window(self) -> int:
        return self.cfg.context_window

    async def send(self, ex: Exchange, step: Step) -> Attempt:
        self.sent += 1
        return Reply(200, [(b"content-type", b"application/json")], single(b"{}"), self.name, False)


class _Cloud:
    """The cloud as CloudBackend.request behaves: the reply's headers go to
    observe_headers (Runtime wires it to CloudStates.observe) once the outcome is on its
    way, before the loop reads another request. `script` holds (headers, outcome, gate) per request: outcome "ok" (a 200) or
    a Verdict; gate an asyncio.Event the reply waits for (a slow first byte), or None."""

    name = "cloud"

    def __init__(self, rt: Runtime, script: list[tuple[dict[str, str], Any, asyncio.Event | None]]) -> None:
        self.rt = rt
        self.script = list(script)
        self.sent = 0

    def capabilities(self) -> Capabilities:
        return Capabilities(api="cloud")

    async def send(self, ex: Exchange, step: Step) -> Attempt:
        self.sent += 1
        headers, outcome, gate = self.script.pop(0)
        if gate is not None:
            await gate.wait()
        asyncio.get_running_loop().call_soon(self.rt.clouds.observe, ex.account, headers)
        if outcome == "ok":
            return Reply(200, [(b"content-type", b"application/json")], single(b"{}"), "cloud", False)
        return outcome


def _runtime(tmp_path: Path) -> tuple[Runtime, Pipeline, Clock, _Local]:
    clock = Clock(T0)
    rt = Runtime(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}), clock=clock)
    local = _Local("llama", clock)
    return rt, Pipeline(rt), clock, local


def _ctx(key: str = "") -> RequestContext:
    req = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    headers = [(b"x-api-key", key.encode())] if key else []
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", headers, orjson.dumps(req), req, False)
    return RequestContext(ex, RequestRow(ts=T0), time.perf_counter())


LIMIT = Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 7200, "usage limit (five_hour)", 429)
LIMIT_HEADERS = {U + "status": "rejected", U + "representative-claim": "five_hour",
                 U + "reset": str(int(T0 + 7200)), U + "5h-utilization": "1.0"}


async def test_a_usage_limit_on_the_reply_that_names_the_organization_takes_the_account_out(tmp_path: Path) -> None:
    """The first reply an API key gets names its organization, and the key's state joins
    the organization's. A usage limit on that very reply takes the organization's state
    out: the next request with the key stays local, and the status lists one account."""
    rt, p, _, local = _runtime(tmp_path)
    headers = {**LIMIT_HEADERS, "anthropic-organization-id": "org-uuid-1"}
    cloud = _Cloud(rt, [(headers, LIMIT, None), (headers, LIMIT, None)])
    rt.use_backends([local], cloud=cloud)  # type: ignore[list-item, arg-type]

    out = await p.run(_ctx("sk-ant-api03-ann"))
    assert out.reply is not None and out.reply.backend == "llama"
    await asyncio.sleep(0)  # the server reads the next request in a later turn of the loop
    out = await p.run(_ctx("sk-ant-api03-ann"))
    assert out.reply is not None and out.reply.backend == "llama"
    await asyncio.sleep(0)
    assert cloud.sent == 1, "the second request went to the cloud although its account is out until the reset"
    states = {e["account"]: e["state"] for e in rt.clouds.entries()}
    assert len(states) == 1, f"accounts in the status document: {states}"


async def test_a_slow_success_of_a_request_sent_before_the_limit_does_not_bring_the_cloud_back(tmp_path: Path) -> None:
    """Requests run in parallel: one sent first takes long to its first byte; one sent after
    it meets the 5-hour limit. The first one's success comes last, but it is older news than
    the limit: the cloud stays out (before, it came back, and the next request was refused
    by the cloud once more, with a pair of switch lines and hook notifications)."""
    rt, p, clock, local = _runtime(tmp_path)
    slow = asyncio.Event()
    cloud = _Cloud(rt, [({}, "ok", slow), (LIMIT_HEADERS, LIMIT, None), ({}, "ok", None)])
    rt.use_backends([local], cloud=cloud)  # type: ignore[list-item, arg-type]

    first = asyncio.ensure_future(p.run(_ctx()))
    await asyncio.sleep(0)  # sent
    clock.advance(1.0)
    out = await p.run(_ctx())  # sent after the first: the limit
    assert out.reply is not None and out.reply.backend == "llama"
    slow.set()
    out = await first
    assert out.reply is not None and out.reply.backend == "cloud"  # its own answer stands
    await asyncio.sleep(0)
    assert rt.clouds.state("").state.value == "out"
    out = await p.run(_ctx())
    assert out.reply is not None and out.reply.backend == "llama" and cloud.sent == 2


async def test_a_success_of_a_request_sent_after_the_refused_one_brings_the_cloud_back(tmp_path: Path) -> None:
    """The other way round: the cloud answered a request sent after the one it refused (a
    throttle that had passed by then): newer news, and the cloud is back."""
    rt, p, clock, local = _runtime(tmp_path)
    refused, answered = asyncio.Event(), asyncio.Event()
    throttle = Verdict(FailureKind.THROTTLE, True, T0 + 30, "rate limited", 429)
    cloud = _Cloud(rt, [({}, throttle, refused), ({}, "ok", answered)])
    rt.use_backends([local], cloud=cloud)  # type: ignore[list-item, arg-type]

    first = asyncio.ensure_future(p.run(_ctx()))  # sent first
    await asyncio.sleep(0)
    clock.advance(1.0)
    second = asyncio.ensure_future(p.run(_ctx()))  # sent after it, while the cloud still served
    await asyncio.sleep(0)
    refused.set()
    await first
    assert rt.clouds.state("").state.value == "out"
    answered.set()
    out = await second
    assert out.reply is not None and out.reply.backend == "cloud"
    assert rt.clouds.state("").state.value == "serving"


def test_a_fleet_state_that_cannot_be_read_moves_nothing_not_even_the_clock(tmp_path: Path) -> None:
    """Another instance's state arrives with the time it was decided. One whose state
    cannot be read (an unknown state, a wrong type, not an object) changes nothing, and
    its time must not be taken either: a valid state decided a little earlier, arriving
    next, would be ignored as older news."""
    from nonstop.server.cloud_state import CloudStates
    from nonstop.server.events import EventBus
    from nonstop.server.metrics import Metrics

    clock = Clock(T0)
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}})
    clouds = CloudStates(cfg, clock=clock, metrics=Metrics(), bus=EventBus(), store=None, spawn=asyncio.ensure_future)
    q = clouds.state("")
    for junk in ({"state": "on-fire", "until": T0 + 600}, {"state": "out", "until": "soon"}, ["out"]):
        clouds._remote("", junk, T0 + 10)  # type: ignore[arg-type]
        assert (q.state.value, q.observed) == ("serving", 0.0)
    clouds._remote("", {"state": "out", "until": T0 + 3600, "reason": "subscription_limit"}, T0 + 5)
    assert (q.state.value, q.until, q.observed) == ("out", T0 + 3600, T0 + 5)


def test_a_switch_runs_a_hook_only_where_one_is_configured(tmp_path: Path) -> None:
    """The switch's event goes to the hooks as a task of its own; with no command and no
    webhook there is nothing to run, and no task is made."""
    from nonstop.server.cloud_state import CloudStates
    from nonstop.server.events import EventBus
    from nonstop.server.metrics import Metrics

    for hooks, tasks in (({}, 0), ({"command": "true"}, 1), ({"webhook": "http://127.0.0.1:1/hook"}, 1)):
        spawned: list[Any] = []

        def spawn(coro: Any, spawned: list[Any] = spawned) -> None:
            spawned.append(coro)
            coro.close()  # looked at, not run

        cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "hooks": hooks})
        clouds = CloudStates(cfg, clock=Clock(T0), metrics=Metrics(), bus=EventBus(), store=None, spawn=spawn)
        clouds.state("").record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 3600, "five_hour"))
        assert clouds.state("").state.value == "out"
        assert len(spawned) == tasks, hooks


async def test_a_probe_whose_client_left_leaves_the_next_request_to_probe(tmp_path: Path) -> None:
    """A probe cancelled because its client left (Door.run) learned nothing: the cloud is
    not left "probing" (every other request would stay local until the probe's timeout),
    and the next request checks the cloud again."""
    rt, p, clock, local = _runtime(tmp_path)
    never = asyncio.Event()
    cloud = _Cloud(rt, [(LIMIT_HEADERS, LIMIT, None), ({}, "ok", never), ({}, "ok", None)])
    rt.use_backends([local], cloud=cloud)  # type: ignore[list-item, arg-type]
    out = await p.run(_ctx())  # the limit: out until T0 + 7200
    assert out.reply is not None and out.reply.backend == "llama"
    clock.advance(7201)  # the reset has passed: the next request probes
    probe = asyncio.ensure_future(p.run(_ctx()))
    await asyncio.sleep(0.01)
    assert cloud.sent == 2 and rt.clouds.state("").state is CloudState.PROBING
    probe.cancel()  # its client left
    with contextlib.suppress(asyncio.CancelledError):
        await probe
    assert rt.clouds.state("").state is not CloudState.PROBING
    out = await p.run(_ctx())
    assert out.reply is not None and out.reply.backend == "cloud" and cloud.sent == 3
