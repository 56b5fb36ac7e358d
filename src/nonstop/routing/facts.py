"""What the planner knows about one request: its size, what it needs, what kind of work
it is, and whether it continues a tool loop a local model started.

Pure functions of the parsed request and its headers. Everything here is cheap enough to
run on every request: the size comes from the body's length, the needs from top-level
keys, and the loop marker from the last two messages. The expensive numbers (the size as
a local model would see it, and the smallest size fitting can reach) are computed only
when a plan needs them (`Size`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from nonstop.wire.tool_ids import local_tag_of

# Bytes of request JSON per token: the same 3.5 characters a token that the local
# estimate uses (JSON punctuation and keys make it an overestimate, which is the safe side).
BYTES_PER_TOKEN = 3.5

HINT_HEADER = "x-claude-code-request-class"
AGENT_HEADER = "x-claude-code-agent-id"
SESSION_HEADER = "x-claude-code-session-id"

# Claude Code's compaction request asks for this (docs/wire.md §6).
_COMPACTION_MARKER = "create a detailed summary of the conversation"
# Model families that only do short background work (matched in the lower-cased name).
_BACKGROUND_FAMILIES = ("haiku",)
# The start of the last user turn that the compaction marker is looked for in.
_COMPACTION_SPAN = 2000


class Workload(StrEnum):
    MAIN = "main"
    SUBAGENT = "subagent"
    COMPACTION = "compaction"
    BACKGROUND = "background"
    COUNT_TOKENS = "count_tokens"


WORKLOADS = tuple(Workload)
_HINTS = {
    "main": Workload.MAIN,
    "subagent": Workload.SUBAGENT,
    "compaction": Workload.COMPACTION,
    "auxiliary": Workload.BACKGROUND,
    "background": Workload.BACKGROUND,
}


class Needs(NamedTuple):
    """What a request needs of a model (a named tuple: compared and hashed in C, since
    the planner keys its memo on it)."""

    tools: bool = False
    thinking: bool = False
    images: bool = False

    def describe(self) -> str:
        names = [n for n in ("tools", "thinking", "images") if getattr(self, n)]
        return "+".join(names) or "text"


# Needs is immutable and compared by value: one instance per combination.
_NEEDS = {(t, th, i): Needs(tools=t, thinking=th, images=i) for t in (False, True) for th in (False, True) for i in (False, True)}


class SizeMeasure(Protocol):
    """How a request's size for a local model is measured (see routing/fit.RequestSize)."""

    def local(self) -> int: ...

    def floor(self) -> int: ...


class Size:
    """The request's size in tokens. `sent` is known at once (from the body's length);
    `local` (as a local model sees it) and `floor` (the smallest the fitting tiers can
    reach) are measured on first use, by `measure`, and remembered. The floor costs more,
    and only a request over a window needs it."""

    __slots__ = ("sent", "_local", "_floor", "_measure")

    def __init__(self, sent: int, measure: SizeMeasure | None = None, *,
                 local: int | None = None, floor: int | None = None):
        self.sent = sent
        self._local = local
        self._floor = floor
        self._measure = measure if local is None or floor is None else None

    @property
    def known(self) -> bool:
        return self._local is not None or self._measure is None

    @property
    def local(self) -> int:
        if self._local is None and self._measure is not None:
            self._local = self._measure.local()
        return self.sent if self._local is None else self._local

    @property
    def floor(self) -> int:
        if self._floor is None and self._measure is not None:
            self._floor = self._measure.floor()
        return self.local if self._floor is None else self._floor

    def reading(self, measure: SizeMeasure) -> Size:
        """This size, with what is not measured yet measured by `measure` (the request the
        first one read may be gone by then). A size with nothing left to measure is kept
        as it is."""
        if self._measure is None or (self._local is not None and self._floor is not None):
            return self
        return Size(self.sent, measure, local=self._local, floor=self._floor)

    def __repr__(self) -> str:
        return f"Size(sent={self.sent}, local={self._local}, floor={self._floor})"


_UNSIZED = Size(0)


