"""The suite: real Messages requests, every right answer expressible, a quick subset, and a
long-context prompt whose fact sits deep inside."""

from __future__ import annotations

from nonstop.quality.tasks import CATEGORIES, TOOL_SCHEMAS, TOOLS, long_context_task, suite
from nonstop.wire.anthropic import estimate_tokens
from nonstop.wire.repair import schema_problem
from nonstop.wire.validate import validate_messages_request
from tests.support.scripted_model import PERFECT, task_of


def test_every_task_is_a_valid_claude_code_shaped_request() -> None:
    for task in [*suite(), long_context_task(3)]:
        req = task.request()
        assert validate_messages_request(req) == "", task.id
        assert [t["name"] for t in req["tools"]] == ["Read", "Edit", "Write", "Bash", "Grep", "Glob"]
        assert req["stream"] is True and task.category in CATEGORIES


def test_ids_are_unique_and_each_task_can_be_told_apart_by_its_last_message() -> None:
    tasks = [*suite(), long_context_task(2)]
    assert len({t.id for t in tasks}) == len(tasks)
    assert [task_of(t.request()) for t in tasks] == [t.id for t in tasks]


def test_quick_is_a_subset_that_still_measures_tools_loops_stops_and_format() -> None:
    quick, full = suite(quick=True), suite()
    assert {t.id for t in quick} < {t.id for t in full}
    assert {t.category for t in quick} == {"tool_choice", "tool_loop", "stop", "format"}
    assert len(full) == 17 and len(quick) == 8


def test_the_tools_have_realistic_schemas_that_a_right_call_satisfies() -> None:
    for tool in TOOLS:
        schema = tool["input_schema"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False and tool["description"]
    for task in suite():
        if task.category == "tool_choice":
            name, args = PERFECT[task.id][1]
            assert name in task.call.tools and schema_problem(args, TOOL_SCHEMAS[name]) == "", task.id
    assert schema_problem({"pattern": "x", "output_mode": "everything"}, TOOL_SCHEMAS["Grep"])
    assert schema_problem({"path": "src"}, TOOL_SCHEMAS["Grep"]) == "value.pattern is missing"


def test_long_context_plants_the_fact_deep_and_grows_with_the_file_count() -> None:
    small, big = long_context_task(10), long_context_task(200)
    text = big.messages[-1]["content"][0]["text"]
    value = big.meta["value"]
    assert text.count(value) == 1 and small.meta["value"] == value  # deterministic
    assert 0.5 < text.index(value) / len(text) < 0.7
    assert estimate_tokens(big.request()) > 10 * (estimate_tokens(small.request()) - estimate_tokens(long_context_task(0).request()))
    assert big.answer is not None and big.answer.value == (value,)
