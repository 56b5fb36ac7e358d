"""The request outline agrees with the whole-request checks wherever it answers.

`outline(body)` stands in for parsing, validating, cleaning and reading the facts of a
Messages request on the cloud path. It may decline (None: the caller parses the whole
request); when it answers, every answer must be the one the full path would give.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nonstop.routing.facts import facts_from_request
from nonstop.wire.hygiene import blank_text, clean_history_for_cloud
from nonstop.wire.local_stream import LOCAL_THINKING_SIGNATURE
from nonstop.wire.outline import Tails, outline
from nonstop.wire.tool_ids import backend_tag, local_tool_id
from nonstop.wire.validate import validate_messages_request

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from payload import claude_code_request  # noqa: E402

MARKER = "Your task is to create a detailed summary of the conversation so far"
HEADERS = {"x-claude-code-session-id": "s1"}


def agrees(req: Any) -> bool:
    """Checks the outline of `req` against the full path; True when it answered."""
    body = orjson.dumps(req)
    shape = outline(body)
    if shape is None:
        return False
    assert isinstance(req, dict)
    assert shape.problem == validate_messages_request(req)
    assert shape.model == req.get("model") and shape.stream == (req.get("stream") is True)
    if not shape.problem:
        assert clean_history_for_cloud(req) is None
        fast = facts_from_request(shape.facts, HEADERS, body_len=len(body))
        full = facts_from_request(req, HEADERS, body_len=len(body))
        assert fast._replace(size=None) == full._replace(size=None)
        assert fast.size.sent == full.size.sent
    return True


def test_a_claude_code_request_takes_the_outline() -> None:
    req = claude_code_request(stream=True)
    assert agrees(req)
    shape = outline(orjson.dumps(req))
    assert shape is not None and shape.problem == "" and shape.stream is True


def test_a_history_that_needs_cleaning_is_parsed_whole() -> None:
    tag = backend_tag("llama")
    local = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": LOCAL_THINKING_SIGNATURE},
                                          {"type": "tool_use", "id": local_tool_id(tag), "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": local_tool_id(tag), "content": "ok"}]},
    ]
    assert outline(orjson.dumps({"model": "m", "messages": local})) is None
    bad_id = [{"role": "assistant", "content": [{"type": "tool_use", "id": "call 1", "name": "f", "input": {}}]}]
    assert outline(orjson.dumps({"model": "m", "messages": bad_id})) is None


@pytest.mark.parametrize("body", [
    b"", b"{", b"[1, 2]", b"null", b'"x"', b'{"model": "m"}', b'{"model": "m", "messages": {}}',
    b'{"model": "m", "messages": [1]}', b'{"model": "m", "messages": [{"content": "x"}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": null}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": ["x"]}]}',
    b'{"model": "m", "messages": [], "stream": "yes"}', b'{"model": "m", "messages": [], "stream": null}',
    b'{"model": "m", "messages": [], "max_tokens": 1.0}', b'{"model": "m", "messages": [], "max_tokens": true}',
    b'{"model": "m", "messages": [], "tools": [{"name": 3}]}', b'{"model": "m", "messages": [], "tools": ["Read"]}',
    b'{"model": "m", "messages": [], "tools": {}}', b'\xff\xfe',
])
def test_what_the_outline_does_not_describe_is_parsed_whole(body: bytes) -> None:
    assert outline(body) is None


@pytest.mark.parametrize("depth", [5_000, 1_000_000])
def test_nesting_too_deep_is_left_to_the_full_parse(depth: int) -> None:
    """Inside a field the outline skips, as in one it reads; the full parse then refuses it."""
    deep = b"[" * depth + b"]" * depth
    for body in (b'{"model": "m", "x": ' + deep + b', "messages": []}',
                 b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_use", "input": ' + deep + b'}]}]}'):
        assert outline(body) is None
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)


@pytest.mark.parametrize("req", [
    {"model": "", "messages": []},
    {"model": 7, "messages": []},
    {"model": "claude\nx", "messages": []},
    {"model": "m" * 257, "messages": []},
    {"model": "m", "messages": [], "max_tokens": 0},
    {"model": "m", "messages": [], "max_tokens": -3},
    {"model": "m", "messages": [], "max_tokens": 2**63 - 1},
    {"model": "m", "messages": [], "max_tokens": None, "tools": None, "thinking": None},
    {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": [{"type": "text", "text": MARKER}]}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]},
                                {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]},
])
def test_its_answers_are_the_full_checks_answers(req: dict[str, Any]) -> None:
    assert agrees(req)


# Values of every JSON type, for fields that should hold one type.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=4))
IDS = st.one_of(st.sampled_from(["toolu_01A", "call 1", "", local_tool_id(backend_tag("llama"))]), SCALARS)
BLOCK = st.one_of(
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking",
                                            "document"]), SCALARS)},
        optional={"text": st.one_of(st.just(MARKER), st.text(max_size=30), SCALARS), "id": IDS, "tool_use_id": IDS,
                  "signature": st.one_of(st.sampled_from([LOCAL_THINKING_SIGNATURE, "sig", ""]), SCALARS),
                  "data": SCALARS, "input": st.dictionaries(st.text(max_size=3), SCALARS, max_size=2)}),
    SCALARS,
)
MESSAGE = st.one_of(
    st.fixed_dictionaries({}, optional={
        "role": st.one_of(st.sampled_from(["user", "assistant", "system"]), SCALARS),
        "content": st.one_of(st.text(max_size=20), st.just(MARKER), st.lists(BLOCK, max_size=4), SCALARS)}),
    SCALARS,
)
REQUEST = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.sampled_from(["claude-sonnet-4-5", "claude-haiku-4-5", "bad\nname", ""]), SCALARS),
    "messages": st.one_of(st.lists(MESSAGE, max_size=5), SCALARS),
    "stream": SCALARS,
    "max_tokens": st.one_of(st.integers(-2, 70000), SCALARS),
    "tools": st.one_of(st.lists(st.one_of(st.fixed_dictionaries({}, optional={"name": SCALARS}), SCALARS), max_size=3),
                       SCALARS),
    "thinking": st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["enabled", "adaptive", "disabled"])}), SCALARS),
    "system": st.one_of(st.text(max_size=10), SCALARS),
})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REQUEST)
def test_the_outline_never_answers_differently(req: dict[str, Any]) -> None:
    agrees(req)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "system"]),
    "content": st.one_of(st.text(max_size=20), st.lists(st.fixed_dictionaries({
        "type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking"]), "signature": st.just("sig")},
        optional={"text": st.text(max_size=10), "id": st.sampled_from(["toolu_01A", local_tool_id(backend_tag("llama"))]),
                  "tool_use_id": st.just("toolu_01A")}), max_size=3))}), max_size=6))
def test_well_formed_histories_take_the_outline(messages: list[dict[str, Any]]) -> None:
    """Requests a client really sends are not declined: the fast path is the usual one.
    (An assistant's blank text block is not one: the cloud refuses it, so it is cleaned.)"""
    assume(not any(m["role"] == "assistant" and isinstance(m["content"], list) and blank_text(b.get("text"))
                   and b["type"] == "text" for m in messages for b in m["content"]))
    assert agrees({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": messages, "stream": True})


# --- the thinking rule's local turn, however its id is spelled ---------------------------------

LOOP_HEADERS = {"x-claude-code-session-id": "s1"}


def _loop_with_a_local_turn() -> dict[str, Any]:
    """Thinking on; a local model's call, then a cloud step written without thinking
    (thinking was off for the loop), and its result: the facts say unthought_loop."""
    local = local_tool_id(backend_tag("x"))
    return {
        "model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": "fix the build"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": local, "name": "Bash", "input": {"c": "ls"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": local, "content": "ok"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01cloud", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01cloud", "content": "ok"}]},
        ],
    }


