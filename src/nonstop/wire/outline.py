"""The outline of a Messages request: what the cloud path reads, without parsing the rest.

A Claude Code request is about 50 KB of JSON, and most of it (the system prompt, the tool
schemas, tool inputs and results) is forwarded to the cloud as the client sent it: nonstop
never reads it there. Parsing all of it into Python objects, and freeing them again, was
the largest part of nonstop's own work per request. `outline(body)` decodes only the
fields validation, history hygiene and the planner read, by a typed msgspec decoder that
skips the rest inside C:

- the model, `stream`, `max_tokens`, whether there are tools, `thinking`;
- each message's role and content type, and each block's type and the fields hygiene
  checks (ids, signatures, redacted data, whether an assistant's text is blank);
- the last two messages (and back to the last user turn), for the planner's facts
  (workload class, images, a local tool loop), with the text of their text blocks and
  the content of tool results that hold an image.

It answers only for requests whose shape it fully describes. Anything else (a block that
is not an object, a field of a type validation would reject, invalid JSON, a history that
needs cleaning) gives None, and the caller parses the whole request as before, so the
fast path can never accept what the full checks would refuse or answer differently.
One exception: the decoder does not look inside what it skips, so invalid UTF-8 or a
number out of range there (which the full parse refuses) is not seen. Such a body goes
to the cloud as the client sent it, and the cloud's own 400 reaches the client; on a
local backend it is refused as unreadable, with a 400 too.

Skipping is not free: the decoder still scans the 45 KB of system prompt and tool
schemas, most of the outline's time. A client sends the same ones, byte for byte, on
every request of a session (the cloud's prompt cache needs them so), after the
messages. `Tails` keeps a few such ends of recent bodies, learnt from a body decoded
whole: the members after the messages, with what they hold of the fields above. A body
that ends with one is decoded without it (the bytes before it, closed), and the kept
members' fields laid over, as JSON's last member wins. The same decoder reads the same
members, so the answer is the whole decode's (tests/unit/wire/test_outline.py holds the
two to it); a body the shorter decode cannot read is decoded whole.

The history is resent too, hundreds of messages an hour into a session. Under each end
`_Tail` keeps the last history checked (a request's leading messages equal to it are not
checked again) and that body's bytes up to its last two messages, which a client changes
next (a body that begins with them is decoded from its new messages only; `_Tail.read`).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec

from nonstop.wire.hygiene import CHECKED_BLOCKS, blank_text, kept_as_is
from nonstop.wire.tool_ids import LOCAL_PREFIX, local_tag_of
from nonstop.wire.validate import bad_max_tokens, bad_model


class _Block(msgspec.Struct, gc=False):
    type: Any = None
    id: Any = None
    tool_use_id: Any = None
    signature: Any = None
    data: Any = None
    # Left as JSON text unless the planner reads it (empty: the block has none).
    text: msgspec.Raw = msgspec.Raw()
    # A tool result's content, the same way: the planner looks for images in it.
    content: msgspec.Raw = msgspec.Raw()


class _Message(msgspec.Struct, gc=False):
    role: str
    content: str | list[_Block]


class _Tool(msgspec.Struct, gc=False):
    name: str = ""


class _Request(msgspec.Struct, gc=False):
    model: Any
    messages: list[_Message]
    stream: bool = False
    max_tokens: int | None = None
    tools: list[_Tool] | None = None
    thinking: Any = None


_DECODER = msgspec.json.Decoder(_Request)


class _After(msgspec.Struct, gc=False):
    """The members of a request after its messages (a kept tail): which of `_Request`'s
    fields they hold (UNSET: none), read with the same types."""

    model: msgspec.Raw = msgspec.Raw()
    messages: msgspec.Raw = msgspec.Raw()
    stream: bool | msgspec.UnsetType = msgspec.UNSET
    max_tokens: int | None | msgspec.UnsetType = msgspec.UNSET
    tools: list[_Tool] | None | msgspec.UnsetType = msgspec.UNSET
    # Kept as JSON and decoded for each request: the facts hand it on as they read it.
    thinking: msgspec.Raw = msgspec.Raw()


_AFTER = msgspec.json.Decoder(_After)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)  # too deep: orjson says so
_MESSAGES = msgspec.json.Decoder(list[_Message])
_RAWS = msgspec.json.Decoder(list[msgspec.Raw])


class _RawMessages(msgspec.Struct, gc=False):
    messages: list[msgspec.Raw] = []


_RAW_MESSAGES = msgspec.json.Decoder(_RawMessages)
# The last messages of a history a prefix leaves out: a client changes them with its next
# request (Claude Code moves its cache breakpoint from its newest user message to the next).
SPARED = 2


# `_Tail.first_local` when no message holds a local model's tool call.
_NONE = 1 << 62


class _Tail:
    __slots__ = ("after", "checked", "data", "first_local", "head", "prefix", "shared", "shared_local", "tries")
    TRIES = 3  # prefixes found from scratch while none is read

    def __init__(self, data: bytes, after: _After) -> None:
        self.data, self.after = data, after
        # The history of the last request that ended so and took the outline (every
        # message checked and found fine), and the first of them with a local model's
        # tool call (_NONE: none).
        self.checked: list[_Message] = []
        self.first_local = _NONE
        # The bytes of such a request up to its last SPARED messages (`prefix`: they end
        # with the comma before them), what they decode to (`head`: the members before the messages;
        # `shared`: the messages), and `shared`'s first local tool call. A body that
        # begins with them and ends with `data` is decoded from its new messages only.
        self.prefix = b""
        self.head: _Request | None = None
        self.shared: list[_Message] = []
        self.shared_local = _NONE
        self.tries = 0

    def read(self, body: bytes) -> _Request | None:
        """`body` (which ends with `data`) read from what follows `prefix`, when it
        begins with it and the rest is messages only, up to the array's end; None
        otherwise. The bytes of `prefix` leave the decoder inside the messages, after a
        message and its comma (`_advance` makes sure), so a body that goes on with whole
        messages and `]` has `shared` and those, and the head's members before them."""
        pre, head = self.prefix, self.head
        if head is None or len(body) <= len(pre) + len(self.data) or not body.startswith(pre):
            return None
        try:
            more = _MESSAGES.decode(b"".join((b"[", memoryview(body)[len(pre):len(body) - len(self.data)])))
        except _DECODE_ERRORS:
            return None
        if not more:  # `[..., m,]` is no JSON, though `[` + `]` is
            return None
        self.tries = 0
        return _Request(head.model, self.shared + more, head.stream, head.max_tokens, head.tools, None)

    def known(self, messages: list[_Message]) -> tuple[int, int]:
        """How many of `messages`, from the first, are the checked history's (equal,
        field by field: the checks would find them fine again), and the first of those
        with a local tool call. A client resends its history with the newest turns
        added, and with the one or two last before them changed (Claude Code moves its
        cache breakpoint): the last message that may be shared is compared first."""
        prev = self.checked
        for k in range(min(len(prev), len(messages)), max(len(prev) - 3, 0), -1):
            if messages[k - 1] is prev[k - 1] or messages[k - 1] == prev[k - 1]:
                if messages[:k - 1] == prev[:k - 1]:
                    return k, self.first_local if self.first_local < k else _NONE
                break
        return 0, _NONE

    def remember(self, body: bytes, messages: list[_Message], first_local: int, *, went_on: bool,
                 read: bool) -> None:
        """`messages` (of `body`) were checked and found fine. `went_on`: they continue the
        history checked before; `read`: `body` was read from `prefix`."""
        self.checked, self.first_local = messages, first_local
        if read or went_on or self.head is None:
            self._advance(body, messages, first_local, read)

    def _advance(self, body: bytes, messages: list[_Message], first_local: int, read: bool) -> None:
        """`prefix` moved to end before `body`'s last SPARED messages (the next request of
        the session changes those, and adds after them), or let go when they cannot be
        found: in JSON written compactly, they end at the array's `]`, one comma apart."""
        old, head, owned = self.prefix, self.head, len(self.shared) if read else 0
        self.prefix, self.head, self.shared, self.shared_local = b"", None, [], _NONE
        if not read:
            if self.tries >= self.TRIES:  # (found and missed again and again: the client's
                return                     # bodies do not go on so)
            self.tries += 1
        end = len(body) - len(self.data) - 1  # the messages' `]`, if nothing comes between
        keep = len(messages) - SPARED
        if keep < 1 or end < 1 or body[end] != 0x5D:
            return
        try:
            if read:  # the messages after the old prefix: the new ones
                raws = _RAWS.decode(b"".join((b"[", memoryview(body)[len(old):end + 1])))
            else:
                raws = _RAW_MESSAGES.decode(b"".join((memoryview(body)[:end + 1], b"}"))).messages
        except _DECODE_ERRORS:
            return
        if len(raws) < SPARED:
            return
        start = end
        for raw in reversed(raws[-SPARED:]):
            start -= len(raw)
            if body[start:start + len(raw)] != bytes(raw) or body[start - 1] != 0x2C:
                return
            start -= 1
        prefix = body[:start + 1]  # (its comma included)
        if not read:  # where the bytes leave the decoder, proven once: inside the messages
            try:
                head = _DECODER.decode(b"".join((memoryview(prefix)[:-1], b"]}")))
            except _DECODE_ERRORS:
                return
            if head.thinking is not None or head.messages != messages[:keep]:
                return
            head.messages = []  # (read() takes `shared`; these would keep the prefix's decode)
        self.prefix, self.head, self.shared = prefix, head, _owned(messages[:keep], owned)
        self.shared_local = first_local if first_local < keep else _NONE

    def over(self, req: _Request) -> _Request:
        """`req` (the members before the tail) with the tail's members laid over."""
        a = self.after
        if a.stream is not msgspec.UNSET:
            req.stream = a.stream
        if a.max_tokens is not msgspec.UNSET:
            req.max_tokens = a.max_tokens
        if a.tools is not msgspec.UNSET:
            req.tools = a.tools
        if a.thinking:
            req.thinking = msgspec.json.decode(a.thinking)
        return req


