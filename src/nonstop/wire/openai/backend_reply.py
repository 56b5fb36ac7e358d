"""OpenAI Chat Completions replies -> Anthropic Messages, for local servers that speak
only OpenAI (`api = "openai"`).

`OpenAIStreamTranslator` is sans-IO: parsed chunks in, Anthropic (event, data) pairs out.
It keeps the rules strict clients depend on (docs/wire.md §3): message_start first with
non-zero input_tokens; a block is started before its deltas and gets none after its
stop; one block open at a time, indexes consecutive from 0; nothing inside
content_block_start; message_delta held until the end so late usage is counted.

Servers stream parallel tool calls in different ways: one after another, all at once,
or with argument fragments of several calls interleaved. The output is one block at a
time in order of first appearance: the oldest unfinished segment is live (its deltas go
out at once); later ones are buffered and flushed when it ends. A text or thinking
segment ends as soon as anything else arrives after it; a tool call ends when its
arguments form a complete JSON object, or at the finish.

Some servers split a call's name across fragments. Given the names of the tools the
server was offered, a name that is not yet one of them but begins one grows with the
next fragment of that call, and a tool block starts only once its name can grow no
more: it is a tool's name that begins no other's, or its arguments have begun. Without
them, a name is taken as whole when it comes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from nonstop.wire.anthropic import MAX_COUNT, Event, new_message_id
from nonstop.wire.arguments import ArgumentsStream, parse_arguments
from nonstop.wire.local_stream import LOCAL_THINKING_SIGNATURE, message_start
from nonstop.wire.tool_ids import reply_tool_id

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason_for(finish_reason: Any, has_tool_use: bool) -> str:
    """A reply with a tool call asks for the tool, whatever the server named its end, unless
    the server ran out of tokens: its last call may be cut, and a cut call must not reach
    the client as one to run (local_stream's normalizer decides what a cut means when
    nonstop lowered the limit, for both local APIs alike)."""
    if finish_reason == "length":
        return "max_tokens"
    if has_tool_use:
        return "tool_use"
    reason = STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"
    return "end_turn" if reason == "tool_use" else reason  # calls named, none made


def estimate_output_tokens(chars: int) -> int:
    """Used when a server reports no usage: about four characters per token, at least 1."""
    return max(1, (chars + 3) // 4)


class _Usage:
    __slots__ = ("prompt", "cached", "completion")

    def __init__(self) -> None:
        self.prompt: int | None = None
        self.cached = 0
        self.completion: int | None = None

    def read(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if _count(usage.get("prompt_tokens")):
            self.prompt = usage["prompt_tokens"]
        if _count(usage.get("completion_tokens")):
            self.completion = usage["completion_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and _count(details.get("cached_tokens")):
            self.cached = details["cached_tokens"]

    def anthropic(self, estimate: int, chars: int) -> dict[str, int]:
        # Anthropic input_tokens excludes cache reads; OpenAI prompt_tokens includes them.
        if self.prompt:
            cached = min(self.cached, self.prompt)
            out = {"input_tokens": max(1, self.prompt - cached)}
        else:
            cached = 0
            out = {"input_tokens": max(1, estimate)}
        out["output_tokens"] = self.completion if self.completion else estimate_output_tokens(chars)
        if cached:
            out["cache_read_input_tokens"] = cached
        return out


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNT


class _Segment:
    """One future content block: text, thinking or a tool call."""

    __slots__ = ("kind", "pending", "index", "closed", "id", "name", "args", "raw", "again", "settled")

    def __init__(self, kind: str):
        self.kind = kind
        self.pending: list[str] = []  # received, not yet sent
        self.index: int | None = None  # Anthropic block index once started
        self.closed = False
        self.id: str | None = None
        self.name: str | None = None
        self.args = ArgumentsStream() if kind == "tool" else None
        self.raw: list[str] = []  # all argument text as received
        self.again: str | None = None  # this name came again, alone, after whole arguments
        self.settled = False  # the name is whole: the server began another call on this index


def _complete(seg: _Segment) -> bool:
    """Whether a call's arguments so far are one whole JSON object (sent or still waiting)."""
    if not seg.pending and seg.args is not None and not seg.args.complete:
        return False  # the scanner, fed all of them, is still inside the object (no re-parse per fragment)
    try:
        return isinstance(orjson.loads("".join(seg.raw) + "".join(seg.pending)), dict)
    except orjson.JSONDecodeError:
        return False


def _repeats(seg: _Segment, args: str) -> bool:
    """Whether `args` are the whole arguments of `seg` again, as a whole call already made."""
    if not args.strip() or not _complete(seg):
        return False
    try:
        again = orjson.loads(args)
    except orjson.JSONDecodeError:
        return False
    return isinstance(again, dict) and again == orjson.loads("".join(seg.raw) + "".join(seg.pending))


