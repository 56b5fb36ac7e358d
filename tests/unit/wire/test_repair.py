"""wire/repair: tool calls written as text become tool_use blocks, only when unambiguous.

Tables for the pieces (almost-JSON, the schema check, name matching, reading a text
block), then the stream and whole-message paths of wire/local_stream with tools offered,
then the fixtures in tests/fixtures/local_outputs (recorded from the real small model, or
written for shapes it never writes), then property tests: arbitrary text never becomes a
call unless it holds a valid one, streams always pass the checker, and both paths agree.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.wire.anthropic import Event
from nonstop.wire.local_stream import LocalStreamNormalizer, normalize_message
from nonstop.wire.repair import (
    BARE_JSON,
    FENCED_JSON,
    HOLD_LIMIT,
    MAX_CALLS,
    MAX_DEPTH,
    NOT_REPAIRED,
    TOOL_CALL_TAGS,
    BrokenJSON,
    CallWatch,
    Repair,
    Split,
    Toolbox,
    ToolCall,
    loads_almost_json,
    schema_problem,
    split_text,
)
from tests.fixtures.local_outputs.record import TOOLS, content_of, outcome, replay
from tests.support.anthropic_stream import validate_anthropic_stream
from tests.unit.wire.openai.strategies import SETTINGS, split

FIXTURES = Path(__file__).parents[2] / "fixtures" / "local_outputs"
BOX = Toolbox.of(TOOLS)
assert BOX is not None

READ = '{"name": "Read", "arguments": {"file_path": "a.py"}}'
READ_CALL = ToolCall("Read", {"file_path": "a.py"})


# --- almost-JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "open_end", "value", "fixes"),
    [
        ('{"a": [1, 2]}', False, {"a": [1, 2]}, ()),
        ('{"a": [1, 2,],}', False, {"a": [1, 2]}, ("trailing commas",)),
        ("{'a': 'say \"hi\"', 'b': 'it\\'s'}", False, {"a": 'say "hi"', "b": "it's"}, ("single quotes",)),
        ('{"a": True, "b": False, "c": None}', False, {"a": True, "b": False, "c": None}, ("Python literals",)),
        ('{"a": {"b": [1, 2', True, {"a": {"b": [1, 2]}}, ("unclosed brackets",)),
        ('{"code": "line 1\nline 2\tx"}', False, {"code": "line 1\nline 2\tx"}, ("raw control characters in strings",)),
        ("{'a': None,", False, None, None),
        ('{"a": {"b": 1', False, None, None),
        ('{"a": "cut', True, None, None),
        ('{"a": 1, "b"', True, None, None),
        ('{"a": 1,', True, None, None),
        ('{"a":', True, None, None),
        ('{"a": undefined}', False, None, None),
        ('{"a": 1]', False, None, None),
        ('{,}', False, None, None),
        ('{"a" "b"}', False, None, None),
    ],
)
def test_loads_almost_json(text: str, open_end: bool, value: Any, fixes: tuple[str, ...] | None) -> None:
    if fixes is None:
        with pytest.raises(BrokenJSON):
            loads_almost_json(text, open_end=open_end)
    else:
        assert loads_almost_json(text, open_end=open_end) == (value, fixes)


# --- the schema check ----------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "n": {"type": "integer"},
        "ratio": {"type": "number"},
        "mode": {"enum": ["r", "w"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "opt": {"type": ["string", "null"]},
        "either": {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
    },
    "required": ["path"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"path": "a", "n": 2, "ratio": 0.5, "mode": "r", "tags": ["x"], "opt": None, "either": True}, ""),
        ({"path": "a", "n": 2.0}, ""),
        ({"n": 2}, "input.path is missing"),
        ({"path": 3}, "input.path is not string"),
        ({"path": "a", "n": True}, "input.n is not integer"),
        ({"path": "a", "n": 1.5}, "input.n is not integer"),
        ({"path": "a", "ratio": False}, "input.ratio is not number"),
        ({"path": "a", "mode": "x"}, "input.mode is not one of ['r', 'w']"),
        ({"path": "a", "tags": ["x", 1]}, "input.tags[1] is not string"),
        ({"path": "a", "either": 1}, "input.either matches none of anyOf"),
        ({"path": "a", "extra": 1}, "input.extra is not allowed"),
        ([], "input is not object"),
    ],
)
def test_schema_problem(value: Any, problem: str) -> None:
    assert schema_problem(value, SCHEMA, "input") == problem


def test_schema_without_constraints_takes_any_object() -> None:
    assert schema_problem({"anything": [1]}, {}, "input") == ""
    assert schema_problem({"x": 1}, {"type": "object", "properties": {"y": {"type": "string"}}}) == ""
    assert schema_problem(1, {"enum": [True]}) == "value is not one of [True]"


# --- tool names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "resolved"),
    [
        ("Read", ("Read", "")),
        ("read", ("Read", "name 'read' -> 'Read' (case)")),
        ("BASH", ("Bash", "name 'BASH' -> 'Bash' (case)")),
        ("Glo", ("Glob", "name 'Glo' -> 'Glob' (prefix)")),
        ("wri", ("Write", "name 'wri' -> 'Write' (prefix)")),
        ("Gl", None),  # too short to be taken as a prefix
        ("Edit", None),
        ("ReadFile", None),
        ("", None),
    ],
)
def test_resolve(name: str, resolved: tuple[str, str] | None) -> None:
    assert BOX.resolve(name) == resolved


def test_ambiguous_names_map_to_nothing() -> None:
    box = Toolbox.of([{"name": "search_code"}, {"name": "search_web"}, {"name": "run"}, {"name": "RUN"}])
    assert box is not None
    assert box.resolve("search") is None
    assert box.resolve("Run") is None
    assert box.resolve("run") == ("run", "")
    assert box.resolve("search_c") == ("search_code", "name 'search_c' -> 'search_code' (prefix)")


def test_no_tools_no_toolbox() -> None:
    assert Toolbox.of(None) is None
    assert Toolbox.of([]) is None
    assert Toolbox.of([{"type": "web_search_20250305"}, "junk"]) is None


# --- reading a text block ------------------------------------------------------------------------


def calls(text: str) -> tuple[ToolCall, ...]:
    return split_text(text, BOX).calls


@pytest.mark.parametrize(
    "text",
    [
        READ,
        f"  \n{READ}\n\n",
        f"```json\n{READ}\n```",
        f"```\n{READ}\n```",
        f"```JSON\n{READ}```",
        f"```json{READ}```",
        f"<tool_call>\n{READ}\n</tool_call>",
        f"<tool_call>{READ}</tool_call>\n",
        '{"tool": "Read", "input": {"file_path": "a.py"}}',
        '{"name": "Read", "parameters": {"file_path": "a.py"}}',
        '{"type": "function", "name": "Read", "parameters": {"file_path": "a.py"}}',
        '{"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": "{\\"file_path\\": \\"a.py\\"}"}}',
        '{"tool_call": {"name": "Read", "arguments": {"file_path": "a.py"}}}',
        '{"tool_calls": [{"name": "Read", "arguments": {"file_path": "a.py"}}]}',
        "{'name': 'read', 'arguments': {'file_path': 'a.py',},}",
        '{"name": "Read", "arguments": {"file_path": "a.py"',
        f"```json\n{READ}",
        f"<tool_call>\n{READ}",
        f"<tool_call>\n{READ}\n</tool_",
    ],
)
def test_one_call_in_any_form(text: str) -> None:
    found = split_text(text, BOX)
    assert found.prose == ""
    assert found.calls == (READ_CALL,)
    assert [r.kind for r in found.repairs] in ([BARE_JSON], [FENCED_JSON], [TOOL_CALL_TAGS])


@pytest.mark.parametrize(
    ("text", "kind", "changes"),
    [
        (READ, BARE_JSON, ()),
        (f"```json\n{READ}", FENCED_JSON, ("closing ``` missing",)),
        (f"<tool_call>{READ}", TOOL_CALL_TAGS, ("closing </tool_call> missing",)),
        ("{'name': 'read', 'arguments': {'file_path': 'a.py',},}", BARE_JSON,
         ("single quotes", "trailing commas", "name 'read' -> 'Read' (case)")),
        ('{"name": "Rea", "arguments": {"file_path": "a.py", "limit": 3', BARE_JSON,
         ("unclosed brackets", "name 'Rea' -> 'Read' (prefix)")),
        ("{'name': 'Read', 'arguments': {'file_path': 'a.py'}, 'id': None}", BARE_JSON,
         ("Python literals", "single quotes")),
        ('{"function": {"name": "Read", "arguments": "{\'file_path\': \'a.py\'}"}}', BARE_JSON,
         ("function-call shape", "arguments as a JSON string", "single quotes")),
    ],
)
def test_what_changed_is_reported(text: str, kind: str, changes: tuple[str, ...]) -> None:
    found = split_text(text, BOX)
    assert found.calls == (READ_CALL,) or found.calls == (ToolCall("Read", {"file_path": "a.py", "limit": 3}),)
    assert found.repairs == (Repair(kind, "Read", changes),)


def test_prose_then_a_call() -> None:
    text = f"I will read it.\n\n```json\n{READ}\n```\n"
    assert split_text(text, BOX) == Split("I will read it.\n", (READ_CALL,), (Repair(FENCED_JSON, "Read", ()),))


def test_a_run_of_calls() -> None:
    bash = '{"name": "Bash", "arguments": {"command": "ls"}}'
    text = f"<tool_call>\n{READ}\n</tool_call>\n<tool_call>\n{bash}\n</tool_call>"
    assert calls(text) == (READ_CALL, ToolCall("Bash", {"command": "ls"}))
    assert calls(f"{READ}\n{bash}") == (READ_CALL, ToolCall("Bash", {"command": "ls"}))
    assert calls(f'{{"tool_calls": [{READ}, {bash}]}}') == (READ_CALL, ToolCall("Bash", {"command": "ls"}))


@pytest.mark.parametrize(
    ("text", "attempt"),
    [
        (f"Here: {READ}", None),  # not at a line start
        (f"{READ}\nDone.", None),  # prose after it
        (f"{READ} and more", None),
        (f"```python\n{READ}\n```", None),  # code in another language's fence: no call, no attempt
        (f"```python\n{READ}", None),  # the same with the fence never closed (cut, or forgotten)
        ('{"name": "Alice", "age": 3}', None),
        ('{"name": "Read", "arguments": {"file_path": "a.py"}, "why": "to see"}', None),
        ('{"response": "hello"}', None),
        ('{"answer": "cut', None),  # broken, and nothing says it was a call
        ('{"name": "Edit", "arguments": {"file_path": "a.py"}}', Repair(NOT_REPAIRED, "", ("tool 'Edit' is not offered",))),
        ('{"name": "Read", "arguments": {"path": "a.py"}}', Repair(NOT_REPAIRED, "Read", ("input.file_path is missing",))),
        ('{"name": "Read", "arguments": {"file_path": 7}}', Repair(NOT_REPAIRED, "Read", ("input.file_path is not string",))),
        ('{"name": "Read", "arguments": ["a.py"]}', Repair(NOT_REPAIRED, "Read", ("arguments are not an object",))),
        ('{"name": "Read", "arguments": {"file_path": "a.py', Repair(NOT_REPAIRED, "", ("broken JSON: cut inside a string",))),
        ('{"name": "Read", "arguments": {"file_path": "a.py"},', Repair(NOT_REPAIRED, "", ("broken JSON: unclosed brackets",))),
        (f"{READ}\n```json\n", Repair(NOT_REPAIRED, "Read", ("text after the call",))),
        (f'{READ}\n{{"name": "Edit", "arguments": {{}}}}', Repair(NOT_REPAIRED, "", ("tool 'Edit' is not offered",))),
        (f'{READ}\n{{"answer": 42}}', Repair(NOT_REPAIRED, "", ("not a tool call",))),
    ],
)
def test_left_as_text(text: str, attempt: Repair | None) -> None:
    found = split_text(text, BOX)
    assert found == Split(text, (), (attempt,) if attempt else ())


def test_a_call_after_a_closed_code_fence_is_still_a_call() -> None:
    """Only a fence of another language left open makes the lines after it code."""
    assert calls(f"```python\nx = 1\n```\n{READ}") == (READ_CALL,)
    assert calls(f"```json\n{READ}\n```") == (READ_CALL,)


def test_long_runs_and_deep_nesting_are_data() -> None:
    run = "\n".join([READ] * (MAX_CALLS + 1))
    assert len(calls(run[len(READ) + 1 :])) == MAX_CALLS
    assert split_text(run, BOX).prose == READ + "\n"  # only the last MAX_CALLS are read as calls
    anything = Toolbox.of([{"name": "Any", "input_schema": {}}])
    assert anything is not None

    def nested(levels: int) -> str:  # the call object, its arguments, and more objects inside
        inner: Any = 1
        for _ in range(levels - 1):
            inner = {"k": inner}
        return json.dumps({"name": "Any", "arguments": inner})

    assert split_text(nested(MAX_DEPTH), anything).calls != ()
    assert split_text(nested(MAX_DEPTH + 1), anything) == Split(nested(MAX_DEPTH + 1))


def test_the_earliest_line_wins_and_later_lines_are_tried() -> None:
    text = f'{{"note": 1}}\n{READ}'
    assert split_text(text, BOX) == Split('{"note": 1}\n', (READ_CALL,), (Repair(BARE_JSON, "Read", ()),))


# --- holding a stream back -----------------------------------------------------------------------


def test_prose_goes_out_at_once() -> None:
    watch = CallWatch(BOX)
    assert watch.feed("Hello") == "Hello"
    assert watch.feed(" world {not held") == " world {not held"
    assert watch.feed(".\nNext line") == ".\nNext line"
    assert watch.end() == Split("")


def test_a_possible_call_is_held_until_ruled_out() -> None:
    watch = CallWatch(BOX)
    assert watch.feed("Let me look.\n") == "Let me look.\n"
    assert watch.feed("  ") == ""
    assert watch.feed('{"name": "Read"') == ""
    assert watch.feed("} and then") == '  {"name": "Read"} and then'
    assert watch.feed(" more") == " more"


@pytest.mark.parametrize(("held", "rules_out"), [("``", "`p"), ("```js", "x"), ("<tool_", "x"), ("{", "x"), ("{ ", "1")])
def test_the_first_character_that_rules_a_call_out_releases_the_text(held: str, rules_out: str) -> None:
    watch = CallWatch(BOX)
    assert watch.feed(held) == ""
    assert watch.feed(rules_out) == held + rules_out


def test_holding_is_bounded() -> None:
    watch = CallWatch(BOX)
    body = '{"name": "Write", "arguments": {"file_path": "a", "content": "' + "x" * HOLD_LIMIT
    sent = "".join(watch.feed(body[i : i + 100]) for i in range(0, len(body), 100))
    assert sent == body
    assert watch.end() == Split("")


def test_end_reads_what_was_held() -> None:
    watch = CallWatch(BOX)
    assert watch.feed("Reading.\n```json\n" + READ) == "Reading.\n"
    assert watch.end() == Split("", (READ_CALL,), (Repair(FENCED_JSON, "Read", ("closing ``` missing",)),))


# --- the stream and whole-message paths ----------------------------------------------------------


def stream_of(blocks: list[dict[str, Any]], stop_reason: str = "end_turn", chunk: int = 7) -> list[Event]:
    """A local server's stream for `blocks`, text and tool input cut into `chunk`-sized deltas."""
    events: list[Event] = [("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 20, "output_tokens": 0}}})]
    for i, block in enumerate(blocks):
        kind = block["type"]
        empty = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": ""},
                 "tool_use": {**block, "input": {}}}[kind]
        events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": empty}))
        body, delta, field = {"text": (block.get("text", ""), "text_delta", "text"),
                              "thinking": (block.get("thinking", ""), "thinking_delta", "thinking"),
                              "tool_use": (json.dumps(block.get("input")), "input_json_delta", "partial_json")}[kind]
        for piece in split(body, list(range(chunk, len(body), chunk))):
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": delta, field: piece}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 9}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def run_stream(events: list[Event], tools: list[dict[str, Any]] | None = TOOLS) -> tuple[list[Event], LocalStreamNormalizer]:
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=10, tools=tools, tag="abc123")
    out = [e for name, data in events for e in norm.feed(name, data)]
    return out + norm.finish(), norm