def _owned(messages: list[_Message], start: int) -> list[_Message]:
    """`messages`, those from `start` on holding their own text: a decoded message's raw
    fields point into the buffer it was decoded from, and kept so they would keep all of
    it (every read's, a session long)."""
    for m in messages[start:]:
        if not isinstance(m.content, str):
            for b in m.content:
                if b.text:
                    b.text = b.text.copy()
                if b.content:
                    b.content = b.content.copy()
    return messages


class Tails:
    """The ends of recent bodies worth not scanning again (see the module's docstring).
    Learnt from a body decoded whole, at most one in LEARN_EVERY while none is met again
    (a client whose bodies never end alike pays for the look that rarely)."""

    KEEP = 8  # a session's main agent, its subagents, its small side requests
    SMALLEST = 4096  # shorter ends cost less to scan than to look for
    LARGEST = 512 * 1024  # (eight kept: 4 MB at most)
    LEARN_EVERY = 16
    # Where a body's members after its messages may begin: the SDKs and Claude Code send
    # `system` and `tools` after `messages`. (A candidate nested deeper, or before the
    # messages, is found out by decoding the two halves: neither is a whole object then.)
    _STARTS = re.compile(rb',\s*"(?:system|tools)"\s*:')
    LOOKS = 4  # candidates tried

    def __init__(self) -> None:
        self.kept: list[_Tail] = []
        self.missed = 0

    def decode(self, body: bytes) -> tuple[_Request, _Tail, int] | None:
        """`body` decoded without a kept tail it ends with, that tail, and how many of its
        messages were read from the tail's prefix (0: none); None when it ends with
        none (or the rest does not read as a request: the whole body then says why)."""
        for i, tail in enumerate(self.kept):
            n = len(tail.data)
            if len(body) > n and body.endswith(tail.data):
                req = tail.read(body)
                shared = len(tail.shared) if req is not None else 0
                if req is None:
                    try:
                        req = _DECODER.decode(b"".join((memoryview(body)[:len(body) - n], b"}")))
                    except _DECODE_ERRORS:
                        return None
                self.missed = 0
                if i:
                    self.kept.insert(0, self.kept.pop(i))
                try:
                    return tail.over(req), tail, shared
                except _DECODE_ERRORS:  # `thinking` nested too deep for this call's stack
                    return None
        return None

    def learn(self, body: bytes, whole: _Request) -> None:
        """Keep the end of `body` (decoded whole: `whole`) after its messages, when it is
        long enough and its members are the request's last."""
        self.missed += 1
        if self.missed > self.LEARN_EVERY and self.missed % self.LEARN_EVERY:
            return
        for found, _ in zip(self._STARTS.finditer(body), range(self.LOOKS), strict=False):
            k = found.start()
            if not self.SMALLEST <= len(body) - k <= self.LARGEST:
                continue
            try:
                before = _DECODER.decode(b"".join((memoryview(body)[:k], b"}")))
                after = _AFTER.decode(b"".join((b"{", memoryview(body)[k + 1:])))
            except _DECODE_ERRORS:
                continue
            if after.model or after.messages:
                continue
            tail = _Tail(body[k:], after)
            try:
                if _fields(tail.over(before)) != _fields(whole):  # (never seen: a guard on the reasoning above)
                    continue
            except _DECODE_ERRORS:
                continue
            self.kept.insert(0, tail)
            del self.kept[self.KEEP:]
            return