def test_outline_facts_agree_when_the_local_id_is_spelled_with_an_escape() -> None:
    """`toolu\\u005fnsl...` is the same JSON string as `toolu_nsl...`: the outline finds
    the local turn however the id is spelled, as the full parse does."""
    req = _loop_with_a_local_turn()
    body = orjson.dumps(req).replace(b"toolu_nsl", b"toolu\\u005fnsl")
    assert orjson.loads(body) == req
    shape = outline(body)
    assert shape is not None and shape.problem == ""
    full = facts_from_request(orjson.loads(body), LOOP_HEADERS, body_len=len(body))
    fast = facts_from_request(shape.facts, LOOP_HEADERS, body_len=len(body))
    assert full.unthought_loop is True
    assert fast.unthought_loop == full.unthought_loop


# --- the ends of bodies kept (Tails): the shorter decode answers as the whole one ----------

BIG_SYSTEM = [{"type": "text", "text": "You are a coding agent. " * 400, "cache_control": {"type": "ephemeral"}}]
TAIL_FIELDS = st.fixed_dictionaries({}, optional={
    "stream": SCALARS, "max_tokens": st.one_of(st.integers(-2, 70000), SCALARS),
    "tools": st.one_of(st.lists(st.fixed_dictionaries({"name": st.sampled_from(["Read", "Bash"])}), max_size=2), st.none()),
    "thinking": st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["enabled", "disabled"])}), st.none()),
    "metadata": st.just({"user_id": "u"}),
})


