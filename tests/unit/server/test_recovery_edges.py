"""server/recovery at its edges: what the client holds after a cloud stream died with
`[recovery] continue_locally` on (whitespace, usage, a message that lacked only its end,
the client's own prefill, fitting the prefilled request). Streams are read back with the
official anthropic SDK, as a client would."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2 as httpx
import pytest

from nonstop.backends.base import Reply, Usage
from nonstop.server.recovery import prefill_request, recovering
from nonstop.wire.anthropic import to_local_request
from nonstop.wire.local_stream import LocalStreamNormalizer
from nonstop.wire.openai.backend_request import anthropic_to_openai_request
from tests.support.anthropic_stream import validate_anthropic_stream
from tests.unit.server.test_recovery import (
    ERROR,
    Event,
    block,
    chunks,
    end,
    events_of,
    local_reply,
    sse,
    start,
    stop,
    text,
)

REQ = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "stream": True,
       "messages": [{"role": "user", "content": "hi"}]}
CUT = ("error", {"type": "error", "error": {"type": "api_error",
                                            "message": "The cloud stream ended early; the response is incomplete."}})


def sdk_message(data: bytes) -> anthropic.types.Message:
    """What the official SDK makes of these stream bytes (get_final_message)."""
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=data))
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url="http://nonstop.test",
                                 http_client=httpx.Client(transport=transport), max_retries=0)
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=1000,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        return stream.get_final_message()


def normalized(raw: list[Event], *, estimate: int) -> list[Event]:
    """A local server's raw stream as LocalBackend sends it on (LocalStreamNormalizer)."""
    norm = LocalStreamNormalizer(model="local", input_tokens_estimate=estimate)
    out: list[Event] = []
    for name, data in raw:
        out.extend(norm.feed(name, data))
    return out + norm.finish()


async def run(cloud: list[bytes], continuation: Reply | None, req: dict[str, Any] = REQ) -> tuple[bytes, Reply, list]:
    reply = Reply(200, [], chunks(*cloud), "cloud", True, Usage())
    asked: list[dict[str, Any]] = []

    async def continue_locally(r: dict[str, Any]) -> Reply | None:
        asked.append(r)
        return continuation

    out = b"".join([c async for c in recovering(reply, reply.body, req, continue_locally)])
    return out, reply, asked


# --- whitespace the client already has ----------------------------------------------------------


@pytest.mark.parametrize(("cloud_text", "local_text", "expected"), [
    ("Hello there ", " friend.", "Hello there friend."),
    ("Steps:\n\n", "\n\n1. Read the file.", "Steps:\n\n1. Read the file."),
], ids=["space", "blank-line"])
async def test_trailing_whitespace_the_client_already_has_is_not_repeated(
        cloud_text: str, local_text: str, expected: str) -> None:
    """The cloud dies right after text that ends in whitespace (the usual token boundary);
    the prefill leaves it out, and the local model writes its own: the client, which has
    the cloud's, gets it once, not twice (in code or a quoted string that would change the
    answer)."""
    cloud = [start(), block(0), text(0, cloud_text)]
    local = local_reply([start(), block(0), text(0, local_text), stop(0), *end()])
    out, _, asked = await run([sse(cloud), sse([ERROR])], local)
    assert asked, "recovery did not run"
    msg = sdk_message(out)
    assert "".join(b.text for b in msg.content if b.type == "text") == expected


# --- the usage the client ends with ---------------------------------------------------------------


async def test_the_clients_input_tokens_stay_the_clouds_after_a_local_continuation() -> None:
    """The cloud counted the prompt (150,000 tokens); the local server counted the fitted
    one it was sent (3,000). The SDKs take message_delta's counts over message_start's, so
    the continuation's message_delta carries the cloud's prompt counts: Claude Code's
    context accounting and auto-compaction stay right. Its output counts both parts."""
    cloud_start = ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 150000, "output_tokens": 1}}})
    cloud = [cloud_start, block(0), text(0, "Let me look at the "), text(0, "configuration first")]
    raw_local = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_l", "type": "message", "role": "assistant", "model": "local", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3000, "output_tokens": 0}}}),
        block(0), text(0, " file."), stop(0),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 3}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    local = local_reply(normalized(raw_local, estimate=3000), output_tokens=3)
    out, _, _ = await run([sse(cloud), sse([ERROR])], local)
    validate_anthropic_stream(events_of(out))
    msg = sdk_message(out)
    assert msg.usage.input_tokens == 150000


