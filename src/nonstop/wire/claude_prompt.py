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
from collections.abc import Callable

ATTRIBUTION_PREFIX = "x-anthropic-billing-header:"

# One element: no other reminder tag inside, so that a tag quoted in prose or in a file
# that was read never swallows the text up to a later reminder.
_REMINDER = re.compile(r"<system-reminder>(?:[^<]|<(?!/?system-reminder>))*</system-reminder>\n?")
_EXAMPLE = re.compile(r"<(examples?)(?:\s[^>]*)?>.*?</\1>[ \t]*\n?", re.S)
_TOTAL_TOKENS = re.compile(r"<total_tokens>[^<]{0,40}</total_tokens>\n?")
_ENV = re.compile(r"<env>.*?</env>", re.S)
_HEADING = re.compile(r"(#{1,6}) \S")
_FENCE = "```"
# The parts a local model must keep whatever the window: where it runs, and what the
# user told it (CLAUDE.md, rules and memory files are quoted as "Contents of <path>.md").
# Plain substring tests first: one regex with these alternatives costs milliseconds on
# a 28 KB system prompt.
_PINNED_MARKS = ("orking directory:", "# claudeMd", "Codebase and user instructions", "Today's date is")
_QUOTED_FILE = re.compile(r"Contents of [^\n]*\.md")


def is_pinned(text: str, *, env_element: bool = True) -> bool:
    """True for the environment, the user's own instructions and the date. With
    `env_element` False, an `<env>` element alone does not pin `text` (the caller keeps
    the element and lets the rest go)."""
    if "<env>" in text:
        if env_element:
            return True
        text = _ENV.sub("", text)
    if any(mark in text for mark in _PINNED_MARKS):
        return True
    return "Contents of " in text and _QUOTED_FILE.search(text) is not None


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
    for m in _EXAMPLE.finditer(text):
        start = m.start()
        while start > at and text[start - 1] in " \t":
            start -= 1
        parts.append(text[at:start])
        at = m.end()
    parts.append(text[at:])
    return "".join(parts)


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
    return _ENV.findall(text)


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
