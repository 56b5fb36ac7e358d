"""The mechanical scorer: a task and the reply a model gave, in, marks out. No model
judges another; every mark is a rule a reader can check by hand. Pure.

    result = score_task(task, answer)          # one task: its marks, 0..1 per category
    card = scorecard(results)                  # the suite: each category's mean, the speed

A task marks several categories: a tool-choice task marks `tool_choice` (the right tool),
`tool_input` (every call's input validates against its tool's JSON schema, and the call
names the right file, pattern or command) and `stop` (it ended with tool_use, not by
running out of tokens).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from nonstop.quality.tasks import CATEGORIES, TOOL_SCHEMAS, AnswerSpec, CallSpec, Task
from nonstop.wire.repair import schema_problem

# A speed measured on fewer output tokens than this is noise.
MIN_SPEED_TOKENS = 8


@dataclass
class Answer:
    """What came back for one task: the assistant message's content blocks and stop
    reason, the output tokens, and when the first and last content arrived (seconds
    after the request was sent). `error` is set when no answer came at all; `cap` is
    the most output tokens the backend would give (0: unknown)."""

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    output_tokens: int = 0
    input_tokens: int = 0
    first_token_s: float | None = None
    total_s: float | None = None
    error: str = ""
    cap: int = 0

    @property
    def text(self) -> str:
        return "".join(str(b.get("text", "")) for b in self.content if b.get("type") == "text")

    @property
    def calls(self) -> list[dict[str, Any]]:
        return [b for b in self.content if b.get("type") == "tool_use"]

    @property
    def runaway(self) -> bool:
        """It ran until the token limit instead of ending by itself."""
        return self.stop_reason == "max_tokens" or (self.cap > 0 and self.output_tokens >= self.cap)


@dataclass
class TaskResult:
    id: str
    category: str
    marks: dict[str, float]
    notes: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    first_token_s: float | None = None
    generate_s: float | None = None
    error: str = ""  # why the task got no answer (the server did not give one)

    @property
    def passed(self) -> bool:
        return self.marks.get(self.category, 0.0) >= 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scorecard:
    """Each category's score (0..1; None: no task measured it), the speed, and the
    overall score: the mean of the categories measured."""

    categories: dict[str, float | None]
    overall: float | None
    first_token_s: float | None = None  # at the largest prompt of the suite
    first_token_tokens: int = 0  # that prompt's size
    tokens_per_s: float | None = None
    tasks: list[TaskResult] = field(default_factory=list)

    @property
    def tools(self) -> float | None:
        """Tool choice and tool input together: the one figure for "can it call tools"."""
        return _mean([v for k in ("tool_choice", "tool_input") if (v := self.categories.get(k)) is not None])

    def to_dict(self) -> dict[str, Any]:
        return {
            "categories": dict(self.categories), "overall": self.overall, "tools": self.tools,
            "first_token_s": self.first_token_s, "first_token_tokens": self.first_token_tokens,
            "tokens_per_s": self.tokens_per_s,
        }


# --- one task ----------------------------------------------------------------------------------


def score_task(task: Task, answer: Answer) -> TaskResult:
    result = TaskResult(task.id, task.category, {}, input_tokens=answer.input_tokens,
                        output_tokens=answer.output_tokens, first_token_s=answer.first_token_s)
    if answer.first_token_s is not None and answer.total_s is not None:
        result.generate_s = max(0.0, answer.total_s - answer.first_token_s)
    if answer.error:
        for category in _categories_of(task):
            result.marks[category] = 0.0
        result.notes.append(f"no answer: {answer.error}")
        result.error = answer.error
        return result
    calls = answer.calls
    if calls:
        valid = [_input_problem(c) for c in calls]
        result.notes += [p for p in valid if p]
    if task.category == "tool_choice":
        _mark_choice(task, answer, result)
    elif task.category == "tool_loop":
        _mark_loop(task, answer, result)
    else:
        _mark_answer(task, answer, result)
    _mark_stop(task, answer, result)
    return result


def _categories_of(task: Task) -> list[str]:
    extra = ["tool_input"] if task.category == "tool_choice" else []
    return [task.category, *extra, "stop"]


def _mark_choice(task: Task, answer: Answer, result: TaskResult) -> None:
    assert task.call is not None
    calls = answer.calls
    right = [c for c in calls if c.get("name") in task.call.tools]
    result.marks["tool_choice"] = 1.0 if right else 0.0
    if not calls:
        result.notes.append(f"no tool call; wanted {' or '.join(task.call.tools)}")
        result.marks["tool_input"] = 0.0
        return
    if not right:
        result.notes.append(f"called {', '.join(str(c.get('name')) for c in calls)}; wanted {' or '.join(task.call.tools)}")
    inputs_valid = all(not _input_problem(c) for c in calls)
    aimed = any(not _arg_problem(c, task.call) for c in right)
    if right and not aimed:
        result.notes.append(_arg_problem(right[0], task.call))
    result.marks["tool_input"] = 1.0 if inputs_valid and (aimed or not right) else 0.0


def _mark_loop(task: Task, answer: Answer, result: TaskResult) -> None:
    calls = answer.calls
    if calls and task.call is not None:
        good = [c for c in calls if c.get("name") in task.call.tools and not _input_problem(c) and not _arg_problem(c, task.call)]
        result.marks["tool_loop"] = 1.0 if good else 0.0
        if not good:
            result.notes.append(f"next call {calls[0].get('name')} does not follow from the result")
        return
    if calls:
        result.marks["tool_loop"] = 0.0
        result.notes.append(f"called {calls[0].get('name')} again instead of answering from the result")
        return
    ok = task.answer is not None and answer_matches(task.answer, answer.text) >= 1.0
    result.marks["tool_loop"] = 1.0 if ok else 0.0
    if not ok:
        result.notes.append(f"the answer does not use the tool result: {_short(answer.text)}")


def _mark_answer(task: Task, answer: Answer, result: TaskResult) -> None:
    if answer.calls:
        result.marks[task.category] = 0.0
        result.notes.append(f"called {answer.calls[0].get('name')} where a direct answer was asked for")
        return
    mark = answer_matches(task.answer, answer.text) if task.answer is not None else 1.0
    result.marks[task.category] = mark
    if mark < 1.0:
        result.notes.append(f"answered {_short(answer.text)}" + (" (close: the format is off)" if mark > 0 else ""))


def _mark_stop(task: Task, answer: Answer, result: TaskResult) -> None:
    """The stop mark; for a task of the stop category, it also needs the right answer."""
    before = result.marks.get("stop", 1.0)
    if answer.runaway:
        result.marks["stop"] = 0.0
        result.notes.append(f"ran until the token limit ({answer.output_tokens} tokens)")
        return
    want = task.stop
    if want == "either":
        want = "tool_use" if answer.calls else "end_turn"
    ok = answer.stop_reason == want and (want != "tool_use" or bool(answer.calls))
    result.marks["stop"] = min(before, 1.0 if ok else 0.0)
    if not ok:
        result.notes.append(f"stopped with {answer.stop_reason or 'nothing'}; wanted {want}")


def _input_problem(call: dict[str, Any]) -> str:
    name = str(call.get("name"))
    schema = TOOL_SCHEMAS.get(name)
    if schema is None:
        return f"called {name}, which is not offered"
    problem = schema_problem(call.get("input"), schema, "input")
    return f"{name} {problem}" if problem else ""


def _arg_problem(call: dict[str, Any], spec: CallSpec) -> str:
    args = call.get("input") if isinstance(call.get("input"), dict) else {}
    assert isinstance(args, dict)
    for arg, needles in spec.args:
        values = [v for v in args.values() if isinstance(v, str)] if arg == "*" else [args.get(arg)]
        texts = [v.lower() for v in values if isinstance(v, str)]
        if not any(n.lower() in t for n in needles for t in texts):
            where = "its input" if arg == "*" else arg
            return f"{call.get('name')}: {where} does not mention {' or '.join(needles)}"
    return ""


# --- text answers ----------------------------------------------------------------------------------

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.S)


def answer_matches(spec: AnswerSpec, text: str) -> float:
    """1.0 for a right answer in the asked format, 0.5 for the right answer in a format
    that is close (in a code fence, quoted, with a trailing full stop), 0.0 otherwise."""
    got = text.strip()
    if spec.kind == "contains":
        low = got.lower()
        return 1.0 if any(str(v).lower() in low for v in spec.value) else 0.0
    if spec.kind == "json":
        if _json_equal(got, spec.value):
            return 1.0
        fenced = _FENCE.match(got)
        return 0.5 if fenced and _json_equal(fenced.group(1).strip(), spec.value) else 0.0
    if got == spec.value:
        return 1.0
    loose = got.strip("`'\"*").rstrip(".").strip()
    fenced = _FENCE.match(got)
    if loose == spec.value or (fenced and fenced.group(1).strip() == spec.value):
        return 0.5
    return 0.0


def _json_equal(text: str, want: Any) -> bool:
    try:
        return _same(json.loads(text), want)
    except (ValueError, RecursionError):  # a model repeating "[[[[" nests past the parser's depth
        return False


def _same(got: Any, want: Any) -> bool:
    """JSON equality with JSON's types: 8080.0 is not the integer asked for, nor 1 `true`
    (Python's == takes both)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(_same(a, b) for a, b in zip(got, want, strict=True))
    return bool(got == want)


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    if not text:
        return "(nothing)"
    return repr(text if len(text) <= n else text[: n - 1] + "…")


# --- the suite --------------------------------------------------------------------------------------


class Unanswered(Exception):
    """The backend answered no task of the suite: nothing was measured."""


def no_answers(results: list[TaskResult]) -> str:
    """Why nothing was measured, when no task got an answer (the server is down, the key
    is refused); "" when any did. Such a run is no score of the model."""
    return results[0].error if results and all(r.error for r in results) else ""


def scorecard(results: list[TaskResult]) -> Scorecard:
    marks: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    for r in results:
        for category, mark in r.marks.items():
            marks.setdefault(category, []).append(mark)
    categories = {c: _mean(marks[c]) for c in CATEGORIES}
    measured = [v for v in categories.values() if v is not None]
    card = Scorecard(categories, _mean(measured), tasks=list(results))
    timed = [r for r in results if r.first_token_s is not None]
    if timed:
        largest = max(timed, key=lambda r: r.input_tokens)
        card.first_token_s, card.first_token_tokens = largest.first_token_s, largest.input_tokens
    spans = [(r.output_tokens, r.generate_s) for r in results
             if r.generate_s and r.output_tokens >= MIN_SPEED_TOKENS]
    if spans:
        card.tokens_per_s = sum(n for n, _ in spans) / sum(s for _, s in spans)
    return card


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
