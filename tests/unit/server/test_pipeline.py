"""The pipeline in process: fake backends through the same seam production uses
(Runtime.use_backends), so a case is "these attempts happen, this outcome comes out"."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

import nonstop.backends.local as local_module
from nonstop.backends.base import Attempt, Exchange, Reply, TooLong, UnreadableRequest, single
from nonstop.backends.registry import make_local_backend
from nonstop.config import LocalBackendConfig, parse_config
from nonstop.routing.backend_state import REPORT_FRESH, BackendState, ServerReport
from nonstop.routing.classify import FailureKind, Verdict, classify_response
from nonstop.routing.fit import fitted_size, local_size
from nonstop.routing.plan import Step
from nonstop.routing.view import Capabilities, CloudState
from nonstop.server.pipeline import Held, Pipeline, RequestContext, _sized
from nonstop.server.runtime import Runtime
from nonstop.store.db import RequestRow
from nonstop.wire.sse import encode_event
from nonstop.wire.tool_ids import backend_tag, local_tool_id
from tests.support.wirecheck import check_anthropic_stream

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def reply(backend: str, status: int = 200, verdict: Verdict | None = None) -> Reply:
    return Reply(status, [(b"content-type", b"application/json")], single(b"{}"), backend, False, verdict=verdict)


class FakeBackend:
    """A backend that answers from a script: one Attempt (or a function of the step) per send."""

    def __init__(self, name: str, script: list[Any], window: int = 32768, clock: Clock | None = None):
        self.name = name
        self.script = list(script)
        self.sent: list[Step] = []
        self.requests: list[dict] = []  # what send_request was given
        self.cfg = LocalBackendConfig(name=name, url="http://127.0.0.1:1", context_window=window)
        self.state = BackendState(name, Capabilities(context_window=window), tag=backend_tag(name), clock=clock or Clock())

    def capabilities(self) -> Capabilities:
        return self.state.capabilities()

    def window(self) -> int:
        return self.cfg.context_window

    async def send(self, ex: Exchange, step: Step) -> Attempt:
        self.sent.append(step)
        item = self.script.pop(0) if self.script else reply(self.name)
        return item(step) if callable(item) else item

    async def send_request(self, req: dict, *, stream: bool) -> Attempt:
        self.requests.append(req)
        return await self.send(Exchange("POST", "/v1/messages", b"", b"", [], b"", req, stream), Step(self.name, "trim", ""))


def make(tmp_path: Path, cloud: list[Any], locals_: dict[str, list[Any]], **cfg: Any) -> tuple[Runtime, Pipeline, FakeBackend, dict[str, FakeBackend]]:
    clock = Clock()
    config = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, **cfg})
    rt = Runtime(config, clock=clock)
    fake_cloud = FakeBackend("cloud", cloud, clock=clock)
    fakes = {n: FakeBackend(n, s, clock=clock) for n, s in locals_.items()}
    rt.use_backends(list(fakes.values()), cloud=fake_cloud)  # type: ignore[arg-type]
    return rt, Pipeline(rt), fake_cloud, fakes


def ctx(req: dict[str, Any] | None = None, headers: list[tuple[bytes, bytes]] | None = None) -> RequestContext:
    req = req or {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    body = orjson.dumps(req)
    ex = Exchange("POST", "/v1/messages", b"/v1/messages", b"", headers or [], body, req, bool(req.get("stream")))
    return RequestContext(ex, RequestRow(ts=T0), time.perf_counter())


async def test_cloud_serving_answers(tmp_path: Path) -> None:
    rt, p, cloud, fakes = make(tmp_path, [reply("cloud")], {"llama": []})
    out = await p.run(ctx())
    assert out.reply is not None and out.reply.backend == "cloud"
    assert out.route().startswith("cloud; rule=cloud; the cloud is serving")
    assert fakes["llama"].sent == []


async def test_usage_limit_goes_local_and_keeps_the_deadline(tmp_path: Path) -> None:
    limit = Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 7200, "usage limit (five_hour)", 429)
    rt, p, cloud, fakes = make(tmp_path, [limit], {"llama": []})
    out = await p.run(ctx())
    assert out.reply is not None and out.reply.backend == "llama"
    assert rt.quota.state is CloudState.OUT and rt.quota.until == T0 + 7200
    assert out.tried == [("cloud", "subscription_limit: usage limit (five_hour)")]
    assert "subscription_limit" in out.reason
    # The next request does not ask the cloud.
    out2 = await p.run(ctx())
    assert out2.reply is not None and out2.reply.backend == "llama" and len(cloud.sent) == 1
    assert "out until" in out2.reason


async def test_a_200_whose_headers_say_rejected_keeps_its_reset_time(tmp_path: Path) -> None:
    """The structured outcome reaches the state: a 7,200 s reset is not the 300 s default."""
    headers = {"anthropic-ratelimit-unified-status": "rejected",
               "anthropic-ratelimit-unified-representative-claim": "five_hour",
               "anthropic-ratelimit-unified-5h-reset": str(int(T0 + 7200))}
    verdict = classify_response(200, headers, b"", T0)
    assert verdict is not None and verdict.until == T0 + 7200
    rt, p, cloud, _ = make(tmp_path, [reply("cloud", verdict=verdict)], {"llama": []})
    out = await p.run(ctx())
    assert out.reply is not None and out.reply.backend == "cloud"  # this answer is served
    assert rt.quota.state is CloudState.OUT
    assert rt.quota.until == T0 + 7200


async def test_every_backend_failing_names_each(tmp_path: Path) -> None:
    down = Verdict(FailureKind.NETWORK, True, None, "connection refused")
    rt, p, _, fakes = make(tmp_path, [Verdict(FailureKind.OVERLOADED, True, None, "overloaded", 529)],
                           {"a": [down], "b": [Verdict(FailureKind.SERVER_ERROR, True, None, "HTTP 500", 500)]})
    out = await p.run(ctx())
    assert out.reply is None and out.status == 503
    # One overload does not take the cloud out: the next request asks it again, so no
    # time to retry after is known.
    assert rt.quota.state is CloudState.SERVING and out.retry_after is None
    for part in ("cloud: overloaded", "a: network: connection refused", "b: server_error: HTTP 500"):
        assert part in out.message
    assert [s.target for s in fakes["a"].sent] == ["a"] and [s.target for s in fakes["b"].sent] == ["b"]


HTTP_503 = Verdict(FailureKind.SERVER_ERROR, True, None, "HTTP 503", 503)


def late(name: str, failure: Verdict = HTTP_503) -> Reply:
    """A local stream whose head was late: its body asks for another backend's stream
    (reply.instead) when its server fails, as LocalBackend._late does (the cloud's
    stream that began with an empty text block does the same: backends/cloud.py)."""
    r = Reply(200, [], single(b""), name, True, handover=True)

    async def body():
        instead, r.instead = r.instead, None  # asked at most once, then let go (it holds the request)
        taken = await instead(failure) if instead else None
        del instead
        if taken is not None:
            async for chunk in taken.body:
                yield chunk

    r.body = body()
    return r


async def test_a_local_stream_that_fails_after_it_began_is_taken_over_by_the_next_local_backend(tmp_path: Path) -> None:
    down = Verdict(FailureKind.NETWORK, True, None, "connection refused")
    answer = Reply(200, [], single(b"answer"), "c", True)
    # The cloud is out; "a" begins the stream and fails late, "b" is down, "c" answers.
    rt, p, cloud, fakes = make(tmp_path, [down], {"a": [late("a")], "b": [down], "c": [answer]})
    req = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    c = ctx(req)
    out = await p.run(c)
    c.ex.req, c.ex.body = {}, b""  # as the door does once a reply is chosen
    assert out.reply is not None and out.reply.backend == "a"
    assert b"".join([c async for c in out.reply.body]) == b"answer"
    assert [t for t, _ in out.tried] == ["cloud", "a", "b"]
    assert len(cloud.sent) == 1  # the cloud is not asked again: its stream would be a message of its own
    assert fakes["c"].requests == [req]  # the request itself, though the door let it go


async def test_a_cloud_stream_that_fails_before_content_is_taken_over_locally(tmp_path: Path) -> None:
    overloaded = Verdict(FailureKind.OVERLOADED, True, None, "overloaded (mid-stream)")
    answer = Reply(200, [], single(b"local answer"), "llama", True)
    rt, p, cloud, fakes = make(tmp_path, [late("cloud", overloaded)], {"llama": [answer]})
    req = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    c = ctx(req)
    c.ex.lazy, c.ex.req = True, {}  # as the outline leaves it: the body only, parsed when needed
    out = await p.run(c)
    c.ex.body = b""  # as the door does once a reply is chosen: the hand-over kept its own
    assert out.reply is not None and out.reply.backend == "cloud" and out.reason == ""
    assert fakes["llama"].requests == []  # nothing asked of a local model while the cloud serves
    assert b"".join([x async for x in out.reply.body]) == b"local answer"
    assert fakes["llama"].requests == [req]  # the request, parsed from the body kept
    assert out.tried == [("cloud", "overloaded: overloaded (mid-stream)")]
    assert out.reason == "overloaded: overloaded (mid-stream)" and out.step is not None and out.step.target == "llama"
    assert rt.quota.blips == 1  # the cloud's state learned the overload, as one before any content
    assert Held.count == 0 and Held.held == 0  # the request kept for it is let go


def test_what_cloud_streams_keep_for_a_hand_over_is_bounded() -> None:
    async def call(res: Any) -> None:
        return None

    gc.collect()  # (hand-overs of other tests' replies left in cycles)
    count, held = Held.count, Held.held
    kept = [Held.of(50_000, call) for _ in range(Held.MAX_COUNT - count)]
    assert all(k is not None for k in kept) and Held.count == Held.MAX_COUNT and Held.held == held + 50_000 * len(kept)
    assert Held.of(10, call) is None  # one more stream keeps nothing: it ends as before if the cloud fails
    kept.pop()
    assert Held.count == Held.MAX_COUNT - 1
    again = Held.of(10, call)
    assert again is not None
    del again
    kept.clear()
    assert (Held.count, Held.held) == (count, held)
    assert Held.of(Held.MAX_BYTES + 1, call) is None  # nor is a request larger than the bound kept
    assert (Held.count, Held.held) == (count, held)


async def test_a_late_failure_with_no_local_backend_left_gets_none(tmp_path: Path) -> None:
    rt, p, _, _ = make(tmp_path, [Verdict(FailureKind.NETWORK, True, None, "down")], {"a": [late("a")]})
    out = await p.run(ctx({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]}))
    assert out.reply is not None and b"".join([c async for c in out.reply.body]) == b""


async def test_too_long_everywhere_says_prompt_is_too_long(tmp_path: Path) -> None:
    rt, p, _, _ = make(tmp_path, [Verdict(FailureKind.NETWORK, True, None, "down")],
                       {"small": [TooLong("small", 5000, 4096)], "big": [TooLong("big", 5000, 4608)]})
    out = await p.run(ctx())
    assert (out.status, out.etype) == (400, "invalid_request_error")
    assert out.message == "prompt is too long: 5000 tokens > 4608 maximum"


async def test_a_due_probe_is_started_explicitly_and_only_once(tmp_path: Path) -> None:
    rt, p, cloud, fakes = make(tmp_path, [reply("cloud")], {"llama": []})
    rt.quota.record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 - 1, "usage limit"))
    assert rt.quota.view().probe_due
    out = await p.run(ctx())
    assert cloud.sent[0].probe and out.reply is not None and out.reply.backend == "cloud"
    assert rt.quota.state is CloudState.SERVING


async def test_while_a_probe_is_in_flight_others_stay_local(tmp_path: Path) -> None:
    rt, p, cloud, _ = make(tmp_path, [], {"llama": []})
    rt.quota.record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 - 1, "usage limit"))
    rt.quota.begin_probe()
    out = await p.run(ctx())
    assert cloud.sent == [] and out.reply is not None and out.reply.backend == "llama"
    assert "checking whether the cloud is back" in out.reason


async def test_tool_result_for_a_local_call_goes_back_to_that_backend(tmp_path: Path) -> None:
    tool_id = local_tool_id(backend_tag("b"))
    req = {"model": "claude-opus-5", "max_tokens": 100, "thinking": {"type": "adaptive"}, "messages": [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": tool_id, "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "a b"}]},
    ]}
    rt, p, cloud, fakes = make(tmp_path, [], {"a": [], "b": []})
    out = await p.run(ctx(req))
    assert out.reply is not None and out.reply.backend == "b"
    assert out.step is not None and out.step.rule == "loop"
    assert cloud.sent == [] and fakes["a"].sent == []


async def test_local_loop_with_local_backends_down_goes_to_the_cloud_without_thinking(tmp_path: Path) -> None:
    tool_id = local_tool_id(backend_tag("b"))
    req = {"model": "claude-opus-5", "max_tokens": 100, "thinking": {"type": "adaptive"}, "messages": [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": tool_id, "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "a b"}]},
    ]}
    down = Verdict(FailureKind.NETWORK, True, None, "connection refused")
    rt, p, cloud, fakes = make(tmp_path, [reply("cloud")], {"b": [down]})
    out = await p.run(ctx(req))
    assert out.reply is not None and out.reply.backend == "cloud"
    assert cloud.sent[0].strip_thinking


async def test_background_class_can_stay_local(tmp_path: Path) -> None:
    rt, p, cloud, fakes = make(tmp_path, [], {"llama": []}, routing={"background": {"cloud": "never"}})
    req = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "title?"}]}
    out = await p.run(ctx(req))
    assert out.reply is not None and out.reply.backend == "llama" and cloud.sent == []
    assert out.plan is not None and out.plan.workload.value == "background"


async def test_failed_backend_is_demoted_and_its_requests_move_on(tmp_path: Path) -> None:
    rt, p, _, fakes = make(tmp_path, [Verdict(FailureKind.NETWORK, True, None, "down")] * 3, {"a": [], "b": []})
    fakes["a"].state.failed("connection refused")
    out = await p.run(ctx())
    assert out.reply is not None and out.reply.backend == "b"
    assert fakes["a"].sent == []


async def test_the_view_is_kept_until_a_part_of_it_changes(tmp_path: Path) -> None:
    rt, _, _, fakes = make(tmp_path, [], {"a": [], "b": []})
    v = rt.view()
    assert rt.view() is v and v.names == ("a", "b")
    fakes["b"].state.failed("connection refused")  # one backend's part changes
    changed = rt.view()
    assert changed is not v and changed.backends[1].demoted and changed.backends[0] is v.backends[0]
    assert rt.view() is changed
    rt.quota.record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 3600, "limit"))  # the cloud's part
    out = rt.view()
    assert out is not changed and out.cloud.state is CloudState.OUT


async def test_a_kept_view_goes_when_a_reading_in_it_goes_stale(tmp_path: Path) -> None:
    # No assignment marks this change: the server's slot reading simply grows old.
    rt, _, _, fakes = make(tmp_path, [], {"a": [], "b": []})
    clock = rt.clock
    fakes["a"].state.report = ServerReport(slots=2, busy_slots=2, at=clock())
    v = rt.view()
    assert v.backends[0].free_slots == 0 and rt.view() is v
    clock.now += REPORT_FRESH / 2  # type: ignore[attr-defined]
    assert rt.view() is v
    clock.now += REPORT_FRESH  # type: ignore[attr-defined]
    stale = rt.view()
    assert stale is not v and stale.backends[0].free_slots is None and stale.backends[1] is v.backends[1]
    fakes["b"].state.inflight = 1  # an assignment on another backend
    assert rt.view().backends[1].inflight == 1


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_from_the_cloud_are_relayed_not_failed_over(tmp_path: Path, status: int) -> None:
    err = reply("cloud", status=status, verdict=Verdict(FailureKind.CLIENT_ERROR, False, None, "bad", status))
    rt, p, _, fakes = make(tmp_path, [err], {"llama": []})
    out = await p.run(ctx())
    assert out.reply is not None and out.reply.status == status and fakes["llama"].sent == []



async def test_a_request_only_a_whole_parse_refuses_is_a_400_and_ends_a_probe(tmp_path: Path) -> None:
    def unreadable(step: Step) -> Attempt:
        raise UnreadableRequest("the request body is not valid JSON: number is infinity")

    rt, p, cloud, fakes = make(tmp_path, [unreadable], {"llama": []})
    rt.quota.record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 - 1, "usage limit"))
    out = await p.run(ctx())
    assert cloud.sent[0].probe
    assert (out.reply, out.status, out.etype) == (None, 400, "invalid_request_error")
    assert "not valid JSON" in out.message
    assert rt.quota.state is not CloudState.PROBING and rt.quota.view().probe_due  # the next request probes


async def test_a_continuation_keeps_to_the_local_backends_limits(tmp_path: Path) -> None:
    # Mid-stream recovery asks a local backend for the rest of a message: within its
    # slots, as any local request, and the slot is held until that stream is closed.
    answer = Reply(200, [], single(b""), "b", True)
    rt, p, _, fakes = make(tmp_path, [], {"a": [], "b": [answer]})
    full = fakes["a"]
    full.cfg = LocalBackendConfig(name="a", url="http://127.0.0.1:1", context_window=32768, max_inflight=1)
    full.state.inflight = 1
    req = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    got = await p.continue_locally(ctx(req), req)
    assert got is answer and full.sent == [] and len(fakes["b"].sent) == 1


async def _hello_stream(request: web.Request) -> web.StreamResponse:
    """A local server's answer: "hello", streamed whole."""
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for name, data in [
        ("message_start", {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "x",
                                                                "content": [], "usage": {"input_tokens": 3, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"})]:
        await resp.write(encode_event(name, orjson.dumps(data)))
    return resp


async def _through_local_backends(rt: Runtime, config, req: dict) -> tuple:
    """`req` through the pipeline with the cloud down and `config`'s local backends, the
    first of which (f0) takes it; the stream read whole: (outcome, body, backends)."""
    async with aiohttp.ClientSession() as session:
        backends = [make_local_backend(c, session) for c in config.local]
        rt.use_backends(backends, cloud=FakeBackend("cloud", [Verdict(FailureKind.NETWORK, True, None, "down")]))  # type: ignore[arg-type]
        c = ctx(req)
        out = await Pipeline(rt).run(c)
        c.ex.req, c.ex.body = {}, b""  # as the door does once a reply is chosen
        assert out.reply is not None and out.reply.backend == "f0"
        body = b"".join([chunk async for chunk in out.reply.body])
        assert out.reply.close is not None
        out.reply.close()
    assert check_anthropic_stream(body).outcome == "ok", body[-400:]
    assert body.count(b"event: message_start") == 1 and b"hello" in body
    return out, body, backends


async def test_a_chain_of_late_failures_ends_on_the_backend_that_answers(tmp_path: Path, serve, monkeypatch) -> None:
    # Real local backends behind real (small) servers: two whose heads are late and then
    # fail, one that answers. One message reaches the client; each server got the request.
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.1)
    seen: dict[str, list[dict]] = {"f0": [], "f1": [], "good": []}

    def failing(name: str) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            seen[name].append(await request.json())
            await asyncio.sleep(0.4)
            return web.json_response({"error": {"message": "the model crashed"}}, status=503)
        app = web.Application()
        app.router.add_post("/v1/messages", handler)
        return app

    async def answers(request: web.Request) -> web.StreamResponse:
        seen["good"].append(await request.json())
        return await _hello_stream(request)

    good = web.Application()
    good.router.add_post("/v1/messages", answers)
    urls = {"f0": await serve(failing("f0")), "f1": await serve(failing("f1")), "good": await serve(good)}
    config = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "local": [
        {"name": n, "url": u, "api": "anthropic", "count_tokens": "estimate"} for n, u in urls.items()]})
    rt = Runtime(config, clock=Clock())
    req = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "fix the bug"}]}
    out, body, backends = await _through_local_backends(rt, config, req)
    assert out.reply.backend == "good"
    assert [m["messages"][-1]["content"] for n in ("f0", "f1", "good") for m in seen[n]] == ["fix the bug"] * 3
    note = out.reply.usage.note
    assert note.startswith("f0 failed after the stream began") and "handed to f1; f1 failed" in note and note.endswith("handed to good")
    assert all(b.state.inflight == 0 for b in backends)


