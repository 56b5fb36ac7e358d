"""Mid-stream recovery (`[recovery] continue_locally = true`): a cloud stream that dies
after some text is continued by the local backend inside the same message. It never
applies to a half-written tool call, and with the option off the stream ends with a
well-formed error event."""

from __future__ import annotations

import anthropic
import pytest

from tests.support import procs, rawhttp, wirecheck
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

CLOUD_PARTIAL = "Hello from"  # what the fake cloud sends before it fails (two words)
LOCAL_TEXT = "recorded reply"  # what the recording local stand-in answers
MESSAGE = {"model": "claude-opus-5-5", "max_tokens": 50, "messages": [{"role": "user", "content": "Say hello."}]}
HEADERS = {"x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01"}


def config(cloud_url: str, local_url: str, *, recovery: bool) -> str:
    return nonstop_config(
        cloud_url, cloud={"first_byte_timeout": 3.0, "idle_timeout": 3.0},
        local=[{"name": "local", "url": local_url, "model": "local-model", "connect_timeout": 1.0}],
        recovery={"continue_locally": recovery},
    )


def sdk(ns: procs.Proc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=ns.url, api_key=procs.PLANTED_KEY, max_retries=0, timeout=30)


def raw_stream(ns: procs.Proc) -> tuple[rawhttp.Reply, wirecheck.Verdict]:
    """The same request, streamed, as raw bytes, and what the checker makes of them."""
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json={**MESSAGE, "stream": True}, headers=HEADERS)
    return r, wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=True)


MID_STREAM = ["reset_after_content", "error_after_content", "truncate"]


@pytest.mark.parametrize("mode", MID_STREAM)
def test_recovery_continues_the_message_locally(cloud, recorder_proc, nonstop_factory, mode):
    procs.set_mode(cloud, mode)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url, recovery=True))
    with sdk(ns).messages.stream(**MESSAGE) as s:
        events = [e.type for e in s]
        msg = s.get_final_message()
    assert "error" not in events
    assert len(msg.content) == 1 and msg.content[0].type == "text"
    text = msg.content[0].text
    assert text.startswith(CLOUD_PARTIAL) and text.endswith(LOCAL_TEXT), text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0
    # The raw bytes too: one well-formed message, nothing broken spliced in.
    procs.set_mode(cloud, mode)
    r, v = raw_stream(ns)
    assert v.outcome == "ok", (v.problem, r.body[-600:])
    assert v.text.startswith(CLOUD_PARTIAL) and v.text.endswith(LOCAL_TEXT)
    rows = rawhttp.request("GET", ns.url + "/_nonstop/api/requests")[2]
    assert b"continued on local" in rows


@pytest.mark.parametrize("mode", MID_STREAM)
def test_without_recovery_the_stream_ends_with_an_error_event(cloud, recorder_proc, nonstop_factory, mode):
    procs.set_mode(cloud, mode)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url, recovery=False))
    before = len(procs.answered(recorder_proc))
    with pytest.raises(anthropic.APIError), sdk(ns).messages.stream(**MESSAGE) as s:
        for _ in s:
            pass
    r, v = raw_stream(ns)
    assert v.outcome == "error", (v.problem, r.body[-600:])
    assert v.text == CLOUD_PARTIAL
    assert len(procs.answered(recorder_proc)) == before, "the local backend was asked although recovery is off"


@pytest.mark.parametrize("mode", ["tool_then_reset", "tool_then_error"])
def test_no_recovery_inside_a_tool_call(cloud, recorder_proc, nonstop_factory, mode):
    procs.set_mode(cloud, mode)
    ns = nonstop_factory(config(cloud.url, recorder_proc.url, recovery=True))
    before = len(procs.answered(recorder_proc))
    r, v = raw_stream(ns)
    assert r.headers["x-nonstop-backend"] == "cloud"
    assert v.outcome == "error", (v.problem, r.body[-600:])
    assert "content_block_start" in v.events and v.events[-1] == "error"
    assert b'"tool_use"' in r.body and b"input_json_delta" in r.body
    assert len(procs.answered(recorder_proc)) == before, "the local backend was asked to continue a tool call"
    assert r.total_s < 5
    procs.set_mode(cloud, mode)
    with pytest.raises(anthropic.APIError), sdk(ns).messages.stream(**MESSAGE) as s:
        for _ in s:
            pass


def test_recovery_with_no_local_backend_ends_with_an_error_event(cloud, nonstop_factory):
    procs.set_mode(cloud, "reset_after_content")
    ns = nonstop_factory(config(cloud.url, f"http://127.0.0.1:{procs.free_port()}", recovery=True))
    r, v = raw_stream(ns)
    assert v.outcome == "error", (v.problem, r.body[-600:])
    assert v.text == CLOUD_PARTIAL
    assert r.total_s < 5


def test_recovery_leaves_a_complete_stream_alone(cloud, recorder_proc, nonstop_factory):
    ns = nonstop_factory(config(cloud.url, recorder_proc.url, recovery=True))
    before = len(procs.answered(recorder_proc))
    with sdk(ns).messages.stream(**MESSAGE) as s:
        msg = s.get_final_message()
    assert msg.content[0].text == "Hello from the cloud."
    assert len(procs.answered(recorder_proc)) == before
