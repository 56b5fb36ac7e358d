"""History going back to the cloud after a local model's turns: what the cloud would
refuse never reaches it.

The cloud's rules are those of tests/support/fake_cloud.py (the project's own model of
the API) and docs/wire.md: with thinking on, a tool loop's last assistant turn must start
with a thinking block; text blocks must hold more than whitespace; a count is of the
history the message would be sent with.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from nonstop.routing.facts import facts_from_request
from nonstop.routing.plan import CLOUD, plan
from nonstop.routing.policy import Policy
from nonstop.routing.view import BackendView, Capabilities, CloudView, RoutingView
from nonstop.wire.hygiene import for_cloud, without_thinking
from nonstop.wire.local_stream import LOCAL_THINKING_SIGNATURE, normalize_message
from nonstop.wire.outline import outline
from nonstop.wire.tool_ids import backend_tag, local_tool_id
from tests.support.fake_cloud import thinking_rule_violation
from tests.support.inprocess import post

NOW = 1_800_000_000.0
TAG = backend_tag("llama")
LOCAL_ID = local_tool_id(TAG)
CLOUD_ID = "toolu_01A09q90qw90lq917835lq9"
TOOLS = [{"name": "Read", "description": "read a file",
          "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]


def _request(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": True, "tools": TOOLS,
            "thinking": {"type": "adaptive"}, "messages": messages, **extra}


def _cloud_body(req: dict[str, Any], view: RoutingView) -> dict[str, Any]:
    """What CloudBackend.send puts on the wire for the plan's first (cloud) step."""
    facts = facts_from_request(req, {})
    step = plan(facts, view, Policy(order=tuple(b.name for b in view.backends))).first
    assert step is not None and step.target == CLOUD
    return for_cloud(without_thinking(req)) if step.strip_thinking else for_cloud(req)


# --- the thinking rule one hop after the cloud took a local loop over ---------------------------

# The loop so far: a local model called a tool (the cloud was out); the quota reset and
# the next request went to the cloud without `thinking` (strip_thinking: the local model
# was unavailable / could not hold the grown request); the cloud answered with another
# tool call, written with thinking off, so its turn has no thinking block.
LOOP_CROSSED = [
    {"role": "user", "content": "fix the failing test"},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "look at the test", "signature": LOCAL_THINKING_SIGNATURE},
        {"type": "tool_use", "id": LOCAL_ID, "name": "Read", "input": {"file_path": "t.py"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": LOCAL_ID, "content": "def test(): ..."}]},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Now the module."},
        {"type": "tool_use", "id": CLOUD_ID, "name": "Read", "input": {"file_path": "m.py"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": CLOUD_ID, "content": "def f(): ..."}]},
]


def test_the_hop_where_the_cloud_takes_over_a_local_loop_is_stripped() -> None:
    """Precondition (this works): the first request after the local turn goes without thinking."""
    body = _cloud_body(_request(LOOP_CROSSED[:3]), RoutingView(NOW, CloudView(), ()))
    assert "thinking" not in body and thinking_rule_violation(body) == ""


def test_the_next_hop_of_a_loop_the_cloud_took_over_is_not_refused_by_the_thinking_rule() -> None:
    """The cloud's own turn in that loop was made with thinking off, so it does not start
    with a thinking block: the next tool result goes without `thinking` too, or the cloud
    answers 400 (Expected `thinking` ... a final `assistant` message must start with a
    thinking block) on every retry."""
    local = BackendView("llama", Capabilities(context_window=32768), tag=TAG)
    for view in (RoutingView(NOW, CloudView(), ()), RoutingView(NOW, CloudView(), (local,))):
        body = _cloud_body(_request(LOOP_CROSSED), view)
        assert thinking_rule_violation(body) == "", thinking_rule_violation(body)[:120]


# --- whitespace-only text from a local turn does not reach the cloud ----------------------------


def test_a_local_turns_whitespace_only_text_block_is_not_sent_to_the_cloud() -> None:
    """Local models often write "\\n\\n" before a tool call; the normalizer keeps it as its
    own text block and the client stores it. The API refuses a request holding one
    ("messages: text content blocks must contain non-whitespace text", or "must be
    non-empty" for ""), so hygiene drops it, and the outline's fast path declines."""
    local_turn = normalize_message(
        {"content": [{"type": "text", "text": "\n\n"},
                     {"type": "tool_use", "id": "call_0", "name": "Read", "input": {"file_path": "a"}}],
         "stop_reason": "tool_use"},
        model="qwen", input_tokens_estimate=100, tag=TAG, tools=TOOLS)
    call_id = local_turn["content"][-1]["id"]
    messages = [
        {"role": "user", "content": "read a"},
        {"role": "assistant", "content": local_turn["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "x"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
        {"role": "user", "content": "thanks, next task"},  # back on the cloud
    ]
    req = _request(messages)
    assert outline(orjson.dumps(req)) is None  # the fast path would forward the client's bytes as they are
    body = for_cloud(req)
    blank = [b for m in body["messages"] if isinstance(m.get("content"), list) for b in m["content"]
             if b.get("type") == "text" and not str(b.get("text", "")).strip()]
    assert blank == []
    assert body["messages"][1]["content"] == [local_turn["content"][-1]]  # the call stays


@pytest.mark.parametrize("text,blank", [
    ("", True), (" ", True), ("\n\n", True), ("\t \r\n", True), ("\u3000", True),
    ("\nfix it", False), (" x", False), ("x", False), ('"', False), ("\\", False),
])
def test_the_outline_and_hygiene_agree_on_blank_assistant_text(text: str, blank: bool) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": text}]},
                {"role": "user", "content": "go on"}]
    req = _request(messages)
    assert (outline(orjson.dumps(req)) is None) == blank
    cleaned = for_cloud(req)["messages"][1]["content"]
    assert cleaned == ([{"type": "text", "text": "(no content)"}] if blank else [{"type": "text", "text": text}])
    # A user's own blank text is the client's to send: not changed.
    user = [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "text", "text": "hi"}]}]
    assert for_cloud(_request(user)) == _request(user)


