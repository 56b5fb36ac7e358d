"""Shadow comparison in process: sampled cloud answers replayed on an idle local backend,
compared and stored; real local requests preempt it; the client never waits for it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from nonstop.backends.base import Reply, Usage, single
from nonstop.config import LocalBackendConfig, parse_config
from nonstop.routing.backend_state import BackendState
from nonstop.routing.view import Capabilities
from nonstop.server.runtime import Runtime
from nonstop.server.shadow import Shadow, Tap

TOOLS = [{"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]
REQ = {"model": "claude-opus-5", "max_tokens": 100, "tools": TOOLS, "messages": [{"role": "user", "content": "read a.py"}]}


class LocalModel:
    def __init__(self, answer: dict[str, Any], delay: float = 0.0):
        self.name = "llama"
        self.cfg = LocalBackendConfig(name="llama", url="http://127.0.0.1:1")
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


async def test_a_real_local_request_preempts_shadow_work(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    local = LocalModel({"content": [], "stop_reason": "end_turn"}, delay=5.0)
    rt.use_backends([local])  # type: ignore[list-item]
    tap = await cloud_reply(tmp_path, {"content": [], "stop_reason": "end_turn", "usage": {"output_tokens": 3}})
    rt.shadow.after(REQ, tap, "main", "req_2")
    for _ in range(40):
        if rt.shadow.running:
            break
        await asyncio.sleep(0.05)
    assert rt.shadow.running and local.state.inflight == 1
    assert await rt.take_slot(local) is None  # a real request arrives  # type: ignore[arg-type]
    await settle(rt)
    assert rt.shadow.preempted == 1 and local.state.inflight == 0


async def test_it_waits_for_idle_backends(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    local = LocalModel({"content": [], "stop_reason": "end_turn"})
    rt.use_backends([local])  # type: ignore[list-item]
    busy = local.state.lease()  # a real request in flight
    tap = await cloud_reply(tmp_path, {"content": [], "stop_reason": "end_turn", "usage": {"output_tokens": 3}})
    rt.shadow.after(REQ, tap, "main", "req_3")
    await asyncio.sleep(1.0)
    assert local.asked == 0
    busy()
    await settle(rt)
    assert local.asked == 1
