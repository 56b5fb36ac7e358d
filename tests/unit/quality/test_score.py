"""The mechanical scorer, with answers written by hand: each rule gives the mark a reader
would give."""

from __future__ import annotations

from typing import Any

import pytest

from nonstop.quality.score import Answer, TaskResult, answer_matches, score_task, scorecard
from nonstop.quality.tasks import AnswerSpec, Task, suite

TASKS = {t.id: t for t in suite()}


def call(name: str, args: Any, stop: str = "tool_use", **kw: Any) -> Answer:
    return Answer([{"type": "tool_use", "id": "toolu_1", "name": name, "input": args}], stop, output_tokens=20, **kw)


def text(value: str, stop: str = "end_turn", **kw: Any) -> Answer:
    return Answer([{"type": "text", "text": value}], stop, output_tokens=10, **kw)


@pytest.mark.parametrize(("task", "answer", "marks"), [
    ("choice.read", call("Read", {"file_path": "/home/dev/shop/src/app.py"}),
     {"tool_choice": 1, "tool_input": 1, "stop": 1}),
    ("choice.read", call("Read", {"file_path": "src/app.py"}), {"tool_choice": 1, "tool_input": 1, "stop": 1}),
    ("choice.read", call("Read", {"file_path": "/home/dev/shop/src/main.py"}), {"tool_choice": 1, "tool_input": 0, "stop": 1}),
    ("choice.read", call("Bash", {"command": "cat src/app.py"}), {"tool_choice": 0, "tool_input": 1, "stop": 1}),
    ("choice.read", call("Read", {"path": "src/app.py"}), {"tool_choice": 1, "tool_input": 0, "stop": 1}),
    ("choice.read", call("Read", {"file_path": "src/app.py"}, stop="end_turn"), {"tool_choice": 1, "tool_input": 1, "stop": 0}),
    ("choice.read", text("Sure, let me read it."), {"tool_choice": 0, "tool_input": 0, "stop": 0}),
    ("choice.read", call("Open", {"file_path": "src/app.py"}), {"tool_choice": 0, "tool_input": 0, "stop": 1}),
    ("choice.grep", call("Grep", {"pattern": "def parse_invoice", "output_mode": "lines"}),
     {"tool_choice": 1, "tool_input": 0, "stop": 1}),
    ("choice.edit", call("Edit", {"file_path": "/home/dev/shop/src/config.py", "old_string": "DEFAULT_TIMEOUT = 30",
                                  "new_string": "DEFAULT_TIMEOUT = 60"}), {"tool_choice": 1, "tool_input": 1, "stop": 1}),
    ("choice.edit", call("Edit", {"file_path": "/home/dev/shop/src/config.py", "old_string": "DEFAULT_TIMEOUT = 30",
                                  "new_string": "DEFAULT_TIMEOUT = 90"}), {"tool_choice": 1, "tool_input": 0, "stop": 1}),
    ("loop.version", text("It pins requests 2.31.7."), {"tool_loop": 1, "stop": 1}),
    ("loop.version", text("It pins requests 2.31.0."), {"tool_loop": 0, "stop": 1}),
    ("loop.version", call("Read", {"file_path": "requirements.txt"}), {"tool_loop": 0, "stop": 1}),
    ("loop.next_read", call("Read", {"file_path": "/home/dev/shop/src/billing/invoice.py"}), {"tool_loop": 1, "stop": 1}),
    ("loop.next_read", text("It is in src/billing/invoice.py."), {"tool_loop": 1, "stop": 1}),
    ("loop.next_read", call("Read", {"file_path": "/home/dev/shop/src/app.py"}), {"tool_loop": 0, "stop": 1}),
    ("stop.no_tool", text("It means the resource was not found."), {"stop": 1}),
    ("stop.no_tool", text("It means the resource was not found.", stop="max_tokens"), {"stop": 0}),
    ("stop.no_tool", text("A client error."), {"stop": 0}),
    ("stop.no_tool", call("Bash", {"command": "curl -I x"}), {"stop": 0}),
    ("format.number", text("42"), {"format": 1, "stop": 1}),
    ("format.number", text(" 42\n"), {"format": 1, "stop": 1}),
    ("format.number", text("42."), {"format": 0.5, "stop": 1}),
    ("format.number", text("The answer is 42."), {"format": 0, "stop": 1}),
    ("format.json", text('{"port": 8080, "name": "web"}'), {"format": 1, "stop": 1}),
    ("format.json", text('```json\n{"name": "web", "port": 8080}\n```'), {"format": 0.5, "stop": 1}),
    ("format.json", text('{"name": "web", "port": "8080"}'), {"format": 0, "stop": 1}),
    ("format.path", text("`src/web/app.py`"), {"format": 0.5, "stop": 1}),
])
def test_marks(task: str, answer: Answer, marks: dict[str, float]) -> None:
    result = score_task(TASKS[task], answer)
    assert result.marks == marks, result.notes
    assert result.passed == (marks[TASKS[task].category] >= 1)
    if not all(v >= 1 for v in marks.values()):
        assert result.notes  # a miss always says why