def _body(head: Any, tail: dict[str, Any]) -> bytes:
    """`head`'s JSON, then a large system prompt and `tail`'s members, as raw bytes: a key
    in both is in the body twice, as a client may send it."""
    rest = b',"system":' + orjson.dumps(BIG_SYSTEM) + (b"," + orjson.dumps(tail)[1:] if tail else b"}")
    return orjson.dumps(head)[:-1] + rest


def _tail_of(body: bytes) -> bytes:
    return body[body.index(b',"system":'):]


def test_a_session_s_next_request_is_decoded_without_its_kept_end() -> None:
    tails = Tails()
    first = claude_code_request(stream=True)
    assert outline(orjson.dumps(first), tails) is not None
    assert len(tails.kept) == 1 and tails.kept[0].data.startswith(b',"system":')
    second = {**first, "messages": [*first["messages"], {"role": "assistant", "content": "done"},
                                    {"role": "user", "content": "and the tests?"}]}
    body = orjson.dumps(second)
    assert tails.decode(body) is not None  # the kept end met: the shorter decode
    assert outline(body, tails) == outline(body, Tails())
    assert agrees(second)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REQUEST, TAIL_FIELDS, TAIL_FIELDS)
def test_a_kept_end_never_changes_the_answer(head: dict[str, Any], tail: dict[str, Any],
                                             first_head: dict[str, Any]) -> None:
    """Whatever comes before a kept end (a request of any shape, keys the end holds too),
    the outline is the whole decode's, and the full parse's where it answers."""
    tails = Tails()
    primer = _body({"model": "m", "messages": [], **first_head}, tail)
    outline(primer, tails)
    if not tails.kept:  # (an end is kept only from a body that decodes as a request)
        assert outline(primer, Tails()) is None
        return
    kept = tails.kept[0].data
    assert primer.endswith(kept) and kept.startswith((b',"system":', b',"tools":'))
    if not head:
        head = {"model": "m"}
    body = _body(head, tail)
    got = outline(body, tails)
    assert got == outline(body, Tails())
    if got is not None:
        whole = orjson.loads(body)  # a key sent twice: the last one, as the decoders read it
        assert got.model == whole["model"] and got.stream == (whole.get("stream") is True)
        assert got.problem == validate_messages_request(whole)
        assert got.facts["max_tokens"] == whole.get("max_tokens") and got.facts["thinking"] == whole.get("thinking")
        assert got.facts["tools"] == bool(whole.get("tools"))
    if (isinstance(head.get("model"), str) and isinstance(head.get("messages"), list) and got is not None
            and body.endswith(kept)):
        assert tails.decode(body) is not None  # the shorter decode was the one that answered


def test_a_body_that_only_ends_alike_is_decoded_whole() -> None:
    tails = Tails()
    body = _body({"model": "m", "messages": []}, {"stream": True})
    outline(body, tails)
    tail = _tail_of(body)
    for head in (b"", b"{", b"[", b'{"model": "m", "messages": [', b'{"model": "m", "messages": [],'):
        assert outline(head + tail, tails) == outline(head + tail, Tails())
    assert outline(b'{"model": "m", "messages": [' + tail, tails) is None