class RequestFacts(NamedTuple):
    """Made for every request: a named tuple, immutable and the cheapest such value to
    build."""

    model: str
    stream: bool = False
    size: Size = _UNSIZED
    max_tokens: int | None = None
    needs: Needs = Needs()
    workload: Workload = Workload.MAIN
    # How the class was told: "header", "agent-id", "model", "shape" or "default".
    workload_source: str = "default"
    session: str = ""
    # The local backend (its tool-id tag) whose tool loop this request continues.
    local_loop: str = ""
    # `thinking` is on in the request (the cloud then checks the final assistant turn).
    thinking: bool = False
    # Side requests (count_tokens, models, hello) never start a probe of the cloud.
    side: bool = False
    account: str = ""
    # The request continues a tool loop that a local model took part in, and whose last
    # assistant turn does not start with a thinking block: the cloud wrote it without
    # thinking, which nonstop took off for the loop. With `thinking` on the cloud refuses
    # it: a tool loop is one assistant turn, with one thinking setting (docs/wire.md).
    unthought_loop: bool = False

    @property
    def tokens(self) -> int:
        return self.size.sent


def facts_from_request(req: Mapping[str, Any], headers: Mapping[str, str], *, body_len: int = 0,
                       measure: SizeMeasure | None = None,
                       side: bool = False, count_tokens: bool = False, account: str = "") -> RequestFacts:
    """`headers` must have lower-case names. `measure` measures the local size and the
    floor on demand (see Size); without it the body's length stands for both."""
    model = req.get("model")
    model = model if isinstance(model, str) else ""
    messages = req.get("messages")
    messages = messages if isinstance(messages, list) else []
    mt = req.get("max_tokens")
    thinking = _thinking_on(req.get("thinking"))
    compaction, images, answers_tool = _last_turn(messages)
    workload, source = _classify(model, headers, mt, compaction, count_tokens)
    return RequestFacts(  # by position: keywords cost a named tuple twice the time
        model,  # model
        req.get("stream") is True,  # stream
        Size(max(1, int(body_len / BYTES_PER_TOKEN)), measure),  # size
        mt if isinstance(mt, int) and not isinstance(mt, bool) else None,  # max_tokens
        _NEEDS[(bool(req.get("tools")), thinking, images)],  # needs
        workload,
        source,  # workload_source
        headers.get(SESSION_HEADER, "")[:100],  # session
        local_loop_tag(messages) if answers_tool else "",  # local_loop
        thinking,
        side,
        account,
        thinking and answers_tool and _unthought(messages),  # unthought_loop
    )


def classify_workload(model: str, messages: list[Any], headers: Mapping[str, str], max_tokens: Any,
                      *, count_tokens: bool = False) -> tuple[Workload, str]:
    """The kind of work, and what told it: the client's own hint header first, then the
    subagent header, the model family and the body's shape."""
    return _classify(model, headers, max_tokens, _last_turn(messages)[0], count_tokens)


def _classify(model: str, headers: Mapping[str, str], max_tokens: Any, compaction: bool,
              count_tokens: bool) -> tuple[Workload, str]:
    if count_tokens:
        return Workload.COUNT_TOKENS, "path"
    told = headers.get(HINT_HEADER)
    hint = _HINTS.get(told.strip().lower()) if told is not None else None
    if hint is not None:
        return hint, "header"
    if headers.get(AGENT_HEADER):
        return Workload.SUBAGENT, "agent-id"
    if compaction:
        return Workload.COMPACTION, "shape"
    low = model.lower()
    for family in _BACKGROUND_FAMILIES:
        if family in low:
            return Workload.BACKGROUND, "model"
    if max_tokens == 1:  # Claude Code's start-up quota check
        return Workload.BACKGROUND, "shape"
    return Workload.MAIN, "default"


def final_turn(messages: list[Any]) -> tuple[list[Any], Any]:
    """The request's final user turn as the API reads it, and the message before it (the
    assistant turn whose calls it may answer; None when there is none). Consecutive user
    messages are one turn, and `role: "system"` messages (which newer Claude Code clients
    put among the turns) stand aside. The turn's messages come last first."""
    users: list[Any] = []
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        role = m.get("role") if isinstance(m, dict) else None
        if role == "user":
            users.append(m)
        elif role != "system":
            return users, m
    return users, None


