"""What the planner learns from a request: class, needs, size, the local-loop marker."""

from __future__ import annotations

import orjson
import pytest

from nonstop.routing.facts import (
    BYTES_PER_TOKEN,
    Size,
    Workload,
    classify_workload,
    facts_from_request,
    local_loop_tag,
)
from nonstop.wire.outline import outline
from nonstop.wire.tool_ids import backend_tag, local_tool_id
from tests.support.sizes import Measured

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("model", "messages", "headers", "max_tokens", "expected", "source"), [
    ("claude-sonnet-4-5", MSG, {}, 1024, Workload.MAIN, "default"),
    ("claude-sonnet-4-5", MSG, {"x-claude-code-request-class": "subagent"}, 1024, Workload.SUBAGENT, "header"),
    ("claude-sonnet-4-5", MSG, {"x-claude-code-request-class": "auxiliary"}, 1024, Workload.BACKGROUND, "header"),
    ("claude-sonnet-4-5", MSG, {"x-claude-code-request-class": "compaction"}, 1024, Workload.COMPACTION, "header"),
    ("claude-3-5-haiku", MSG, {"x-claude-code-request-class": "main"}, 1024, Workload.MAIN, "header"),
    ("claude-sonnet-4-5", MSG, {"x-claude-code-agent-id": "a1"}, 1024, Workload.SUBAGENT, "agent-id"),
    ("claude-haiku-4-5", MSG, {}, 512, Workload.BACKGROUND, "model"),
    ("claude-sonnet-4-5", [{"role": "user", "content": "quota"}], {}, 1, Workload.BACKGROUND, "shape"),
    ("claude-sonnet-4-5", [{"role": "user", "content": [{"type": "text", "text":
        "Your task is to create a detailed summary of the conversation so far, paying close attention"}]}],
     {}, 20000, Workload.COMPACTION, "shape"),
    ("claude-sonnet-4-5", MSG, {"x-claude-code-request-class": "bogus"}, 1024, Workload.MAIN, "default"),
])
def test_workload_classes(model, messages, headers, max_tokens, expected, source) -> None:
    assert classify_workload(model, messages, headers, max_tokens) == (expected, source)


def test_count_tokens_is_its_own_class() -> None:
    assert classify_workload("claude-haiku", MSG, {}, None, count_tokens=True) == (Workload.COUNT_TOKENS, "path")


def test_facts_from_a_claude_code_request() -> None:
    req = {
        "model": "claude-opus-5", "stream": True, "max_tokens": 32000,
        "thinking": {"type": "adaptive"},
        "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [{"type": "image", "source": {}}, {"type": "text", "text": "what is this"}]}],
    }
    f = facts_from_request(req, {"x-claude-code-session-id": "s1"}, body_len=35000)
    assert f.stream and f.max_tokens == 32000 and f.session == "s1"
    assert f.needs.tools and f.needs.thinking and f.needs.images and f.thinking
    assert f.needs.describe() == "tools+thinking+images"
    assert f.size.sent == int(35000 / BYTES_PER_TOKEN)
    assert f.workload is Workload.MAIN and not f.local_loop


def test_garbage_fields_do_not_raise() -> None:
    f = facts_from_request({"model": 3, "messages": "x", "max_tokens": True, "thinking": "on"}, {})
    assert f.model == "" and f.max_tokens is None and not f.thinking


def _never() -> int:
    raise AssertionError("measured what was already known")


def test_size_measures_once_and_only_when_asked() -> None:
    m = Measured(900, 400)
    s = Size(1500, m)
    assert not s.known and m.asked == []
    assert (s.local, s.local) == (900, 900) and m.asked == ["local"] and s.known
    assert (s.floor, s.local, s.floor) == (400, 900, 400) and m.asked == ["local", "floor"]
    floor_first = Measured(900, 400)
    s = Size(1500, floor_first)
    assert (s.floor, s.local, s.floor, s.local) == (400, 900, 400, 900) and floor_first.asked == ["floor", "local"]
    assert Size(10).local == 10 and Size(10).floor == 10