def _fields(req: _Request) -> tuple[Any, ...]:
    return (req.model, req.stream, req.max_tokens, bool(req.tools), req.thinking, len(req.messages))


TAILS = Tails()
# The longest body whose history a tail keeps. A tail then holds up to about three
# such bodies' worth: its prefix, the kept messages' own text, and the last checked
# history (which points into that request's decode); eight tails, ~24 MB at the most.
REMEMBERED = 1 << 20


class Outline(NamedTuple):
    model: Any
    stream: bool
    # Why the request cannot be served ("" when it can), as validate_messages_request says it.
    problem: str
    # The fields the planner's facts read, as a request dict: the same keys, with only
    # the messages they read (see routing/facts.py).
    facts: dict[str, Any]


def outline(body: bytes, tails: Tails = TAILS) -> Outline | None:
    """The outline of a Messages request whose history can go to the cloud as it is;
    None when the whole request must be parsed (see the module's docstring)."""
    got = tails.decode(body)
    if got is None:
        try:
            req = _DECODER.decode(body)
        except _DECODE_ERRORS:
            return None
        tails.learn(body, req)
        tail, done, first_local, read = None, 0, _NONE, False
    else:
        req, tail, done = got
        read = done > 0
        if read:  # read from the prefix: its messages were checked when it was found
            first_local = tail.shared_local
        else:
            done, first_local = tail.known(req.messages)  # checked with the request before
    messages = req.messages
    for i in range(done, len(messages)):
        m = messages[i]
        content = m.content
        if isinstance(content, str):
            continue
        assistant = m.role == "assistant"
        for b in content:
            t = b.type
            if type(t) is str and t in CHECKED_BLOCKS:
                ident = b.tool_use_id if t == "tool_result" else b.id
                if not kept_as_is(t, assistant, b.signature, b.data, ident):
                    return None
                if first_local == _NONE and t == "tool_use" and type(ident) is str and ident.startswith(LOCAL_PREFIX):
                    first_local = i  # a tool call of the history has a local model's id
            if assistant and t == "text" and _blank(b.text):
                return None
    if tail is not None and len(body) <= REMEMBERED:
        tail.remember(body, messages, first_local, went_on=done > 0, read=read)
    problem = bad_model(req.model) or bad_max_tokens(req.max_tokens)
    facts = {
        "model": req.model, "stream": req.stream, "max_tokens": req.max_tokens,
        "tools": bool(req.tools), "thinking": req.thinking,
        "messages": [_as_dict(m) for m in messages[_tail(req, first_local != _NONE):]],
    }
    return Outline(req.model, req.stream, problem, facts)


