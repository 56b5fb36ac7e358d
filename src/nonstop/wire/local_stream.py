"""Make a local server's Anthropic event stream safe for strict clients (docs/wire.md §3).

Sans-IO: events in, events out. Fixes what local servers get wrong: zero input_tokens,
text or tool input placed inside content_block_start, tool ids with odd characters,
thinking without a signature, a stream that stops without message_stop, a block left
open when the next starts, deltas of another block's kind or with no text, a
message_delta sent early or twice (held until the message ends), a stop reason other
than tool_use beside a whole call, redacted_thinking no cloud could read back, and calls
without a name.

Given the request's offered tools, it also turns a tool call the model wrote as text into
the tool_use block it meant (wire/repair.py). A text block is then held back from a line
where a call may begin until that is decided, so it may split into a text block and tool
blocks; later blocks are renumbered to stay consecutive. Each repair, and each attempt
left as text, is recorded in `repairs`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from nonstop.wire.anthropic import Event, estimate_text_tokens, new_message_id, token_count
from nonstop.wire.arguments import ArgumentsStream, parse_arguments
from nonstop.wire.errors import error_event
from nonstop.wire.repair import CallWatch, Repair, Split, Toolbox, split_text
from nonstop.wire.tool_ids import local_tool_id, reply_tool_id

LOCAL_THINKING_SIGNATURE = "nonstop-local"
# The stop reasons an Anthropic client knows.
STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                          "model_context_window_exceeded"})
# Those that say a limit cut the output short, not the model.
OUTPUT_LIMITS = frozenset({"max_tokens", "model_context_window_exceeded"})
# The deltas each kind of block takes; another kind's would break a strict client.
_DELTAS = {"text": frozenset({"text_delta", "citations_delta"}), "tool_use": frozenset({"input_json_delta"}),
           "thinking": frozenset({"thinking_delta", "signature_delta"})}
# The usage counts a reply may carry, each a count or absent.
_COUNTS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def message_start(model: str, input_tokens: int, message_id: str | None = None,
                  cache: dict[str, int] | None = None) -> Event:
    """`cache`: the prompt-cache counts the server reported (cache_counts), said as it said them."""
    return (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id or new_message_id(),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": max(1, input_tokens), **(cache or {}), "output_tokens": 1},
            },
        },
    )


def input_tokens(usage: dict[str, Any], fallback: int) -> int:
    """The input tokens a server reported, else `fallback` (an estimate of the whole prompt).
    A 0 beside a cache read is a prompt read whole from the cache: 1 (as the cloud never
    says 0), not the estimate, which would count the cached prompt twice."""
    reported = usage.get("input_tokens")
    if count := token_count(reported):
        return count
    cached = usage.get("cache_read_input_tokens")
    return 1 if reported == 0 and type(cached) is int and token_count(cached) else fallback


def cache_counts(usage: Any) -> dict[str, int]:
    """The prompt-cache counts in a server's usage: each a count (0 is one), or left out."""
    if not isinstance(usage, dict):
        return {}
    return {key: v for key in _COUNTS[2:] if type(v := usage.get(key)) is int and (v == 0 or token_count(v))}


