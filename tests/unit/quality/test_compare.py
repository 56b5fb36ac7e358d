"""The mechanical comparison of a cloud answer and a local one."""

from __future__ import annotations

import pytest

from nonstop.quality.compare import Answer, StreamAnswer, answer_of_message, compare

TOOLS = [{"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                                           "required": ["file_path"]}},
         {"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                                           "required": ["command"]}}]


@pytest.mark.parametrize(("cloud", "local", "agreed", "same_tool", "valid"), [
    (Answer([("Read", {"file_path": "a"})], "tool_use", 20), Answer([("Read", {"file_path": "b"})], "tool_use", 30), True, True, True),
    (Answer([("Read", {"file_path": "a"})], "tool_use", 20), Answer([("Bash", {"command": "ls"})], "tool_use", 30), False, False, True),
    (Answer([("Read", {"file_path": "a"})], "tool_use", 20), Answer([("Read", {"path": "a"})], "tool_use", 30), False, True, False),
    (Answer([("Read", {"file_path": "a"})], "tool_use", 20), Answer([], "end_turn", 30), False, False, True),
    (Answer([], "end_turn", 100), Answer([], "end_turn", 50), True, True, True),
    (Answer([], "end_turn", 100), Answer([], "max_tokens", 50), False, True, True),
    (Answer([], "end_turn", 100), Answer([("Nope", {})], "tool_use", 5), False, False, False),
])
def test_agreement(cloud: Answer, local: Answer, agreed: bool, same_tool: bool, valid: bool) -> None:
    c = compare(cloud, local, TOOLS)
    assert (c.agreed, c.same_tool, c.valid_input) == (agreed, same_tool, valid)
    assert c.as_dict()["agreed"] is agreed


def test_length_ratio_and_latency_are_reported() -> None:
    c = compare(Answer([], "end_turn", 100, 800.0), Answer([], "end_turn", 50, 4000.0), TOOLS)
    assert c.length_ratio == 0.5 and (c.cloud_ms, c.local_ms) == (800.0, 4000.0)
    assert compare(Answer([], "end_turn", 0), Answer([], "end_turn", 5), TOOLS).length_ratio is None


def test_answers_from_a_message_and_from_a_stream_agree() -> None:
    msg = {"content": [{"type": "text", "text": "ok"}, {"type": "tool_use", "name": "Read", "input": {"file_path": "x"}}],
           "stop_reason": "tool_use", "usage": {"output_tokens": 9}}
    whole = answer_of_message(msg)
    s = StreamAnswer()
    s.feed([
        ("message_start", {"type": "message_start", "message": {}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "name": "Read", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"file_'}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 'path": "x"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
    ])
    assert (s.answer.tools, s.answer.stop_reason, s.answer.output_tokens) == (whole.tools, whole.stop_reason, whole.output_tokens)
