"""What Claude Code's prompt text is made of, as far as a local model's window cares.

Claude Code 2.1 writes (docs/wire.md §6, and `tests/support/capture.py` to see it live):
- system: the attribution line (`x-anthropic-billing-header: ...`), an identity line, and
  one long Markdown text: a preamble, then `# Heading` sections of policy, with
  `<example>` / `<examples>` elements inside and a `<total_tokens>` line at the end;
- the first user turn: one `<system-reminder>` block each for the environment (working
  directory, platform), the model, the deferred tools, the agent types, the skills, the
  user's instructions (`Contents of .../CLAUDE.md ...`), the date and the commit
  attribution, then the prompt itself; later turns and tool results carry more reminders.
Older versions put an `<env>` element in the system prompt; it is treated the same way.

Pure functions of strings: find these parts, and cut text at a sentence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

ATTRIBUTION_PREFIX = "x-anthropic-billing-header:"

# One element: no other reminder tag inside, so that a tag quoted in prose or in a file
# that was read never swallows the text up to a later reminder.
_REMINDER = re.compile(r"<system-reminder>(?:[^<]|<(?!/?system-reminder>))*</system-reminder>\n?")
# An `<example>` or `<examples>` opening tag (its attributes bounded, so that a tag left
# open cannot make the search read to the end of the text from every later "<example").
_EXAMPLE_OPEN = re.compile(r"<(examples?)(?:\s[^>]{0,200})?>")
_TOTAL_TOKENS = re.compile(r"<total_tokens>[^<]{0,40}</total_tokens>\n?")
_HEADING = re.compile(r"(#{1,6}) \S")
_FENCE = "```"
# The parts a local model must keep whatever the window: where it runs, and what the
# user told it (CLAUDE.md, rules and memory files are quoted as "Contents of <path>.md").
# Plain substring tests first: one regex with these alternatives costs milliseconds on
# a 28 KB system prompt.
_PINNED_MARKS = ("orking directory:", "# claudeMd", "Codebase and user instructions", "Today's date is")
_QUOTED = "Contents of "


def is_pinned(text: str, *, env_element: bool = True) -> bool:
    """True for the environment, the user's own instructions and the date. With
    `env_element` False, an `<env>` element alone does not pin `text` (the caller keeps
    the element and lets the rest go)."""
    if "<env>" in text:
        if env_element:
            return True
        text = "".join(text[a:b] for a, b in _gaps(text, _env_spans(text)))
    if any(mark in text for mark in _PINNED_MARKS):
        return True
    return _quotes_a_file(text)


def _quotes_a_file(text: str) -> bool:
    """Whether a line says "Contents of ..." and names a .md file after it. One pass: a
    regex tried at every "Contents of " read to the end of its line each time, which on
    one long line of them is quadratic (half a second for 72 KB)."""
    at = text.find(_QUOTED)
    while at != -1:
        end = text.find("\n", at)
        if end == -1:
            end = len(text)
        if text.find(".md", at + len(_QUOTED), end) != -1:
            return True
        at = text.find(_QUOTED, end)
    return False


def environment_essentials(section: str, cap: int) -> str:
    """A pinned environment section with only its working-directory paragraph and its
    paragraphs of at most `cap` characters: Claude Code 2.1 also lists its agent types
    and skills there, which a small window cannot hold. A section that quotes the user's
    instructions is returned whole."""
    if "orking directory:" not in section or "Contents of " in section or "claudeMd" in section:
        return section
    return "\n\n".join(p for p in section.split("\n\n") if len(p) <= cap or "orking directory:" in p)


def drop_attribution(text: str) -> str:
    """`text` without its attribution line, whose fields (cch, cc_version's suffix,
    cc_prompt_id ...) change from request to request."""
    if not text.startswith(ATTRIBUTION_PREFIX):
        return text
    _, _, rest = text.partition("\n")
    return rest


def drop_total_tokens(text: str) -> str:
    """`text` without `<total_tokens>N tokens left</total_tokens>`, the cloud budget that
    counts down turn by turn and means nothing to a local model."""
    return _TOTAL_TOKENS.sub("", text) if "<total_tokens>" in text else text


def drop_examples(text: str) -> str:
    """`text` without its `<example>` and `<examples>` elements (and their indentation)."""
    if "<example" not in text:
        return text
    parts = []
    at = 0
    for start, end in _example_spans(text):
        while start > at and text[start - 1] in " \t":
            start -= 1
        parts.append(text[at:start])
        at = end
    parts.append(text[at:])
    return "".join(parts)


def _example_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where each `<example>` / `<examples>` element is, with the spaces and the newline
    after it, in one pass: an element with no closing tag ahead is not one, and neither
    is any later one of the same name (the closing tag is looked for once)."""
    at, unclosed = 0, set()
    while (m := _EXAMPLE_OPEN.search(text, at)) is not None:
        name = m.group(1)
        end = -1 if name in unclosed else text.find(f"</{name}>", m.end())
        if end < 0:
            unclosed.add(name)
            at = m.start() + 1
            continue
        end += len(name) + 3
        while end < len(text) and text[end] in " \t":
            end += 1
        if end < len(text) and text[end] == "\n":
            end += 1
        yield m.start(), end
        at = end


