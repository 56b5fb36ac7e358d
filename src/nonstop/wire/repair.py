"""Tool calls a weak local model wrote as text, turned into the tool_use blocks it meant.

Small local models often write a call as JSON in their answer instead of calling the
tool: bare, in a ```json fence or in <tool_call> tags, with almost-JSON arguments
(trailing commas, single quotes, Python literals, braces left open where the output
ended) or with the tool's name in the wrong case. A strict client sees text and stops.

A call is made only when nothing else could have been meant: the text from a line start
to the end of the block is nothing but calls (MAX_CALLS at most), each names one offered
tool (exactly, or differing only in case, or as a prefix of that tool's name alone) and
its input validates against that tool's input_schema. Anything else stays text; a near
miss (broken JSON that names a tool, a tool not offered, input that does not validate, a
call the output limit cut inside its arguments) is reported as an attempt. Braces the
model left open are closed only where nothing cut it: the limit cutting a call inside
its arguments means the rest of them was never written.

    toolbox = Toolbox.of(tools)      # the request's offered tools; None when there are none
    found = split_text(text, toolbox, cut=False)             # a whole reply's text block
    watch = CallWatch(toolbox)       # a streamed text block: feed() returns the text that
    sent = watch.feed(piece); ...    # may go out now, end() what the rest becomes
    found = watch.end(cut=False)     # cut: the output limit ended the text

The two paths agree on every input. A stream holds text back only from a line start where
a call could begin, and lets it go at the first character that rules a call out, or once
HOLD_LIMIT characters have been held.

Pure: text in, values out; no I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

HOLD_LIMIT = 16_384  # characters a stream holds back while a call may still be forming
MIN_PREFIX = 3  # a shorter name is not taken as a prefix of an offered tool's name
# More calls in a row, or JSON nested deeper, is data rather than calls. The bounds also
# keep reading linear: every line start may begin a call, and each is read on its own.
MAX_CALLS = 8
MAX_DEPTH = 16

# Repair.kind: the form a repaired call was written in, or NOT_REPAIRED for an attempt.
BARE_JSON = "bare_json"
FENCED_JSON = "fenced_json"
TOOL_CALL_TAGS = "tool_call_tags"
NOT_REPAIRED = "not_repaired"

_FENCE = "```"
_TAG_OPEN = "<tool_call>"
_TAG_CLOSE = "</tool_call>"
_FENCE_LANGS = ("", "json", "tool_call")
_WS = frozenset(" \t\r\n")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_]\w*")
_LITERALS = {"true": "true", "false": "false", "null": "null", "True": "true", "False": "false", "None": "null"}
_ARG_KEYS = ("arguments", "input", "parameters")
_NAME_KEYS = ("name", "tool")
_EXTRA_KEYS = frozenset({"id", "type", "index"})
_STRING_SPECIAL = {'"': re.compile(r'["\\]'), "'": re.compile(r"['\\]")}
_CALL_KEY = re.compile(r"""["'](?:name|tool|function)["']\s*:""")


@dataclass(frozen=True)
class Repair:
    """One call made from text (kind: the form it was written in), or one attempt left
    as text (kind NOT_REPAIRED, changes: why)."""

    kind: str
    tool: str  # the offered tool's name; "" when none was matched
    changes: tuple[str, ...]  # what was changed to make the call, in words

    @property
    def repaired(self) -> bool:
        return self.kind != NOT_REPAIRED


@dataclass(frozen=True)
class ToolCall:
    name: str  # an offered tool's name
    input: dict[str, Any]  # valid against that tool's input_schema


@dataclass(frozen=True)
class Split:
    """A text block's reading: the prose, then the calls it ends with (if any)."""

    prose: str
    calls: tuple[ToolCall, ...] = ()
    repairs: tuple[Repair, ...] = ()


class Toolbox:
    """The request's offered tools: their names and input schemas."""

    def __init__(self, schemas: dict[str, Any], seen: dict[str, str] | None = None):
        self.schemas = schemas
        self.seen = seen or {}  # a name the model was shown instead -> the tool's own

    @classmethod
    def of(cls, tools: Any, seen: dict[str, str] | None = None) -> Toolbox | None:
        """From the request's `tools` ({name, input_schema} each); None when none were
        offered. `seen`: the names the model was shown where a server could not take the
        tool's own (an OpenAI-format server: wire/openai tool names), to the tool's own."""
        schemas = {
            t["name"]: t.get("input_schema") or {}
            for t in tools or ()
            if isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"]
        }
        return cls(schemas, {k: v for k, v in (seen or {}).items() if v in schemas}) if schemas else None

    def resolve(self, name: str) -> tuple[str, str] | None:
        """The offered tool `name` means, and how it was matched ("" when exactly); None
        when it names no offered tool, or more than one."""
        if name in self.schemas:
            return name, ""
        if name in self.seen:
            return self.seen[name], f"name {name!r} -> {self.seen[name]!r} (as the model was shown it)"
        folded = name.casefold()
        same = [n for n in self.schemas if n.casefold() == folded]
        if len(same) == 1:
            return same[0], f"name {name!r} -> {same[0]!r} (case)"
        longer = [n for n in self.schemas if n.casefold().startswith(folded)]
        if len(longer) == 1 and len(name) >= MIN_PREFIX:
            return longer[0], f"name {name!r} -> {longer[0]!r} (prefix)"
        return None

    def problem(self, name: str, value: Any) -> str:
        """Why `value` is not valid input for the tool `name`; "" when it is."""
        return schema_problem(value, self.schemas.get(name), "input")


# --- a small JSON Schema validator: the keywords tool schemas use ---------------------------------


def schema_problem(value: Any, schema: Any, where: str = "value") -> str:
    """The first way `value` breaks `schema`, in words; "" when it satisfies it. Checks
    type, enum, const, required, properties, additionalProperties, items, anyOf, oneOf and
    allOf (oneOf as anyOf); other keywords, $ref included, pass."""
    if not isinstance(schema, dict):
        return ""
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is_type(value, t) for t in names):
            return f"{where} is not {' or '.join(map(str, names))}"
    if isinstance(schema.get("enum"), list) and not any(_equal(value, e) for e in schema["enum"]):
        return f"{where} is not one of {schema['enum']!r}"[:200]
    if "const" in schema and not _equal(value, schema["const"]):
        return f"{where} is not {schema['const']!r}"[:200]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches and all(schema_problem(value, b, where) for b in branches):
            return f"{where} matches none of {key}"
    for branch in schema.get("allOf") or ():
        if problem := schema_problem(value, branch, where):
            return problem
    if isinstance(value, dict):
        return _object_problem(value, schema, where)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            if problem := schema_problem(item, schema["items"], f"{where}[{i}]"):
                return problem
    return ""