def test_local_loop_is_recognised_from_the_history_alone() -> None:
    tag = backend_tag("llama")
    tool_id = local_tool_id(tag)
    history = [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}, {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "a b c"}]},
    ]
    assert local_loop_tag(history) == tag
    # A cloud tool id, a genuine user turn, or a too-short history: no loop.
    cloud = [dict(m) for m in history]
    cloud[1] = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01ABC", "name": "Bash", "input": {}}]}
    assert local_loop_tag(cloud) == ""
    assert local_loop_tag(history + [{"role": "assistant", "content": "done"}, {"role": "user", "content": "next"}]) == ""
    assert local_loop_tag(history[:1]) == ""


def test_the_last_turn_is_read_in_one_pass() -> None:
    marker = "Your task is to create a detailed summary of the conversation so far"
    # The marker in a later text block, within the span looked at.
    blocks = [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": marker}]
    assert classify_workload("claude-sonnet-4-5", [{"role": "user", "content": blocks}], {}, 20000)[0] is Workload.COMPACTION
    # Past the first 2,000 characters of the turn's text it is not looked for.
    late = [{"type": "text", "text": "x" * 2100}, {"type": "text", "text": marker}]
    assert classify_workload("claude-sonnet-4-5", [{"role": "user", "content": late}], {}, 20000)[0] is Workload.MAIN
    # An image in the last user turn is a need even when an assistant turn follows it.
    image = {"role": "user", "content": [{"type": "image", "source": {}}, "junk", {"type": "text", "text": 3}]}
    f = facts_from_request({"model": "m", "messages": [image, {"role": "assistant", "content": "ok"}]}, {})
    assert f.needs.images and f.workload is Workload.MAIN and f.local_loop == ""
    # A turn without a tool result is never taken for a local loop.
    tag = backend_tag("llama")
    calls = {"role": "assistant", "content": [{"type": "tool_use", "id": local_tool_id(tag), "name": "Bash", "input": {}}]}
    assert facts_from_request({"model": "m", "messages": [MSG[0], calls, {"role": "user", "content": "stop"}]}, {}).local_loop == ""


def test_an_image_a_tool_returned_is_an_image_need() -> None:
    # Claude Code's Read of a picture, and screenshot tools, return the image inside the
    # tool result: the model that reads the result must read images. The outline's facts
    # (the fast path) see it as the parsed request's do.
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    call = local_tool_id(backend_tag("llama"))
    for content in ([image], [{"type": "text", "text": "shot.png"}, image]):
        req = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [
            {"role": "user", "content": "what is wrong in shot.png?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": call, "name": "Read", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call, "content": content}]}]}
        shape = outline(orjson.dumps(req))
        assert shape is not None
        for facts in (facts_from_request(req, {}), facts_from_request(shape.facts, {})):
            assert facts.needs.images and facts.local_loop == backend_tag("llama")
        # A result that only mentions images is not one.
        req["messages"][2]["content"][0]["content"] = '{"type": "image"} is what the parser reads'
        shape = outline(orjson.dumps(req))
        assert shape is not None and not facts_from_request(shape.facts, {}).needs.images
        assert not facts_from_request(req, {}).needs.images
    # an image a tool returned, with the last turn an assistant's (a prefill)
    req["messages"][2]["content"][0]["content"] = [image]
    req["messages"].append({"role": "assistant", "content": "Looking"})
    assert facts_from_request(req, {}).needs.images


def test_a_size_read_again_keeps_what_was_measured_and_measures_the_rest_from_the_new_reading() -> None:
    # A hand-over or a recovery plans again after the door has let its request go: what
    # is not measured yet is measured from the request they keep.
    first = Size(5000, Measured(4000, _never))
    assert first.local == 4000
    again = first.reading(Measured(_never, 2500))
    assert again.known and again.local == 4000 and again.floor == 2500
    unmeasured = Size(5000, Measured(_never, _never)).reading(Measured(3000, 2000))
    assert unmeasured.local == 3000 and unmeasured.floor == 2000
    done = Size(5000, local=4000, floor=3000).reading(Measured(_never, _never))
    assert (done.local, done.floor) == (4000, 3000)
    bare = Size(5000)  # given nothing to measure by: its size as sent stands for all
    assert bare.reading(Measured(_never, _never)) is bare and bare.known
