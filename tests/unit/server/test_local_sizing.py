"""How a request is sized for the local models where it is planned again or explained:
the fitted floor (measured only for a request over a window) on shapes the validator lets
through, in a hand-over after a server's too-long, and in a recovery."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nonstop.backends.base import Reply, TooLong, single
from nonstop.config import parse_config
from nonstop.routing.fit import fit_request, fitted_size, local_size
from nonstop.routing.plan import MIN_OUTPUT_ROOM
from nonstop.routing.view import Capabilities
from nonstop.server.explain import explain_offline
from nonstop.server.recovery import prefill_request
from nonstop.wire.anthropic import estimate_tokens, to_local_request
from nonstop.wire.validate import validate_messages_request
from tests.unit.server.test_pipeline import ctx, make

BIG = "lorem ipsum dolor sit amet " * 1500  # ~40 KB: over a 4k window by any count


def _odd_but_valid() -> dict[str, Any]:
    # A tool_result whose content is a number: validate_messages_request lets it through,
    # to_local_request/estimate_tokens read it, fit_floor cannot (TypeError).
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": [
        {"role": "user", "content": BIG},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": 7}]},
    ]}


# --- explain walks the fitting tiers on any valid request ---------------------------------------

def test_explain_of_a_valid_request_over_a_window_does_not_raise() -> None:
    req = _odd_but_valid()
    assert validate_messages_request(req) == ""  # the dashboard's /_nonstop/api/explain accepts it
    local_size(req)  # the size alone reads it too
    cfg = parse_config({"log": {"enabled": False}, "local": [
        {"name": "small", "url": "http://127.0.0.1:1", "context_window": 4096}]})
    # The planner asks for the floor (the request is over the window): the fitting tiers
    # read a result's content of any type.
    out = explain_offline(cfg, req, {}, None, time.time())
    assert out["plan"]["steps"]


# --- a hand-over walks them in the middle of a stream ----------------------------------------------

async def test_a_hand_over_after_a_too_long_does_not_raise_mid_stream(tmp_path: Path) -> None:
    # "a" (8k window by estimate) takes the stream; its server says the prompt is too long,
    # naming more tokens than nonstop estimated (LocalBackend._open: state.counted), so a's
    # token_ratio is learned. The hand-over plans again: context_rule(a) (a is tried, but
    # the rules run before `tried` filters it) now finds local*ratio over a's window and asks
    # for the floor: fitted_size(req) inside plan(), inside the stream. "b" (128k) would
    # have answered.
    req = _odd_but_valid()
    answer = Reply(200, [], single(b"answer"), "b", True)
    rt, p, _cloud, fakes = make(tmp_path, [], {"a": [], "b": [answer]}, routing={"main": {"cloud": "never"}})
    est = local_size(req)
    a, b = fakes["a"], fakes["b"]
    for fake, window in ((a, est + 2000), (b, 131072)):
        fake.state.caps = Capabilities(context_window=window)

    late = Reply(200, [], single(b""), "a", True, handover=True)

    async def body():
        named = 2 * est  # the server's count: twice the estimate
        a.state.counted(estimate_tokens(to_local_request(req, model="", max_tokens=1)), named)
        taken = await late.instead(TooLong("a", named, est + 2000)) if late.instead else None
        if taken is not None:
            async for chunk in taken.body:
                yield chunk

    late.body = body()
    a.script = [late]
    c = ctx(req)
    out = await p.run(c)
    c.ex.req, c.ex.body = {}, b""  # the door lets the request go
    assert out.reply is not None and out.reply.backend == "a"
    # The floor is measured inside the stream's body here: nothing may escape it.
    assert b"".join([chunk async for chunk in out.reply.body]) == b"answer"


# --- recovery sizes the request, not its prefill ------------------------------------------------

def _long_history(turns: int = 120) -> dict[str, Any]:
    msgs: list[dict[str, Any]] = []
    for i in range(turns):
        msgs.append({"role": "user", "content": f"question {i}: " + "x" * 1500})
        msgs.append({"role": "assistant", "content": f"answer {i}: " + "y" * 1500})
    msgs.append({"role": "user", "content": "and now fix the bug"})
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": msgs}


async def test_recovery_plans_with_the_floor_of_the_request_not_of_its_prefill(tmp_path: Path) -> None:
    req = _long_history()
    pre = prefill_request(req, "Here is the fix:")
    window = 16384
    usable = window - MIN_OUTPUT_ROOM
    # The request (last turn a user turn) fits once fitted; its prefill (last turn the
    # assistant's) cannot drop turns in fit_floor, so its "floor" is far larger ...
    assert fitted_size(req) <= usable < fitted_size(pre) < local_size(req)
    # ... though fit_request does fit the prefill into the window: "a" could continue it.
    local = to_local_request(pre, model="", max_tokens=100)
    assert fit_request(dict(local), usable - 100, estimate_tokens, drop_turns=True).fits

    answer = Reply(200, [], single(b""), "a", True)
    rt, p, _cloud, fakes = make(tmp_path, [], {"a": [answer]})
    fakes["a"].state.caps = Capabilities(context_window=window)
    c = ctx(req)
    c.facts = p.facts(c.ex)
    _ = c.facts.size.local  # _walk measured the local size (a local step was tried) ...
    # ... while a's window / ratio said it fit, so the floor was not measured then. Since,
    # a's ratio was learned (local_anthropic counts every request: state.counted).
    fakes["a"].state.token_ratio = 1.0
    c.ex.req, c.ex.body = {}, b""  # the door lets the request go
    # The floor comes from the request itself (fitted_size(req) <= usable): "a" is planned
    # "fits once fitted" and continues the stream.
    got = await p.continue_locally(c, pre, req)  # as the door calls it: the request it keeps
    assert got is answer and fakes["a"].requests == [pre]