class LocalStreamNormalizer:
    def __init__(self, *, model: str, input_tokens_estimate: int, started: bool = False, capped: bool = False,
                 tag: str = "", tools: list[dict[str, Any]] | None = None, tool_names: dict[str, str] | None = None):
        # capped: nonstop lowered the client's max_tokens for this backend. Hitting that
        # cap is then nonstop's limit, not the client's: reporting "max_tokens" would make
        # Claude Code believe its own (much larger) limit was hit and fail the turn.
        self.capped = capped
        # tag: the backend's tag; its tool calls get ids that carry it (wire/tool_ids.py).
        self.tag = tag
        self.cut = False
        self._tools = False
        self.model = model
        self.input_tokens = max(1, input_tokens_estimate)
        self.output_tokens = 0
        self.cache: dict[str, int] = {}  # the server's prompt-cache counts, passed on as it said them
        self.stop_reason = ""
        self.started = started
        self.finished = False
        self.error = ""
        self._open: dict[int, str] = {}  # index -> block type
        self._signed: set[int] = set()
        self._chars = 0
        # tools: the request's offered tools ({name, input_schema} each). Without them no
        # text is held back or repaired. tool_names: the names the model was shown
        # instead of theirs, to theirs (Toolbox.of).
        self._toolbox = Toolbox.of(tools, tool_names)
        self.repairs: list[Repair] = []
        self._watch: dict[int, CallWatch] = {}  # text blocks that may still become calls
        # Held text blocks the server has closed: read once the output's end says whether
        # the limit cut them (a call cut inside its arguments stays text).
        self._ended: set[int] = set()
        self._shown: set[int] = set()  # held text blocks whose start went out
        self._at: dict[int, int] = {}  # the server's block index -> the client's
        # Tool blocks whose input comes in pieces: only what can still end as a JSON object
        # goes out, and the block's end closes it (a call cut by max_tokens stays valid).
        self._args: dict[int, tuple[ArgumentsStream, list[str]]] = {}
        self._cut_call = False  # a tool input had to be closed or read at its block's end
        # The client's next block index: blocks are numbered in the order they start, so a
        # server that skips an index, starts at 1 or reuses a closed one cannot break the
        # client's (and blocks split from text into calls take the numbers after theirs).
        self._next = 0
        # The server's message_delta, held until the message ends: content after it (a
        # server that sends it early) comes before it, and two are one. (raw stop reason,
        # stop_sequence), None until one came.
        self._ending: tuple[Any, Any] | None = None

    def feed(self, etype: str, data: dict[str, Any]) -> list[Event]:
        if self.finished:
            return []
        t = data.get("type", etype)
        if t == "message_start":
            msg = data.get("message") or {}
            usage = msg.get("usage") or {}
            self.cache.update(cache_counts(usage))
            self.input_tokens = input_tokens(usage, self.input_tokens)
            if self.started:
                return []
            self.started = True
            return [message_start(self.model, self.input_tokens, msg.get("id") if isinstance(msg.get("id"), str) else None,
                                  self.cache)]
        if t == "ping" and not self.started:
            return []  # the server's own message_start may follow: a ping does not start one
        out: list[Event] = []
        if not self.started:
            self.started = True
            out.append(message_start(self.model, self.input_tokens))
        if t == "content_block_start":
            out.extend(self._start(data))
        elif t == "content_block_delta":
            out.extend(self._delta(data))
        elif t == "content_block_stop":
            idx = data.get("index", 0)
            if idx in self._watch and self._watch[idx].held.strip():
                self._ended.add(idx)
            elif idx in self._open:
                out.extend(self._stop(idx))
        elif t == "message_delta":
            delta = _object(data.get("delta"))
            usage = _object(data.get("usage"))
            # First: a held text block may become a tool call, unless the limit cut it (or
            # the server gave no stop reason: why the output ended is unknown).
            raw = delta.get("stop_reason")
            out.extend(self._close_all(cut=raw is None or raw in OUTPUT_LIMITS))
            self._ending = (raw, delta.get("stop_sequence"))
            self.stop_reason = self._client_reason(raw)
            self.output_tokens = token_count(usage.get("output_tokens")) or self.output_tokens
            self.cache.update(cache_counts(usage))
            self.input_tokens = input_tokens(usage, self.input_tokens)
        elif t == "message_stop":
            out.extend(self.finish())
        elif t == "ping":
            out.append(("ping", {"type": "ping"}))
        elif t == "error":
            err = data.get("error")
            err = err if isinstance(err, dict) else {"message": err} if isinstance(err, str) else {}
            kind = err.get("type")
            self.error = str(err.get("message") or "local stream error")
            self.finished = True
            out.extend(self._settle_held())
            out.append(error_event(self.error, kind if isinstance(kind, str) and kind else "api_error"))
        return out

    def _start(self, data: dict[str, Any]) -> list[Event]:
        idx = data.get("index", 0)
        block = dict(data.get("content_block") or {})
        btype = block.get("type", "text")
        out: list[Event] = []
        for ended in sorted(self._ended):  # held text the output went on past: not cut
            out.extend(self._settle(ended))
        if self._open.get(idx) == btype:  # the same block started again: one block
            return out
        if btype == "redacted_thinking":
            return out  # a local model's "encrypted" thinking: no cloud could read it back
        if btype == "tool_use" and not (isinstance(block.get("name"), str) and block["name"]):
            return out  # a call to nothing: it cannot be made (its deltas go with it)
        for was in list(self._open):  # a block the server never closed ends first: one at a time
            out.extend(self._stop(was))
        self._open[idx] = btype
        at = self._at[idx] = self._next
        self._next += 1
        self._shown.discard(idx)  # what was known of an earlier block with this index
        self._signed.discard(idx)
        if btype == "text" and self._toolbox is not None:
            self._watch[idx] = CallWatch(self._toolbox)
            out.extend(self._text(idx, block.get("text") or ""))
        elif btype == "text":
            text = block.get("text") or ""
            out.append(_start_event(at, {"type": "text", "text": ""}))
            out.extend(self._text(idx, text))
        elif btype == "tool_use":
            self._tools = True
            given = parse_arguments(block.get("input"))  # an object, whatever the server sent
            out.extend(self._tool_use(at, _tool_id(block.get("id"), self.tag), block.get("name", ""), given))
            if not given:
                self._args[idx] = (ArgumentsStream(), [])
        elif btype == "thinking":
            text = block.get("thinking") or ""
            out.append(_start_event(at, {"type": "thinking", "thinking": "", "signature": ""}))
            if text:
                out.append(_delta_event(at, {"type": "thinking_delta", "thinking": text}))
        else:
            out.append(_start_event(at, block))
        return out

    def _tool_use(self, at: int, tool_id: str, name: Any, tool_input: dict[str, Any], *, counted: bool = False) -> list[Event]:
        """A tool block's start, and its input as one delta (`counted`: its characters
        were counted already, as text)."""
        out = [_start_event(at, {"type": "tool_use", "id": tool_id, "name": name, "input": {}})]
        if tool_input:
            js = orjson.dumps(tool_input).decode()
            self._chars += 0 if counted else len(js)
            out.append(_delta_event(at, {"type": "input_json_delta", "partial_json": js}))
        return out

    def _text(self, idx: int, text: str) -> list[Event]:
        """Text for block `idx`: sent on, or held while it may become a tool call."""
        self._chars += len(text)
        watch = self._watch.get(idx)
        if watch is not None:
            return self._show(idx, watch.feed(text))
        return [_delta_event(self._at[idx], {"type": "text_delta", "text": text})] if text else []

    def _show(self, idx: int, text: str) -> list[Event]:
        """Text of a held block that is prose for good; the block starts with its first."""
        if not text:
            return []
        out: list[Event] = []
        if idx not in self._shown:
            self._shown.add(idx)
            out.append(_start_event(self._at[idx], {"type": "text", "text": ""}))
        out.append(_delta_event(self._at[idx], {"type": "text_delta", "text": text}))
        return out

    def _stop(self, idx: int, cut: bool = False) -> list[Event]:
        if idx in self._watch:
            return self._settle(idx, cut)
        at = self._at[idx]
        out: list[Event] = []
        held = self._args.pop(idx, None)
        if held is not None:  # close what was sent; if nothing usable came, its best reading
            args, raw = held
            if args.started:
                rest = args.closing()
                self._cut_call = self._cut_call or bool(rest)  # it was not whole by itself
            else:  # nothing went out: no arguments, or ones not written as an object (double-encoded)
                text = "".join(raw)
                given = parse_arguments(text, repair=False)
                if given == {"_raw": text}:  # not whole by itself: its best reading, as cut
                    given = parse_arguments(text)
                    self._cut_call = True
                rest = orjson.dumps(given).decode()  # "{}" for none: the input is said, as the cloud does
            if rest:
                out.append(_delta_event(at, {"type": "input_json_delta", "partial_json": rest}))
        if self._open.pop(idx) == "thinking" and idx not in self._signed:
            out.append(_delta_event(at, {"type": "signature_delta", "signature": LOCAL_THINKING_SIGNATURE}))
        out.append(("content_block_stop", {"type": "content_block_stop", "index": at}))
        return out

    def _settle(self, idx: int, cut: bool = False) -> list[Event]:
        """A held text block ended: send the rest as text, or as the calls it holds
        (`cut`: the output limit ended it)."""
        split = self._watch.pop(idx).end(cut=cut)
        self._ended.discard(idx)
        del self._open[idx]
        self.repairs.extend(split.repairs)
        out = self._show(idx, split.prose)
        at = self._at[idx]
        if idx in self._shown or not split.calls:
            if idx not in self._shown:  # an empty text block stays one
                out.append(_start_event(at, {"type": "text", "text": ""}))
            out.append(("content_block_stop", {"type": "content_block_stop", "index": at}))
            at += 1
        for call in split.calls:
            self._tools = True
            out.extend(self._tool_use(at, _tool_id(None, self.tag), call.name, call.input, counted=True))
            out.append(("content_block_stop", {"type": "content_block_stop", "index": at}))
            at += 1
        self._next += at - self._at[idx] - 1
        return out

    @property
    def produced(self) -> int:
        """Characters of output so far: text, tool input and thinking."""
        return self._chars

    @property
    def content_started(self) -> bool:
        """A content block has started: the model is answering, not reading the prompt."""
        return bool(self._open) or self._chars > 0 or bool(self.stop_reason)

    def _delta(self, data: dict[str, Any]) -> list[Event]:
        idx = data.get("index", 0)
        if idx not in self._open or idx in self._ended:
            return []  # a delta for a block never started (or closed) would abort the client
        delta = dict(data.get("delta") or {})
        dtype = delta.get("type")
        allowed = _DELTAS.get(self._open[idx])
        if allowed is not None and dtype not in allowed:
            return []  # another kind of block's delta
        if idx in self._watch:  # a held text block takes its text; nothing else goes with it
            text = delta.get("text")
            return self._text(idx, text) if dtype == "text_delta" and isinstance(text, str) else []
        if dtype == "text_delta":
            text = delta.get("text")
            if not isinstance(text, str) or not text:
                return []  # a piece of no text (null): the SDKs would fail to add it
            self._chars += len(text)
        elif dtype == "input_json_delta":
            text = delta.get("partial_json")
            text = text if isinstance(text, str) else ""
            self._chars += len(text)
            held = self._args.get(idx)
            if held is None:  # the input came whole with the block's start, or another kind of block's
                return [] if self._open.get(idx) == "tool_use" else [_delta_event(self._at[idx], delta)]
            held[1].append(text)
            piece = held[0].feed(text)
            return [_delta_event(self._at[idx], {"type": "input_json_delta", "partial_json": piece})] if piece else []
        elif dtype == "thinking_delta":
            thought = delta.get("thinking")
            if not isinstance(thought, str) or not thought:
                return []
            self._chars += len(thought)
        elif dtype == "signature_delta":
            delta["signature"] = LOCAL_THINKING_SIGNATURE
            self._signed.add(idx)
        return [_delta_event(self._at[idx], delta)]

    def _settle_held(self) -> list[Event]:
        """Held text blocks, when the output ends without a stop reason (an error, the
        stream's end): what the model wrote goes out, read as cut (a call left open stays
        text)."""
        return [e for idx in sorted(self._watch) for e in self._settle(idx, cut=True)]

    def _close_all(self, cut: bool = False) -> list[Event]:
        """Close every open block (`cut`: the output limit ended the output)."""
        return [e for idx in sorted(self._open) for e in self._stop(idx, cut)]

    def _client_reason(self, raw: Any) -> str:
        reason = client_stop_reason(raw, has_tools=self._tools, capped=self.capped, cut_call=self._cut_call,
                                    repaired=any(r.repaired for r in self.repairs))
        self.cut = self.cut or (raw == "max_tokens" and self.capped and not self._cut_call)
        return reason

    def _message_delta(self, stop_sequence: Any = None) -> Event:
        if not self.output_tokens:
            self.output_tokens = estimate_text_tokens("x" * self._chars) if self._chars else 1
        reason = self.stop_reason or "end_turn"
        return (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason,
                          "stop_sequence": stop_sequence if reason == "stop_sequence" and isinstance(stop_sequence, str) else None},
                "usage": {"input_tokens": self.input_tokens, **self.cache, "output_tokens": self.output_tokens},
            },
        )

    def finish(self) -> list[Event]:
        """The local stream ended. A complete stream gets message_stop; one that stopped
        early gets a well-formed error instead of a silent truncation."""
        if self.finished:
            return []
        self.finished = True
        if not self.stop_reason and not self.output_tokens:
            self.error = self.error or "the local server ended the stream early"
            head = [] if self.started else [message_start(self.model, self.input_tokens)]
            self.started = True
            return head + self._settle_held() + [error_event(self.error)]
        out = self._close_all()
        if self._ending is not None:  # the server's message_delta, read again for what came after it
            raw, stop_sequence = self._ending
            self.stop_reason = self._client_reason(raw)
            out.append(self._message_delta(stop_sequence))
        return out + [("message_stop", {"type": "message_stop"})]


