"""Fitting a request to a local window (backends/local.py LocalBackend._fit): when the
server counts it differently from nonstop's estimate, and the room left for the answer."""

from __future__ import annotations

import asyncio
from typing import Any

from nonstop.backends.base import TooLong
from nonstop.backends.local import LocalBackend
from nonstop.config.model import LocalBackendConfig
from nonstop.routing.facts import RequestFacts, Size
from nonstop.routing.fit import RequestSize, local_size
from nonstop.routing.plan import Room, context_rule
from nonstop.routing.view import BackendView, Capabilities
from nonstop.wire.anthropic import estimate_tokens


class TemplateWithoutTools(LocalBackend):
    """A server whose chat template leaves the tools out (as SmolLM2's does): it counts
    everything but them, at a steady rate."""

    def __init__(self, window: int) -> None:
        super().__init__(LocalBackendConfig(name="small", url="http://127.0.0.1:9", context_window=window,
                                            max_output_tokens=64, count_tokens="server"), session=None)  # type: ignore[arg-type]
        self.counted: list[int] = []

    async def count_tokens(self, local_req: dict) -> int:
        n = estimate_tokens({k: v for k, v in local_req.items() if k != "tools"})
        self.counted.append(n)
        return n


def claude_code_like(turns: int) -> dict[str, Any]:
    tools = [{"name": f"Tool{i}", "description": "d " * 400, "input_schema": {"type": "object", "properties": {}}}
             for i in range(30)]
    messages: list[dict[str, Any]] = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "word " * 300})
        messages.append({"role": "assistant", "content": f"answer {i} " + "word " * 300})
    messages.append({"role": "user", "content": "the last question"})
    return {"model": "m", "max_tokens": 64, "system": "You are a coding agent. " + "rule " * 1500,
            "tools": tools, "messages": messages}


def test_a_template_that_leaves_tools_out_is_fitted_deeper_not_refused() -> None:
    backend = TemplateWithoutTools(4096)
    req = backend.local_request(claude_code_like(12))
    tokens = asyncio.run(backend.count_tokens(req))
    assert tokens > 4096  # too long as sent, even without its tools
    fitted = asyncio.run(backend._fit(req, tokens, 4096, req))
    assert fitted is not None, backend.counted
    assert fitted.tokens == backend.counted[-1] <= 4096 - 64
    # The first fitting, by the scale the whole request gave, cut tools that the server
    # never counted: it was counted again, and fitted further.
    assert len(backend.counted) >= 3
    assert {t.tier for t in fitted.tiers} >= {"system", "history"}


class CountsLikeTheEstimate(TemplateWithoutTools):
    async def count_tokens(self, local_req: dict) -> int:
        n = estimate_tokens(local_req)
        self.counted.append(n)
        return n


def test_a_server_that_counts_like_the_estimate_is_asked_once_more() -> None:
    backend = CountsLikeTheEstimate(4096)
    req = backend.local_request(claude_code_like(12))
    tokens = asyncio.run(backend.count_tokens(req))
    fitted = asyncio.run(backend._fit(req, tokens, 4096, req))
    assert fitted is not None and fitted.tokens <= 4096 - 64
    assert len(backend.counted) == 2  # the request as sent, and the fitted one


# --- the room left for the answer -----------------------------------------------------------------


class EstimatingBackend(LocalBackend):
    """A local server that cannot count tokens (nonstop's estimate is the size), with the
    default window and output limit of a configured backend."""

    def __init__(self, window: int = 32768, max_output: int = 4096) -> None:
        super().__init__(LocalBackendConfig(name="llama", url="http://127.0.0.1:9", context_window=window,
                                            max_output_tokens=max_output, count_tokens="estimate"),
                         session=None)  # type: ignore[arg-type]

    def prepare(self, local_req: dict, stream: bool, tokens: int, original: dict) -> Any:
        raise Sent(local_req, tokens)


class Sent(Exception):
    """What the backend would send the server: the request, fitted, and its size."""

    def __init__(self, request: dict, tokens: int) -> None:
        self.request, self.tokens = request, tokens


def big_instructions_session() -> dict[str, Any]:
    """A Claude Code-shaped request: a large CLAUDE.md quoted in the system prompt (pinned:
    never cut) and a conversation that makes the whole over a 32k window."""
    claude_md = ("# claudeMd\nCodebase and user instructions are shown below.\n\n"
                 "Contents of /work/proj/CLAUDE.md (project instructions):\n\n"
                 + "- a rule the user wrote for this project, keep it.\n" * 2100)
    messages: list[dict[str, Any]] = []
    for i in range(20):
        messages.append({"role": "user", "content": f"question {i} " + "word " * 300})
        messages.append({"role": "assistant", "content": f"answer {i} " + "word " * 300})
    messages.append({"role": "user", "content": "the last question"})
    return {"model": "claude-sonnet-4-5", "max_tokens": 32000,
            "system": [{"type": "text", "text": "You are Claude Code.\n\n" + claude_md}], "messages": messages}


async def test_a_request_the_planner_sends_as_fitting_is_sent_with_less_room_to_answer() -> None:
    """The planner (plan.py `context_rule`) tries a backend when the fitted request leaves
    MIN_OUTPUT_ROOM (256 tokens) for the answer; the backend prefers to keep
    output_room() free (4096 on a default 32k window). A request that fits only with less
    room is sent with its max_tokens lowered to what is left, not refused as too long
    (which would make Claude Code compact): a backend is never tried only to fail."""
    req = big_instructions_session()
    window = 32768
    backend = EstimatingBackend(window)
    view = BackendView("llama", Capabilities(context_window=window), tag="llama", token_ratio=1.0)
    local = local_size(req)
    facts = RequestFacts(model=req["model"], size=Size(local, RequestSize(lambda: req), local=local))
    room = context_rule(facts, view)
    assert isinstance(room, Room) and room.fit, room  # the planner: "fits once fitted"

    try:
        res = await backend.send_request(req, stream=False)
    except Sent as sent:
        assert sent.tokens + sent.request["max_tokens"] <= window and sent.request["max_tokens"] >= 256
        return
    assert not isinstance(res, TooLong), (
        f"planned as fitting ({room.reason}) but refused: prompt {res.tokens} tokens, window {res.window}")
    raise AssertionError(f"not sent: {res}")


async def test_a_request_that_leaves_the_answer_a_few_hundred_tokens_is_fitted_for_more() -> None:
    """A prompt near the top of the window (an 8k window, ~7.6k of prompt) left the answer
    only what remained (a few hundred tokens): a file write cut there fails the turn. It
    is fitted, as one over the window is, to keep output_room() for the answer."""
    window = 8192
    backend = EstimatingBackend(window)
    messages: list[dict[str, Any]] = []
    for i in range(6):
        messages.append({"role": "user", "content": f"question {i} " + "word " * 400})
        messages.append({"role": "assistant", "content": f"answer {i} " + "word " * 400})
    messages.append({"role": "user", "content": "the last question"})
    req = {"model": "m", "max_tokens": 32000, "messages": messages}
    prompt = estimate_tokens(backend.local_request(req))
    assert window - backend.output_room(window) < prompt < window - 256  # fits as it is, with little room
    try:
        await backend.send_request(req, stream=True)
    except Sent as sent:
        assert sent.request["max_tokens"] >= backend.output_room(window) == 2048
        assert sent.tokens + sent.request["max_tokens"] <= window
        return
    raise AssertionError("not sent")