def test_a_cloud_turn_that_chose_not_to_think_is_left_alone() -> None:
    """Adaptive thinking may answer without thinking; with no local turn in its loop the
    request goes to the cloud with `thinking` as the client sent it."""
    messages = [
        {"role": "user", "content": "fix the failing test"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": CLOUD_ID, "name": "Read", "input": {"file_path": "t.py"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": CLOUD_ID, "content": "def test(): ..."}]},
    ]
    # an earlier, finished loop of a local model does not count
    earlier = [{"role": "user", "content": "start"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": LOCAL_ID, "name": "Read", "input": {}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": LOCAL_ID, "content": "x"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "done"}]}]
    for history in (messages, earlier + messages):
        req = _request(history)
        assert not facts_from_request(req, {}).unthought_loop
        shape = outline(orjson.dumps(req))
        assert shape is not None and not facts_from_request(shape.facts, {}).unthought_loop
        assert "thinking" in _cloud_body(req, RoutingView(NOW, CloudView(), ()))


def test_the_outline_reads_the_whole_loop_for_the_thinking_rule() -> None:
    """The fast path's facts see the local turn three messages back, as the full ones do."""
    loop = [LOOP_CROSSED[0], {"role": "assistant", "content": LOOP_CROSSED[1]["content"][1:]}, *LOOP_CROSSED[2:]]
    req = _request(loop)  # no local thinking block to clean: the fast path takes it
    shape = outline(orjson.dumps(req))
    assert shape is not None
    assert facts_from_request(shape.facts, {}).unthought_loop and facts_from_request(req, {}).unthought_loop


# --- count_tokens in the middle of a session counts the cleaned history ----------------------


# A session with a finished local tool loop (a local thinking block in an earlier turn),
# now back on the cloud: a new user message.
AFTER_A_LOCAL_LOOP = [
    *LOOP_CROSSED[:3],
    {"role": "assistant", "content": [{"type": "text", "text": "fixed"}]},
    {"role": "user", "content": "now the docs"},
]


async def test_count_tokens_sends_the_cloud_the_same_cleaned_history_as_messages(recording_app) -> None:
    """/v1/messages cleans the local thinking block out before the cloud; the
    count_tokens request for the very same history goes cleaned the same way, or the
    cloud could refuse a count that the message itself would pass."""
    app, sent = recording_app
    req = _request(AFTER_A_LOCAL_LOOP, stream=False)
    assert (await post(app, "/v1/messages", orjson.dumps(req)))[0] == 200
    assert (await post(app, "/v1/messages/count_tokens", orjson.dumps(
        {k: v for k, v in req.items() if k not in ("stream", "max_tokens")})))[0] == 200
    messages_body, count_body = (orjson.loads(b) for b in sent)
    assert LOCAL_THINKING_SIGNATURE.encode() not in sent[0]  # the message was cleaned
    assert count_body["messages"] == messages_body["messages"]