def message_events(msg: dict[str, Any]) -> list[Event]:
    """A whole message (normalize_message's) as the stream that would have carried it, for
    a server that answered a stream request whole: each block's start (empty, as the
    cloud's are), its content as one delta, its end; then the stop reason and usage."""
    usage = _object(msg.get("usage"))
    events = [message_start(str(msg.get("model") or ""), usage.get("input_tokens") or 1, msg.get("id"), cache_counts(usage))]
    for i, block in enumerate(b for b in msg.get("content") or [] if isinstance(b, dict)):
        kind = block.get("type")
        if kind == "text":
            events += [_start_event(i, {"type": "text", "text": ""}),
                       _delta_event(i, {"type": "text_delta", "text": block.get("text", "")})]
        elif kind == "tool_use":
            events += [_start_event(i, {"type": "tool_use", "id": block.get("id"), "name": block.get("name"), "input": {}}),
                       _delta_event(i, {"type": "input_json_delta",
                                        "partial_json": orjson.dumps(block.get("input") or {}).decode()})]
        elif kind == "thinking":
            events += [_start_event(i, {"type": "thinking", "thinking": ""}),
                       _delta_event(i, {"type": "thinking_delta", "thinking": block.get("thinking", "")}),
                       _delta_event(i, {"type": "signature_delta", "signature": block.get("signature", "")})]
        else:
            events.append(_start_event(i, block))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events += [("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": msg.get("stop_reason"), "stop_sequence": msg.get("stop_sequence")},
                                  "usage": usage}),
               ("message_stop", {"type": "message_stop"})]
    return events


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _start_event(idx: int, block: dict[str, Any]) -> Event:
    return ("content_block_start", {"type": "content_block_start", "index": idx, "content_block": block})