def both_paths(blocks: list[dict[str, Any]], stop_reason: str = "end_turn", chunk: int = 7,
               tools: list[dict[str, Any]] = TOOLS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the stream's outcome, the whole message's outcome) for the same reply."""
    out, norm = run_stream(stream_of(blocks, stop_reason, chunk), tools)
    validate_anthropic_stream(out)
    streamed = outcome(content_of(out), norm.stop_reason, norm.repairs)
    heard: list[Repair] = []
    msg = normalize_message({"content": blocks, "stop_reason": stop_reason}, model="m", input_tokens_estimate=10,
                            tools=tools, tag="abc123", on_repair=heard.append)
    return streamed, outcome(msg["content"], msg["stop_reason"], heard)


def test_a_call_written_as_text_becomes_a_tool_use_block() -> None:
    streamed, whole = both_paths([{"type": "text", "text": f"```json\n{READ}\n```"}])
    assert streamed == whole == {
        "content": [{"type": "tool_use", "name": "Read", "input": {"file_path": "a.py"}}],
        "stop_reason": "tool_use",
        "repairs": [[FENCED_JSON, "Read", []]],
    }


def test_blocks_after_a_split_are_renumbered() -> None:
    blocks = [
        {"type": "thinking", "thinking": "hmm"},
        {"type": "text", "text": f"Reading both.\n<tool_call>{READ}</tool_call>\n<tool_call>{READ}</tool_call>"},
        {"type": "text", "text": "done"},
    ]
    out, norm = run_stream(stream_of(blocks))
    validate_anthropic_stream(out)
    starts = [(d["index"], d["content_block"]["type"]) for n, d in out if n == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text"), (2, "tool_use"), (3, "tool_use"), (4, "text")]
    ids = [d["content_block"]["id"] for n, d in out if n == "content_block_start" and d["content_block"]["type"] == "tool_use"]
    assert all(i.startswith("toolu_nslabc123_") for i in ids) and len(set(ids)) == 2
    assert len(norm.repairs) == 2 and norm.stop_reason == "tool_use"
    streamed, whole = both_paths(blocks)
    assert streamed == whole


def test_a_server_that_starts_a_block_without_stopping_the_held_one() -> None:
    events = stream_of([{"type": "text", "text": READ}, {"type": "text", "text": "after"}])
    events = [e for e in events if not (e[0] == "content_block_stop" and e[1]["index"] == 0)]
    out, _ = run_stream(events)
    validate_anthropic_stream(out)
    assert [b["type"] for b in content_of(out)] == ["tool_use", "text"]


def test_a_held_block_left_open_is_settled_at_message_delta() -> None:
    events = [e for e in stream_of([{"type": "text", "text": READ}]) if e[0] != "content_block_stop"]
    out, norm = run_stream(events)
    validate_anthropic_stream(out)
    assert norm.stop_reason == "tool_use"


@pytest.mark.parametrize("stop_reason", ["end_turn", "max_tokens"])
def test_stop_reason_becomes_tool_use(stop_reason: str) -> None:
    # The wrapper left open, the arguments whole: a call, whatever ended the output.
    streamed, whole = both_paths([{"type": "text", "text": READ[:-1]}], stop_reason)
    assert streamed["stop_reason"] == whole["stop_reason"] == "tool_use"


@pytest.mark.parametrize("raw", ["weird", None, 7])
def test_a_stop_reason_no_client_knows_is_read_from_the_content_streamed_or_whole(raw: Any) -> None:
    streamed, whole = both_paths([{"type": "text", "text": "hi"}], raw)
    assert streamed == whole and whole["stop_reason"] == "end_turn"
    streamed, whole = both_paths([{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "a"}}], raw)
    assert streamed == whole and whole["stop_reason"] == "tool_use"


def test_a_call_the_limit_cut_inside_its_arguments_stays_text() -> None:
    # The model stopped with the arguments open: closing them is the repair. The limit
    # cut them: the rest was never written, and closing them would run what it has.
    written = READ[:-2]
    streamed, whole = both_paths([{"type": "text", "text": written}], "end_turn")
    assert streamed == whole and whole["stop_reason"] == "tool_use"
    for chunk in (1, 7, 10**6):
        streamed, whole = both_paths([{"type": "text", "text": written}], "max_tokens", chunk)
        assert streamed == whole
        assert whole["content"] == [{"type": "text", "text": written}]
        assert whole["stop_reason"] == "max_tokens"
        assert whole["repairs"] == [[NOT_REPAIRED, "Read", ["cut by the output limit inside its arguments"]]]


@pytest.mark.parametrize(
    "written",
    [
        '{"name": "Bash", "arguments": {"command": "ls", "timeout": [',  # the innermost open, empty
        '{"tool_calls": [{"name": "Read", "arguments": {"file_path": "a.py"}}, {"name": "Bash", "arguments": {"command": "ls"',
        '{"arguments": {"command": "ls"}, "name": "Bash", "arguments": {"command": "rm -r build"',  # a key given twice
    ],
)
def test_every_call_the_limit_cut_inside_stays_text(written: str) -> None:
    streamed, whole = both_paths([{"type": "text", "text": written}], "max_tokens")
    assert streamed == whole
    assert whole["content"] == [{"type": "text", "text": written}] and whole["stop_reason"] == "max_tokens"


QUOTED_CALL = '{"name": "Bash", "arguments": {"command": "rm -rf build"}}\n'


@pytest.mark.parametrize("stop_reason", ["max_tokens", "end_turn"])
@pytest.mark.parametrize("written", [
    "I'll write the notes.\n<tool_call>\n{'name': 'Write', 'arguments': {'file_path': 'notes.md', "
    "'content': '# Cleanup\nTo clean, the agent calls:\n" + QUOTED_CALL,
    # The Write begins mid-line, after prose: no line start reads it.
    "I'll write the notes: <tool_call>{'name': 'Write', 'arguments': {'file_path': 'notes.md', "
    "'content': '# Cleanup\nTo clean, the agent calls:\n" + QUOTED_CALL,
    # Its content runs past what a stream holds back while a call may be forming.
    "<tool_call>\n{\"name\": \"Write\", \"arguments\": {\"file_path\": \"notes.md\", \"content\": \""
    + "x" * (HOLD_LIMIT + 100) + "\nTo clean, the agent calls:\n" + QUOTED_CALL,
], ids=["quoted", "mid-line", "past-the-hold-limit"])
def test_the_lines_of_a_string_left_open_are_never_calls_of_their_own(written: str, stop_reason: str) -> None:
    # A Write whose content quotes a call, cut inside that content: the quoted line reads
    # as a whole call by itself, but it is the inside of the Write's string.
    for chunk in (7, 4096, 10**6):
        streamed, whole = both_paths([{"type": "text", "text": written}], stop_reason, chunk)
        assert streamed == whole
        assert whole["content"] == [{"type": "text", "text": written}], whole


@pytest.mark.parametrize("before", [
    "I'll check the file starts with '{'.\n",  # a brace and a quote in prose: no call's key
    'The reply must start with "{" so:\n',
    'Format: {"name": <tool>, ...\nI\'ll read it.\n',  # an object never closed, then an apostrophe
])
def test_quotes_and_braces_in_prose_before_a_call_do_not_hide_it(before: str) -> None:
    written = before + "<tool_call>\n" + READ + "\n</tool_call>"
    for chunk in (1, 7, 10**6):
        streamed, whole = both_paths([{"type": "text", "text": written}], "end_turn", chunk)
        assert streamed == whole
        assert [b["type"] for b in whole["content"]] == ["text", "tool_use"], whole


@pytest.mark.parametrize("text", ["x" + "\n" * 50_000, "x {" + " " * 50_000, "x {" + "\n" * 50_000], ids=["newlines", "spaces", "brace"])
def test_a_flood_of_blank_output_is_read_in_linear_time(text: str) -> None:
    # Each line start used to scan on to the end: a model stuck on newlines blocked the
    # event loop for minutes. Reading it whole and streamed is now one pass.
    started = time.perf_counter()
    assert split_text(text, BOX).calls == ()
    watch = CallWatch(BOX)
    sent = "".join(watch.feed(text[i : i + 16]) for i in range(0, len(text), 16))
    assert sent + watch.end().prose == text
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("form", [("<tool_call>\n", "\n</tool_call>\n"), ("```json\n", "\n```\n")], ids=["tags", "fence"])
def test_a_call_written_again_after_a_broken_first_try_is_made(form: tuple[str, str]) -> None:
    # The first try left a brace open; the model wrote the call again, whole.
    opening, closing = form
    written = opening + READ[:-1] + closing + opening + READ + closing.rstrip("\n")
    streamed, whole = both_paths([{"type": "text", "text": written}])
    assert streamed == whole
    assert [b["type"] for b in whole["content"]] == ["text", "tool_use"] and whole["stop_reason"] == "tool_use"


def test_the_context_window_cutting_a_call_is_a_cut_too() -> None:
    streamed, whole = both_paths([{"type": "text", "text": READ[:-2]}], "model_context_window_exceeded")
    assert streamed == whole and whole["content"] == [{"type": "text", "text": READ[:-2]}]


@pytest.mark.parametrize("end", ["error", "eof"])
def test_held_text_goes_out_before_a_stream_ends_without_a_stop_reason(end: str) -> None:
    text = f"Here:\n<tool_call>{READ}</tool_call>"
    events = [e for e in stream_of([{"type": "text", "text": text}]) if e[0] not in ("message_delta", "message_stop")]
    if end == "error":
        events.append(("error", {"type": "error", "error": {"type": "api_error", "message": "the server died"}}))
    out, norm = run_stream(events)
    validate_anthropic_stream(out, allow_error=True)
    assert out[-1][0] == "error"
    assert [b["type"] for b in content_of(out[:-1])] == ["text", "tool_use"]
    assert [r.tool for r in norm.repairs] == ["Read"]


def test_a_held_call_before_another_block_is_not_cut_by_the_limit() -> None:
    # The output went on past the call: the limit cut the block after it, not the call.
    blocks = [{"type": "text", "text": READ[:-2]}, {"type": "text", "text": "and more"}]
    streamed, whole = both_paths(blocks, "max_tokens")
    assert streamed == whole
    assert [b["type"] for b in whole["content"]] == ["tool_use", "text"]


def test_a_held_call_in_a_stream_that_ends_early_is_never_sent() -> None:
    events = [e for e in stream_of([{"type": "text", "text": READ[:-2]}]) if e[0] not in ("message_delta", "message_stop")]
    out, norm = run_stream(events)
    validate_anthropic_stream(out, allow_error=True)
    assert out[-1][0] == "error" and not any(b["type"] == "tool_use" for b in content_of(out))


def test_no_tools_offered_changes_nothing() -> None:
    events = stream_of([{"type": "text", "text": READ}, {"type": "text", "text": "x"}])
    with_none, norm = run_stream(events, tools=None)
    with_empty, _ = run_stream(events, tools=[])
    assert with_none == with_empty
    assert [b["type"] for b in content_of(with_none)] == ["text", "text"]
    assert norm.repairs == [] and norm.stop_reason == "end_turn"
    msg = {"content": [{"type": "text", "text": READ}]}
    assert normalize_message(msg, model="m", input_tokens_estimate=1)["content"] == msg["content"]


def test_prose_streams_without_delay_when_tools_are_offered() -> None:
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=10, tools=TOOLS)
    norm.feed(*stream_of([])[0])
    norm.feed("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    for piece in ["Sure", ", here it is", " {with braces}.\nAnd", " more"]:
        out = norm.feed("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
        assert "".join(d["delta"]["text"] for n, d in out if n == "content_block_delta") == piece


def test_an_attempt_left_as_text_is_counted() -> None:
    text = '{"name": "Edit", "arguments": {"file_path": "a.py"}}'
    streamed, whole = both_paths([{"type": "text", "text": text}])
    assert streamed == whole
    assert whole["content"] == [{"type": "text", "text": text}]
    assert whole["stop_reason"] == "end_turn"
    assert whole["repairs"] == [[NOT_REPAIRED, "", ["tool 'Edit' is not offered"]]]


def test_a_native_tool_call_is_untouched() -> None:
    streamed, whole = both_paths([{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "a"}}], "tool_use")
    assert streamed == whole
    assert whole["repairs"] == []


# --- fixtures ------------------------------------------------------------------------------------

FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return fixture


def test_fixtures_cover_the_forms() -> None:
    fixtures = [load(n) for n in FIXTURE_NAMES]
    recorded = [f for f in fixtures if f["source"] == "recorded"]
    assert {(f["endpoint"], f["stream"]) for f in recorded} == {
        ("/v1/messages", False), ("/v1/messages", True), ("/v1/chat/completions", False), ("/v1/chat/completions", True)}
    kinds = {r[0] for f in fixtures for r in f["expected"]["repairs"]}
    assert kinds == {BARE_JSON, FENCED_JSON, TOOL_CALL_TAGS, NOT_REPAIRED}
    assert any(r[0] != NOT_REPAIRED for f in recorded for r in f["expected"]["repairs"])


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture(name: str) -> None:
    fixture = load(name)
    got, events = replay(fixture)
    assert got == fixture["expected"]
    if fixture["source"] == "written":
        for chunk in (1, 5, 64):  # and streamed, cut anywhere
            streamed, _ = both_paths([{"type": "text", "text": fixture["text"]}], fixture["stop_reason"], chunk, fixture["tools"])
            assert streamed == got
    if events:
        validate_anthropic_stream(events)
        whole = {**fixture, "endpoint": "/v1/messages", "stream": False, "reply": whole_reply(fixture)}
        assert replay(whole)[0] == got


def whole_reply(fixture: dict[str, Any]) -> dict[str, Any]:
    """A recorded stream's reply as a whole Anthropic message, with nothing repaired."""
    events = fixture["reply"]
    if fixture["endpoint"] == "/v1/chat/completions":
        from nonstop.wire.openai import OpenAIStreamTranslator

        tr = OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=10)
        events = [e for _, d in events for e in tr.feed(d)] + tr.finish()
    stop = [d["delta"].get("stop_reason") for n, d in events if n == "message_delta"]
    return {"content": content_of(events), "stop_reason": stop[-1] if stop else None}