# --- a message that lacks only its end ----------------------------------------------------------


@pytest.mark.parametrize("failure", [CUT, ERROR], ids=["connection-cut", "overloaded-event"])
async def test_a_stream_cut_after_message_delta_ends_with_message_stop_not_an_error(failure: Event) -> None:
    """Every block is closed and message_delta has arrived when the connection drops or an
    error comes: only message_stop is missing, and nonstop gives it (no local model), so
    the SDK does not raise on a complete answer."""
    cloud = [start(), block(0), text(0, "All tests pass."), stop(0), *end()[:1]]
    out, reply, asked = await run([sse(cloud), sse([failure])], None)
    assert not asked
    validate_anthropic_stream(events_of(out))
    assert "".join(b.text for b in sdk_message(out).content if b.type == "text") == "All tests pass."
    assert reply.usage.error == ""


async def test_a_complete_tool_call_cut_before_message_delta_is_delivered() -> None:
    """Text and a whole Read call whose block the cloud closed, then the connection died
    before message_delta: nothing of the call is missing, so the message ends with
    stop_reason tool_use, and Claude Code runs the call instead of losing the turn."""
    cloud = [start(), block(0), text(0, "Let me read it."), stop(0), block(1, "tool_use"),
             ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                      "delta": {"type": "input_json_delta", "partial_json": '{"file_path": "/a.py"}'}}),
             stop(1)]
    out, _, _ = await run([sse(cloud), sse([CUT])], None)
    validate_anthropic_stream(events_of(out))
    msg = sdk_message(out)
    assert msg.stop_reason == "tool_use"
    assert [b.input for b in msg.content if b.type == "tool_use"] == [{"file_path": "/a.py"}]


# --- the client's own prefill -------------------------------------------------------------------


def test_the_prefill_continues_the_clients_own_prefill_as_one_text() -> None:
    """A client prefilled the answer ("The capital of France is") and the cloud went on
    with " Paris, and" before dying: the local model continues one text, the one the
    client holds, not two assistant texts an OpenAI-format server would join with a
    blank line."""
    req = {"model": "m", "max_tokens": 100, "messages": [
        {"role": "user", "content": "Tell me about France."},
        {"role": "assistant", "content": "The capital of France is"}]}
    local = to_local_request(prefill_request(req, " Paris, and"), model="m", max_tokens=100)
    body = anthropic_to_openai_request(local, model="m", max_tokens=100, stream=True)
    assert body["messages"][-1] == {"role": "assistant", "content": "The capital of France is Paris, and"}


# --- fitting the prefilled request ---------------------------------------------------------------


def test_fitting_a_prefilled_request_keeps_the_latest_user_turn_whole() -> None:
    """The prefill is part of the latest turn when the request is fitted (routing/fit.py):
    the user's latest turn (a file the answer is about) stays whole, as it does without
    the prefill, instead of being cut as an old one."""
    from nonstop.routing.fit import fit_request
    from nonstop.wire.anthropic import estimate_tokens

    big = "Summarise this file:\n" + "line of the file content\n" * 800
    req = {"model": "m", "max_tokens": 100, "messages": [
        {"role": "user", "content": "old question " * 400},
        {"role": "assistant", "content": "old answer " * 400},
        {"role": "user", "content": [{"type": "text", "text": big}]}]}

    def user_text(fitted: dict[str, Any]) -> str:
        last_user = [m for m in fitted["messages"] if m["role"] == "user"][-1]["content"]
        return last_user if isinstance(last_user, str) else "".join(b.get("text", "") for b in last_user)

    plain = fit_request(req, 7000, estimate_tokens, drop_turns=True)
    assert plain.fits and big in user_text(plain.request)  # without the prefill it fits, whole
    prefilled = fit_request(prefill_request(req, "The file defines"), 7000, estimate_tokens, drop_turns=True)
    assert prefilled.fits
    assert big in user_text(prefilled.request)