def test_an_end_that_names_the_model_or_messages_is_not_kept() -> None:
    tails = Tails()
    outline(_body({"model": "m", "messages": []}, {"model": "n"}), tails)
    outline(_body({"model": "m", "messages": []}, {"messages": []}), tails)
    assert tails.kept == []


def test_a_system_key_nested_in_the_history_is_not_taken_for_the_end() -> None:
    tails = Tails()
    nested = {"model": "m", "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_01A", "name": "f", "input": {"a": [1], "system": "x" * 5000}}]}]}
    body = _body(nested, {"stream": True})
    assert outline(body, tails) is not None
    # The first `,"system":` is the nested one: its halves are no objects, and the next is kept.
    assert [t.data for t in tails.kept] == [body[body.rindex(b',"system":'):]]
    assert outline(body, tails) == outline(body, Tails())


def test_short_ends_are_not_kept() -> None:
    tails = Tails()
    outline(orjson.dumps({"model": "m", "messages": [], "system": "short", "stream": True}), tails)
    assert tails.kept == []


def test_the_kept_ends_are_bounded_and_the_latest_met_first() -> None:
    tails = Tails()
    bodies = [_body({"model": "m", "messages": []}, {"metadata": {"user_id": str(i)}}) for i in range(Tails.KEEP + 1)]
    for body in bodies:
        outline(body, tails)
    assert len(tails.kept) == Tails.KEEP
    assert tails.decode(bodies[0]) is None  # the oldest was let go
    assert tails.decode(bodies[1]) is not None and tails.kept[0].data == _tail_of(bodies[1])


def test_a_client_whose_ends_never_repeat_is_looked_at_rarely() -> None:
    tails = Tails()
    for i in range(Tails.LEARN_EVERY * 4):
        outline(_body({"model": "m", "messages": []}, {"metadata": {"user_id": str(i)}}), tails)
    learnt = {t.data for t in tails.kept}
    assert tails.missed == Tails.LEARN_EVERY * 4 and len(learnt) == Tails.KEEP
    # The first LEARN_EVERY misses are learnt from, then one in LEARN_EVERY.
    for i in range(Tails.LEARN_EVERY * 4):
        looked = i < Tails.LEARN_EVERY or (i + 1) % Tails.LEARN_EVERY == 0
        tail = _tail_of(_body({"model": "m", "messages": []}, {"metadata": {"user_id": str(i)}}))
        if i >= Tails.LEARN_EVERY - 4:  # (the eight latest looked at are kept)
            assert (tail in learnt) == looked, i


@pytest.mark.parametrize("dumps", [
    lambda r: json.dumps(r).encode(), lambda r: json.dumps(r, indent=2).encode(), lambda r: orjson.dumps(r)])
def test_an_end_is_kept_however_the_client_spaces_its_json(dumps: Any) -> None:
    tails = Tails()
    first = claude_code_request(stream=True)
    outline(dumps(first), tails)
    assert len(tails.kept) == 1
    second = {**first, "messages": [*first["messages"], {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": "next"}]}
    body = dumps(second)
    assert tails.decode(body) is not None
    assert outline(body, tails) == outline(body, Tails())


# --- the history checked with the request before (_Tail.known) ---------------------------

WELL_FORMED = st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "system"]),
    "content": st.one_of(st.text(max_size=20), st.lists(st.fixed_dictionaries({
        "type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking"]),
        "signature": st.sampled_from(["sig", "", LOCAL_THINKING_SIGNATURE])},
        optional={"text": st.sampled_from(["", " ", "x", MARKER]),
                  "id": st.sampled_from(["toolu_01A", "call 1", local_tool_id(backend_tag("llama"))]),
                  "tool_use_id": st.just("toolu_01A")}), max_size=3))})


def _session_body(messages: list[Any], thinking: bool) -> bytes:
    head = {"model": "claude-sonnet-4-5", "messages": messages}
    return _body(head, {"max_tokens": 100, "stream": True,
                        **({"thinking": {"type": "enabled", "budget_tokens": 1024}} if thinking else {})})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WELL_FORMED, max_size=8), st.integers(0, 8), st.lists(st.one_of(WELL_FORMED, MESSAGE), max_size=4),
       st.booleans())
