"""wire/claude_prompt: the parts of Claude Code's prompt text."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.wire.claude_prompt import (
    drop_attribution,
    drop_examples,
    drop_reminders,
    drop_total_tokens,
    empty_reminder,
    env_elements,
    first_paragraph,
    is_pinned,
    sections,
    shorten,
)

ENV = "<system-reminder>\n# Environment\n - Primary working directory: /p\n</system-reminder>"
CLAUDE_MD = "<system-reminder>\nContents of /p/CLAUDE.md (project instructions):\n\nuse tabs\n</system-reminder>"


@pytest.mark.parametrize(("text", "pinned"), [
    (ENV, True),
    (CLAUDE_MD, True),
    ("<system-reminder>\nContents of /home/u/.claude/rules/style.md:\n\nx\n</system-reminder>", True),
    ("As you answer, use this context:\n# claudeMd\nrules", True),
    ("Today's date is 2026-11-29.", True),
    ("<env>\nWorking directory: /p\n</env>", True),
    ("<system-reminder>\nThe following skills are available: a, b\n</system-reminder>", False),
    ("Anything already documented in CLAUDE.md files.", False),
])
def test_pinned_parts(text: str, pinned: bool) -> None:
    assert is_pinned(text) is pinned


# What "a quoted instruction file" means: the regex is_pinned once ran, kept as the oracle.
_QUOTED_FILE = re.compile(r"Contents of [^\n]*\.md")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["Contents of ", ".md", "\n", "x", " ", "CLAUDE", ".m", "d"]), max_size=30))
def test_a_quoted_file_is_found_as_the_regex_finds_it(parts: list[str]) -> None:
    text = "".join(parts)
    assert is_pinned(text) is bool(_QUOTED_FILE.search(text) or "Today's date is" in text)


def test_a_long_line_of_quotes_is_read_once() -> None:
    text = "Contents of " * 20_000  # 240 KB on one line, no file named
    t0 = time.perf_counter()
    assert not is_pinned(text)
    assert is_pinned(text + "/p/CLAUDE.md")
    assert time.perf_counter() - t0 < 0.2  # the regex took seconds


def test_an_env_element_alone_pins_only_when_asked() -> None:
    text = "Long policy.\n<env>\nPlatform: linux\n</env>\n"
    assert is_pinned(text) and not is_pinned(text, env_element=False)
    assert env_elements(text) == ["<env>\nPlatform: linux\n</env>"]


def test_the_attribution_line_goes_and_nothing_else() -> None:
    line = "x-anthropic-billing-header: cc_version=2.1.332.93d; cc_entrypoint=cli; cch=00a1f;"
    assert drop_attribution(line) == ""
    assert drop_attribution(line + "\nYou are Claude.") == "You are Claude."
    assert drop_attribution("You are Claude.\n" + line) == "You are Claude.\n" + line


def test_total_tokens_goes() -> None:
    assert drop_total_tokens("a\n<total_tokens>15000000 tokens left</total_tokens>\nb") == "a\nb"
    assert drop_total_tokens("a <total_tokens>Infinite tokens left</total_tokens>") == "a "
    assert drop_total_tokens("no budget here") == "no budget here"


def test_examples_go() -> None:
    text = "Use it.\n<example>\nuser: hi\n</example>\n  <examples>\n<example>x</example>\n</examples>\nDone.\n"
    assert drop_examples(text) == "Use it.\nDone.\n"


def test_reminders_go_unless_kept() -> None:
    text = f"{ENV}\nhello <system-reminder>long one</system-reminder> world"
    assert drop_reminders(text, lambda r: "Environment" in r) == f"{ENV}\nhello  world"
    assert drop_reminders(text, lambda r: True) == text


def test_a_reminder_of_only_total_tokens_goes_entirely() -> None:
    text = "<system-reminder>\n<total_tokens>5 tokens left</total_tokens>\n</system-reminder>\nok"
    assert drop_reminders(text, lambda r: True) == "ok"
    assert empty_reminder("<system-reminder>\n</system-reminder>\n")


def test_sections_split_at_the_top_level_outside_code_fences() -> None:
    text = "Intro.\n\n## One\nbody\n### Sub\nmore\n```bash\n## not a heading\n```\n## Two\nend\n"
    parts = sections(text)
    assert parts == ["Intro.\n\n", "## One\nbody\n### Sub\nmore\n```bash\n## not a heading\n```\n", "## Two\nend\n"]
    assert "".join(parts) == text
    assert sections("no headings") == ["no headings"]


def test_first_paragraph() -> None:
    assert first_paragraph("\nYou are an agent.\nUse tools.\n\nIMPORTANT: more.") == "\nYou are an agent.\nUse tools.\n\n"
    assert first_paragraph("one line") == "one line"


@pytest.mark.parametrize(("text", "cap", "expected"), [
    ("Short.", 50, "Short."),
    ("First sentence here. Second sentence is longer than that.", 30, "First sentence here."),
    ("Para one is here.\n\nPara two.", 25, "Para one is here."),
    ("averyveryverylongwordwithoutspaces and more", 20, "averyveryverylongwo…"),
    ("words without any sentence end at all here", 20, "words without any…"),
])
def test_shorten(text: str, cap: int, expected: str) -> None:
    out = shorten(text, cap)
    assert out == expected and len(out) <= cap
    assert shorten(text, cap) == out


def test_a_quoted_reminder_tag_does_not_swallow_text() -> None:
    text = 'The file says: if "<system-reminder>" in text:\n' + "code\n" * 50 + ENV + "\n"
    assert drop_reminders(text, lambda r: False) == 'The file says: if "<system-reminder>" in text:\n' + "code\n" * 50
