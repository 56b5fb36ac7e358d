"""Fit a request into a small local context window.

`fit_request(req, budget, count)` takes the request as a local model gets it (the output
of `wire.anthropic.to_local_request`) and applies four tiers, cheapest loss first,
stopping at the first after which the request fits `budget` tokens as `count` measures:

  descriptions  Tool descriptions lose their `<example>`s and are cut at a sentence so
                that together they take at most 1/DESCRIPTION_SHARE of the budget (short
                ones stay whole, long ones share what is left). Every tool's name and
                input_schema stay as they are.
  tools         Only the tools the conversation needs stay (`needed_tools`).
  system        The system prompt keeps its identity line, the environment (`<env>`, or
                Claude Code's environment reminder) and the user's own instructions
                (CLAUDE.md and the other instruction files Claude Code quotes); short
                sections stay, long policy sections and `<example>`s go. In the turns,
                `<system-reminder>`s go unless they are short or pinned (environment,
                instructions, date); `<total_tokens>` goes everywhere.
  history       Old tool results and long old texts are cut in the middle, with a marker
                saying how much was cut. Then, only when `drop_turns` is set, the oldest
                turns go (the environment and instructions they carried move to the
                first kept turn, after which NOTE says that turns were omitted), and as
                a last resort the latest turn is cut too.

If a request still does not fit, the tiers run once more at their strongest ("minimum":
the shortest descriptions and tool results any budget would get), which is the size
`fit_floor` reports. So `fit_floor(req) <= budget` means `fit_request` fits it.

Every tier is a function of the request and the budget alone: the same input gives the
same bytes, and a turn added at the end changes nothing before it. Descriptions, tools
and system prompt are therefore identical from turn to turn (as long as the same tiers
apply), and turns are dropped at cut points that stay put while the conversation grows
(each a user turn where the history before it first passes another half of the room
left for history), so a local server's prompt cache keeps hitting between cuts.

"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from nonstop.wire.anthropic import estimate_tokens, to_local_request
from nonstop.wire.claude_prompt import (
    drop_examples,
    drop_reminders,
    env_elements,
    environment_essentials,
    first_paragraph,
    is_pinned,
    sections,
    shorten,
)
from nonstop.wire.hygiene import EMPTY_TURN_TEXT

NOTE = "[Earlier conversation omitted by nonstop to fit the local model's context window.]"
# When the turns kept hold no words of the user's (a tool loop: results only), their last
# words among the dropped turns go on after NOTE, under this line, cut to TASK_CHARS:
# without them the model would go on with the loop not knowing what it was asked.
TASK_NOTE = "[The user's last request, from the omitted conversation:]"
TASK_CHARS = 2000
# How close to the room left the last resort cuts the latest turn (characters).
LAST_TURN_STEP = 256

Count = Callable[[dict[str, Any]], int]

# What Claude Code needs for most coding turns; a caller may pass its own set.
CLAUDE_CODE_CORE_TOOLS = frozenset({"Read", "Edit", "Write", "Bash", "Grep", "Glob"})
# The tiers in order, and "minimum": all of them again at their strongest.
TIERS = ("descriptions", "tools", "system", "history", "minimum")

CHARS_PER_TOKEN = 3.5  # as estimate_tokens counts
DESCRIPTION_SHARE = 8  # all descriptions together: at most 1/8 of the budget
MIN_DESCRIPTION = 120  # characters: about the first sentence
RESULT_SHARE = 8  # one old tool result or text: at most 1/8 of the budget
MIN_RESULT = 400  # characters
SHORT_SECTION = 600  # characters: a system prompt section this short stays
SHORT_REMINDER = 300  # characters: a reminder this short stays
INPUT_DEPTH = 4  # levels of an old tool call's input whose strings are cut
CUT_STEPS = 2  # turns are dropped half the room for history at a time


@dataclass(frozen=True, slots=True)
class TierReport:
    tier: str
    before: int
    after: int


@dataclass(frozen=True, slots=True)
class Fitted:
    """The fitted request (the input itself when it fit as it was), its size, whether it
    fits the budget, and what each tier that ran did. The request shares unchanged parts
    with the input: treat both as read-only."""

    request: dict[str, Any]
    tokens: int
    fits: bool
    tiers: tuple[TierReport, ...] = ()


@dataclass(frozen=True, slots=True)
class _Rules:
    drop_turns: bool
    core_tools: Collection[str]
    deferred: Collection[str]


def fit_request(req: dict[str, Any], budget: int, count: Count, *, drop_turns: bool = False,
                core_tools: Collection[str] = CLAUDE_CODE_CORE_TOOLS,
                deferred: Collection[str] = ()) -> Fitted:
    """`req` fitted into `budget` tokens, tier by tier (see the module's docstring).
    `drop_turns` allows dropping old turns and cutting the latest one; `core_tools` and
    `deferred` are what `needed_tools` keeps and leaves out."""
    rules = _Rules(drop_turns, core_tools, deferred)
    size = count(req)
    if size <= budget:
        return Fitted(req, size, True)
    reports: list[TierReport] = []
    out = req
    for level, tier in enumerate(TIERS[:3], start=1):
        out = _tiers(req, level, budget, rules)
        after = count(out)
        reports.append(TierReport(tier, size, after))
        size = after
        if size <= budget:
            return Fitted(out, size, True, tuple(reports))
    out, after = _history(out, budget, budget, count, rules.drop_turns)
    reports.append(TierReport("history", size, after))
    size = after
    if size > budget:
        out, after = _history(_tiers(req, 3, None, rules), None, budget, count, rules.drop_turns)
        reports.append(TierReport("minimum", size, after))
        size = after
    return Fitted(out, size, size <= budget, tuple(reports))


def fit_floor(req: dict[str, Any], count: Count, *, drop_turns: bool = False,
              core_tools: Collection[str] = CLAUDE_CODE_CORE_TOOLS, deferred: Collection[str] = ()) -> int:
    """The smallest size the tiers reach for `req` (the latest turn uncut), for the
    planner: a budget at least this large is one `fit_request` fits. Two or three counts."""
    rules = _Rules(drop_turns, core_tools, deferred)
    strongest = _tiers(req, 3, None, rules)
    messages = _messages(strongest)
    cut = _cut_old(messages, MIN_RESULT)
    sizes = [count(req), count({**strongest, "messages": cut})]
    if drop_turns and len(cut) > 1 and cut[-1].get("role") == "user":
        sizes.append(count({**strongest, "messages": _drop_before(cut, len(cut) - 1)}))
    return min(sizes)


def needed_tools(req: dict[str, Any], core_tools: Collection[str] = CLAUDE_CODE_CORE_TOOLS,
                 deferred: Collection[str] = ()) -> list[dict[str, Any]]:
    """The tools the conversation needs. A tool is needed when a tool_use in the history
    names it, when `tool_choice` names it, or when it is in `core_tools` (what most
    coding turns use) and not `deferred` (Claude Code loads those on demand: they stay
    out of small windows unless used). When `tool_choice` asks for some tool and none
    would be left, every tool stays."""
    tools = [t for t in req.get("tools") or [] if isinstance(t, dict)]
    used = _used_tool_names(_messages(req))
    choice = req.get("tool_choice")
    target = choice.get("name") if isinstance(choice, dict) and choice.get("type") == "tool" else None
    kept = [
        t for t in tools
        if t.get("name") in used or t.get("name") == target or (t.get("name") in core_tools and t.get("name") not in deferred)
    ]
    if not kept and isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        return tools
    return kept


class RequestSize:
    """A Messages request's sizes for a local model (a routing.facts.SizeMeasure), read
    from the request `read()` gives when first asked: the facts outlive the parsed
    request, which is parsed only if a local step needs it."""

    __slots__ = ("read",)

    def __init__(self, read: Callable[[], dict[str, Any]]):
        self.read = read

    def local(self) -> int:
        return local_size(self.read())

    def floor(self) -> int:
        return fitted_size(self.read())


def local_size(req: dict[str, Any]) -> int:
    """A Messages request's size as a local model sees it (nonstop's estimate)."""
    return estimate_tokens(to_local_request(req, model="", max_tokens=1))


def fitted_size(req: dict[str, Any]) -> int:
    """The smallest the fitting tiers can make a Messages request, as a local model sees
    it. It walks the tiers: ask only for a request over a window."""
    local = to_local_request(req, model="", max_tokens=1)
    return fit_floor(local, estimate_tokens, drop_turns=True, deferred=deferred_tool_names(req))


def deferred_tool_names(req: dict[str, Any]) -> frozenset[str]:
    """The tools the client's own request marks `defer_loading` (to_local_request drops
    the flag, so read it from the request as the client sent it)."""
    return frozenset(
        t["name"] for t in req.get("tools") or []
        if isinstance(t, dict) and t.get("defer_loading") is True and isinstance(t.get("name"), str)
    )


# --- tiers 1-3 ----------------------------------------------------------------------------------


def _tiers(req: dict[str, Any], level: int, budget: int | None, rules: _Rules) -> dict[str, Any]:
    """`req` after tiers 1..level, for `budget` (None: the strongest any budget gets)."""
    out = dict(req)
    tools = req.get("tools")
    if isinstance(tools, list):
        if level >= 2:
            tools = needed_tools(req, rules.core_tools, rules.deferred)
        room = MIN_DESCRIPTION * len(tools) if budget is None else int(budget / DESCRIPTION_SHARE * CHARS_PER_TOKEN)
        tools = _short_descriptions(tools, room)
        if tools:
            out["tools"] = tools
        else:
            out.pop("tools", None)
            out.pop("tool_choice", None)
    if level >= 3:
        system = _slim_system(req.get("system"))
        if system:
            out["system"] = system
        else:
            out.pop("system", None)
        if isinstance(req.get("messages"), list):
            out["messages"] = [_slim_turn(m) for m in req["messages"]]
    return out


def _short_descriptions(tools: list[Any], room: int) -> list[Any]:
    texts = [drop_examples(t["description"]) if isinstance(t, dict) and isinstance(t.get("description"), str) else None for t in tools]
    cap = max(MIN_DESCRIPTION, _water_level([len(t) for t in texts if t is not None], room))
    out = []
    for tool, text in zip(tools, texts, strict=True):
        if text is not None and (text := shorten(text, cap)) != tool["description"]:
            tool = {**tool, "description": text}
        out.append(tool)
    return out


def _water_level(lengths: list[int], room: int) -> int:
    """The largest cap such that sum(min(length, cap)) <= room (any cap when all fit)."""
    left = room
    ordered = sorted(lengths)
    for i, length in enumerate(ordered):
        if length * (len(ordered) - i) > left:
            return left // (len(ordered) - i)
        left -= length
    return max(ordered, default=0)


def _keep_reminder(element: str) -> bool:
    return len(element) <= SHORT_REMINDER or is_pinned(element)


def _slim_text(text: str) -> str:
    """A system prompt text with its identity line, pinned and short sections."""
    text = drop_reminders(drop_examples(text), _keep_reminder)
    preamble, *rest = sections(text)
    kept = [preamble if len(preamble) <= SHORT_SECTION or is_pinned(preamble) else first_paragraph(preamble)]
    for section in rest:
        if len(section) <= SHORT_SECTION:
            kept.append(section)
        elif is_pinned(section, env_element=False):
            kept.append(environment_essentials(section, SHORT_SECTION))
        else:
            kept.extend(env + "\n" for env in env_elements(section))
    return "".join(kept)


def _slim_reminders(text: str) -> str:
    return drop_reminders(text, _keep_reminder)


def _slim_system(system: Any) -> Any:
    slim = _map_content(system, _slim_text)
    return _without_empty_texts(slim) if isinstance(slim, list) else slim


def _slim_turn(msg: Any) -> Any:
    """A user turn without its long, unpinned reminders."""
    if not isinstance(msg, dict) or msg.get("role") != "user":
        return msg
    content = msg.get("content")
    slim = _map_content(content, _slim_reminders, _in_results(_slim_reminders))
    if isinstance(slim, list):
        slim = _without_empty_texts(slim) or [{"type": "text", "text": EMPTY_TURN_TEXT}]
    elif isinstance(slim, str) and not slim.strip():
        slim = EMPTY_TURN_TEXT
    return msg if slim == content else {**msg, "content": slim}


def _without_empty_texts(blocks: list[Any]) -> list[Any]:
    return [b for b in blocks if not (isinstance(b, dict) and b.get("type") == "text" and not str(b.get("text", "")).strip())]


# --- tier 4: history ----------------------------------------------------------------------------


def _history(req: dict[str, Any], caps_for: int | None, budget: int, count: Count,
             drop_turns: bool) -> tuple[dict[str, Any], int]:
    """Old results cut to the cap for `caps_for` (None: the smallest), then, if allowed,
    the oldest turns dropped at stable cut points, then the latest turn cut."""
    result_cap = MIN_RESULT if caps_for is None else max(MIN_RESULT, int(caps_for / RESULT_SHARE * CHARS_PER_TOKEN))
    messages = _cut_old(_messages(req), result_cap)
    out = {**req, "messages": messages}
    size = count(out)
    if size <= budget or not drop_turns or not messages:
        return out, size
    fixed = count({**req, "messages": [{"role": "user", "content": "."}]})
    points = _cut_points(messages, max(1, (budget - fixed) // CUT_STEPS))
    best: tuple[dict[str, Any], int] | None = None
    lo, hi = 0, len(points) - 1
    while lo <= hi:  # the first point that fits: sizes shrink as the cut moves on
        mid = (lo + hi) // 2
        trial = {**req, "messages": _drop_before(messages, points[mid])}
        trial_size = count(trial)
        if trial_size <= budget:
            best, hi = (trial, trial_size), mid - 1
        else:
            lo = mid + 1
    if best is not None:
        return best
    last = _drop_before(messages, points[-1]) if points else list(messages)
    at = _latest_turn(last)  # the user's turn: a prefill after it (mid-stream recovery) stays whole
    turn = last[at]

    def cut_to(keep: int) -> tuple[dict[str, Any], int]:
        trial = {**req, "messages": [*last[:at], _map_texts(turn, lambda t: _cut_middle(t, keep), skip_pinned=True),
                                     *last[at + 1:]]}
        return trial, count(trial)

    lo = result_cap // 2
    kept, size = cut_to(lo)
    hi = _longest_text(turn)
    # As much of the latest turn as the room left takes, not only the least share: a
    # few counts, to within LAST_TURN_STEP characters.
    while size <= budget and hi - lo > LAST_TURN_STEP:
        mid = (lo + hi) // 2
        trial, trial_size = cut_to(mid)
        if trial_size <= budget:
            kept, size, lo = trial, trial_size, mid
        else:
            hi = mid
    return kept, size


def _longest_text(msg: dict[str, Any]) -> int:
    """The length of the longest text in a message (its texts and its tool results')."""
    longest = 0

    def measure(text: str) -> str:
        nonlocal longest
        longest = max(longest, len(text))
        return text

    _map_texts(msg, measure)
    return longest


def _messages(req: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in req.get("messages") or [] if isinstance(m, dict)]


def _latest_turn(messages: list[dict[str, Any]]) -> int:
    """Where the latest turn starts: the last user message (an assistant prefill after it,
    as mid-stream recovery sends, belongs to it), else the last message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return len(messages) - 1


def _cut_old(messages: list[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    """Every message before the latest turn with long texts, tool results and tool call
    inputs cut to `cap` characters (the environment and instructions stay whole)."""
    latest = max(_latest_turn(messages), 0)

    def cut(text: str) -> str:
        return _cut_middle(text, cap)

    return [_cut_inputs(_map_texts(m, cut, skip_pinned=True), cut) for m in messages[:latest]] + messages[latest:]


def _cut_inputs(msg: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """An assistant message with `fn` applied to the strings of its tool calls' inputs: a
    file written whole (Claude Code's Write), an edit's old and new text, a long command.
    The calls stay calls, their inputs' shape unchanged; `msg` itself when nothing changes."""
    content = msg.get("content")
    if msg.get("role") != "assistant" or not isinstance(content, list):
        return msg
    out = [{**b, "input": _cut_strings(b["input"], fn)}
           if isinstance(b, dict) and b.get("type") == "tool_use" and isinstance(b.get("input"), dict) else b
           for b in content]
    return msg if out == content else {**msg, "content": out}


def _cut_strings(value: Any, fn: Callable[[str], str], depth: int = 0) -> Any:
    """`value` (a tool call's input) with `fn` applied to the strings inside it, down to a
    few levels (deeper, as it is)."""
    if isinstance(value, str):
        return fn(value)
    if depth >= INPUT_DEPTH:
        return value
    if isinstance(value, dict):
        return {k: _cut_strings(v, fn, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, fn, depth + 1) for v in value]
    return value


def _cut_points(messages: list[dict[str, Any]], quantum: int) -> list[int]:
    """Where the history may be cut: user turns where the history before them first
    passes another multiple of `quantum` tokens (as estimated), and the latest turn.
    Adding turns at the end moves none of them."""
    points = []
    total = 0
    mark = quantum
    for i, msg in enumerate(messages):
        if i and msg.get("role") == "user" and total >= mark:
            points.append(i)
            mark = (total // quantum + 1) * quantum
        total += estimate_tokens({"messages": [msg]})
    last = _latest_turn(messages)
    if last > 0 and messages[last].get("role") == "user" and last not in points:
        points.append(last)
    return points


def _drop_before(messages: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """messages[start:], with the pinned reminders of the dropped turns and NOTE at the
    front (and the user's last words when the turns kept have none); the call the first
    kept turn answers stays with it, and tool results whose call was dropped become text."""
    kept = messages[start:]
    pins = [{"type": "text", "text": text} for text in _unique(_pinned_texts(messages[:start]))]
    task = None if _users_words(kept) else _users_words(messages[:start])
    carried = [{"type": "text", "text": f"{TASK_NOTE}\n{_cut_middle(task, TASK_CHARS)}"}] if task else []
    head = [*pins, {"type": "text", "text": NOTE}, *carried]
    call = messages[start - 1] if start > 0 else None
    if call is not None and _answered(call, kept[0]):
        # The first turn kept answers the call before it: that call stays too, after a
        # turn of its own for the note (results keep their calls; roles still alternate).
        return [{"role": "user", "content": head}, call, *kept]
    ids = {
        b["id"] for m in kept if m.get("role") == "assistant" and isinstance(m.get("content"), list)
        for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use" and isinstance(b.get("id"), str)
    }
    first = _orphan_results_to_text(kept[0], ids)
    content = first.get("content")
    blocks = content if isinstance(content, list) else [{"type": "text", "text": str(content)}]
    return [{**first, "content": [*head, *blocks]}, *kept[1:]]


def _answered(call: dict[str, Any], turn: dict[str, Any]) -> bool:
    """Whether `turn` holds results of the tool calls of the assistant message `call`."""
    if call.get("role") != "assistant" or not isinstance(call.get("content"), list) or not isinstance(turn.get("content"), list):
        return False
    ids = {b.get("id") for b in call["content"] if isinstance(b, dict) and b.get("type") == "tool_use"}
    return any(isinstance(b, dict) and b.get("type") == "tool_result" and b.get("tool_use_id") in ids
               for b in turn["content"])


def _users_words(messages: list[dict[str, Any]]) -> str | None:
    """The user's last words in `messages`: the text of the last user message that has
    some besides reminders (tool results are not theirs)."""
    for msg in reversed(messages):
        if msg.get("role") != "user":
            continue
        words = [t for t in (drop_reminders(x, lambda _: False).strip() for x in _texts(msg))
                 if t and t not in (EMPTY_TURN_TEXT, NOTE)]
        if words:
            return "\n".join(words)
    return None


def _texts(msg: dict[str, Any]) -> list[str]:
    """A message's own texts (not its tool results')."""
    content = msg.get("content")
    return [content] if isinstance(content, str) else [b["text"] for b in content or [] if _is_text(b)]


def _pinned_texts(messages: list[dict[str, Any]]) -> Iterable[str]:
    for msg in messages:
        if msg.get("role") != "user":
            continue
        for text in _texts(msg):
            yield from _pinned_reminders(text)


def _pinned_reminders(text: str) -> list[str]:
    pinned: list[str] = []

    def keep(element: str) -> bool:
        if is_pinned(element):
            pinned.append(element.rstrip("\n"))
        return False

    drop_reminders(text, keep)
    return pinned


def _holds_pinned(text: str) -> bool:
    """Whether a message's text holds the environment or the user's instructions as
    Claude Code sends them: in a reminder, or an `<env>` element. Words that only look
    alike (a pasted log saying "Working directory:", a file read that says "Today's date
    is") are text like any other, and are cut as such."""
    return "<env>" in text or ("<system-reminder>" in text and bool(_pinned_reminders(text)))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- text surgery shared by both fitting paths ----------------------------------------------------


def _cut_middle(text: str, keep_chars: int) -> str:
    """`text` with its middle replaced by a marker, keeping `keep_chars` of it; the text
    itself when that would not make it shorter (the marker has a length too)."""
    if len(text) <= keep_chars:
        return text
    half = max(1, keep_chars // 2)
    cut = f"{text[:half]}\n[... {len(text) - 2 * half} characters trimmed by nonstop ...]\n{text[-half:]}"
    return cut if len(cut) < len(text) else text


def _map_content(content: Any, fn: Callable[[str], str], other: Callable[[Any], Any] | None = None) -> Any:
    """`content` (a string or a list of blocks) with `fn` applied to its texts and `other`
    to its other blocks; equal to `content` when nothing changes."""
    if isinstance(content, str):
        return fn(content)
    if not isinstance(content, list):
        return content
    out = []
    for block in content:
        if _is_text(block):
            text = fn(block["text"])
            block = block if text == block["text"] else {**block, "text": text}
        elif other is not None:
            block = other(block)
        out.append(block)
    return out


def _map_result_text(block: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """A tool result with `fn` applied to its text. A result of several text blocks (as
    some MCP tools write it) is one text to `fn`, so that a cap holds for the result, not
    for each block; when `fn` changes it, the texts become one block, ahead of the others."""
    inner = block.get("content")
    if isinstance(inner, list):
        texts = [b["text"] for b in inner if _is_text(b)]
        if len(texts) > 1:
            joined = "\n".join(texts)
            changed = fn(joined)
            if changed == joined:
                return block
            content = [{"type": "text", "text": changed}, *(b for b in inner if not _is_text(b))]
            return {**block, "content": _without_empty_texts(content)}
    content = _map_content(inner, fn)
    if isinstance(content, list) and content != inner:  # a text left empty (a reminder alone, slimmed) goes
        content = _without_empty_texts(content)
    return block if content == inner else {**block, "content": content}


def _is_text(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)


def _in_results(fn: Callable[[str], str]) -> Callable[[Any], Any]:
    """A block mapper applying `fn` to the texts of tool results."""

    def one(block: Any) -> Any:
        return _map_result_text(block, fn) if isinstance(block, dict) and block.get("type") == "tool_result" else block

    return one


def _map_texts(msg: dict[str, Any], fn: Callable[[str], str], *, skip_pinned: bool = False) -> dict[str, Any]:
    """`msg` with `fn` applied to its texts and tool results' texts (a copy if any change).
    `skip_pinned` spares texts (not tool results) holding the environment or instructions."""

    def apply(text: str) -> str:
        return text if skip_pinned and _holds_pinned(text) else fn(text)

    content = _map_content(msg.get("content"), apply, _in_results(fn))
    return msg if content == msg.get("content") else {**msg, "content": content}


def _orphan_results_to_text(msg: dict[str, Any], known_ids: set[str]) -> dict[str, Any]:
    content = msg.get("content")
    if not isinstance(content, list):
        return msg
    out = []
    for block in content:
        tool_id = block.get("tool_use_id") if isinstance(block, dict) and block.get("type") == "tool_result" else None
        if tool_id is not None and not (isinstance(tool_id, str) and tool_id in known_ids):
            inner = block.get("content")
            text = inner if isinstance(inner, str) else " ".join(
                b["text"] for b in (inner if isinstance(inner, list) else []) if _is_text(b)
            )
            out.append({"type": "text", "text": f"(earlier tool result) {text}"})
        else:
            out.append(block)
    return {**msg, "content": out}


def _used_tool_names(messages: list[dict[str, Any]]) -> set[str]:
    return {
        b["name"] for m in messages if m.get("role") == "assistant" and isinstance(m.get("content"), list)
        for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use" and isinstance(b.get("name"), str)
    }
