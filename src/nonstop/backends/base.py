"""What every backend attempt gives back: a reply to commit, or a reason to move on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from nonstop.routing.classify import Verdict

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})

# nonstop's own headers never leave it.
OWN_REQUEST_HEADERS = frozenset({"x-nonstop-token"})


@dataclass
class Usage:
    """Filled in while a reply streams; read when the request is logged."""

    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str = ""
    error: str = ""
    complete: bool = False
    note: str = ""


@dataclass
class Reply:
    """A response ready to commit. `body` yields Anthropic-format bytes: SSE for streams,
    JSON otherwise. Nothing has been sent to the client yet."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[bytes]
    backend: str
    stream: bool
    usage: Usage = field(default_factory=Usage)
    close: Callable[[], Any] | None = None
    # For the request log: a failure observed on the way (e.g. a rejected unified status).
    note: str = ""


@dataclass(frozen=True)
class TooLong:
    """The request cannot fit this backend's window with room for output."""

    backend: str
    tokens: int
    window: int


Attempt = Reply | Verdict | TooLong


async def single(data: bytes) -> AsyncIterator[bytes]:
    """A body that is one chunk."""
    yield data