def _object_problem(value: dict[str, Any], schema: dict[str, Any], where: str) -> str:
    for key in schema.get("required") or ():
        if key not in value:
            return f"{where}.{key} is missing"
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            sub = props[key]
        elif extra is False:
            return f"{where}.{key} is not allowed"
        else:
            sub = extra
        if problem := schema_problem(item, sub, f"{where}.{key}"):
            return problem
    return ""


def _is_type(value: Any, name: Any) -> bool:
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    kinds: dict[Any, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    return name not in kinds or isinstance(value, kinds[name])


def _equal(a: Any, b: Any) -> bool:
    # JSON's true is not 1, though Python's True == 1.
    return a == b and isinstance(a, bool) == isinstance(b, bool)


# --- almost-JSON ---------------------------------------------------------------------------------


class BrokenJSON(ValueError):
    """Text with no single JSON reading; the message says what is wrong."""


def loads_almost_json(text: str, *, open_end: bool = False) -> tuple[Any, tuple[str, ...]]:
    """The value `text` means, and the fixes that were needed (none for valid JSON).

    Fixes only what has one reading: trailing commas, single-quoted strings, Python's
    True/False/None, raw control characters inside strings and, with `open_end` (the
    text is where the output ended), brackets left open after a complete value. Raises
    BrokenJSON for anything else: a cut string, a dangling key, a bare word.
    """
    value, fixes, _ = _loads_open(text, open_end)
    return value, fixes


def _loads_open(text: str, open_end: bool) -> tuple[Any, tuple[str, ...], int]:
    """loads_almost_json, and how many brackets were left open where the text ended."""
    try:
        return orjson.loads(text), (), 0
    except orjson.JSONDecodeError:
        pass
    out: list[str] = []
    fixes: set[str] = set()
    stack: list[str] = []
    last = ""  # the previous token: "open", "value", ",", ":"
    i = 0
    while i < len(text):
        c = text[i]
        if c in _WS:
            out.append(c)
            i += 1
            continue
        if c in "\"'":
            i = _string(text, i, out, fixes)
            last = "value"
            continue
        if c in "-0123456789" and (m := _NUMBER.match(text, i)):
            out.append(m.group())
            i, last = m.end(), "value"
            continue
        if c.isalpha() or c == "_":
            m = _WORD.match(text, i)
            if m is None:  # a letter of another script: no literal, no JSON
                raise BrokenJSON(f"unexpected {c!r}")
            word = m.group()
            if word not in _LITERALS:
                raise BrokenJSON(f"bare word {word[:40]!r}")
            if word != _LITERALS[word]:
                fixes.add("Python literals")
            out.append(_LITERALS[word])
            i, last = i + len(word), "value"
            continue
        last = _punctuation(c, last, out, stack, fixes)
        i += 1
    if stack:
        if not open_end or last in (",", ":"):
            raise BrokenJSON("unclosed brackets")
        out.extend(reversed(stack))
        fixes.add("unclosed brackets")
    try:
        value = orjson.loads("".join(out))
    except orjson.JSONDecodeError as exc:
        raise BrokenJSON(f"not JSON even after fixes ({exc})") from None
    return value, tuple(sorted(fixes)), len(stack)


def _left_open(value: Any, unclosed: int) -> set[int] | None:
    """The ids of the objects and arrays that were still open where the text ended: the
    outermost, its last member, that one's last member and so on, `unclosed` deep. None
    when that path cannot be followed (a key given twice moves a value from the end)."""
    ids: set[int] = set()
    for _ in range(unclosed):
        if isinstance(value, dict) and value:
            ids.add(id(value))
            value = next(reversed(value.values()))
        elif isinstance(value, list) and value:
            ids.add(id(value))
            value = value[-1]
        elif isinstance(value, (dict, list)) and len(ids) == unclosed - 1:
            ids.add(id(value))  # the innermost, empty: "{" or "[" as the last character
        else:
            return None
    return ids


def _punctuation(c: str, last: str, out: list[str], stack: list[str], fixes: set[str]) -> str:
    if c in "{[":
        stack.append("}" if c == "{" else "]")
        out.append(c)
        return "open"
    if c in "}]":
        if not stack or stack.pop() != c:
            raise BrokenJSON(f"unmatched {c!r}")
        if last == ",":
            comma = max(i for i, s in enumerate(out) if s == ",")
            out[comma] = ""
            fixes.add("trailing commas")
        out.append(c)
        return "value"
    if c in ",:" and last == "value":
        out.append(c)
        return c
    raise BrokenJSON(f"unexpected {c!r}")


def _string(text: str, i: int, out: list[str], fixes: set[str]) -> int:
    """Append the string starting at text[i] as a JSON string; return the index after it."""
    quote = text[i]
    if quote == "'":
        fixes.add("single quotes")
    buf = ['"']
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\" and j + 1 < len(text):
            nxt = text[j + 1]
            buf.append("'" if quote == "'" and nxt == "'" else c + nxt)
            j += 2
            continue
        if c == quote:
            out.append("".join(buf) + '"')
            return j + 1
        if c == '"':
            buf.append('\\"')
        elif c < " ":
            buf.append(f"\\u{ord(c):04x}")
            fixes.add("raw control characters in strings")
        else:
            buf.append(c)
        j += 1
    raise BrokenJSON("cut inside a string")


# --- finding calls in text -----------------------------------------------------------------------


@dataclass
class _Piece:
    form: str  # BARE_JSON, FENCED_JSON or TOOL_CALL_TAGS
    start: int  # where its JSON object starts, counted from where the scan started
    end: int = -1  # just after the object's closing brace; -1 while it is open
    closed: bool = False  # the fence or tags around it are closed (a bare object: when it is)


class _Scanner:
    """Reads text from a line start, in as many pieces as it comes; `dead` once the text
    can no longer be a run of calls (so never alive again). Records where each call's
    JSON object lies."""

    def __init__(self) -> None:
        self.n = 0
        self.dead = False
        self.pieces: list[_Piece] = []
        self.state = "gap"
        self.literal = ""  # a fixed string being matched ("```", "<tool_call>", ...)
        self.matched = 0
        self.then = ""  # the state after the literal
        self.lang = ""
        self.depth = 0
        self.quote = ""
        self.escape = False
        self.first = False  # the next non-space character is the first inside the object

    def feed(self, text: str, start: int = 0) -> bool:
        """Read text[start:]; False once dead."""
        k = start
        while k < len(text) and not self.dead:
            if self.quote and not self.escape:  # the plain inside of a string, at once
                m = _STRING_SPECIAL[self.quote].search(text, k)
                j = m.start() if m else len(text)
                self.n, k = self.n + j - k, j
                if k == len(text):
                    break
            self._char(text[k])
            self.n, k = self.n + 1, k + 1
            self.dead = self.dead or self.n > HOLD_LIMIT
        self.dead = self.dead or self.n > HOLD_LIMIT
        return not self.dead

    def _char(self, c: str) -> None:
        state = self.state
        if state == "json":
            self._json(c)
        elif state == "literal":
            if c != self.literal[self.matched]:
                self.dead = True
                return
            self.matched += 1
            if self.matched == len(self.literal):
                self._after_literal()
        elif state == "lang":
            self._lang(c)
        elif c in _WS:
            pass
        elif state == "gap":
            self._gap(c)
        elif state == "before_object" and c == "{":
            self._open(self.then)
        elif state == "after_object" and c == self.then[0]:
            self._expect(self.then, "closed")
        else:
            self.dead = True

    def _gap(self, c: str) -> None:
        if c == "{":
            self._open(BARE_JSON)
        elif c == "`":
            self._expect(_FENCE, "lang")
        elif c == "<":
            self._expect(_TAG_OPEN, TOOL_CALL_TAGS)
        else:
            self.dead = True

    def _expect(self, literal: str, then: str) -> None:
        self.state, self.literal, self.matched, self.then = "literal", literal, 1, then

    def _after_literal(self) -> None:
        if self.then == "lang":
            self.state, self.lang = "lang", ""
        elif self.then == "closed":
            self.pieces[-1].closed = True
            self.state = "gap"
        else:
            self.state = "before_object"

    def _lang(self, c: str) -> None:
        """The fence's language tag, up to the end of its line (or a `{` right after it)."""
        if c not in "\n{":
            self.lang += c
            lang = self.lang.strip().casefold()
            self.dead = not any(known.startswith(lang) for known in _FENCE_LANGS)
        elif self.lang.strip().casefold() not in _FENCE_LANGS:
            self.dead = True
        elif c == "{":
            self._open(FENCED_JSON)
        else:
            self.state, self.then = "before_object", FENCED_JSON

    def _open(self, form: str) -> None:
        self.dead = len(self.pieces) == MAX_CALLS
        self.pieces.append(_Piece(form, self.n))
        self.state, self.depth, self.quote, self.escape, self.first = "json", 1, "", False, True

    def _json(self, c: str) -> None:
        if self.quote:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif c == self.quote:
                self.quote = ""
            return
        if self.first and c not in _WS:
            self.first = False
            if c not in "\"'":
                self.dead = True
                return
        if c in "\"'":
            self.quote = c
        elif c == "\\":  # outside a string no form of JSON has one: not a call (and reading stays linear)
            self.dead = True
        elif c in "{[":
            self.depth += 1
            self.dead = self.depth > MAX_DEPTH
        elif c in "}]":
            self.depth -= 1
            if self.depth == 0:
                self._close_object()

    def _close_object(self) -> None:
        piece = self.pieces[-1]
        piece.end = self.n + 1
        if piece.form == BARE_JSON:
            piece.closed, self.state = True, "gap"
        else:
            self.state = "after_object"
            self.then = _FENCE if piece.form == FENCED_JSON else _TAG_CLOSE

    def unfinished(self) -> str:
        """Why the text read so far does not end as a run of calls; "" when it does (the
        last call may be cut where the output ended)."""
        if self.state in ("gap", "json", "after_object"):
            return ""
        if self.state == "literal" and self.then == "closed":
            return ""
        return "text after the call"


def _calls_in(value: Any) -> list[tuple[str, Any, tuple[str, ...]]] | None:
    """The (name, arguments, how the shape was read) of each call a parsed object
    describes; None when it is not shaped like a call."""
    if not isinstance(value, dict):
        return None
    keys = set(value) - _EXTRA_KEYS
    if keys == {"tool_calls"} and isinstance(value["tool_calls"], list) and value["tool_calls"]:
        inner = [_calls_in(v) for v in value["tool_calls"]]
        if any(c is None for c in inner):
            return None
        return [(n, a, (*how, "tool_calls list")) for calls in inner for n, a, how in calls or ()]
    if keys == {"tool_call"}:
        return _calls_in(value["tool_call"])
    if keys == {"function"} and isinstance(value["function"], dict):
        calls = _calls_in(value["function"])
        return [(n, a, (*how, "function-call shape")) for n, a, how in calls] if calls else None
    names = [k for k in _NAME_KEYS if k in keys]
    args = [k for k in _ARG_KEYS if k in keys]
    if len(names) != 1 or len(args) != 1 or keys != {names[0], args[0]} or not isinstance(value[names[0]], str):
        return None
    return [(value[names[0]], value[args[0]], ())]


def _read(text: str, base: int, scan: _Scanner, toolbox: Toolbox, cut: bool = False) -> tuple[list[ToolCall], list[Repair]] | Repair | None:
    """The calls text[base:] holds, as the scan found them; a NOT_REPAIRED Repair for a
    near miss; None when it holds nothing shaped like a call. `cut`: the output limit
    ended the text, so a call whose arguments were still open there is a near miss: the
    rest of them was never written."""
    if not scan.pieces:
        return None
    calls: list[ToolCall] = []
    repairs: list[Repair] = []
    for piece in scan.pieces:
        end = len(text) if piece.end < 0 else base + piece.end
        try:
            value, fixes, unclosed = _loads_open(text[base + piece.start : end], piece.end < 0)
        except BrokenJSON as exc:
            if calls or _CALL_KEY.search(text, base + piece.start, end):
                return Repair(NOT_REPAIRED, "", (f"broken JSON: {exc}",))
            return None  # broken JSON that does not look like a call is no attempt
        shapes = _calls_in(value)
        if shapes is None:
            return Repair(NOT_REPAIRED, "", ("not a tool call",)) if calls else None
        if len(calls) + len(shapes) > MAX_CALLS:  # however they are written: data, not calls
            return None
        wrapper: tuple[str, ...] = ()
        if piece.form != BARE_JSON and not piece.closed:
            wrapper = (f"closing {_FENCE if piece.form == FENCED_JSON else _TAG_CLOSE} missing",)
        left_open = _left_open(value, unclosed) if cut and unclosed else set()
        for name, args, how in shapes:
            made = _call(name, args, toolbox)
            if isinstance(made, Repair):
                return made
            call, more = made
            if left_open is None or id(args) in left_open:
                return Repair(NOT_REPAIRED, call.name, ("cut by the output limit inside its arguments",))
            calls.append(call)
            repairs.append(Repair(piece.form, call.name, (*wrapper, *fixes, *how, *more)))
    if problem := scan.unfinished():
        return Repair(NOT_REPAIRED, calls[0].name, (problem,))
    return calls, repairs


def _call(name: str, args: Any, toolbox: Toolbox) -> tuple[ToolCall, tuple[str, ...]] | Repair:
    changes: tuple[str, ...] = ()
    if isinstance(args, str):
        try:
            args, fixes = loads_almost_json(args)
        except BrokenJSON as exc:
            return Repair(NOT_REPAIRED, "", (f"broken JSON arguments: {exc}",))
        changes = ("arguments as a JSON string", *fixes)
    resolved = toolbox.resolve(name)
    if resolved is None:
        return Repair(NOT_REPAIRED, "", (f"tool {name[:60]!r} is not offered",))
    tool, how = resolved
    if not isinstance(args, dict):
        return Repair(NOT_REPAIRED, tool, ("arguments are not an object",))
    if problem := toolbox.problem(tool, args):
        return Repair(NOT_REPAIRED, tool, (problem,))
    return ToolCall(tool, args), (*changes, how) if how else changes


# A call-shaped object: "{" and, first, any key of the shapes _calls_in reads (a call
# object may begin with its `type` or `id`, or its arguments, as well as its name).
_OPENER_KEYS = "|".join(("function", "tool_calls?", *_NAME_KEYS, *_ARG_KEYS, *sorted(_EXTRA_KEYS)))
_OPENER = re.compile(r"""\{\s*(["'])(?:""" + _OPENER_KEYS + r""")\1\s*:""")
_FENCE_LINE = 24  # characters of a line kept to tell a fence and its language
# A code fence's line, as Markdown reads one: a run of three or more backticks or tildes
# (after spaces), then its info string. One of backticks has no backtick after the run
# (that is inline code); the fence left open ends only at a run of its own character, as
# long or longer, with nothing after it.
_FENCE_RUN = re.compile(r"(`{3,}|~{3,})(.*)", re.DOTALL)
_OPENER_SPAN = 64  # a "{" this close to a piece's end may open an object with the next piece
_IN_OBJECT = re.compile(r"""[{}\[\]"']""")
_NOT_SPACE = re.compile(r"[^ \t\r\n]")


class _Strings:
    """Whether the text read so far ends inside a string of a call-shaped JSON object
    (from a "{" and a call's key, to its closing brace), wherever that object began:
    mid-line, or past HOLD_LIMIT. A line starting there is that string's inside (the
    content of a Write quoting a call, say), never a call of its own. Inside the object
    a quote begins a string only where a key or a value can begin (after "{", "[", ","
    or ":"), so an apostrophe in prose the object never closed opens none. It also
    follows code fences: a line inside a fence of another language is code, never a
    call (`inside` says whether either holds). Fed in order, in pieces of any size, with
    the same result."""

    __slots__ = ("depth", "quote", "escape", "last", "tail", "fence", "run", "line")

    def __init__(self) -> None:
        self.depth = 0
        self.quote = ""
        self.escape = False
        self.last = ""  # inside an object: its last character that is not a space
        self.tail = ""  # a "{" near the end of a piece, outside any object
        self.fence: str | None = None  # the language of the code fence left open, if one is
        self.run = ""  # that fence's run of backticks or tildes
        self.line = ""  # the beginning of the line being read (enough to tell a fence)

    def copy(self) -> _Strings:
        other = _Strings()
        other.depth, other.quote, other.escape, other.last, other.tail, other.fence, other.run, other.line = (
            self.depth, self.quote, self.escape, self.last, self.tail, self.fence, self.run, self.line)
        return other

    @property
    def inside(self) -> bool:
        """A line starting here is not a call of its own: it is inside a string of an
        object that began earlier, or inside a code fence of another language (code the
        model was writing, even where the fence was never closed)."""
        return bool(self.quote) or (self.fence is not None and self.fence not in _FENCE_LANGS)

    def _fences(self, text: str) -> None:
        """Follow the code fences: a fence's line (_FENCE_RUN) opens one, with its
        language, or closes the one open."""
        i = 0
        while True:
            nl = text.find("\n", i)
            if len(self.line) <= _FENCE_LINE:  # one more: a longer line says so
                self.line += text[i : (nl if nl >= 0 else len(text))][: _FENCE_LINE + 1 - len(self.line)]
            if nl < 0:
                return
            m = _FENCE_RUN.match(self.line.lstrip(" \t"))
            if m is not None:
                self._fence_line(m[1], m[2], whole=len(self.line) <= _FENCE_LINE)
            self.line, i = "", nl + 1

    def _fence_line(self, run: str, info: str, *, whole: bool) -> None:
        """A line that begins with a run of backticks or tildes (`info`: what follows it;
        `whole`: nothing of the line was left out)."""
        if self.fence is None:
            if not (run[0] == "`" and "`" in info):
                self.fence, self.run = info.strip().lower(), run
        elif run[0] == self.run[0] and len(run) >= len(self.run) and not info.strip() and whole:
            self.fence, self.run = None, ""

    def feed(self, text: str) -> None:
        self._fences(text)
        if self.tail:
            text, self.tail = self.tail + text, ""
        k, n = 0, len(text)
        while k < n:
            if self.escape:
                self.escape, k = False, k + 1
            elif self.quote:
                m = _STRING_SPECIAL[self.quote].search(text, k)
                if m is None:
                    return
                k = m.end()
                if m.group() == "\\":
                    self.escape = True
                else:
                    self.quote, self.last = "", m.group()
            elif self.depth:
                k = self._object(text, k)
            else:
                m = _OPENER.search(text, k)
                if m is None:
                    brace = text.rfind("{", k)
                    if brace >= 0 and n - brace <= _OPENER_SPAN:
                        self.tail = text[brace:]
                    return
                self.depth, self.last, k = 1, ":", m.end()

    def _object(self, text: str, k: int) -> int:
        """Read inside an object, outside its strings, from k; where reading stopped."""
        m = _IN_OBJECT.search(text, k)
        before = text[k : m.start() if m is not None else len(text)].rstrip(" \t\r\n")
        if before:
            self.last = before[-1]
        if m is None:
            return len(text)
        c = m.group()
        if c in "\"'":
            if self.last in "{[,:":
                self.quote = c
            self.last = c
        else:
            self.depth += 1 if c in "{[" else -1
            self.last = c
        return m.end()


def _line_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in re.finditer("\n", text))]