# The ASCII bytes a JSON string's text may begin with when it is blank: a space, an
# escape, or its closing quote. Any other ASCII first byte is text, and nothing more is
# read; a non-ASCII one may be a space of another script.
_BLANK_START = frozenset(b' \\"')


def _blank(raw: msgspec.Raw) -> bool:
    """Whether a text block's text (its JSON) is empty or whitespace, as hygiene says."""
    if len(raw) < 2:
        return False
    first = memoryview(raw)[1]
    if first < 0x80 and first not in _BLANK_START:
        return False
    return blank_text(msgspec.json.decode(raw))


# "image" as JSON may spell any letter as an escape.
_IMAGE = re.compile(rb'"(?:i|\\u0069)(?:m|\\u006[dD])(?:a|\\u0061)(?:g|\\u0067)(?:e|\\u0065)"')


def _may_hold_image(raw: bytes) -> bool:
    """A tool result's content (its JSON) names an image somewhere: read it whole then."""
    return raw.find(b'"image"') >= 0 or (raw.find(b"\\u00") >= 0 and _IMAGE.search(raw) is not None)


def _tail(req: _Request, local: bool) -> int:
    """Where the messages the facts read start: the last two, and back to the last user
    turn (the one whose images count) when that is further back. With thinking on, a
    last assistant turn that does not start with thinking, and a local model's turn in
    the same tool loop, back to that turn (the facts' thinking rule looks for it; a loop
    without one costs a look at its assistant turns' tool ids, and none where no tool
    call of the history has a local id: `local`)."""
    messages = req.messages
    start = max(0, len(messages) - 2)
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            start = min(start, i)
            break
    # The turn before the final user turn (its consecutive user messages, with system
    # messages among them, are one turn: routing/facts.py final_turn).
    prev = len(messages) - 1
    while prev >= 0 and messages[prev].role in ("user", "system"):
        prev -= 1
    start = min(start, max(prev, 0))  # the whole final turn, and the turn before it
    if prev < 0:
        return start
    thinking = req.thinking
    if (isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
            and local and messages[prev].role == "assistant" and _unthought(messages[prev].content)):
        return min(start, _local_turn_in_loop(messages))
    return start


