"""Redact secrets from text that may reach a log, the request log, the dashboard or an
error message."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# Anthropic API keys and OAuth tokens, OpenAI-style keys, bearer and basic credentials,
# and key-ish header or JSON fields (_PATTERNS, below). Each pattern needs one of the words
# may_hold_secret() looks for: redact() skips text with none of them, so a new pattern
# needs one too.

# How text spells "is" between a field's name and its value: `name: v`, `name=v`,
# `"name": "v"`, JSON escaped (`\"name\": \"v\"`), a pair (`["name", "v"]`, `(b'name', b'v')`).
_IS = r"(?:\\?[\"']\s*[:=,]|\s*[:=])\s*b?\\?[\"']?"
_NAMES = r"(?:x-api-key|api[_-]?key|authorization|x-nonstop-token|token)"
_PATTERNS = [
    # A key anywhere, also right after an escape (`\n`, `%3D`) in JSON or a URL.
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?:(?<![A-Za-z0-9])|(?<=\\[nrtbf])|(?<=%[0-9A-Fa-f]{2}))sk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9_\-\.=:+/]{8,}"),
    re.compile(r"(?i)(authorization" + _IS + r"\s*(?:basic|digest)\s+)[A-Za-z0-9_\-\.=:+/]{4,}"),
    re.compile(r"(?i)(" + _NAMES + _IS + r")(?!\[redacted\])[^\s\"'\\,;})\]]{6,}"),
]


# Every pattern needs one of the words may_hold_secret() looks for (the keys' "sk-" as
# written, the rest in any case), so text without any of them has nothing to redact: most
# text, such as a log line, is let through after one look instead of five searches. The
# regex engine's ignore-case also matches "ı" and "İ" to "i", and "ſ" to "s", which
# lower() keeps apart: they are folded first.
_FOLD = str.maketrans({"ı": "i", "İ": "i", "ſ": "s"})


def may_hold_secret(text: str) -> bool:
    """Whether `text` holds any word a secret comes with (False: redact() leaves it as it is)."""
    if "sk-" in text:
        return True
    low = text.lower() if text.isascii() else text.translate(_FOLD).lower()
    return "key" in low or "token" in low or "bearer" in low or "authorization" in low


def redact(text: str) -> str:
    if not may_hold_secret(text):
        return text
    for pat in _PATTERNS:
        if pat.groups:
            text = pat.sub(lambda m: m.group(1) + "[redacted]", text)
        else:
            text = pat.sub("[redacted]", text)
    return text


HIDDEN = "<hidden>"


def hidden_url(url: str) -> str:
    """`url` with its password and its query hidden (a webhook's token often rides there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return HIDDEN if "@" in url or "?" in url else url
    netloc = parts.netloc
    if parts.password is not None or parts.username is not None:
        user = parts.username or ""
        shown_host = f"[{host}]" if ":" in host else host
        netloc = f"{user}:{HIDDEN}@{shown_host}" if parts.password is not None else f"{HIDDEN}@{shown_host}"
        if port is not None:
            netloc += f":{port}"
    query = HIDDEN if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
