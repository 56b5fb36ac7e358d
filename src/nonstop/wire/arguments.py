"""Tool-call arguments that arrive as JSON text in fragments.

A strict client parses the concatenated `input_json_delta` fragments of a tool block as
one JSON object when the block stops. Local models truncate (max_tokens), escape badly
or emit junk, and a fragment once sent cannot be taken back. `ArgumentsStream` therefore
passes on only text that keeps the arguments a prefix of some valid JSON object, repairs
what can be repaired on the way (raw control characters and bad escapes inside strings),
holds back object keys and commas until the value after them starts, and knows the
shortest text that closes whatever was passed on.

Pure: text in, text out.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_START, _KEY, _COLON, _VALUE, _AFTER, _STRING, _NUMBER, _LITERAL, _DONE = range(9)
_WS = frozenset(" \t\n\r")
_STRING_SPECIAL = re.compile(r'["\\\x00-\x1f]')
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
# Number states: which characters may follow, and whether the number may end here.
_NUM_NEXT = {
    "sign": {"0": "zero", **dict.fromkeys("123456789", "int")},
    "zero": {".": "dot", "e": "e", "E": "e"},
    "int": {**dict.fromkeys("0123456789", "int"), ".": "dot", "e": "e", "E": "e"},
    "dot": dict.fromkeys("0123456789", "frac"),
    "frac": {**dict.fromkeys("0123456789", "frac"), "e": "e", "E": "e"},
    "e": {"+": "esign", "-": "esign", **dict.fromkeys("0123456789", "exp")},
    "esign": dict.fromkeys("0123456789", "exp"),
    "exp": dict.fromkeys("0123456789", "exp"),
}
_NUM_COMPLETE = frozenset({"zero", "int", "frac", "exp"})


class ArgumentsStream:
    """Feed fragments, get the text safe to send on; `closing()` ends it as valid JSON.

    The top-level value must be an object (tool input always is). Once a character
    cannot be part of a valid object, the stream is `dead`: that character and all later
    text are refused, and `closing()` still closes what was sent.
    """

    __slots__ = ("mode", "dead", "stack", "holding", "held", "escape", "key", "number", "literal", "can_close")

    def __init__(self) -> None:
        self.mode = _START
        self.dead = False
        self.stack: list[str] = []
        self.holding = False  # inside a key, or after a comma: not sent until a value starts
        self.held: list[str] = []
        self.escape = ""  # an escape sequence inside a string, sent once complete
        self.key = False  # the current string is an object key
        self.number = ""
        self.literal = ""  # the rest of true / false / null still to come
        self.can_close = False  # right after "{" or "[": the container may close empty

    @property
    def started(self) -> bool:
        """Something (the opening brace) has been passed on."""
        return self.mode != _START

    @property
    def complete(self) -> bool:
        """No further text can be accepted: the object is closed or the stream is dead."""
        return self.mode == _DONE or self.dead

    def feed(self, text: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n and not self.dead:
            if self.mode == _STRING:
                i = self._string(text, i, out)
            else:
                if not self._char(text[i], out):
                    self.dead = True
                    break
                i += 1
        return "".join(out)

    def closing(self) -> str:
        """The text that makes everything passed on so far a complete JSON object."""
        if self.mode == _START:
            return ""
        parts: list[str] = []
        if not self.holding:
            if self.mode == _STRING:
                parts.append('"')
            elif self.mode == _NUMBER and self.number not in _NUM_COMPLETE:
                parts.append("0")
            elif self.mode == _LITERAL:
                parts.append(self.literal)
        parts.extend("}" if c == "{" else "]" for c in reversed(self.stack))
        return "".join(parts)

    # --- the scanner -----------------------------------------------------------------

    def _put(self, s: str, out: list[str]) -> None:
        (self.held if self.holding else out).append(s)

    def _release(self, out: list[str]) -> None:
        if self.holding:
            out.extend(self.held)
            self.held.clear()
            self.holding = False

    def _after_value(self) -> None:
        self.mode = _AFTER if self.stack else _DONE

    def _string(self, text: str, i: int, out: list[str]) -> int:
        if self.escape:
            c = text[i]
            if self.escape == "\\":
                if c in _SIMPLE_ESCAPES:
                    self._put("\\" + c, out)
                    self.escape = ""
                elif c == "u":
                    self.escape = "\\u"
                else:  # an invalid escape: keep the backslash as a literal one
                    self._put("\\\\", out)
                    self.escape = ""
                    return i  # look at c again as an ordinary character
                return i + 1
            if c in _HEX:
                self.escape += c
                if len(self.escape) == 6:
                    self._put(self.escape, out)
                    self.escape = ""
                return i + 1
            self._put("\\\\" + self.escape[1:], out)
            self.escape = ""
            return i
        m = _STRING_SPECIAL.search(text, i)
        j = m.start() if m else len(text)
        if j > i:
            self._put(text[i:j], out)
            return j
        c = text[i]
        if c == '"':
            self._put(c, out)
            if self.key:
                self.mode = _COLON
            else:
                self._after_value()
        elif c == "\\":
            self.escape = "\\"
        else:  # a raw control character is invalid inside a JSON string: escape it
            self._put(_CONTROL_ESCAPES.get(c) or f"\\u{ord(c):04x}", out)
        return i + 1

    def _char(self, c: str, out: list[str]) -> bool:
        mode = self.mode
        if mode == _NUMBER:
            nxt = _NUM_NEXT[self.number].get(c)
            if nxt is not None:
                self.number = nxt
                out.append(c)
                return True
            if self.number not in _NUM_COMPLETE:
                return False
            self._after_value()
            mode = self.mode  # the number ended; c belongs to what follows
        elif mode == _LITERAL:
            if c != self.literal[0]:
                return False
            out.append(c)
            self.literal = self.literal[1:]
            if not self.literal:
                self._after_value()
            return True
        if c in _WS:
            if mode not in (_START, _DONE):
                self._put(c, out)
            return True
        if mode == _START:
            if c != "{":
                return False
            return self._open(c, out)
        if mode == _KEY:
            if c == '"':
                self.mode, self.key = _STRING, True
                self._put(c, out)
                return True
            if c == "}" and self.can_close:
                return self._close(c, out)
            return False
        if mode == _COLON:
            if c != ":":
                return False
            self._put(c, out)
            self.mode, self.can_close = _VALUE, False
            return True
        if mode == _VALUE:
            return self._value(c, out)
        if mode == _AFTER:
            top = self.stack[-1]
            if c == ",":
                self.holding = True
                self._put(c, out)
                self.mode = _KEY if top == "{" else _VALUE
                self.can_close = False
                return True
            if (c == "}" and top == "{") or (c == "]" and top == "["):
                return self._close(c, out)
            return False
        return False  # _DONE: nothing may follow the object

    def _value(self, c: str, out: list[str]) -> bool:
        if c == "]" and self.can_close:
            return self._close(c, out)
        if c in "{[":
            self._release(out)
            return self._open(c, out)
        if c == '"':
            self._release(out)
            self.mode, self.key = _STRING, False
            out.append(c)
            return True
        if c == "-" or c in "0123456789":
            self._release(out)
            self.mode = _NUMBER
            self.number = "sign" if c == "-" else ("zero" if c == "0" else "int")
            out.append(c)
            return True
        if c in _LITERALS:
            self._release(out)
            self.mode, self.literal = _LITERAL, _LITERALS[c]
            out.append(c)
            return True
        return False

    def _open(self, c: str, out: list[str]) -> bool:
        out.append(c)
        self.stack.append(c)
        self.can_close = True
        if c == "{":
            self.mode, self.holding = _KEY, True  # the first key waits for its value
        else:
            self.mode = _VALUE
        return True

    def _close(self, c: str, out: list[str]) -> bool:
        # Only whitespace can be held here (after "{"): keep it, it is harmless.
        self._release(out)
        out.append(c)
        self.stack.pop()
        self._after_value()
        return True


_NULLS = frozenset(("null", '"null"'))


def parse_arguments(raw: Any, *, repair: bool = True) -> dict[str, Any]:
    """Tool-call `arguments` (a JSON string) as a tool input object.

    Empty, or JSON null (what some servers write for a call without arguments) -> {}. A
    double-encoded string is decoded twice. With `repair`, a truncated
    object is closed. Anything else becomes {"_raw": <text>} so nothing is lost and the
    tool's own input validation reports the problem to the model.
    """
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return {} if raw is None else {"_raw": json.dumps(raw)}
    if not raw.strip():
        return {}
    value = _loads(raw)
    if isinstance(value, str):
        value = _loads(value)
    if isinstance(value, dict):
        return value
    if value is None and raw.strip() in _NULLS:
        return {}
    if repair:
        scan = ArgumentsStream()
        sent = scan.feed(raw)
        if scan.started and (not scan.dead or scan.mode == _DONE):  # truncated, or junk after
            value = _loads(sent + scan.closing())
            if isinstance(value, dict):
                return value
    return {"_raw": raw}


def _loads(text: str) -> Any:
    # orjson, not json: what it reads it can write again (json would take integers past
    # 64 bits, lone surrogates and NaN, which the reply could then not be encoded with).
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