def _delta_event(idx: int, delta: dict[str, Any]) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": idx, "delta": delta})


def client_stop_reason(raw: Any, *, has_tools: bool, capped: bool, cut_call: bool, repaired: bool) -> str:
    """The stop reason a client hears for a local reply, streamed or whole, from the one
    the server gave (`raw`):

    - a tool call the output limit cut (`cut_call`) is not one to run: `max_tokens`, as
      the cloud would say it, even where nonstop lowered the client's limit;
    - a call made from text (`repaired`) is one to run: `tool_use`;
    - a reason no client knows, or none, is read from the content, and so is `tool_use`
      without a tool call (a client would look for a call to run and find none);
    - reaching nonstop's own lowered limit (`capped`) is not the client's limit: Claude
      Code would fail the turn on `max_tokens`, so it is the end of the turn (`tool_use`
      with a call).
    """
    if cut_call:
        return "max_tokens"
    if repaired:
        return "tool_use"
    if raw not in STOP_REASONS:
        return "tool_use" if has_tools else "end_turn"
    if raw == "tool_use" and not has_tools:  # a server that names calls it never made
        return "end_turn"
    if raw == "max_tokens" and capped:
        return "tool_use" if has_tools else "end_turn"
    if has_tools and raw not in OUTPUT_LIMITS:  # a whole call asks to be run, whatever else the server said
        return "tool_use"
    return str(raw)