# --- properties ----------------------------------------------------------------------------------

_inputs = {
    "Read": st.fixed_dictionaries({"file_path": st.text(max_size=12)}, optional={"limit": st.integers(0, 99)}),
    "Bash": st.fixed_dictionaries({"command": st.text(max_size=12)}),
    "Glob": st.fixed_dictionaries({"pattern": st.text(max_size=8)}, optional={"path": st.text(max_size=8)}),
}


@st.composite
def call_texts(draw: st.DrawFn) -> str:
    """A call as a model might write it: any form, name case, JSON fixes, or broken."""
    name = draw(st.sampled_from([*_inputs, "Edit", "read", "BASH", "Glo"]))
    args = draw(_inputs.get(name.capitalize(), _inputs["Read"]) | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
    shape = draw(st.sampled_from(["name/arguments", "tool/input", "function"]))
    if shape == "function":
        body = json.dumps({"function": {"name": name, "arguments": json.dumps(args)}})
    else:
        key, arg_key = shape.split("/")
        body = json.dumps({key: name, arg_key: args}, indent=draw(st.sampled_from([None, 2])))
    fix = draw(st.sampled_from(["", "trailing comma", "single quotes", "cut"]))
    if fix == "trailing comma":
        body = body[:-1] + ",}"
    elif fix == "single quotes" and "'" not in body and '\\"' not in body:
        body = body.replace('"', "'")
    elif fix == "cut":
        body = body[: draw(st.integers(1, len(body)))]
    form = draw(st.sampled_from(["bare", "fenced", "tags"]))
    return {"bare": body, "fenced": f"```json\n{body}\n```", "tags": f"<tool_call>\n{body}\n</tool_call>"}[form]


_prose = st.lists(st.sampled_from([*"ab {}[]\"':,`<>/\n", "tool_call", "json", "```", "\n\n"]), max_size=12).map("".join)
texts = st.lists(st.one_of(_prose, call_texts()), max_size=4).map("".join)


@SETTINGS
@given(texts)
def test_text_becomes_calls_only_when_it_holds_valid_ones(text: str) -> None:
    found = split_text(text, BOX)
    assert text.startswith(found.prose)
    if not found.calls:
        assert found.prose == text
        return
    assert found.prose == "" or found.prose.endswith("\n")
    rest = text[len(found.prose) :]
    assert rest.lstrip()[:1] in ("{", "`", "<")
    for call, repair in zip(found.calls, found.repairs, strict=True):
        assert BOX.problem(call.name, call.input) == ""
        assert repair.repaired and repair.tool == call.name
        assert call.name.casefold()[:3] in rest.casefold()


@SETTINGS
@given(texts, st.lists(st.integers(0, 400), max_size=8), st.booleans(), st.sampled_from(["end_turn", "max_tokens"]))
def test_streams_pass_the_checker_and_agree_with_whole_messages(text: str, cuts: list[int], more: bool, stop_reason: str) -> None:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if more:
        blocks = [{"type": "thinking", "thinking": "t"}, *blocks, {"type": "text", "text": text[::-1]}]
    events = stream_of(blocks, stop_reason, chunk=10**6)
    deltas = [i for i, (n, d) in enumerate(events) if n == "content_block_delta" and d["delta"]["type"] == "text_delta"]
    for i in reversed(deltas):  # cut every text block at the drawn places
        name, data = events[i]
        pieces = split(data["delta"]["text"], cuts)
        events[i : i + 1] = [(name, {**data, "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    out, norm = run_stream(events)
    validate_anthropic_stream(out)
    streamed = outcome(content_of(out), norm.stop_reason, norm.repairs)
    heard: list[Repair] = []
    msg = normalize_message({"content": blocks, "stop_reason": stop_reason}, model="m", input_tokens_estimate=10,
                            tools=TOOLS, on_repair=heard.append)
    assert streamed == outcome(msg["content"], msg["stop_reason"], heard)


# --- code, quoted calls and lists that are not calls ------------------------------------------------

BASH_RM = '{"name": "Bash", "arguments": {"command": "rm -rf build"}}'


@pytest.mark.parametrize("stop_reason", ["max_tokens", "end_turn"])
def test_a_call_shaped_line_in_an_unclosed_python_fence_stays_code(stop_reason: str) -> None:
    """The model is writing Python for the user and the output ends (the limit, or a
    forgotten fence) right after a dict literal shaped like a call: code, not a Bash call
    running `rm -rf build`."""
    text = "Here is the test data module:\n```python\nCALLS = []\n" + BASH_RM
    streamed, whole = both_paths([{"type": "text", "text": text}], stop_reason)
    assert streamed == whole == {"content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "repairs": []}


@pytest.mark.parametrize("stop_reason", ["max_tokens", "end_turn"])
@pytest.mark.parametrize("text", [
    # Python holding Markdown: "```json" inside the python fence is code, not its end
    "Here is a fixture:\n```python\nDOC = \"\"\"\n```json\n" + BASH_RM,
    # a README in a four-backtick fence: the three-backtick fence inside it is its content
    "A README:\n````markdown\nRun:\n```json\n" + BASH_RM,
    "A README:\n````markdown\n```\n" + BASH_RM,
    # "```" with text after it closes nothing
    "```python\nx = 1\n``` and then\n" + BASH_RM,
    # a fence of tildes
    "~~~python\nCALLS = []\n" + BASH_RM,
    # ordinary code mid-answer, a call-shaped example among it, prose after
    "To clean up:\n```bash\nrm -rf build\n```\nas a call:\n```json\n" + BASH_RM + "\n```\nThen rebuild.",
], ids=["fence_line_in_python", "nested_in_four_backticks", "short_fence_in_four_backticks", "text_after_backticks",
        "tildes", "code_mid_answer"])
def test_a_fence_line_inside_code_does_not_end_the_code(stop_reason: str, text: str) -> None:
    """Code fences end as Markdown ends them: with a line of the opening's character, as
    many or more, and nothing after it. Any other line of backticks inside code is code,
    and a call-shaped line after it is still code, never a Bash call, streamed or whole."""
    for chunk in (1, 7, len(text)):
        streamed, whole = both_paths([{"type": "text", "text": text}], stop_reason, chunk)
        assert streamed == whole == {"content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "repairs": []}


@pytest.mark.parametrize("text", [
    f"```ls``` lists files.\n```json\n{READ}\n```",  # backticks with backticks after them open no fence
    f"````markdown\n```json\nx\n```\n````\n```json\n{READ}\n```",  # the four-backtick fence was closed
    f"~~~\nls\n~~~\n{READ}",
], ids=["inline_code", "after_four_backticks", "after_tildes"])
def test_a_call_after_code_whose_fences_close_is_still_a_call(text: str) -> None:
    assert calls(text) == (READ_CALL,)
    streamed, whole = both_paths([{"type": "text", "text": text}])
    assert streamed == whole and [b["type"] for b in streamed["content"]][-1] == "tool_use"


@pytest.mark.parametrize("stop_reason", ["max_tokens", "end_turn"])
@pytest.mark.parametrize("opening", ['{"type": "function", "name": "Write", "parameters": ',
                                     '{"id": "call_1", "name": "Write", "arguments": ',
                                     '{"arguments": ', '{"input": '])
def test_the_lines_of_a_string_left_open_stay_text_whatever_the_first_key(stop_reason: str, opening: str) -> None:
    """A Write cut inside its content, which quotes a call on a line of its own: that line
    is the inside of an open string whichever key the object began with, not a call."""
    text = (opening + '{"file_path": "notes.md", "content": "# Cleanup\nTo clean, the agent calls:\n'
            + BASH_RM + "\n")
    streamed, whole = both_paths([{"type": "text", "text": text}], stop_reason)
    assert streamed["content"] == whole["content"] == [{"type": "text", "text": text}]
    assert streamed["stop_reason"] == whole["stop_reason"] != "tool_use"


def test_a_tool_calls_list_makes_at_most_max_calls() -> None:
    """More than MAX_CALLS calls from one text block is data, however they are written."""
    assert split_text('{"tool_calls": [' + ", ".join([READ] * (MAX_CALLS + 1)) + "]}", BOX).calls == ()
    assert len(split_text('{"tool_calls": [' + ", ".join([READ] * MAX_CALLS) + "]}", BOX).calls) == MAX_CALLS


@pytest.mark.parametrize("path", ["stream", "whole"])
def test_a_text_call_naming_the_tool_as_an_openai_server_showed_it_is_repaired(path: str) -> None:
    """An OpenAI-format server is shown a long MCP tool name under a name it takes; a
    model that writes its call as text uses that name, the only one it saw. The call is
    repaired, under the tool's own name."""
    from nonstop.wire import openai as oa

    long_name = "mcp__project-knowledge-base__search_documents_by_semantic_similarity_v2"
    tools = [{"name": long_name, "input_schema": {"type": "object", "properties": {"q": {"type": "string"}},
                                                   "required": ["q"]}}]
    wire = oa.anthropic_to_openai_request({"model": "m", "max_tokens": 100, "tools": tools,
                                           "messages": [{"role": "user", "content": "find it"}]},
                                          model="m", max_tokens=100, stream=False)
    names = wire.pop(oa.TOOL_NAME_MAP_KEY)
    [shown] = [t["function"]["name"] for t in wire["tools"]]
    assert shown != long_name and names[shown] == long_name
    text = '<tool_call>{"name": "' + shown + '", "arguments": {"q": "retry limit"}}</tool_call>'
    if path == "stream":
        norm = LocalStreamNormalizer(model="m", input_tokens_estimate=10, tools=tools, tag="abc123", tool_names=names)
        out = [e for name, data in stream_of([{"type": "text", "text": text}], "end_turn", 7) for e in norm.feed(name, data)]
        content = content_of(out + norm.finish())
    else:
        content = normalize_message({"content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}, model="m",
                                    input_tokens_estimate=10, tools=tools, tag="abc123", tool_names=names)["content"]
    assert [(b["type"], b.get("name"), b.get("input")) for b in content] == [("tool_use", long_name, {"q": "retry limit"})]


def test_lines_that_each_reopen_a_string_are_read_in_linear_time() -> None:
    """Lines like `{"\\"` (a backslash outside any string, which no form of JSON has) no
    longer keep every line start's read alive to the end: a degenerate local reply of
    10,000 characters took seconds of the event loop; both paths read it the same."""
    text = "x\n" + '{"\\"\n' * 2000
    started = time.perf_counter()
    assert split_text(text, BOX).calls == ()
    assert time.perf_counter() - started < 0.5
    streamed, whole = both_paths([{"type": "text", "text": text}], "end_turn", 512)
    assert streamed == whole and streamed["content"] == [{"type": "text", "text": text}]
