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

import functools
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


# --- ids as local servers are sent them ----------------------------------------------------------
#
# Mistral-family chat templates (Mistral 7B v0.3, Mixtral, Nemo, Ministral, Mistral Small)
# and mistral_common (vLLM's `--tokenizer-mode mistral`) refuse a conversation whose tool
# calls' ids are not nine letters and digits: "Tool call id was toolu_01… but must be a-z,
# A-Z, 0-9, with a length of 9". Every id of a Claude Code history (toolu_…, 30 characters)
# is such an id, so the first failover of a tool loop to one of those models would fail.
# Local servers are sent ids of that form instead, for every model: no template asks for
# anything else, and a shorter id is fewer tokens of a small window. The mapping is
# deterministic (a hash), so the history a server sees stays byte-stable from turn to turn
# for its prompt cache; the ids a local model makes in its replies are nonstop's own
# (local_tool_id), never these.

_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SERVER_ID_LENGTH = 9


@functools.lru_cache(maxsize=4096)
def _server_id(tool_id: str, attempt: int) -> str:
    seed = tool_id if not attempt else f"{tool_id}\x00{attempt}"
    n = int.from_bytes(hashlib.blake2b(seed.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    out = []
    for _ in range(SERVER_ID_LENGTH):
        n, r = divmod(n, 62)
        out.append(_ALNUM[r])
    return "".join(out)


def _is_server_id(tool_id: str) -> bool:
    return len(tool_id) == SERVER_ID_LENGTH and tool_id.isascii() and tool_id.isalnum()


class ServerToolIds:
    """The ids of one request's history as a local server is sent them: nine letters and
    digits, the same id for the same id (a tool call and its result still pair up), and
    two different ids never the same (a hash that meets another id's is taken again)."""

    __slots__ = ("_ids", "_taken")

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._taken: dict[str, str] = {}

    def __call__(self, tool_id: Any) -> Any:
        """`tool_id` as the server gets it (anything but a string is left as it is)."""
        if not isinstance(tool_id, str):
            return tool_id
        short = self._ids.get(tool_id)
        if short is not None:
            return short
        attempt = 0
        short = tool_id if _is_server_id(tool_id) else _server_id(tool_id, 0)
        while self._taken.setdefault(short, tool_id) != tool_id:
            attempt += 1
            short = _server_id(tool_id, attempt)
        self._ids[tool_id] = short
        return short