def _tool_id(raw: Any, tag: str) -> str:
    return local_tool_id(tag) if tag else reply_tool_id(raw)


def normalize_message(msg: dict[str, Any], *, model: str, input_tokens_estimate: int, capped: bool = False,
                      tag: str = "", tools: list[dict[str, Any]] | None = None,
                      on_repair: Callable[[Repair], None] | None = None, cut: bool = False,
                      tool_names: dict[str, str] | None = None) -> dict[str, Any]:
    """The same fixes for a non-streaming local reply. With the request's offered `tools`,
    a tool call written as text becomes a tool_use block; `on_repair` hears of each
    repair and of each attempt left as text. `cut`: the output limit cut a tool call (see
    openai.cut_tool_call), so the reply is max_tokens, never a call to run."""
    out = dict(msg)
    if not isinstance(out.get("id"), str) or not out["id"]:
        out["id"] = new_message_id()
    out["type"] = "message"
    out["role"] = "assistant"
    out["model"] = model
    toolbox = Toolbox.of(tools, tool_names)
    repairs: list[Repair] = []
    content = []
    chars = 0
    blocks = [b for b in out.get("content") or [] if isinstance(b, dict)]
    # The output limit ended the reply (or the server named no reason): its last block
    # is where it was cut.
    limit = out.get("stop_reason") is None or out.get("stop_reason") in OUTPUT_LIMITS
    for i, block in enumerate(blocks):
        b = dict(block)
        if b.get("type") == "redacted_thinking" or (
                b.get("type") == "tool_use" and not (isinstance(b.get("name"), str) and b["name"])):
            continue  # as in a stream: no local "encrypted" thinking, no call to nothing
        if b.get("type") == "tool_use":
            b["id"] = _tool_id(b.get("id"), tag)
            b["input"] = parse_arguments(b.get("input"))  # an object, whatever the server sent
            chars += len(orjson.dumps(b["input"]))
        elif b.get("type") == "thinking":
            b["signature"] = LOCAL_THINKING_SIGNATURE
            if not isinstance(b.get("thinking"), str):
                b["thinking"] = ""
        elif b.get("type") == "text":
            if not isinstance(b.get("text"), str):
                b["text"] = "" if b.get("text") is None else str(b["text"])
            chars += len(b["text"])
            if toolbox is not None and isinstance(b.get("text"), str):
                split = split_text(b["text"], toolbox, cut=limit and i == len(blocks) - 1)
                repairs.extend(split.repairs)
                content.extend(_split_blocks(b, split, tag))
                continue
        content.append(b)
    out["content"] = content
    usage = dict(out["usage"]) if isinstance(out.get("usage"), dict) else {}
    for key in _COUNTS[2:]:  # the server's other counts: counts (0 is one), or none
        usage.pop(key, None)
    usage.update(cache_counts(out.get("usage")))
    usage["input_tokens"] = input_tokens(usage, max(1, input_tokens_estimate))
    usage["output_tokens"] = token_count(usage.get("output_tokens")) or max(1, chars // 4)
    out["usage"] = usage
    out["stop_reason"] = client_stop_reason(out.get("stop_reason"), has_tools=any(b.get("type") == "tool_use" for b in content),
                                         capped=capped, cut_call=cut, repaired=any(r.repaired for r in repairs))
    if out["stop_reason"] != "stop_sequence" or not isinstance(out.get("stop_sequence"), str):
        out["stop_sequence"] = None
    for r in repairs:
        if on_repair is not None:
            on_repair(r)
    return out


def _split_blocks(block: dict[str, Any], split: Split, tag: str) -> list[dict[str, Any]]:
    """A text block as its prose and the calls it ends with."""
    if not split.calls:
        return [block]
    prose = [{**block, "text": split.prose}] if split.prose else []
    return prose + [
        {"type": "tool_use", "id": _tool_id(None, tag), "name": call.name, "input": call.input} for call in split.calls
    ]
