"""routing/fit: fitting a request into a small local window, tier by tier
(fit_request, fit_floor)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nonstop.routing.fit import (
    CHARS_PER_TOKEN,
    DESCRIPTION_SHARE,
    MIN_RESULT,
    NOTE,
    RESULT_SHARE,
    TASK_CHARS,
    TASK_NOTE,
    TIERS,
    Fitted,
    deferred_tool_names,
    fit_floor,
    fit_request,
    needed_tools,
)
from nonstop.wire.anthropic import estimate_tokens, to_local_request
from nonstop.wire.claude_prompt import ATTRIBUTION_PREFIX
from nonstop.wire.prompt_cache import normalize_for_prompt_cache
from tests.conftest import _need
from tests.support import capture
from tests.support.capture import capture_requests, claude_cli

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])



def tool_id(i: int) -> str:
    return f"toolu_{i:020d}"


# === fit_request: the four tiers =================================================================

CORE = ("Read", "Edit", "Write", "Bash")
IDENTITY = "You are a coding agent."
LONG_POLICY = "# Doing tasks\n" + "".join(f" - Policy rule {i}: be careful and thorough about everything.\n" for i in range(40))
SHORT_STYLE = "# Tone and style\n - Be concise.\n"
EXAMPLE = "<example>\nuser: add two numbers\nassistant: 4\n</example>\n"
ENV_REMINDER = "<system-reminder>\n# Environment\n - Primary working directory: /work/proj\n - Platform: linux\n</system-reminder>"
MARKER = "RULE-42: indent with tabs"
CLAUDE_MD_REMINDER = (
    "<system-reminder>\nCodebase and user instructions are shown below.\n\n"
    f"Contents of /work/proj/CLAUDE.md (project instructions):\n\n{MARKER}\n</system-reminder>"
)
SKILLS_REMINDER = "<system-reminder>\nThe following skills are available:\n" + "- skill: does a thing well\n" * 30 + "</system-reminder>"
DATE_REMINDER = "<system-reminder>\nToday's date is 2026-11-29.\n</system-reminder>"
ATTRIBUTION = "x-anthropic-billing-header: cc_version=2.1.332.93d; cc_entrypoint=cli; cch=1a2b3;"


def schema(i: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"arg{i}": {"type": "string", "description": "what it is " * 5}},
            "required": [f"arg{i}"]}


def tools_list(names: tuple[str, ...] = (*CORE, "Agent", "Skill", "WebFetch", "Workflow")) -> list[dict[str, Any]]:
    return [
        {"name": n, "description": f"{n} does one job. " + "It has many caveats worth a sentence. " * 40 + EXAMPLE * 3,
         "input_schema": schema(i)}
        for i, n in enumerate(names)
    ]


def system_blocks() -> list[dict[str, Any]]:
    body = f"\n{IDENTITY} Use the tools.\n\nIMPORTANT: " + "never guess URLs. " * 40 + "\n\n"
    body += LONG_POLICY + "\n" + SHORT_STYLE + "\n# Examples\n" + EXAMPLE * 10 + "\n<total_tokens>15000000 tokens left</total_tokens>\n"
    return [{"type": "text", "text": "You are a Claude agent."}, {"type": "text", "text": body}]


def session(turns: int, result_chars: int = 3000, tool: str = "Read", last: str = "and now?") -> dict[str, Any]:
    """A Claude Code-shaped local request: reminders and the prompt in the first turn,
    then `turns` tool calls with their results, then an answer and a new prompt."""
    first = [ENV_REMINDER, SKILLS_REMINDER, CLAUDE_MD_REMINDER, DATE_REMINDER, "fix the failing test"]
    msgs: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": t} for t in first]}]
    for i in range(turns):
        msgs.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Looking at step {i}."},
            {"type": "tool_use", "id": tool_id(i), "name": tool, "input": {"file_path": f"/work/proj/f{i}.py"}},
        ]})
        msgs.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id(i), "content": f"result {i} " + "x = 1\n" * (result_chars // 6)},
        ]})
    msgs.append({"role": "assistant", "content": [{"type": "text", "text": "Done."}]})
    msgs.append({"role": "user", "content": [{"type": "text", "text": last}]})
    return {"model": "local", "max_tokens": 1024, "system": system_blocks(), "tools": tools_list(),
            "tool_choice": {"type": "auto"}, "messages": msgs}


def dumps(req: dict[str, Any]) -> bytes:
    return orjson.dumps(req)


def text_of(req: dict[str, Any]) -> str:
    return orjson.dumps(req).decode()


def tier_names(f: Fitted) -> list[str]:
    return [t.tier for t in f.tiers]


def tool_names(req: dict[str, Any]) -> list[str]:
    return [t["name"] for t in req.get("tools") or []]


def sizes_by_tier(req: dict[str, Any], **kw: Any) -> dict[str, int]:
    """The size after each tier, from a budget no tier can reach."""
    f = fit_request(req, 1, estimate_tokens, drop_turns=False, **kw)
    return {t.tier: t.after for t in f.tiers}


def stopping_at(req: dict[str, Any], tier: str, **kw: Any) -> tuple[int, Fitted]:
    """The largest budget (in steps of 1%) at which fitting stops at `tier`, and its result."""
    size = estimate_tokens(req)
    for step in range(100, 0, -1):
        budget = size * step // 100
        f = fit_request(req, budget, estimate_tokens, **kw)
        if f.fits and f.tiers and f.tiers[-1].tier == tier:
            return budget, f
    raise AssertionError(f"no budget stops at {tier}")


def test_a_request_that_fits_comes_back_as_it_is() -> None:
    req = session(2)
    f = fit_request(req, estimate_tokens(req), estimate_tokens)
    assert f.request is req and f.fits and f.tiers == () and f.tokens == estimate_tokens(req)


def test_stops_at_the_first_tier_that_fits() -> None:
    req = session(6)
    size = estimate_tokens(req)
    last = set()
    for budget in range(size // 10, size, size // 200):
        f = fit_request(req, budget, estimate_tokens)
        assert f.tiers, budget
        # each tier reports the size before and after it, in a chain from the request's size
        assert f.tiers[0].before == size
        assert all(a.after == b.before for a, b in zip(f.tiers, f.tiers[1:], strict=False))
        assert all(t.after > budget for t in f.tiers[:-1]), (budget, f.tiers)
        assert f.tokens == f.tiers[-1].after == estimate_tokens(f.request)
        assert [t.tier for t in f.tiers] == list(TIERS[: len(f.tiers)])
        if f.fits:
            last.add(f.tiers[-1].tier)
    assert last == set(TIERS)


def test_the_tiers_lose_the_cheapest_things_first() -> None:
    after = sizes_by_tier(session(6))
    assert after["descriptions"] > after["tools"] > after["system"] > after["history"]


def test_descriptions_are_shortened_and_names_and_schemas_stay() -> None:
    req = session(1)
    budget, f = stopping_at(req, "descriptions")
    out = f.request
    assert tool_names(out) == tool_names(req)
    for before, after in zip(req["tools"], out["tools"], strict=True):
        assert after["input_schema"] == before["input_schema"]
        assert "<example>" not in after["description"]
        assert before["description"].startswith(after["description"].rstrip("…"))
    share = budget / DESCRIPTION_SHARE * CHARS_PER_TOKEN
    assert sum(len(t["description"]) for t in out["tools"]) <= share


def test_short_descriptions_stay_whole() -> None:
    req = session(1)
    req["tools"][0]["description"] = "Reads a file."
    out = stopping_at(req, "descriptions")[1].request
    assert out["tools"][0]["description"] == "Reads a file."


def test_tools_never_used_and_not_core_are_dropped() -> None:
    req = session(3)
    out = stopping_at(req, "tools")[1].request
    assert tool_names(out) == list(CORE)


def test_a_tool_used_in_the_history_is_never_dropped() -> None:
    req = session(3, tool="Workflow")
    out = fit_request(req, 1, estimate_tokens, drop_turns=True).request
    assert "Workflow" in tool_names(out)
    assert next(t for t in out["tools"] if t["name"] == "Workflow")["input_schema"] == req["tools"][7]["input_schema"]


def test_the_tool_choice_target_is_never_dropped() -> None:
    req = session(3)
    req["tool_choice"] = {"type": "tool", "name": "Agent"}
    out = fit_request(req, 1, estimate_tokens, drop_turns=True).request
    assert "Agent" in tool_names(out) and out["tool_choice"] == {"type": "tool", "name": "Agent"}


def test_deferred_tools_stay_out_unless_used() -> None:
    req = session(3)
    out = stopping_at(req, "tools", deferred={"Bash", "WebFetch"})[1].request
    assert tool_names(out) == ["Read", "Edit", "Write"]
    used = session(3, tool="WebFetch")
    out = fit_request(used, 1, estimate_tokens, deferred={"WebFetch"}).request
    assert "WebFetch" in tool_names(out)


def test_the_core_set_is_the_callers() -> None:
    req = session(3)
    out = fit_request(req, 1, estimate_tokens, core_tools={"Skill"}).request
    assert tool_names(out) == ["Read", "Skill"]  # Read is used in the history


def test_deferred_tool_names_come_from_the_clients_request() -> None:
    client = {"tools": [{"name": "A", "defer_loading": True}, {"name": "B"}, {"name": "C", "defer_loading": False},
                        {"type": "web_search_20250305", "name": "web_search", "defer_loading": True}, "junk"]}
    assert deferred_tool_names(client) == {"A", "web_search"}
    assert deferred_tool_names({}) == frozenset()


def test_needed_tools_keeps_every_tool_when_tool_choice_needs_one_and_none_is_core() -> None:
    req = {"tools": tools_list(("Agent", "Skill")), "tool_choice": {"type": "any"}, "messages": []}
    assert needed_tools(req) == req["tools"]
    req["tool_choice"] = {"type": "auto"}
    assert needed_tools(req) == []


def test_no_tool_left_means_no_tools_and_no_tool_choice() -> None:
    req = session(0)
    req["tools"] = tools_list(("Agent", "Skill"))
    out = fit_request(req, 1, estimate_tokens).request
    assert "tools" not in out and "tool_choice" not in out


def test_the_system_prompt_keeps_identity_environment_and_instructions() -> None:
    req = session(3)
    out = stopping_at(req, "system")[1].request
    system = "".join(b["text"] for b in out["system"])
    assert "You are a Claude agent." in system and IDENTITY in system
    assert SHORT_STYLE in system
    assert "Policy rule" not in system and "<example>" not in system and "never guess URLs" not in system
    assert "<total_tokens>" not in system
    first = [b["text"] for b in out["messages"][0]["content"]]
    assert first == [ENV_REMINDER, CLAUDE_MD_REMINDER, DATE_REMINDER, "fix the failing test"]


def test_an_env_element_survives_in_a_long_section() -> None:
    req = session(1)
    env = "<env>\nWorking directory: /work/proj\nPlatform: linux\n</env>"
    req["system"][1]["text"] += "\n# Context\n" + "Some long words here. " * 60 + env + "\n"
    out = stopping_at(req, "system")[1].request
    system = "".join(b["text"] for b in out["system"])
    assert env in system and "Some long words" not in system


def test_a_long_environment_section_keeps_its_working_directory_and_short_paragraphs() -> None:
    # Claude Code 2.1's default model gets the agent types and the skills list inside the
    # section that holds the working directory.
    req = session(1)
    env = "# Environment\nYou have been invoked in the following environment:\n - Primary working directory: /work/proj\n - Platform: linux"
    agents = "Available agent types:\n" + "- general-purpose: does many things well. " * 40
    req["system"][1]["text"] += "\n" + env + "\n\n" + agents + "\n\nShort closing note.\n"
    out = stopping_at(req, "system")[1].request
    system = "".join(b["text"] for b in out["system"])
    assert env in system and "Short closing note." in system
    assert "general-purpose" not in system


def test_a_long_section_quoting_the_users_instructions_stays_whole() -> None:
    req = session(1)
    section = "# claudeMd\nContents of /work/proj/CLAUDE.md:\n\n" + "Rule the user wrote. " * 60 + "\n"
    req["system"][1]["text"] += "\n" + section
    out = stopping_at(req, "system")[1].request
    assert section in "".join(b["text"] for b in out["system"])


def test_reminders_in_tool_results_go_too() -> None:
    req = session(2)
    req["messages"][2]["content"][0]["content"] += "\n<system-reminder>\n" + "Consider malware. " * 30 + "</system-reminder>"
    req["messages"][4]["content"][0]["content"] = [{"type": "text", "text": "ok <system-reminder>short one</system-reminder>"}]
    out = stopping_at(req, "system")[1].request
    assert "Consider malware" not in text_of(out)
    assert out["messages"][4]["content"][0]["content"] == [{"type": "text", "text": "ok <system-reminder>short one</system-reminder>"}]


def test_a_turn_of_nothing_but_long_reminders_keeps_a_placeholder() -> None:
    req = session(0)
    req["messages"][-1] = {"role": "user", "content": SKILLS_REMINDER}
    out = stopping_at(req, "system")[1].request
    assert out["messages"][-1]["content"] == "(no content)"


def test_history_cuts_old_results_with_a_marker_and_keeps_the_latest_whole() -> None:
    req = session(6, result_chars=20_000)
    req["messages"][-1] = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id(5), "content": "new " * 3000}]}
    req["messages"][-2] = {"role": "assistant", "content": [{"type": "tool_use", "id": tool_id(5), "name": "Read", "input": {}}]}
    req["messages"][-3]["content"][0]["tool_use_id"] = tool_id(4)
    del req["messages"][-4:-2]
    out = stopping_at(req, "history")[1].request
    assert len(out["messages"]) == len(req["messages"])
    old = [b["content"] for m in out["messages"][:-1] for b in m["content"] if b.get("type") == "tool_result"]
    assert old and all("characters trimmed by nonstop" in c for c in old)
    assert out["messages"][-1] == req["messages"][-1]
    assert NOTE not in text_of(out)


def test_turns_are_dropped_only_when_allowed() -> None:
    req = session(30)
    budget = sizes_by_tier(req)["history"] // 2
    kept = fit_request(req, budget, estimate_tokens, drop_turns=False)
    assert not kept.fits and len(kept.request["messages"]) == len(req["messages"])
    assert NOTE not in text_of(kept.request)
    dropped = fit_request(req, budget, estimate_tokens, drop_turns=True)
    assert dropped.fits and len(dropped.request["messages"]) < len(req["messages"])
    assert estimate_tokens(dropped.request) <= budget


def test_dropped_turns_leave_a_note_and_carry_environment_and_instructions() -> None:
    req = session(30)
    out = fit_request(req, sizes_by_tier(req)["history"] // 2, estimate_tokens, drop_turns=True).request
    first = out["messages"][0]
    assert first["role"] == "user"
    texts = [b.get("text") for b in first["content"]]
    assert texts[:3] == [ENV_REMINDER, CLAUDE_MD_REMINDER, DATE_REMINDER]
    assert texts[3] == NOTE
    assert text_of(out).count(NOTE) == 1
    assert "skill: does a thing" not in text_of(out) and "fix the failing test" not in text_of(out)
    assert out["messages"][-1] == req["messages"][-1]


def loop_session(turns: int, result_chars: int = 3000) -> dict[str, Any]:
    """A tool loop in progress: the user's task, then calls and results, the latest turn a
    result (no words of the user's after the first turn)."""
    req = session(turns, result_chars)
    req["messages"] = req["messages"][:-2]
    return req


def test_when_a_tool_loop_loses_its_first_turn_the_users_task_goes_on() -> None:
    """In a tool loop every turn after the first is results only: dropping old turns must
    not leave the model working without the words that asked for the work."""
    req = loop_session(15)
    for share in (2, 3, 4):  # some turns kept, down to the latest alone
        out = fit_request(req, sizes_by_tier(req)["history"] // share, estimate_tokens, drop_turns=True)
        assert out.fits and len(out.request["messages"]) < len(req["messages"])
        texts = [b.get("text") for b in out.request["messages"][0]["content"]]
        assert texts[texts.index(NOTE) + 1] == f"{TASK_NOTE}\nfix the failing test", share
        assert "skill: does a thing" not in text_of(out.request)  # the task, without its reminders
        # the latest result after its call (as it was while it fits): never "(earlier tool result)" text
        assert out.request["messages"][-2] == req["messages"][-2], share
        assert out.request["messages"][-1]["content"][0]["type"] == "tool_result"
        assert "(earlier tool result)" not in text_of(out.request)
        if share == 2:
            assert out.request["messages"][-1] == req["messages"][-1]


def test_the_task_is_not_carried_when_the_kept_turns_hold_the_users_words() -> None:
    req = session(15)  # the latest turn says "and now?"
    out = fit_request(req, sizes_by_tier(req)["history"] // 3, estimate_tokens, drop_turns=True).request
    assert TASK_NOTE not in text_of(out) and "fix the failing test" not in text_of(out)


def test_a_long_task_is_carried_cut() -> None:
    req = loop_session(15)
    req["messages"][0]["content"][-1]["text"] = "TASK-START " + "do this and that. " * 2000 + " TASK-END"
    first = fit_request(req, sizes_by_tier(req)["history"] // 3, estimate_tokens, drop_turns=True).request["messages"][0]
    carried = next(b["text"] for b in first["content"] if b.get("text", "").startswith(TASK_NOTE))
    assert "TASK-START" in carried and "TASK-END" in carried and len(carried) < TASK_CHARS + 200


@pytest.mark.parametrize("budget", [3000, 6000, 12000])
def test_the_last_resort_keeps_as_much_of_the_latest_turn_as_the_room_takes(budget: int) -> None:
    """A paste bigger than the window is cut to the room left, not to a fixed share of the
    cap (which left three quarters of a 6k window unused)."""
    req = session(2, last="y" * 60_000)
    f = fit_request(req, budget, estimate_tokens, drop_turns=True)
    assert f.fits and "characters trimmed by nonstop" in text_of(f.request["messages"][-1])
    assert f.tokens >= budget - 2 * 256 // CHARS_PER_TOKEN - 8, (f.tokens, budget)


def test_the_last_resort_cuts_the_users_turn_not_the_prefill_after_it() -> None:
    """Mid-stream recovery sends the answer so far as an assistant prefill after the user's
    turn: when the user's turn is too big, it is what gets cut."""
    req = session(2, last="y" * 60_000)
    prefill = {"role": "assistant", "content": [{"type": "text", "text": "PREFILL " + "z" * 3000 + " END"}]}
    req["messages"].append(prefill)
    f = fit_request(req, 6000, estimate_tokens, drop_turns=True)
    assert f.fits
    assert f.request["messages"][-1] == prefill
    assert "characters trimmed by nonstop" in text_of(f.request["messages"][-2])


def test_the_latest_turn_is_cut_only_as_a_last_resort() -> None:
    req = session(2, last="y" * 60_000)
    assert not fit_request(req, 6000, estimate_tokens).fits
    f = fit_request(req, 6000, estimate_tokens, drop_turns=True)
    assert f.fits
    assert "characters trimmed by nonstop" in text_of(f.request["messages"][-1])


def test_the_user_instructions_are_never_cut() -> None:
    req = session(4)
    long_md = CLAUDE_MD_REMINDER.replace(MARKER, MARKER + "\n" + "- another rule\n" * 400)
    req["messages"][0]["content"][2]["text"] = long_md
    out = fit_request(req, 1, estimate_tokens, drop_turns=True).request
    assert long_md in [b.get("text") for b in out["messages"][0]["content"]]


def test_a_request_that_cannot_fit_says_so() -> None:
    f = fit_request(session(3), 50, estimate_tokens, drop_turns=True)
    assert not f.fits and f.tiers[-1].tier == "minimum"
    assert f.tokens == estimate_tokens(f.request) > 50


def test_the_input_is_not_modified() -> None:
    req = session(20, result_chars=20_000)
    before = copy.deepcopy(req)
    fit_request(req, 2000, estimate_tokens, drop_turns=True)
    fit_floor(req, estimate_tokens, drop_turns=True)
    assert req == before


@pytest.mark.parametrize("drop_turns", [False, True])
@pytest.mark.parametrize("budget", [1500, 3000, 6000, 12_000, 25_000])
def test_same_input_same_bytes(budget: int, drop_turns: bool) -> None:
    a = fit_request(session(25), budget, estimate_tokens, drop_turns=drop_turns)
    b = fit_request(copy.deepcopy(session(25)), budget, estimate_tokens, drop_turns=drop_turns)
    assert dumps(a.request) == dumps(b.request) and a.tiers == b.tiers


def test_a_growing_session_keeps_its_prefix_between_cuts() -> None:
    """Turn after turn at one budget: tools and system stay byte-identical, and most
    turns extend the previous turn's fitted messages instead of rewriting them."""
    budget = 6000
    fitted = [fit_request(session(n), budget, estimate_tokens, drop_turns=True).request for n in range(10, 40)]
    assert all(f["tools"] == fitted[0]["tools"] and f["system"] == fitted[0]["system"] for f in fitted)
    kept = 0
    for prev, cur in zip(fitted, fitted[1:], strict=False):
        # the previous turn's messages but its last two (the answer and the prompt,
        # which the next turn replaces with a tool call) are where the cache can hit
        stable = prev["messages"][:-2]
        kept += cur["messages"][: len(stable)] == stable
    assert kept >= len(fitted) // 2, f"only {kept} of {len(fitted) - 1} turns kept the prefix"


# --- fit_floor -----------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_turns", [False, True])
def test_the_floor_is_what_fitting_reaches(drop_turns: bool) -> None:
    req = session(20, result_chars=8000)
    floor = fit_floor(req, estimate_tokens, drop_turns=drop_turns)
    assert floor < estimate_tokens(req)
    assert fit_request(req, floor, estimate_tokens, drop_turns=drop_turns).fits
    assert not fit_request(req, floor - 200, estimate_tokens, drop_turns=drop_turns).fits
    if drop_turns:
        assert floor < fit_floor(req, estimate_tokens, drop_turns=False)


def test_the_floor_of_a_small_request_is_its_size() -> None:
    req = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert fit_floor(req, estimate_tokens, drop_turns=True) == estimate_tokens(req)


# --- properties ----------------------------------------------------------------------------------

PROPERTY_TOOLS = ("Read", "Bash", "Agent", "WebFetch", "mcp__srv__do")


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """Alternating user/assistant turns with tool calls answered in the next turn, some
    reminders, tools with long descriptions, any tool_choice."""
    names = draw(st.lists(st.sampled_from(PROPERTY_TOOLS), unique=True, max_size=len(PROPERTY_TOOLS)))
    tools = [{"name": n, "description": "Does it. " * draw(st.integers(0, 200)), "input_schema": schema(i)}
             for i, n in enumerate(names)]
    text = st.builds(lambda w, n: (w + " ") * n, st.sampled_from(["word", "<system-reminder>r</system-reminder>", ENV_REMINDER]),
                     st.integers(0, 400))
    msgs: list[dict[str, Any]] = [{"role": "user", "content": draw(st.sampled_from([CLAUDE_MD_REMINDER, "start"]))}]
    pending: list[str] = []
    counter = 0
    for _ in range(draw(st.integers(0, 14))):
        if msgs[-1]["role"] == "user":
            blocks: list[dict[str, Any]] = [{"type": "text", "text": draw(text)}] if draw(st.booleans()) or not names else []
            pending = []
            for _ in range(draw(st.integers(0 if blocks else 1, 2)) if names else 0):
                counter += 1
                pending.append(f"toolu_{counter:04d}")
                blocks.append({"type": "tool_use", "id": pending[-1], "name": draw(st.sampled_from(names)), "input": {}})
            msgs.append({"role": "assistant", "content": blocks})
        else:
            results = [{"type": "tool_result", "tool_use_id": i, "content": draw(text)} for i in pending]
            extra = [{"type": "text", "text": draw(text)}] if draw(st.booleans()) or not results else []
            msgs.append({"role": "user", "content": results + extra})
    if msgs[-1]["role"] == "assistant":
        results = [{"type": "tool_result", "tool_use_id": i, "content": draw(text)} for i in pending]
        msgs.append({"role": "user", "content": results or "go on"})
    req: dict[str, Any] = {"model": "m", "max_tokens": 100, "system": system_blocks(), "messages": msgs}
    if tools:
        req["tools"] = tools
        req["tool_choice"] = draw(st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": names[0]}]))
    return req


def check_valid(out: dict[str, Any], req: dict[str, Any]) -> None:
    msgs = out["messages"]
    roles = [m["role"] for m in msgs]
    assert roles[0] == "user" and all(a != b for a, b in zip(roles, roles[1:], strict=False)), roles
    for i, m in enumerate(msgs):
        content = m["content"]
        assert content, m
        if not isinstance(content, list):
            continue
        calls = [b["id"] for b in msgs[i - 1]["content"] if b.get("type") == "tool_use"] if i and isinstance(msgs[i - 1]["content"], list) else []
        answers = [b["tool_use_id"] for b in content if b.get("type") == "tool_result"]
        if m["role"] == "user":
            assert set(answers) <= set(calls), (answers, calls)
            assert set(calls) <= set(answers), (answers, calls)
    by_name = {t["name"]: t for t in req.get("tools") or []}
    for t in out.get("tools") or []:
        assert t["input_schema"] == by_name[t["name"]]["input_schema"]
    used = {b["name"] for m in req["messages"] if m["role"] == "assistant" for b in m["content"] if b.get("type") == "tool_use"}
    assert used & set(by_name) <= set(tool_names(out))
    choice = req.get("tool_choice") or {}
    if choice.get("type") == "tool":
        assert choice["name"] in tool_names(out) and out["tool_choice"] == choice


@SETTINGS
@given(requests(), st.integers(200, 9000), st.booleans())
def test_property_a_fitted_request_is_valid_and_within_budget(req: dict[str, Any], budget: int, drop_turns: bool) -> None:
    before = copy.deepcopy(req)
    f = fit_request(req, budget, estimate_tokens, drop_turns=drop_turns)
    assert req == before
    check_valid(f.request, req)
    assert f.tokens == estimate_tokens(f.request)
    assert f.fits == (f.tokens <= budget)
    again = fit_request(copy.deepcopy(req), budget, estimate_tokens, drop_turns=drop_turns)
    assert dumps(again.request) == dumps(f.request)
    if not drop_turns:
        assert len(f.request["messages"]) == len(req["messages"])


@SETTINGS
@given(requests(), st.booleans())
def test_property_the_floor_fits(req: dict[str, Any], drop_turns: bool) -> None:
    floor = fit_floor(req, estimate_tokens, drop_turns=drop_turns)
    assert floor <= estimate_tokens(req)
    assert fit_request(req, floor, estimate_tokens, drop_turns=drop_turns).fits


# --- Claude Code's real request -----------------------------------------------------------------

WINDOWS = (4096, 8192, 16384, 32768)
OUTPUT_ROOM = 1024


@pytest.fixture(scope="module")
def captured() -> list[dict[str, Any]]:
    """Two consecutive main requests of one Claude Code session, captured now."""
    _need(claude_cli() is not None, "the Claude Code CLI (`claude`)")
    bodies = capture_requests(["List the files here", "And now count them"])
    main = [b for b in bodies if b.get("model") == capture.MODEL and b.get("tools")]
    assert len(main) == 2, [(b.get("model"), len(b.get("messages") or [])) for b in bodies]
    return main


def as_local(body: dict[str, Any]) -> dict[str, Any]:
    return normalize_for_prompt_cache(to_local_request(body, model="local", max_tokens=OUTPUT_ROOM))


def test_real_requests_keep_a_byte_stable_prefix(captured: list[dict[str, Any]]) -> None:
    first, second = (as_local(b) for b in captured)
    for req in (first, second):
        assert not any(b["text"].startswith(ATTRIBUTION_PREFIX) for b in req["system"])
        assert "<total_tokens>" not in text_of({"system": req["system"]})
    assert dumps({"s": first["system"], "t": first["tools"]}) == dumps({"s": second["system"], "t": second["tools"]})
    assert second["messages"][: len(first["messages"])] == first["messages"]


@pytest.mark.parametrize("window", WINDOWS)
def test_the_real_first_request_fits_every_window(captured: list[dict[str, Any]], window: int) -> None:
    body = captured[0]
    req = as_local(body)
    deferred = deferred_tool_names(body)
    budget = window - OUTPUT_ROOM
    f = fit_request(req, budget, estimate_tokens, deferred=deferred)
    assert f.fits, f.tiers
    out = f.request
    text = text_of(out)
    assert capture.INSTRUCTIONS_MARKER in text
    assert "working directory:" in text.lower() or "<env>" in text
    kept = {t["name"]: t for t in out["tools"]}
    for t in req["tools"]:
        if t["name"] in ("Read", "Edit", "Write", "Bash"):
            assert kept[t["name"]]["input_schema"] == t["input_schema"]
    if "tools" in [t.tier for t in f.tiers]:
        assert not deferred & set(kept)
    assert dumps(fit_request(as_local(body), budget, estimate_tokens, deferred=deferred).request) == dumps(out)
    assert fit_floor(req, estimate_tokens, deferred=deferred) <= budget
    # the next turn, fitted at the same window, keeps the same tools and system prompt
    nxt = fit_request(as_local(captured[1]), budget, estimate_tokens, deferred=deferred)
    if [t.tier for t in nxt.tiers] == [t.tier for t in f.tiers]:
        assert nxt.request.get("tools") == out.get("tools") and nxt.request.get("system") == out.get("system")


def _json_text(req: dict[str, Any]) -> str:
    return orjson.dumps(req).decode()


# --- trimming never lengthens a text; a result of many blocks is capped as one --------------------


def barely_over_the_cap(budget: int) -> dict[str, Any]:
    """One old prompt 100 characters over the history tier's cap, six old texts 8
    characters over it, and a short latest turn."""
    cap = max(MIN_RESULT, int(budget / RESULT_SHARE * CHARS_PER_TOKEN))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "a" * (cap + 100)}]
    for _ in range(3):
        messages.append({"role": "assistant", "content": "b" * (cap + 8)})
        messages.append({"role": "user", "content": "c" * (cap + 8)})
    messages.append({"role": "assistant", "content": "ok"})
    messages.append({"role": "user", "content": "go on"})
    return {"model": "m", "max_tokens": 10, "messages": messages}


def request_just_over_its_budget() -> tuple[dict[str, Any], int]:
    budget = 4000
    for _ in range(30):  # the cap depends on the budget: settle both
        budget = estimate_tokens(barely_over_the_cap(budget)) - 5
    req = barely_over_the_cap(budget)
    assert estimate_tokens(req) == budget + 5
    return req, budget


def test_the_history_tier_never_makes_a_text_longer() -> None:
    """A text only a little over its cap is left as it is: both halves plus the marker
    ("[... 1 characters trimmed by nonstop ...]") would be longer than the text."""
    req, budget = request_just_over_its_budget()
    f = fit_request(req, budget, estimate_tokens, drop_turns=False)
    history = next(t for t in f.tiers if t.tier == "history")
    assert history.after <= history.before, f.tiers
    for before, after in zip(req["messages"], f.request["messages"], strict=True):
        assert len(_json_text(after)) <= len(_json_text(before)), "a trimmed text is longer than the original"


def test_old_turns_stay_when_trimming_an_old_text_fits() -> None:
    """With `drop_turns` (as backends/local.py fits): trimming the one long old prompt
    saves enough, so no turn is dropped (the user's first request stays)."""
    req, budget = request_just_over_its_budget()
    f = fit_request(req, budget, estimate_tokens, drop_turns=True)
    assert f.fits
    assert NOTE not in _json_text(f.request), (
        f"{len(req['messages']) - len(f.request['messages'])} turns dropped: {f.tiers}")
    assert len(f.request["messages"]) == len(req["messages"])


def mcp_session() -> dict[str, Any]:
    """A prompt, an MCP tool call whose result is a list of 60 short text blocks (one per
    search hit, as MCP servers return them), an answer, and a follow-up."""
    hits = [{"type": "text", "text": f"hit {i}: " + "matching line of source code here; " * 9} for i in range(60)]
    return {
        "model": "m", "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "find where the retry limit is set and explain it"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Searching."},
                {"type": "tool_use", "id": "toolu_01", "name": "mcp__search__grep", "input": {"q": "retry"}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": hits}]},
            {"role": "assistant", "content": "It is set in config.py, line 12."},
            {"role": "user", "content": "and where is it read?"},
        ],
    }


def test_an_old_tool_result_of_many_text_blocks_is_capped_as_one_result() -> None:
    """The history tier caps one old tool result at 1/RESULT_SHARE of the budget, whether
    the result is one text or 60 short blocks (an MCP tool's list of hits): the blocks'
    text is cut as one, so the request fits without dropping the user's question."""
    req = mcp_session()
    budget = 2500
    assert estimate_tokens(req) > budget
    kept = fit_request(req, budget, estimate_tokens, drop_turns=False)
    assert kept.fits, kept.tiers
    [result] = kept.request["messages"][2]["content"]
    assert result["tool_use_id"] == "toolu_01" and [b["type"] for b in result["content"]] == ["text"]
    assert "trimmed by nonstop" in result["content"][0]["text"] and result["content"][0]["text"].startswith("hit 0:")
    dropped = fit_request(req, budget, estimate_tokens, drop_turns=True)
    assert "find where the retry limit is set" in _json_text(dropped.request), dropped.tiers


def test_a_tool_result_that_was_only_a_reminder_is_left_without_an_empty_text_block() -> None:
    """Slimming a result whose text is one long reminder leaves no empty text block (the
    Messages API and strict chat templates refuse one)."""
    req = session(3)
    req["messages"][2]["content"][0]["content"] = [{"type": "text", "text": SKILLS_REMINDER}]
    out = fit_request(req, 1, estimate_tokens, drop_turns=False).request
    for m in out["messages"]:
        for b in m["content"] if isinstance(m["content"], list) else []:
            inner = b.get("content") if b.get("type") == "tool_result" else [b]
            for part in inner if isinstance(inner, list) else []:
                assert not (part.get("type") == "text" and not part.get("text", "").strip()), b


def test_an_old_tool_calls_long_input_is_cut_like_an_old_result() -> None:
    """A file the model wrote whole (Claude Code's Write) sits in the history as the
    call's input: the history tier cuts its long strings as it cuts an old result's text,
    leaving the call a call with the same input keys, and the latest turn whole."""
    written = "def f():\n    return 1\n" * 2000  # ~44,000 characters
    req = {
        "model": "m", "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "write the module"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Writing it."},
                {"type": "tool_use", "id": "toolu_01", "name": "Write",
                 "input": {"file_path": "/w/m.py", "content": written, "opts": {"lines": [written]}}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "ok"}]},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "now add a test"},
        ],
    }
    budget = 3000
    assert estimate_tokens(req) > 4 * budget
    f = fit_request(req, budget, estimate_tokens, drop_turns=False)
    assert f.fits, f.tiers
    [text, call] = f.request["messages"][1]["content"]
    assert call["type"] == "tool_use" and call["id"] == "toolu_01" and call["name"] == "Write"
    assert set(call["input"]) == {"file_path", "content", "opts"} and call["input"]["file_path"] == "/w/m.py"
    for cut in (call["input"]["content"], call["input"]["opts"]["lines"][0]):
        assert "trimmed by nonstop" in cut and cut.startswith("def f():") and len(cut) < len(written) // 4
    assert f.request["messages"][-1] == req["messages"][-1]
    assert req["messages"][1]["content"][1]["input"]["content"] == written  # the client's request is not changed
    # The turns stay: cutting the input was enough.
    assert len(f.request["messages"]) == len(req["messages"])


def test_pasted_text_that_looks_like_the_environment_is_cut_as_any_old_text() -> None:
    """Only reminders (and `<env>`) pin a text: a long log the user pasted that happens to
    say "Working directory:" and "Today's date is" is an old text like any other, cut in
    the history tier, while the environment's reminder beside it stays whole."""
    log = "Working directory: /srv/app\nToday's date is 2026-11-29.\n" + "ERROR retrying the job\n" * 2000
    req = {
        "model": "m", "max_tokens": 10,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": ENV_REMINDER},
                                         {"type": "text", "text": "why does this fail?\n" + log}]},
            {"role": "assistant", "content": "The job's retries run out."},
            {"role": "user", "content": "how do I raise the limit?"},
        ],
    }
    budget = 2000
    assert estimate_tokens(req) > 5 * budget
    f = fit_request(req, budget, estimate_tokens, drop_turns=False)
    assert f.fits, f.tiers
    env, pasted = f.request["messages"][0]["content"]
    assert env["text"] == ENV_REMINDER
    assert "trimmed by nonstop" in pasted["text"] and pasted["text"].startswith("why does this fail?")
    assert len(f.request["messages"]) == 3