def test_a_reply_that_ran_into_the_backends_output_cap_is_a_runaway() -> None:
    capped = text("It means not found.", cap=512)
    capped.output_tokens = 512  # nonstop reports a cut as end_turn; the cap tells
    result = score_task(TASKS["stop.no_tool"], capped)
    assert result.marks == {"stop": 0} and "token limit" in result.notes[0]


def test_no_answer_at_all_marks_every_category_of_the_task_zero() -> None:
    result = score_task(TASKS["choice.grep"], Answer(error="network: connection refused"))
    assert result.marks == {"tool_choice": 0, "tool_input": 0, "stop": 0}
    assert result.notes == ["no answer: network: connection refused"]


@pytest.mark.parametrize(("spec", "got", "mark"), [
    (AnswerSpec("exact", "READY"), "READY", 1.0),
    (AnswerSpec("exact", "READY"), '"READY"', 0.5),
    (AnswerSpec("exact", "READY"), "```\nREADY\n```", 0.5),
    (AnswerSpec("exact", "READY"), "ready", 0.0),
    (AnswerSpec("contains", ("8437",)), "PORT is 8437", 1.0),
    (AnswerSpec("json", {"a": 1}), "not json", 0.0),
])
def test_answer_matches(spec: AnswerSpec, got: str, mark: float) -> None:
    assert answer_matches(spec, got) == mark


def test_scorecard_means_each_category_and_measures_speed_at_the_largest_prompt() -> None:
    results = [
        TaskResult("a", "tool_choice", {"tool_choice": 1, "tool_input": 1, "stop": 1}, input_tokens=2000,
                   output_tokens=40, first_token_s=1.0, generate_s=2.0),
        TaskResult("b", "tool_choice", {"tool_choice": 0, "tool_input": 1, "stop": 0}, input_tokens=6000,
                   output_tokens=60, first_token_s=4.0, generate_s=2.0),
        TaskResult("c", "format", {"format": 0.5, "stop": 1}, input_tokens=100, output_tokens=3,
                   first_token_s=0.1, generate_s=0.1),
    ]
    card = scorecard(results)
    assert card.categories == {"tool_choice": 0.5, "tool_input": 1.0, "tool_loop": None, "stop": 2 / 3,
                               "format": 0.5, "long_context": None}
    assert card.overall == pytest.approx((0.5 + 1.0 + 2 / 3 + 0.5) / 4)
    assert card.tools == 0.75
    assert (card.first_token_s, card.first_token_tokens) == (4.0, 6000)
    assert card.tokens_per_s == 25.0  # 100 tokens in 4 s; c's 3 tokens are too few to time


def test_an_empty_suite_has_no_scores() -> None:
    card = scorecard([])
    assert card.overall is None and card.tools is None and card.tokens_per_s is None


def test_a_task_whose_answer_is_not_scripted_by_a_spec_counts_as_answered() -> None:
    task = Task("x", "format", [], "end_turn")
    assert score_task(task, text("anything")).marks == {"format": 1.0, "stop": 1.0}
