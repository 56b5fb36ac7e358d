"""Redact secrets from text that may reach a log, the request log, the dashboard or an
error message."""

from __future__ import annotations

import re

# Anthropic API keys and OAuth tokens, OpenAI-style keys, bearer tokens, and key-ish
# header or JSON fields.
_PATTERNS = [
    re.compile(r"(?<![A-Za-z0-9])sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9_\-\.=:+/]{8,}"),
    re.compile(r"(?i)((?:x-api-key|api[_-]?key|authorization|x-nonstop-token|token)[\"']?\s*[:=]\s*[\"']?)(?!\[redacted\])[^\s\"',;})\]]{6,}"),
]


def redact(text: str) -> str:
    for pat in _PATTERNS:
        if pat.groups:
            text = pat.sub(lambda m: m.group(1) + "[redacted]", text)
        else:
            text = pat.sub("[redacted]", text)
    return text