def _next_call(seg: _Segment, call_id: str | None, name: str, args: str) -> bool:
    """Whether a named fragment on an index that already has a call starts the next call.
    Servers that reuse one index for every call say so with a new id and a name, or
    without ids: another tool's name, or the same name with new arguments once the
    call's own are whole. A new id on a nameless fragment is a server that numbers every
    delta (or sends a trailing fragment): the same call, and never asked here."""
    if seg.name is None:
        return False
    if call_id and seg.id and call_id != seg.id:
        return True
    return name != seg.name or (bool(args.strip()) and _complete(seg))


class OpenAIStreamTranslator:
    def __init__(self, *, model: str, message_id: str, input_tokens_estimate: int, tool_name_map: dict[str, str] | None = None,
                 close_cut_calls: bool = True, offered: Iterable[str] = ()):
        # close_cut_calls=False leaves closing a cut call's arguments to whoever reads the
        # events next (the local backend's normalizer, which then knows the call was cut).
        self._close_cut = close_cut_calls
        # offered: the tool names the server was shown, to put a split name together.
        self._offered = frozenset(n for n in offered if isinstance(n, str) and n)
        self.model = model
        self.message_id = message_id
        self._estimate = max(1, input_tokens_estimate if isinstance(input_tokens_estimate, int) else 1)
        self._names = tool_name_map or {}
        self._usage = _Usage()
        self._segments: list[_Segment] = []
        self._head = 0  # the first segment not yet closed
        self._slots: dict[Any, _Segment] = {}  # OpenAI tool-call index -> its segment
        self._blocks = 0
        self._tool_blocks = 0
        self._ids: set[str] = set()
        self._chars = 0
        self._finish_reason: str | None = None
        self._started = False
        self._finished = False

    @property
    def usage(self) -> dict[str, int]:
        return self._usage.anthropic(self._estimate, self._chars)

    @property
    def stop_reason(self) -> str:
        return stop_reason_for(self._finish_reason, self._tool_blocks > 0)

    @property
    def finish_reason(self) -> str | None:
        """The end the server named, if it named one."""
        return self._finish_reason

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if self._finished:
            return []
        out: list[Event] = []
        if not isinstance(chunk, dict):
            return out
        self._usage.read(chunk.get("usage"))
        if not self._started:
            self._start_message(out)
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue  # only the first choice becomes the message
            delta = choice.get("delta")
            if delta is None:
                delta = choice.get("message")  # some servers stream whole messages
            if isinstance(delta, dict):
                self._delta(delta, out)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self._finish_reason = reason
                self._close_all(out)
        return out

    def finish(self) -> list[Event]:
        """The stream ended (finish_reason seen or not): close everything, then
        message_delta with the final usage and message_stop."""
        if self._finished:
            return []
        out: list[Event] = []
        if not self._started:
            self._start_message(out)
        self._close_all(out)
        self._finished = True
        out.append((
            "message_delta",
            {
                "type": "message_delta",
                # With close_cut_calls=False, a stream that ended without a finish_reason
                # says so (None): its reader treats what was left open as cut.
                "delta": {"stop_reason": self.stop_reason if self._close_cut or self._finish_reason else None,
                          "stop_sequence": None},
                "usage": self.usage,
            },
        ))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    # --- chunk contents ------------------------------------------------------------------

    def _start_message(self, out: list[Event]) -> None:
        self._started = True
        out.append(message_start(self.model, self.usage["input_tokens"], self.message_id))

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> None:
        # Some servers send the same reasoning under both names: take the first.
        for key in ("reasoning_content", "reasoning"):
            reasoning = delta.get(key)
            if isinstance(reasoning, str) and reasoning:
                self._text("thinking", reasoning, out)
                break
        content = delta.get("content")
        if isinstance(content, list):
            content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(content, str) and content:
            self._text("text", content, out)
        calls = delta.get("tool_calls")
        for pos, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, dict):
                self._tool_fragment(call, pos, out)
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            self._tool_fragment({"index": "function_call", "function": legacy}, 0, out)

    def _text(self, kind: str, text: str, out: list[Event]) -> None:
        tail = self._segments[-1] if self._segments else None
        if tail is None or tail.kind != kind or tail.closed:
            tail = _Segment(kind)
            self._segments.append(tail)
        tail.pending.append(text)
        self._chars += len(text)
        self._pump(out)

    def _tool_fragment(self, call: dict[str, Any], pos: int, out: list[Event]) -> None:
        slot = call.get("index")
        if not isinstance(slot, int | str) or isinstance(slot, bool):
            slot = pos
        fn = call.get("function")
        fn = fn if isinstance(fn, dict) else {}
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        name = fn.get("name") if isinstance(fn.get("name"), str) and fn.get("name") else None
        args = fn.get("arguments")
        if isinstance(args, dict | list):
            args = orjson.dumps(args).decode()
        elif not isinstance(args, str):
            args = ""
        seg = self._slots.get(slot)
        if seg is not None and call_id is not None and call_id == seg.id and _repeats(seg, args):
            return  # the same call again, whole (a server's summary of what it streamed): made once
        if seg is not None and name and self._grows(seg, call_id, name):
            seg.name, name = f"{seg.name}{name}", None
        if seg is not None and seg.again is not None and args.strip() and not name and _complete(seg):
            name, seg.again = seg.again, None  # the arguments of the call named before them
        if seg is None or (name and _next_call(seg, call_id, name, args)):
            if not (call_id or name or args):
                return
            if seg is not None:
                seg.settled = True  # the server moved on to the next call: this name is whole
            seg = _Segment("tool")
            self._slots[slot] = seg
            self._segments.append(seg)
        elif name and not args.strip() and name == seg.name and _complete(seg):
            # The same name again after whole arguments, with nothing else: a server
            # repeating the name at the end of a call, or one starting the same tool again
            # on this index. Its arguments, if any come, say which.
            seg.again = name
            return
        if seg.closed:
            return  # a stopped block never gets more deltas
        if call_id and seg.id is None:
            seg.id = call_id
        if name and seg.name is None:
            seg.name = name
        if args:
            seg.pending.append(args)
            self._chars += len(args)
        self._pump(out)

    # --- block scheduling ----------------------------------------------------------------

    def _pump(self, out: list[Event]) -> None:
        """Send what the live segment has; move on while it is finished and others wait."""
        segs = self._segments
        while self._head < len(segs):
            seg = segs[self._head]
            if seg.index is None:
                if seg.kind == "tool" and not self._named(seg):
                    return  # cannot start a tool block before its whole name is known
                self._start_block(seg, out)
            self._send(seg, out)
            waiting = self._head < len(segs) - 1
            if not waiting or (seg.kind == "tool" and not seg.args.complete):  # type: ignore[union-attr]
                return
            self._stop_block(seg, out)
            self._head += 1

    def _grows(self, seg: _Segment, call_id: str | None, name: str) -> bool:
        """Whether a name fragment is the rest of the name of the call on its index: that
        call's block has not started, no other id says it is another call, and the name so
        far with this fragment is an offered tool's name or the start of one."""
        if seg.index is not None or seg.name is None or seg.closed or seg.settled:
            return False
        if call_id and seg.id and call_id != seg.id:
            return False
        whole = seg.name + name
        return any(tool.startswith(whole) for tool in self._offered)

    def _named(self, seg: _Segment) -> bool:
        """Whether a call's name is known and will not grow: no tools to grow it into, a
        later call took its index, it begins no offered tool's name longer than itself, or
        it is one and its arguments have begun."""
        name = seg.name
        if name is None:
            return False
        if not self._offered or seg.settled:
            return True
        if not any(tool.startswith(name) and tool != name for tool in self._offered):
            return True
        return name in self._offered and any(part.strip() for part in (*seg.raw, *seg.pending))

    def _close_all(self, out: list[Event]) -> None:
        for seg in self._segments[self._head:]:
            if seg.index is None:
                if seg.kind == "tool" and seg.name is None:
                    seg.closed = True  # a call without a name cannot be run: dropped
                    continue
                self._start_block(seg, out)
            self._send(seg, out)
            self._stop_block(seg, out)
        self._head = len(self._segments)

    def _start_block(self, seg: _Segment, out: list[Event]) -> None:
        seg.index = self._blocks
        self._blocks += 1
        if seg.kind == "text":
            block: dict[str, Any] = {"type": "text", "text": ""}
        elif seg.kind == "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            self._tool_blocks += 1
            name = seg.name or ""
            block = {"type": "tool_use", "id": self._tool_id(seg.id), "name": self._names.get(name, name), "input": {}}
        out.append(("content_block_start", {"type": "content_block_start", "index": seg.index, "content_block": block}))

    def _send(self, seg: _Segment, out: list[Event]) -> None:
        if not seg.pending:
            return
        text = "".join(seg.pending)
        seg.pending.clear()
        if seg.kind == "text":
            self._emit(seg, {"type": "text_delta", "text": text}, out)
        elif seg.kind == "thinking":
            self._emit(seg, {"type": "thinking_delta", "thinking": text}, out)
        else:
            seg.raw.append(text)
            piece = seg.args.feed(text)  # type: ignore[union-attr]
            if piece:
                self._emit(seg, {"type": "input_json_delta", "partial_json": piece}, out)

    def _stop_block(self, seg: _Segment, out: list[Event]) -> None:
        if seg.kind == "thinking":
            self._emit(seg, {"type": "signature_delta", "signature": LOCAL_THINKING_SIGNATURE}, out)
        elif seg.kind == "tool":
            args = seg.args
            assert args is not None
            # Close what was sent; if nothing usable came, send the best reading of it (or,
            # when the normaliser closes cut calls, the text as it came: it reads it, and
            # so knows a cut one is cut).
            if args.started:
                rest = args.closing() if self._close_cut else ""
            elif self._close_cut:
                rest = orjson.dumps(parse_arguments("".join(seg.raw))).decode()
            else:
                rest = "".join(seg.raw)
                rest = rest if rest.strip() else "{}"  # no arguments at all: an empty input, not a cut one
            if rest:
                self._emit(seg, {"type": "input_json_delta", "partial_json": rest}, out)
        seg.closed = True
        out.append(("content_block_stop", {"type": "content_block_stop", "index": seg.index}))

    @staticmethod
    def _emit(seg: _Segment, delta: dict[str, Any], out: list[Event]) -> None:
        out.append(("content_block_delta", {"type": "content_block_delta", "index": seg.index, "delta": delta}))

    def _tool_id(self, raw: str | None) -> str:
        tool_id = reply_tool_id(raw)
        while tool_id in self._ids:  # ids must be unique within the message
            tool_id = f"{tool_id}_{len(self._ids)}"
        self._ids.add(tool_id)
        return tool_id


