"""Warming a local server: the one request that makes the next real request find its
model loaded. The policy (when, how often, which backend) is server/warmer.py's.

    Ollama        POST /api/generate {"model", "keep_alive"} with no prompt loads the model
                  (or renews its keep-alive) and answers once it is in memory. No
                  num_ctx is sent: nonstop's requests reach Ollama through /v1/messages or
                  /v1/chat/completions, which cannot set one, and Ollama reloads a model
                  whose options differ from the request's. Loaded with the options its
                  real requests have, the model is the one they find.
    llama-server  POST /completion {"prompt": "", "n_predict": 0}: wakes a server that
                  sleeps (--sleep-idle-seconds) and answers once the model is back. It
                  is a task on a slot, so it also restarts the server's idle clock
                  (/tokenize, /apply-template and count_tokens wake the model but do
                  not); and an empty prompt leaves the slot's cached prompt in place.
                  A server that refuses an empty prompt gets /tokenize, which at least
                  wakes it.
    embedded      EmbeddedServer.start(): starts the child if it was stopped (while it is
                  supervised, it returns at once).

Every function answers with a `Warmed` and never raises: a server that is down is a
failed warm-up, not an error for the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from nonstop.backends.base import read_capped

# A model can take minutes to load from a slow disk.
LOAD_TIMEOUT = 600.0
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Warmed:
    ok: bool
    seconds: float
    detail: str = ""


class Starter(Protocol):
    """What the warmer needs of the embedded server."""

    @property
    def healthy(self) -> bool: ...

    async def start(self) -> Any: ...


def keep_alive_value(seconds: float) -> str:
    """Ollama's keep_alive as a duration string, which every version reads the same way."""
    return f"{max(1, round(seconds))}s"


async def warm_ollama(session: aiohttp.ClientSession, base: str, model: str, *, keep_alive: float,
                      headers: dict[str, str] | None = None, timeout: float = LOAD_TIMEOUT) -> Warmed:
    """Load `model` into Ollama (or renew its keep-alive) and wait until it is in memory."""
    if not model:
        return Warmed(False, 0.0, "no model to load: set model in the [[local]] block")
    body = {"model": model, "keep_alive": keep_alive_value(keep_alive), "stream": False}
    return await _post(session, base + "/api/generate", body, headers, timeout, _ollama_error)


async def wake_llamacpp(session: aiohttp.ClientSession, base: str, *, headers: dict[str, str] | None = None,
                        timeout: float = LOAD_TIMEOUT) -> Warmed:
    """Wake a sleeping llama-server (or keep an awake one from falling asleep)."""
    touch = {"prompt": "", "n_predict": 0, "cache_prompt": True}
    done = await _post(session, base + "/completion", touch, headers, timeout, _llamacpp_error)
    if done.ok or not done.detail.startswith("HTTP 4"):
        return done
    return await _post(session, base + "/tokenize", {"content": "warm"}, headers, timeout, _llamacpp_error)


async def start_embedded(server: Starter) -> Warmed:
    started = time.monotonic()
    if server.healthy:
        return Warmed(True, 0.0)
    try:
        await server.start()
    except Exception as exc:  # EmbeddedUnavailable says why; anything else is a failed start too
        return Warmed(False, time.monotonic() - started, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    return Warmed(True, time.monotonic() - started)


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str] | None,
                timeout: float, error: Callable[[bytes], str]) -> Warmed:
    started = time.monotonic()
    h = {"content-type": "application/json", **(headers or {})}
    try:
        async with session.post(url, data=orjson.dumps(body), headers=h, timeout=aiohttp.ClientTimeout(
                total=timeout, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT)) as r:
            raw = await read_capped(r)
            seconds = time.monotonic() - started
            if r.status != 200:
                return Warmed(False, seconds, f"HTTP {r.status} from {url}: {error(raw)}")
            return Warmed(True, seconds)
    except TimeoutError:
        return Warmed(False, time.monotonic() - started, f"no answer from {url} within {timeout:g}s")
    except (aiohttp.ClientError, OSError) as exc:
        return Warmed(False, time.monotonic() - started, f"{type(exc).__name__} at {url}: {exc}"[:300])


def _message(raw: bytes) -> Any:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc.get("error") if isinstance(doc, dict) else None


def _ollama_error(raw: bytes) -> str:
    """Ollama says {"error": "model 'x' not found"}."""
    err = _message(raw)
    return str(err)[:200] if err else raw[:200].decode("utf-8", "replace")


def _llamacpp_error(raw: bytes) -> str:
    """llama-server says {"error": {"code", "message", "type"}}."""
    err = _message(raw)
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])[:200]
    return raw[:200].decode("utf-8", "replace")