def _local_turn_in_loop(messages: list[_Message]) -> int:
    """The earliest message the facts must read to find a local model's turn in the tool
    loop the request continues (routing/facts.py loop_of): that turn, or the end when
    there is none."""
    i = len(messages) - 1
    while i >= 0:
        m = messages[i]
        if m.role == "user":  # a run of user messages (system ones among them) is one turn
            j, results = i, False
            while j >= 0 and messages[j].role in ("user", "system"):
                results = results or (messages[j].role == "user" and _has_results(messages[j].content))
                j -= 1
            if not results:
                break
            i = j
            continue
        if m.role == "assistant" and not isinstance(m.content, str) and any(
                b.type == "tool_use" and local_tag_of(b.id) for b in m.content):
            return i
        i -= 1
    return len(messages)


def _has_results(content: str | list[_Block]) -> bool:
    return not isinstance(content, str) and any(b.type == "tool_result" for b in content)


def _unthought(content: str | list[_Block]) -> bool:
    return not (isinstance(content, list) and content and content[0].type in ("thinking", "redacted_thinking"))


def _as_dict(m: _Message) -> dict[str, Any]:
    content = m.content
    if isinstance(content, str):
        return {"role": m.role, "content": content}
    blocks: list[dict[str, Any]] = []
    for b in content:
        block = {"type": b.type, "id": b.id}
        if b.text:  # valid JSON: it was decoded as part of the whole body
            block["text"] = msgspec.json.decode(b.text)
        if b.content and b.type == "tool_result" and _may_hold_image(bytes(b.content)):
            block["content"] = msgspec.json.decode(b.content)
        blocks.append(block)
    return {"role": m.role, "content": blocks}