POLICY = Policy(order=())  # the runtime keeps one policy, as it keeps its view


def _body_for(req: dict[str, Any], view: RoutingView) -> dict[str, Any]:
    step = plan(facts_from_request(req, {}), view, POLICY).first
    assert step is not None and step.target == CLOUD
    return for_cloud(without_thinking(req)) if step.strip_thinking else for_cloud(req)


# A cloud-only tool loop with adaptive thinking: the cloud chose not to think. Never local.
CLOUD_ONLY_LOOP = [
    {"role": "user", "content": "fix the failing test"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": CLOUD_ID, "name": "Read", "input": {"file_path": "t.py"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": CLOUD_ID, "content": "def test(): ..."}]},
]


# --- the kept view's plans: the thinking rule is in their key -----------------------------------


def test_kept_view_does_not_strip_thinking_from_a_cloud_only_loop_after_a_local_one() -> None:
    """A kept view (the runtime's) remembers plans: the one made for a loop a local model
    took part in (thinking off) is not reused for a cloud-only loop of the same model,
    class, needs and thinking."""
    view = RoutingView(NOW, CloudView(), ())
    crossed, cloud_only = _request(LOOP_CROSSED), _request(CLOUD_ONLY_LOOP)
    assert facts_from_request(crossed, {}).unthought_loop and not facts_from_request(cloud_only, {}).unthought_loop
    assert "thinking" not in _body_for(crossed, view)
    assert "thinking" in _body_for(cloud_only, view), "thinking stripped from a request no local model took part in"


def test_kept_view_strips_thinking_for_the_loop_a_local_model_took_part_in() -> None:
    """The other order: the cloud-only plan (thinking kept) is not reused for the crossed
    loop, which the cloud would refuse with a 400 on every retry."""
    view = RoutingView(NOW, CloudView(), ())
    assert "thinking" in _body_for(_request(CLOUD_ONLY_LOOP), view)
    body = _body_for(_request(LOOP_CROSSED), view)
    assert thinking_rule_violation(body) == "", thinking_rule_violation(body)[:100]


# --- a results turn that also holds text continues the loop ------------------------------------


def _with_reminder(msg: dict[str, Any]) -> dict[str, Any]:
    """Claude Code adds <system-reminder> text blocks next to tool results."""
    return {**msg, "content": [*msg["content"], {"type": "text", "text": "<system-reminder>todo list</system-reminder>"}]}


def test_a_tool_result_turn_with_a_reminder_text_still_continues_the_local_loop() -> None:
    """The API's rule (fake_cloud.thinking_rule_violation) looks only at whether the last
    turn carries a tool_result: a results turn with a text block beside them is still
    the same loop, whose local turn takes thinking off."""
    for at in (2, 4):  # the earlier results turn, or the last one
        messages = [dict(m) for m in LOOP_CROSSED]
        messages[at] = _with_reminder(messages[at])
        body = _body_for(_request(messages), RoutingView(NOW, CloudView(), ()))
        assert thinking_rule_violation(body) == "", (at, thinking_rule_violation(body)[:100])


# --- the outline and the full path agree on an image in a tool result ---------------------------


def test_outline_and_full_path_agree_on_an_image_in_a_tool_result_with_escaped_type() -> None:
    """The outline decodes a tool result's content where it names an image; JSON may
    spell the name with escapes ("\\u0069mage")."""
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    req = _request([
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": CLOUD_ID, "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": CLOUD_ID, "content": [img]}]},
    ])
    body = orjson.dumps(req).replace(b'"type":"image"', b'"type":"\\u0069mage"')
    assert orjson.loads(body) == req
    shape = outline(body)
    assert shape is not None
    full = facts_from_request(orjson.loads(body), {}).needs
    fast = facts_from_request(shape.facts, {}).needs
    assert full.images
    assert fast == full


# --- a count sent on without thinking gains no `stream` -----------------------------------------


async def test_count_tokens_of_a_stripped_loop_sends_no_stream_field(recording_app) -> None:
    """A count the plan sends on without thinking is written again from the request:
    the client sent no `stream`, and the endpoint takes none."""
    app, sent = recording_app
    req = {k: v for k, v in _request(LOOP_CROSSED).items() if k not in ("stream", "max_tokens")}
    assert (await post(app, "/v1/messages/count_tokens", orjson.dumps(req)))[0] == 200
    count_body = orjson.loads(sent[-1])
    assert "thinking" not in count_body  # stripped, as the message would be
    assert "stream" not in count_body


