"""What a local server says about itself: which kind it is, the window it really has,
whether it can call tools or read images, and how busy it is right now.

    llama-server  /props (per-slot n_ctx, total_slots, is_sleeping, modalities,
                  chat_template_caps) and /slots (is_processing per slot)
    Ollama        /api/ps (loaded models and the context length allocated) and /api/show
    vLLM          /v1/models (max_model_len) and /metrics (requests running and waiting)
    LM Studio     /api/v0/models (loaded context length, state)

`identify()` runs the discovery probe against a configured backend's URL (at start-up and
now and then, so a swapped model is noticed); `read_load()` is the cheap, frequent
reading. Neither raises: a server that does not answer yields an empty report.
"""

from __future__ import annotations

import math
import re
from typing import Any

import aiohttp
import orjson

from nonstop.backends.base import positive_int, read_capped
from nonstop.backends.discovery import DiscoveredServer, probe_server, same_model
from nonstop.routing.backend_state import ServerReport

LOAD_TIMEOUT = 2.0
# The kinds whose load (or loaded state) can be read cheaply and often.
LOAD_KINDS = frozenset({"llamacpp", "vllm", "ollama"})
_METRIC = re.compile(rb"^(vllm:num_requests_(?:running|waiting))(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.M)


def report_from(d: DiscoveredServer) -> ServerReport:
    """What the server says of itself (a window guessed for it is not said)."""
    return ServerReport(kind=d.kind, context_window=None if d.window_guessed else d.context_window,
                        tools=d.tools, model=d.model, trained_context=d.trained_context)


async def identify(session: aiohttp.ClientSession, url: str, timeout: float = 3.0, model: str = "") -> ServerReport | None:
    """What serves `url`; `model`: the one the backend is configured with."""
    found = await probe_server(session, url, timeout, model)
    return report_from(found) if found is not None else None


async def _get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=LOAD_TIMEOUT)) as r:
            if r.status != 200:
                return None
            return orjson.loads(await read_capped(r))
    except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError):
        return None


async def _get_text(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> bytes | None:
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=LOAD_TIMEOUT)) as r:
            return await read_capped(r) if r.status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def read_load(session: aiohttp.ClientSession, base: str, kind: str, headers: dict[str, str],
                    known: ServerReport) -> ServerReport:
    """A fresh reading for a server of `kind`, starting from what identify() learned."""
    r = ServerReport(kind=kind, context_window=known.context_window, tools=known.tools, model=known.model,
                     images=known.images, slots=known.slots, trained_context=known.trained_context)
    if kind == "llamacpp":
        await _llamacpp(session, base, headers, r)
    elif kind == "vllm":
        await _vllm(session, base, headers, r)
    elif kind == "ollama":
        await _ollama(session, base, headers, r)
    return r


async def _llamacpp(session: aiohttp.ClientSession, base: str, headers: dict[str, str], r: ServerReport) -> None:
    props = await _get_json(session, base + "/props", headers)
    if not isinstance(props, dict):
        return
    settings = props.get("default_generation_settings")
    n_ctx = positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None
    if n_ctx:
        r.context_window = n_ctx
    slots = positive_int(props.get("total_slots"))
    if slots:
        r.slots = slots
    if isinstance(props.get("is_sleeping"), bool):
        r.sleeping = props["is_sleeping"]
    modalities = props.get("modalities")
    if isinstance(modalities, dict) and isinstance(modalities.get("vision"), bool):
        r.images = modalities["vision"]
    if props.get("endpoint_slots") is False or r.sleeping:
        return  # /slots would wake a sleeping server (and restart its idle clock)
    listed = await _get_json(session, base + "/slots", headers)
    if isinstance(listed, list):
        r.slots = len(listed) or r.slots
        r.busy_slots = sum(1 for s in listed if isinstance(s, dict) and s.get("is_processing"))


async def _vllm(session: aiohttp.ClientSession, base: str, headers: dict[str, str], r: ServerReport) -> None:
    text = await _get_text(session, base + "/metrics", headers)
    if not text:
        return
    totals: dict[bytes, float] = {}
    for name, value in _METRIC.findall(text):
        try:
            v = float(value)
        except ValueError:
            continue
        if math.isfinite(v) and v >= 0:  # a count; anything else is a broken line
            totals[name] = totals.get(name, 0.0) + v
    if b"vllm:num_requests_running" in totals:
        r.busy_slots = int(totals[b"vllm:num_requests_running"])
        r.waiting = int(totals.get(b"vllm:num_requests_waiting", 0))
        # vLLM batches many requests; what matters is whether requests queue.
        r.slots = max(r.busy_slots + 1, r.slots or 0) if not r.waiting else r.busy_slots


async def _ollama(session: aiohttp.ClientSession, base: str, headers: dict[str, str], r: ServerReport) -> None:
    ps = await _get_json(session, base + "/api/ps", headers)
    if not isinstance(ps, dict):
        return
    models = ps.get("models")
    loaded = [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
    mine = [m for m in loaded if not r.model or same_model(r.model, m.get("name")) or same_model(r.model, m.get("model"))]
    r.loaded = bool(mine)
    ctx = positive_int(mine[0].get("context_length")) if mine else None
    if ctx:
        # Ollama cuts a larger context down to the trained one (see discovery).
        r.context_window = min(ctx, r.trained_context) if r.trained_context else ctx