def test_a_history_checked_before_never_changes_the_answer(first: list[Any], kept: int, added: list[Any],
                                                           thinking: bool) -> None:
    """The next request keeps some of the history checked with the one before and adds
    any messages (ones that need cleaning, or that are no messages, among them): the
    outline is the one a first look at it gives."""
    tails = Tails()
    outline(_session_body(first, thinking), tails)  # learns the end
    outline(_session_body(first, thinking), tails)  # meets it: remembers the history if it is fine
    body = _session_body(first[:kept] + added, thinking)
    assert outline(body, tails) == outline(body, Tails())


def test_the_history_checked_before_is_not_checked_again() -> None:
    first = claude_code_request(stream=True)
    tails = Tails()
    outline(orjson.dumps(first), tails)
    outline(orjson.dumps(first), tails)
    tail = tails.kept[0]
    assert len(tail.checked) == len(first["messages"])
    # Claude Code's next request: its cache breakpoint moved off the last message, and a turn added.
    last = {**first["messages"][-1], "content": [{"type": "text", "text": "moved"}]}
    messages = [*first["messages"][:-1], last, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go"}]
    body = orjson.dumps({**first, "messages": messages})
    got = tails.decode(body)
    assert got is not None
    req, same, _ = got
    assert same is tail and tail.known(req.messages)[0] == len(first["messages"]) - 1
    assert outline(body, tails) == outline(body, Tails())
    assert len(tail.checked) == len(messages)


def test_a_changed_old_message_is_checked_again() -> None:
    """One that needs cleaning now, though the request before had it fine, is found."""
    first = claude_code_request(stream=True)
    tails = Tails()
    outline(orjson.dumps(first), tails)
    outline(orjson.dumps(first), tails)
    messages = [dict(m) for m in first["messages"]]
    messages[1] = {"role": "assistant", "content": [{"type": "tool_use", "id": "call 1", "name": "f", "input": {}}]}
    body = orjson.dumps({**first, "messages": messages})
    assert outline(body, tails) is None
    assert outline(body, Tails()) is None


# --- the prefix of a session's bodies (_Tail.read): only the new messages decoded --------


def _spaced_body(messages: list[Any], thinking: bool) -> bytes:
    """As `_session_body`, in JSON with spaces after its commas (Python's json.dumps)."""
    return json.dumps(orjson.loads(_session_body(messages, thinking))).encode()


# Messages the outline takes (a client's usual ones), some with a local model's tool call.
CLEAN = st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "system"]),
    "content": st.one_of(st.text(max_size=12), st.lists(st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": st.sampled_from(["x", "ok", MARKER])}),
        st.fixed_dictionaries({"type": st.just("tool_use"), "name": st.just("Read"), "input": st.just({}),
                               "id": st.sampled_from(["toolu_01A", "toolu_01B", local_tool_id(backend_tag("llama"))])}),
        st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": st.just("toolu_01A"),
                               "content": st.sampled_from(["ok", ""])})), min_size=1, max_size=3))})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CLEAN, min_size=3, max_size=8),
       st.lists(st.tuples(st.sampled_from([0, 1, 1, 2, 2, 3]),
                          st.lists(st.one_of(CLEAN, CLEAN, CLEAN, CLEAN, WELL_FORMED, MESSAGE), max_size=3)),
                min_size=1, max_size=5),
       st.booleans(), st.sampled_from([False, False, False, True]))
def test_a_session_read_from_its_prefix_is_read_as_a_first_look(first: list[Any], steps: list[tuple[int, list[Any]]],
                                                                 thinking: bool, spaced: bool) -> None:
    """A session's requests one after the other, each changing up to three of the last
    messages of the one before and adding any (ones that need cleaning, or that are
    no messages, among them): every outline is the one a first look gives."""
    dumps = _spaced_body if spaced else _session_body
    tails = Tails()
    history = list(first)
    bodies = [dumps(history, thinking)]
    for changed, added in steps:
        history = history[:max(len(history) - changed, 0)] + added
        bodies.append(dumps(history, thinking))
    for body in [bodies[0], *bodies]:  # (the first twice: its end is learnt, then met)
        assert outline(body, tails) == outline(body, Tails())


def _primed(messages: list[Any]) -> Tails:
    tails = Tails()
    for _ in range(2):
        assert outline(_session_body(messages, False), tails) is not None
    return tails


