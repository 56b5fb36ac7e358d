"""Tool ids the Anthropic API accepts: ^[a-zA-Z0-9_-]+$ (docs/wire.md §5).

Local servers and OpenAI clients make up their own ids (`call:0`, `chatcmpl-tool.9f`,
`fc 42`), and a conversation carries them back on every later turn. A tool_use and the
tool_result that answers it must still pair up, and the history should stay
byte-stable from turn to turn, so the mapping is deterministic: the same id always
gives the same valid id.

A valid id is kept as it is. Any other id keeps its valid characters, for readability,
and gets a hash of the whole id, so ids that differ only in invalid characters stay
different ("a.b" and "a:b" do not both become "a_b"). Two ids can only meet if the
hashes collide, or if a client itself picks an id equal to another id's rewritten form.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

_is_valid = re.compile(r"[a-zA-Z0-9_-]+").fullmatch
_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def new_tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def valid_tool_id(tool_id: str) -> str:
    """`tool_id` if the API accepts it, else its deterministic valid form (at most 61
    characters). For ids in a conversation's history: the empty id too maps the same
    way every time, so a tool_use and its tool_result still pair up."""
    if _is_valid(tool_id):
        return tool_id
    digest = hashlib.sha256(tool_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    base = _BAD_CHARS.sub("_", tool_id)[:48]
    return f"{base}_{digest}" if base else f"toolu_{digest}"


def reply_tool_id(tool_id: Any) -> str:
    """The id for a tool call in a reply a local server made: as valid_tool_id, but a
    call without an id (missing, empty or not a string) gets a fresh one, so that two
    such calls in one reply stay apart."""
    if not isinstance(tool_id, str) or not tool_id:
        return new_tool_id()
    return valid_tool_id(tool_id)


# --- ids that mark a local model's tool calls ----------------------------------------------------
#
# A tool call a local model made gets an id that says so: `toolu_nsl<tag>_<random>`, where
# <tag> is a short hash of the backend's name. The client sends it back with the result,
# so nonstop recognises a tool loop a local model started from the history alone, across
# restarts and instances (the tag depends only on the backend's configured name).

LOCAL_PREFIX = "toolu_nsl"
TAG_LENGTH = 6


def backend_tag(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:TAG_LENGTH]


def local_tool_id(tag: str) -> str:
    return f"{LOCAL_PREFIX}{tag}_{secrets.token_hex(10)}"


def local_tag_of(tool_id: Any) -> str:
    """The backend tag of a locally made tool id; "" for any other id."""
    if not isinstance(tool_id, str) or not tool_id.startswith(LOCAL_PREFIX):
        return ""
    tag = tool_id[len(LOCAL_PREFIX) : len(LOCAL_PREFIX) + TAG_LENGTH]
    return tag if len(tag) == TAG_LENGTH and tool_id[len(LOCAL_PREFIX) + TAG_LENGTH : len(LOCAL_PREFIX) + TAG_LENGTH + 1] == "_" else ""