async def test_a_late_resend_that_fails_in_turn_is_handed_to_the_next_backend(tmp_path: Path, serve, monkeypatch) -> None:
    # f0's template refuses text beside tool results after the client's stream began;
    # the folded resend then fails before content too: the message goes on to `good`.
    monkeypatch.setattr(local_module, "COMMIT_AFTER", 0.1)
    seen: list[dict] = []

    async def strict_then_crash(request: web.Request) -> web.Response:
        seen.append(await request.json())
        await asyncio.sleep(0.4)
        if len(seen) == 1:
            return web.json_response({"error": {"message": "Conversation roles must alternate user/assistant/user/assistant/..."}},
                                     status=500)
        return web.json_response({"error": {"message": "the model crashed"}}, status=503)


    f0, good = web.Application(), web.Application()
    f0.router.add_post("/v1/messages", strict_then_crash)
    good.router.add_post("/v1/messages", _hello_stream)
    config = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "local": [
        {"name": n, "url": await serve(app), "api": "anthropic", "count_tokens": "estimate"} for n, app in (("f0", f0), ("good", good))]})
    rt = Runtime(config, clock=Clock())
    req = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": [
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x = 1"},
                                     {"type": "text", "text": "now fix it"}]}]}
    out, body, backends = await _through_local_backends(rt, config, req)
    assert out.reply.backend == "good" and len(seen) == 2 and backends[0].fold_turns
    assert "sent again" in out.reply.usage.note and out.reply.usage.note.endswith("handed to good")
    assert all(b.state.inflight == 0 for b in backends)