# --- a cloud-only loop costs the fast path no more than before ------------------------------------


def test_outline_facts_of_a_cloud_only_adaptive_loop_stay_small() -> None:
    """A cloud-only loop whose last turn chose not to think: the facts read the last
    turns only, not the whole loop, on every request of the loop."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "refactor everything"}]
    for i in range(200):
        tid = f"toolu_01{i:020d}"
        messages.append({"role": "assistant", "content": [{"type": "text", "text": f"step {i}"},
                                                          {"type": "tool_use", "id": tid, "name": "Read", "input": {}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": "x" * 2000}]})
    shape = outline(orjson.dumps(_request(messages)))
    assert shape is not None
    assert not facts_from_request(shape.facts, {}).unthought_loop
    assert len(shape.facts["messages"]) <= 3, len(shape.facts["messages"])


def _thinking_request(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return _request(messages, thinking={"type": "enabled", "budget_tokens": 4096})


def _cloud_body_via(req: dict[str, Any], view: RoutingView, *, fast: bool = False) -> dict[str, Any]:
    """What CloudBackend.send puts on the wire for the plan's cloud step (`fast`: with the
    facts read from the outline, as the Anthropic door does when it can)."""
    src: dict[str, Any] = req
    if fast:
        shape = outline(orjson.dumps(req))
        src = shape.facts if shape is not None else req
    p = plan(facts_from_request(src, {}), view, Policy(order=tuple(b.name for b in view.backends)))
    step = next(s for s in p.steps if s.target == CLOUD)
    return for_cloud(without_thinking(req)) if step.strip_thinking else for_cloud(req)


# A local model's turn (its thinking is local), as Claude Code stores it.
LOCAL_CALL = {"role": "assistant", "content": [
    {"type": "thinking", "thinking": "read the test", "signature": LOCAL_THINKING_SIGNATURE},
    {"type": "tool_use", "id": LOCAL_ID, "name": "Read", "input": {"file_path": "t.py"}}]}
LOCAL_RESULT = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": LOCAL_ID, "content": "def test(): ..."}]}
REMINDER = {"role": "system", "content": "The user's todo list changed: 2 items left."}


# --- turns as the API reads them: system messages stand aside, consecutive user messages are one ---


def test_a_system_message_between_a_local_call_and_its_result_still_takes_thinking_off() -> None:
    """Newer Claude Code puts `role: "system"` messages among the turns, right before the
    newest user turn: in a tool loop, between the local model's call and its result. The
    facts read past it (routing/facts.py final_turn), on the full path and the outline's,
    so `thinking` goes for the loop and the cloud does not refuse it."""
    req = _thinking_request([{"role": "user", "content": "fix the failing test"}, LOCAL_CALL, REMINDER, LOCAL_RESULT])
    view = RoutingView(NOW, CloudView(), ())
    for fast in (False, True):
        body = _cloud_body_via(req, view, fast=fast)
        assert thinking_rule_violation(body) == "", (fast, thinking_rule_violation(body))


def test_a_system_message_between_a_local_call_and_its_result_still_finishes_the_loop_locally() -> None:
    """With finish_local_tool_loops (the default) the result of a local model's call goes
    back to that model, a system message between the call and the result or not."""
    req = _thinking_request([{"role": "user", "content": "fix the failing test"}, LOCAL_CALL, REMINDER, LOCAL_RESULT])
    local = BackendView("llama", Capabilities(context_window=131072), tag=TAG)
    facts = facts_from_request(req, {})
    assert facts.local_loop == TAG
    step = plan(facts, RoutingView(NOW, CloudView(), (local,)), Policy(order=("llama",))).first
    assert step is not None and step.target == "llama" and step.rule == "loop"


def test_a_result_followed_by_a_second_user_message_still_takes_thinking_off() -> None:
    """A client may send the tool result and its next words as two user messages; the
    API reads them as one turn that answers the local model's call, and so do the facts."""
    req = _thinking_request([{"role": "user", "content": "fix the failing test"}, LOCAL_CALL, LOCAL_RESULT,
                    {"role": "user", "content": [{"type": "text", "text": "also check the docs"}]}])
    body = _cloud_body_via(req, RoutingView(NOW, CloudView(), ()))
    assert thinking_rule_violation(body) == "", thinking_rule_violation(body)