def _last_turn(messages: list[Any]) -> tuple[bool, bool, bool]:
    """What the final user turn says, read in one pass over its blocks: (it asks for a
    compaction summary, the last user turn carries an image, it carries a tool result).
    A compaction request's last turn is the user's; the image is looked for in the last
    user turn wherever that is."""
    users, _ = final_turn(messages)
    if not users:
        return False, _has_images(messages), False
    compaction = images = result = False
    span = _COMPACTION_SPAN  # the text left to look in, over the turn's texts
    for msg in reversed(users):
        content = msg.get("content")
        if isinstance(content, str):
            if span > 0 and not compaction:
                compaction = _COMPACTION_MARKER in content[:span].lower()
                span -= len(content) + 1
            continue
        if not isinstance(content, list):
            continue
        for b in content:
            if not isinstance(b, dict):
                continue
            btype = b.get("type")
            if btype == "text":
                text = b.get("text")
                if span > 0 and not compaction and isinstance(text, str):
                    compaction = _COMPACTION_MARKER in text[:span].lower()
                    span -= len(text) + 1
            elif btype == "image":
                images = True
            elif btype == "tool_result":
                result = True
                images = images or _image_in(b.get("content"))
    return compaction, images, result


def _image_in(content: Any) -> bool:
    """A tool result's content holds an image (Claude Code's Read of a picture, a
    screenshot tool): the model that reads the result must read images."""
    return isinstance(content, list) and any(isinstance(c, dict) and c.get("type") == "image" for c in content)


def _unthought(messages: list[Any]) -> bool:
    """The assistant turn whose calls the last turn answers does not start with a
    thinking block, and a local model wrote a turn of the same tool loop (so nonstop
    took thinking off for the loop's later cloud steps). An assistant turn the cloud
    wrote with thinking on, but chose not to think in (adaptive thinking), is left alone:
    no local turn is in its loop."""
    if not unthought_turn(final_turn(messages)[1]):
        return False
    for msg in reversed(loop_of(messages)):
        if isinstance(msg, dict) and msg.get("role") == "assistant" and _has_local_call(msg.get("content")):
            return True
    return False


def unthought_turn(msg: Any) -> bool:
    """An assistant turn that does not start with a thinking block."""
    if not isinstance(msg, dict) or msg.get("role") != "assistant":
        return False
    content = msg.get("content")
    first = content[0] if isinstance(content, list) and content else None
    return not (isinstance(first, dict) and first.get("type") in ("thinking", "redacted_thinking"))


def loop_of(messages: list[Any]) -> list[Any]:
    """The turns of the tool loop the request continues: everything after the last user
    turn that carries no tool result (one that does may carry text too: Claude Code adds
    reminders beside results). A turn is a run of consecutive user messages, system
    messages among them standing aside, as the API reads it."""
    i = len(messages) - 1
    while i >= 0:
        if _role(messages[i]) != "user":
            i -= 1
            continue
        j, results = i, False
        while j >= 0 and _role(messages[j]) in ("user", "system"):
            results = results or (_role(messages[j]) == "user" and _has_results(messages[j].get("content")))
            j -= 1
        if not results:
            break
        i = j
    return messages[i + 1:]


def _role(msg: Any) -> Any:
    return msg.get("role") if isinstance(msg, dict) else None


def _has_results(content: Any) -> bool:
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _has_local_call(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_use" and local_tag_of(b.get("id")) for b in content)


def _thinking_on(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") in ("enabled", "adaptive")


def _has_images(messages: list[Any]) -> bool:
    # Only the last user turn: an image further back is history, not a need.
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            return isinstance(content, list) and any(
                isinstance(b, dict) and (b.get("type") == "image" or b.get("type") == "tool_result"
                                         and _image_in(b.get("content"))) for b in content
            )
    return False


def local_loop_tag(messages: list[Any]) -> str:
    """The tag of the local backend whose tool call this request answers: the last
    assistant turn called a tool with a local id, and the final user turn (final_turn)
    carries its result."""
    users, prev = final_turn(messages)
    if not users or _role(prev) != "assistant" or not any(_has_results(u.get("content")) for u in users):
        return ""
    calls = prev.get("content")
    if not isinstance(calls, list):
        return ""
    for block in calls:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            tag = local_tag_of(block.get("id"))
            if tag:
                return tag
    return ""