def test_planning_again_after_the_door_let_the_request_go_sizes_the_request_kept() -> None:
    req = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "word " * 3000}]}
    c = ctx(req)
    facts = Pipeline(Runtime(parse_config({"log": {"enabled": False}}), clock=Clock())).facts(c.ex)
    c.ex.req, c.ex.body, c.ex.lazy = {}, b"", False  # the door lets go once a reply is chosen
    sized = _sized(facts, req)
    assert sized.size.known  # measured at once: the steps planned from here are local
    assert sized.size.local == local_size(req) > 1000 and sized.size.floor == fitted_size(req)


async def test_a_request_that_fits_every_window_as_sent_goes_local_unmeasured(tmp_path: Path) -> None:
    """The local size is measured only where it could change the plan: the backend sizes
    what it sends, so a request far inside every window costs no second conversion."""
    limit = Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 7200, "usage limit (five_hour)", 429)
    rt, p, _, fakes = make(tmp_path, [limit], {"llama": []})
    small = ctx()
    out = await p.run(small)
    assert out.reply is not None and out.reply.backend == "llama"
    assert out.plan is not None and out.plan.as_sent and not small.facts.size.known
    # Over the window as sent (the 32k fake): measured before the local step, as ever.
    big = ctx({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "word " * 30000}]})
    out = await p.run(big)
    assert out.plan is not None and not out.plan.as_sent and big.facts.size.known
    assert fakes["llama"].sent[-1].fit  # fitted: its local size is over the window


async def test_no_answer_while_the_cloud_is_out_until_a_known_time_says_when_to_retry(tmp_path: Path) -> None:
    """With no local model to stand in, the 503 carries the seconds until the reset the
    cloud named: a client that backs off (the SDKs read retry-after) waits for that."""
    limit = Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 7200, "usage limit (five_hour)", 429)
    rt, p, cloud, _ = make(tmp_path, [limit], {})
    out = await p.run(ctx())
    assert out.reply is None and out.status == 503 and out.retry_after == 7200
    rt.quota.clock.now += 7000.5  # type: ignore[attr-defined]
    out = await p.run(ctx())  # not asked: the cloud is out until its reset
    assert out.reply is None and out.status == 503 and out.retry_after == 200 and len(cloud.sent) == 1