def split_text(text: str, toolbox: Toolbox, *, cut: bool = False, _before: _Strings | None = None) -> Split:
    """`text` read as prose followed by calls: the earliest line start from which the
    rest of the text is nothing but valid calls. No such line: all prose, with the first
    near miss as the attempt. `cut`: the output limit ended the text (a call it cut
    inside its arguments stays text: closing it would run what the model never wrote)."""
    attempt: Repair | None = None
    strings = _before.copy() if _before is not None else _Strings()  # `_before`: what came before text
    read = 0
    same_to = -1
    for start in _line_starts(text):
        strings.feed(text[read:start])
        read = start
        if start <= same_to or strings.inside:  # read already; or inside an earlier call's string
            continue
        # The line starts up to the first character that is not a space read the same
        # spaces and then the same text: one scan answers for them all.
        m = _NOT_SPACE.search(text, start)
        same_to = m.start() if m is not None else len(text)
        scan = _Scanner()
        if not scan.feed(text, start):
            continue
        found = _read(text, start, scan, toolbox, cut)
        if isinstance(found, tuple):
            return Split(text[:start], tuple(found[0]), tuple(found[1]))
        attempt = attempt or found
    return Split(text, (), (attempt,) if attempt else ())


class CallWatch:
    """One streamed text block: what may go out now, and what the rest becomes.

    Text goes out as it comes, except from a line start where a call could begin: that
    is held while it may still become one. Whatever `feed` has returned is prose for
    good; `end` reads the held rest exactly as split_text would read the whole block.
    """

    def __init__(self, toolbox: Toolbox):
        self.toolbox = toolbox
        self.held = ""  # from a line start, while the scan lives
        self.scan: _Scanner | None = _Scanner()  # None: in the middle of a prose line
        self.strings = _Strings()  # over the text let go so far

    def feed(self, piece: str) -> str:
        scanned = len(self.held)
        self.held += piece
        out: list[str] = []
        while self.held:
            upto = 0
            if self.scan is not None:
                if self.scan.feed(self.held, scanned):
                    break
                self.scan = None
                # The line starts up to the first character that is not a space would read
                # the same spaces and die on the same text: their lines go with this one.
                m = _NOT_SPACE.search(self.held)
                upto = m.start() if m is not None else len(self.held)
            nl = self.held.find("\n", upto)
            if nl < 0:
                out.append(self.held)
                self.strings.feed(self.held)
                self.held = ""
                break
            out.append(self.held[: nl + 1])
            self.strings.feed(self.held[: nl + 1])
            self.held = self.held[nl + 1 :]
            # A line inside a string of an object that began earlier is prose.
            self.scan, scanned = (None if self.strings.inside else _Scanner()), 0
        return "".join(out)

    def end(self, *, cut: bool = False) -> Split:
        held, self.held = self.held, ""
        return split_text(held, self.toolbox, cut=cut, _before=self.strings) if held.strip() else Split(held)