HISTORY = [{"role": "user", "content": "fix the build"}, {"role": "assistant", "content": "looking"},
           {"role": "user", "content": "ok"}, {"role": "assistant", "content": "done"},
           {"role": "user", "content": "thanks"}]


def test_the_next_request_is_read_from_the_prefix() -> None:
    tails = _primed(HISTORY)
    tail = tails.kept[0]
    assert tail.head is not None and len(tail.shared) == len(HISTORY) - 2
    body = _session_body([*HISTORY, {"role": "assistant", "content": "more"}, {"role": "user", "content": "go"}], False)
    got = tails.decode(body)
    assert got is not None and got[2] == len(HISTORY) - 2  # read from the prefix
    assert outline(body, tails) == outline(body, Tails())
    assert len(tail.shared) == len(HISTORY)  # moved on: the next request is read from here


@pytest.mark.parametrize("after", [
    b"]",  # `[..., m,]`: no JSON, though `[` + `]` is
    b" ]",
    b'{"role": "user", "content": "x"}],"x":1',  # a member between the messages and the end
    b'{"role": "user", "content": "x"}],"messages":[]',  # the messages again, empty
    b'{"role": "user", "content": "x"}],"model":"other"',
    b'{"role": "user", "content": "x"}]]',
    b'{"role": "user", "content": "x"}',
])
def test_what_follows_the_prefix_is_read_as_the_whole_body_reads_it(after: bytes) -> None:
    tails = _primed(HISTORY)
    tail = tails.kept[0]
    body = tail.prefix + after + tail.data
    assert outline(body, tails) == outline(body, Tails())


def test_a_body_with_another_beginning_is_decoded_without_the_prefix() -> None:
    tails = _primed(HISTORY)
    other = [{"role": "user", "content": "another session"}, *HISTORY[1:]]
    body = _session_body(other, False)
    got = tails.decode(body)
    assert got is not None and got[2] == 0
    assert outline(body, tails) == outline(body, Tails())


def test_what_a_session_keeps_does_not_grow_with_its_requests() -> None:
    """The messages a prefix keeps hold their own text, not the buffer each request's
    new messages were decoded from: a session whose last message is large each time
    (replaced by the next request) keeps no more than its history."""
    import gc
    import tracemalloc

    def message(role: str, text: str, pad: int = 0) -> dict[str, Any]:
        return {"role": role, "content": [{"type": "text", "text": text}], **({"pad": "p" * pad} if pad else {})}

    history = [message("user", "u0"), message("assistant", "a0"), message("user", "u1")]
    tails = _primed(history)
    tracemalloc.start()
    try:
        for i in range(12):
            if i:
                history[-1] = message("user", f"r{i}")
            history += [message("assistant", f"a{i}"), message("user", "b", pad=200_000)]
            body = _session_body(history, False)
            assert outline(body, tails) == outline(body, Tails())
            del body
            gc.collect()
            if i == 1:
                start = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert tails.kept[0].head is not None and len(tails.kept[0].shared) > 12  # read from the prefix throughout
    assert grown < 600_000  # (one request's large message is ~200 KB; kept by every read it was ~2 MB)


def test_a_kept_thinking_that_cannot_be_read_here_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept end's `thinking` is decoded for each request; nested near the limit, that
    decode may fail deeper in a stack where the whole body's did not: the body is then
    decoded whole, as it would be without the end."""
    import msgspec

    tails = Tails()
    first = _body({"model": "m", "messages": [{"role": "user", "content": "a"}]}, {"thinking": {"type": "enabled"}})
    outline(first, tails)
    assert tails.kept
    decode = msgspec.json.decode

    def deep(data: Any, *args: Any, **kw: Any) -> Any:
        if bytes(data).startswith(b'{"type":"enabled"'):
            raise RecursionError("maximum recursion depth exceeded")
        return decode(data, *args, **kw)

    monkeypatch.setattr(msgspec.json, "decode", deep)
    body = _body({"model": "m", "messages": [{"role": "user", "content": "b"}]}, {"thinking": {"type": "enabled"}})
    assert outline(body, tails) == outline(body, Tails())
    assert outline(body, tails) is not None