def _env_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where each `<env>...</env>` element is, in one pass: an opening tag with no closing
    tag ahead ends the search (no later one has one either)."""
    at = 0
    while (start := text.find("<env>", at)) >= 0:
        end = text.find("</env>", start + 5)
        if end < 0:
            return
        at = end + 6
        yield start, at


def _gaps(text: str, spans: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """The stretches of `text` between `spans`."""
    at = 0
    for start, end in spans:
        yield at, start
        at = end
    yield at, len(text)


def drop_reminders(text: str, keep: Callable[[str], bool]) -> str:
    """`text` without the `<system-reminder>` elements `keep` refuses (it gets each
    element's full text). `<total_tokens>` goes too, inside a kept reminder or not."""
    def one(m: re.Match[str]) -> str:
        element = drop_total_tokens(m.group(0))
        return element if not empty_reminder(element) and keep(element) else ""

    if "<system-reminder>" in text:
        text = _REMINDER.sub(one, text)
    return drop_total_tokens(text)


def empty_reminder(text: str) -> bool:
    """True when nothing but an empty reminder shell is left."""
    return not text.replace("<system-reminder>", "").replace("</system-reminder>", "").strip()


def sections(text: str) -> list[str]:
    """`text` split before each top-level Markdown heading (the shallowest level in it,
    outside code fences): the preamble first (possibly empty), then one string per
    section with its subsections. Joined back they give `text`."""
    lines = text.splitlines(keepends=True)
    headings: list[tuple[int, int]] = []  # (line index, level)
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(_FENCE):
            fenced = not fenced
            continue
        m = _HEADING.match(line)
        if m and not fenced:
            headings.append((i, len(m.group(1))))
    if not headings:
        return [text]
    top = min(level for _, level in headings)
    starts = [i for i, level in headings if level == top]
    bounds = [0, *starts, len(lines)]
    return ["".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def first_paragraph(text: str) -> str:
    """The first non-empty paragraph of `text`, with the text's leading newlines and the
    blank line after it kept."""
    stripped = text.lstrip("\n")
    lead = text[: len(text) - len(stripped)]
    para, sep, _ = stripped.partition("\n\n")
    return lead + para + sep


def env_elements(text: str) -> list[str]:
    """The `<env>...</env>` elements in `text`."""
    return [text[a:b] for a, b in _env_spans(text)]


def shorten(text: str, cap: int) -> str:
    """`text` cut to at most `cap` characters at the last paragraph or sentence end that
    keeps at least a third of it, else at a word with an ellipsis. Same input, same
    output."""
    if len(text) <= cap:
        return text
    head = text[:cap]
    for end in ("\n\n", ".\n", ". "):
        at = head.rfind(end)
        if at >= cap // 3:
            return head[: at + (1 if end != "\n\n" else 0)].rstrip()
    at = head[: cap - 1].rfind(" ")
    cut = head[: at if at > 0 else cap - 1].rstrip()
    return cut + "…"
