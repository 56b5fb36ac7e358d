"""Shadow comparison in process: sampled cloud answers replayed on an idle local backend,
compared and stored; real local requests preempt it; the client never waits for it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from nonstop.backends.base import Reply, Usage, single
from nonstop.backends.registry import make_local_backend
from nonstop.config import LocalBackendConfig, parse_config
from nonstop.routing.backend_state import BackendState
from nonstop.routing.view import Capabilities
from nonstop.server.runtime import Runtime
from nonstop.server.shadow import Shadow, Tap
from tests.support.fake_cloud import sse

TOOLS = [{"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]
REQ = {"model": "claude-opus-5", "max_tokens": 100, "tools": TOOLS, "messages": [{"role": "user", "content": "read a.py"}]}


class LocalModel:
    def __init__(self, answer: dict[str, Any], delay: float = 0.0, max_inflight: int = 0):
        self.name = "llama"
        self.cfg = LocalBackendConfig(name="llama", url="http://127.0.0.1:1", max_inflight=max_inflight)
        self.state = BackendState("llama", Capabilities(context_window=32768))
        self.answer, self.delay = answer, delay
        self.asked = 0

    async def send_request(self, req: dict[str, Any], *, stream: bool) -> Reply:
        self.asked += 1
        release = self.state.lease()
        try:
            await asyncio.sleep(self.delay)
        finally:
            release()
        return Reply(200, [], single(orjson.dumps(self.answer)), self.name, False, Usage())


def runtime(tmp_path: Path, sample: float = 1.0) -> Runtime:
    return Runtime(parse_config({"state_dir": str(tmp_path), "shadow": {"sample": sample, "wait": 5}}))


async def cloud_reply(tmp_path: Path, message: dict[str, Any]) -> Tap:
    reply = Reply(200, [], single(orjson.dumps(message)), "cloud", False)
    tap = Tap(reply)
    assert b"".join([c async for c in reply.body]) == orjson.dumps(message)  # passed through unchanged
    return tap


async def settle(rt: Runtime) -> None:
    for _ in range(100):
        if not rt.shadow.running and not rt.shadow.waiting:
            return
        await asyncio.sleep(0.05)


async def test_a_sampled_answer_is_replayed_compared_and_stored(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    assert rt.store is not None
    rt.store.open()
    local = LocalModel({"content": [{"type": "tool_use", "name": "Read", "input": {"file_path": "a.py"}}],
                        "stop_reason": "tool_use", "usage": {"output_tokens": 12}})
    rt.use_backends([local])  # type: ignore[list-item]
    tap = await cloud_reply(tmp_path, {"content": [{"type": "tool_use", "name": "Read", "input": {"file_path": "a.py"}}],
                                       "stop_reason": "tool_use", "usage": {"output_tokens": 10}})
    assert rt.shadow.sample()
    rt.shadow.after(REQ, tap, "main", "req_1")
    await settle(rt)
    rt.store.flush()
    agreement = rt.store.shadow_agreement(time.time() - 60)
    rt.store.close()
    assert local.asked == 1
    assert agreement["main"]["n"] == 1 and agreement["main"]["rate"] == 1.0 and agreement["main"]["length_ratio"] == 1.2


async def test_off_by_default_and_sampled_at_the_configured_rate(tmp_path: Path) -> None:
    assert not runtime(tmp_path, sample=0.0).shadow.sample()
    rt = runtime(tmp_path, sample=0.25)
    draws = iter([0.1, 0.3, 0.24, 0.9])
    shadow = Shadow(rt, rng=lambda: next(draws))
    assert [shadow.sample() for _ in range(4)] == [True, False, True, False]


@pytest.mark.parametrize("max_inflight", [0, 1], ids=["no limit", "one slot"])
async def test_a_real_local_request_preempts_shadow_work_and_gets_its_slot(tmp_path: Path, max_inflight: int) -> None:
    """A real local request cancels a running shadow replay and waits for it to let go of
    its lease, so on a one-slot server (`max_inflight = 1`, as a llama-server is often
    run) the real request gets the slot: a background comparison never turns a user's
    request away while the cloud is out."""
    rt = runtime(tmp_path)
    local = LocalModel({"content": [], "stop_reason": "end_turn"}, delay=5.0, max_inflight=max_inflight)
    rt.use_backends([local])  # type: ignore[list-item]
    tap = await cloud_reply(tmp_path, {"content": [], "stop_reason": "end_turn", "usage": {"output_tokens": 3}})
    assert rt.shadow.sample()
    rt.shadow.after(REQ, tap, "main", "req_2")
    for _ in range(40):
        if rt.shadow.running:
            break
        await asyncio.sleep(0.05)
    assert rt.shadow.running and local.state.inflight == 1
    taken = await rt.take_slot(local)  # type: ignore[arg-type]  # a real request arrives
    assert taken is None, f"the real request was refused its slot: {taken}"
    await settle(rt)
    assert rt.shadow.preempted == 1 and local.state.inflight == 0


async def test_it_waits_for_idle_backends(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    local = LocalModel({"content": [], "stop_reason": "end_turn"})
    rt.use_backends([local])  # type: ignore[list-item]
    busy = local.state.lease()  # a real request in flight
    tap = await cloud_reply(tmp_path, {"content": [], "stop_reason": "end_turn", "usage": {"output_tokens": 3}})
    assert rt.shadow.sample()
    rt.shadow.after(REQ, tap, "main", "req_3")
    await asyncio.sleep(1.0)
    assert local.asked == 0
    busy()
    await settle(rt)
    assert local.asked == 1


async def test_a_cloud_stream_that_failed_mid_way_is_not_counted_as_a_disagreement(tmp_path: Path) -> None:
    """A sampled cloud stream that ends in an error event after some text is no answer to
    compare with: nothing is stored, so mid-stream cloud failures (what nonstop exists
    for) do not drag down the shadow agreement that `nonstop status` and the dashboard
    show for the local model."""
    rt = runtime(tmp_path)
    assert rt.store is not None
    rt.store.open()
    try:
        local = LocalModel({"content": [{"type": "text", "text": "Hello there."}], "stop_reason": "end_turn",
                            "usage": {"output_tokens": 4}})
        rt.use_backends([local])  # type: ignore[list-item]
        cloud = b"".join(sse(name, data) for name, data in [
            ("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ])
        reply = Reply(200, [], single(cloud), "cloud", True, Usage(error="the cloud stream failed mid-response"))
        tap = Tap(reply)
        assert b"".join([c async for c in reply.body]) == cloud  # the client got the failed stream
        assert rt.shadow.sample()
        rt.shadow.after(REQ, tap, "main", "req_failed")
        await settle(rt)
        rt.store.flush()
        agreement = rt.store.shadow_agreement(time.time() - 60)
    finally:
        rt.store.close()
    assert agreement == {}, f"a comparison with a cloud answer that never finished was stored: {agreement}"


async def test_a_shadow_replay_does_not_teach_the_planner_a_slow_prompt_speed(tmp_path: Path, serve: Any) -> None:
    """The shadow replays without streaming, and a whole reply's time holds the prompt and
    the answer together. The replay teaches no prompt speed that counts writing the answer
    as reading the prompt, so `nonstop status` shows the backend's real speed and the
    planner's "fastest" rule (compaction, background work) does not rank it as slow."""

    async def reads_at_once_writes_for_a_second(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(1.0)
        return web.json_response({"id": "msg_l", "type": "message", "role": "assistant", "model": "local",
                                  "content": [{"type": "text", "text": "word " * 200}], "stop_reason": "end_turn",
                                  "stop_sequence": None, "usage": {"input_tokens": 800, "output_tokens": 200}})

    server = web.Application()
    server.router.add_post("/v1/messages", reads_at_once_writes_for_a_second)
    url = await serve(server)
    rt = runtime(tmp_path)
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(LocalBackendConfig("llama", url, model="m", count_tokens="estimate"), session)
        rt.use_backends([backend])
        req = {"model": "claude-sonnet-4-5", "max_tokens": 300,
               "messages": [{"role": "user", "content": "Explain this code:\n" + "x = compute(x) + 1\n" * 150}]}
        tap = await cloud_reply(tmp_path, {"content": [{"type": "text", "text": "It adds one."}],
                                           "stop_reason": "end_turn", "usage": {"output_tokens": 5}})
        assert rt.shadow.sample()
        rt.shadow.after(req, tap, "main", "req_speed")
        await settle(rt)
        tokens = backend.estimate(backend.local_request(req))
    assert tokens >= 64 and rt.shadow.preempted == 0
    learned = backend.state.prompt_tps
    # The server read the prompt at once: any prompt speed learned is at least tokens / 0.1 s.
    assert learned is None or learned >= tokens / 0.1, (
        f"one shadow replay taught a prompt speed of {learned:.0f} tok/s for {tokens} prompt tokens read at once")


async def test_a_burst_sampled_together_holds_no_more_than_max_waiting_places(tmp_path: Path) -> None:
    """Requests are sampled when their reply starts and replayed when it ends: a burst of
    them, all sampled while their answers stream, takes at most MAX_WAITING places, and
    one that is not replayed after all gives its place back."""
    from nonstop.server.shadow import MAX_WAITING

    rt = runtime(tmp_path)
    assert [rt.shadow.sample() for _ in range(3 * MAX_WAITING)].count(True) == MAX_WAITING
    assert rt.shadow.waiting == MAX_WAITING
    rt.shadow.drop()  # its answer never came whole
    assert rt.shadow.waiting == MAX_WAITING - 1 and rt.shadow.sample() and not rt.shadow.sample()
    failed = Reply(200, [], single(b"{"), "cloud", False, Usage(error="cut"))
    tap = Tap(failed)
    _ = [c async for c in failed.body]
    rt.shadow.after(REQ, tap, "main", "req_cut")  # nothing to compare: the place goes back
    assert rt.shadow.waiting == MAX_WAITING - 1 and not rt.shadow.running
