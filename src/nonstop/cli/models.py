"""`nonstop models`: every local backend's model, as its server and its file describe it:
family, parameters, quantisation, the contexts (trained, configured, the server's real
one), digest, whether it can call tools, and its last eval score.

The backends are those `nonstop eval` would evaluate (configured, else a running
gateway's, else discovered), and when there is none, the embedded server's model file,
read without starting it.

Exit codes: 0 when a model was found, 1 when none was, 2 for a refusal (a gateway that
wants its token).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

from nonstop.cli.common import db_path
from nonstop.cli.eval import find_backends
from nonstop.cli.status import Refused
from nonstop.config import Config
from nonstop.quality.identity import ModelIdentity, identify, identify_file
from nonstop.quality.results import Score, latest_scores
from nonstop.quality.verdict import verdict_text

_SERVERS = {"llamacpp": "llama.cpp", "ollama": "Ollama", "lmstudio": "LM Studio", "vllm": "vLLM",
            "openai": "OpenAI-compatible server", "file": "model file", "": "not answering"}


async def collect(cfg: Config) -> list[tuple[str, ModelIdentity]]:
    """(where, identity) of each backend's model."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        found = await find_backends(cfg, session, start_embedded=False)
        idents = await asyncio.gather(*(identify(session, b) for b in found.configs))
    out = [(b.url, i) for b, i in zip(found.configs, idents, strict=True)]
    if not out and cfg.embedded.mode != "never":
        from nonstop.backends.llama_stack import find_bundled_model

        path = find_bundled_model(cfg.embedded.model_path)
        if path is not None:
            ident = await asyncio.to_thread(identify_file, "embedded", path,
                                            configured_context=cfg.embedded.context_window)
            out.append(("embedded (starts when needed)", ident))
    return out


# --- rendering (pure) -------------------------------------------------------------------------------


def _k(n: int | None) -> str:
    return f"{round(n / 1024)}k" if n else "?"


def _size(n: int | None) -> str:
    if not n:
        return ""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _tools(i: ModelIdentity) -> str:
    if i.tools is None:
        return "unknown"
    if i.tools:
        return "yes"
    return "no (its chat template or the server does not render tools)"


def render(found: list[tuple[str, ModelIdentity]], scores: dict[str, Score], now: float) -> str:
    if not found:
        return ("no local model found: configure a [[local]] server or start one nonstop can discover "
                "(`nonstop doctor` says how)")
    blocks = []
    for where, i in found:
        head = f"{i.backend}  {_SERVERS.get(i.server, i.server)} at {where}: {i.short_name}"
        facts = [i.family or "family unknown", f"{i.parameters} parameters" if i.parameters else "",
                 i.quantisation, _size(i.size_bytes)]
        lines = [head, "  " + " · ".join(f for f in facts if f)]
        ctx = f"  context: trained {_k(i.trained_context)} · configured {_k(i.configured_context)} · server {_k(i.server_context)}"
        if i.server_context and i.configured_context and i.configured_context > i.server_context:
            ctx += " (the server runs less than configured: nonstop plans with the server's)"
        lines.append(ctx)
        lines.append(f"  digest: {i.digest or 'none (the key is its name, quantisation and size)'}")
        lines.append(f"  tools: {_tools(i)}")
        lines.append(f"  eval: {verdict_text(i.backend, scores.get(i.backend), now)}")
        if i.available:
            others = ", ".join(f"{a.name}" + (f" ({_size(a.size_bytes)})" if a.size_bytes else "") for a in i.available[:8])
            lines.append(f"  also on this server: {others}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(cfg: Config, *, as_json: bool = False) -> int:
    try:
        found = asyncio.run(collect(cfg))
    except Refused as exc:
        print(f"nonstop: {exc}", file=sys.stderr)
        return 2
    current = {i.backend: i for _, i in found}
    scores = latest_scores(db_path(cfg.state_dir), current)
    if as_json:
        doc: list[dict[str, Any]] = [
            {"where": where, **i.to_dict(), "key": i.key,
             "eval": scores[i.backend].to_dict() if i.backend in scores else None}
            for where, i in found
        ]
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(render(found, scores, time.time()))
    return 0 if found else 1