def cut_tool_call(resp: Any) -> bool:
    """Whether a Chat Completions reply holds a tool call that is not whole: a named call's
    arguments began as a JSON object that did not end, or are no JSON object at all (they
    are closed or read for the client, but the call is not one to run). The same test a
    stream's normalizer makes when it closes a call (local_stream), whatever finish the
    server named: vLLM names `tool_calls` in place of `length` once it parsed a call, and a
    command cut short must never run."""
    _, message = _first_message(resp)
    for _, fn in _named_calls(message):
        args = fn.get("arguments")
        if not isinstance(args, str):
            continue
        scan = ArgumentsStream()
        scan.feed(args)
        if scan.started:
            if scan.closing():
                return True
        elif args.strip() and parse_arguments(args, repair=False) == {"_raw": args}:
            return True
    return False


def finish_reason_of(resp: Any) -> str:
    """The finish_reason of a Chat Completions reply's first choice ("" when it names none)."""
    reason = _first_message(resp)[0].get("finish_reason")
    return reason if isinstance(reason, str) else ""


def _first_message(resp: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first choice of a Chat Completions reply and its message ({} where missing)."""
    choices = resp.get("choices") if isinstance(resp, dict) else None
    # The first choice (index 0, wherever it is listed), as a stream's is read.
    listed = [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []
    choice = next((c for c in listed if c.get("index", 0) in (0, None)), listed[0] if listed else {})
    message = choice.get("message")
    return choice, message if isinstance(message, dict) else {}


def _named_calls(message: dict[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """(call, function) of each call in a message that names its function, the legacy
    `function_call` last; calls without a name are left out (they cannot be made)."""
    calls = message.get("tool_calls")
    calls = list(calls) if isinstance(calls, list) else []
    if isinstance(message.get("function_call"), dict):
        calls.append({"function": message["function_call"]})
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            out.append((call, fn))
    return out


def openai_to_anthropic_response(
    resp: dict[str, Any], *, model: str, input_tokens_estimate: int, tool_name_map: dict[str, str] | None = None
) -> dict[str, Any]:
    """A non-streaming Chat Completions reply as an Anthropic message."""
    names = tool_name_map or {}
    choice, message = _first_message(resp)
    content: list[dict[str, Any]] = []
    chars = 0
    for key in ("reasoning_content", "reasoning"):
        reasoning = message.get(key)
        if isinstance(reasoning, str) and reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": LOCAL_THINKING_SIGNATURE})
            chars += len(reasoning)
            break
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p["text"] for p in text if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
        chars += len(text)
    ids: set[str] = set()
    for call, fn in _named_calls(message):
        tool_id = reply_tool_id(call.get("id"))
        while tool_id in ids:
            tool_id = f"{tool_id}_{len(ids)}"
        ids.add(tool_id)
        args = fn.get("arguments")
        chars += len(args) if isinstance(args, str) else 0
        content.append({
            "type": "tool_use",
            "id": tool_id,
            "name": names.get(fn["name"], fn["name"]),
            "input": parse_arguments(args),
        })
    usage = _Usage()
    usage.read(resp.get("usage"))
    has_tool = any(b["type"] == "tool_use" for b in content)
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason_for(choice.get("finish_reason"), has_tool),
        "stop_sequence": None,
        "usage": usage.anthropic(max(1, input_tokens_estimate), chars),
    }
