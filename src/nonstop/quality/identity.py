"""Which model a backend serves: name, family, parameters, quantisation, the contexts
(trained, configured, the server's), a digest, and whether it can call tools. A score
belongs to a model, not to a backend's name: when the identity's `key` changes, the
old score is stale.

Sources, per server (a file's header is read by nonstop.backends.gguf):
    llama-server  /props (model_path, model_ftype, n_ctx) and /v1/models (meta: n_params,
                  n_ctx_train, size), the GGUF file's header when it is on this machine
    Ollama        /api/show (details, model_info, capabilities) and /api/tags (digest, size)
    LM Studio     /api/v0/models (arch, quantization, contexts, capabilities)
    vLLM, other   /v1/models (max_model_len)

A GGUF file's digest is a fingerprint, not a hash of every byte (models are gigabytes):
sha256 of its size, its first MiB (the header: metadata, template) and its last MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path, PurePath
from typing import Any

import aiohttp
import orjson

from nonstop.backends.base import read_capped
from nonstop.backends.discovery import probe_server
from nonstop.backends.gguf import GGUFError, GGUFHeader, read_gguf
from nonstop.config import LocalBackendConfig

PROBE_TIMEOUT = 3.0
FINGERPRINT_SPAN = 1 << 20

@dataclass(frozen=True)
class Available:
    """Another model the same server has (Ollama's pulled models, LM Studio's list)."""

    name: str
    size_bytes: int | None = None
    digest: str = ""
    quantisation: str = ""
    parameters: str = ""


@dataclass(frozen=True)
class ModelIdentity:
    backend: str
    server: str = ""  # "llamacpp", "ollama", "lmstudio", "vllm", "openai", "cloud", "file"; "" unknown
    name: str = ""
    family: str = ""
    parameters: str = ""
    quantisation: str = ""
    digest: str = ""
    file: str = ""
    size_bytes: int | None = None
    trained_context: int | None = None
    configured_context: int | None = None
    server_context: int | None = None
    tools: bool | None = None
    reachable: bool = True
    available: tuple[Available, ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        """What changes when the model does: the digest where there is one, else the
        name with its quantisation and size."""
        if self.digest:
            return self.digest
        return "|".join([self.name, self.quantisation, str(self.size_bytes or "")])

    @property
    def short_name(self) -> str:
        name = self.name
        if "/" in name or "\\" in name:
            name = PurePath(name.replace("\\", "/")).name
        name = name.removesuffix(".gguf")
        quant = self.quantisation.lower()
        for sep in (".", "-", "_"):
            if quant and name.lower().endswith(sep + quant):
                return name[: -len(quant) - 1]
        return name or "unknown model"

    def label(self) -> str:
        """"qwen3-coder-30b q4_k_m, 32k": the model as people name it."""
        parts = [self.short_name + (f" {self.quantisation.lower()}" if self.quantisation else "")]
        ctx = self.server_context or self.configured_context
        if ctx:
            parts.append(f"{round(ctx / 1024)}k")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any, backend: str = "") -> ModelIdentity:
        if not isinstance(doc, dict):
            return cls(backend)
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in doc.items() if k in known and k != "available"}
        kwargs.setdefault("backend", backend)
        avail = doc.get("available")
        items = [Available(**{k: v for k, v in a.items() if k in {f.name for f in fields(Available)}})
                 for a in avail if isinstance(a, dict) and isinstance(a.get("name"), str)] if isinstance(avail, list) else []
        return cls(**kwargs, available=tuple(items))


def count_label(n: int | None) -> str:
    """134515008 -> "135M", 30532122624 -> "30.5B"."""
    if not n:
        return ""
    if n >= 10**9:
        return f"{n / 10**9:.1f}B".replace(".0B", "B")
    return f"{round(n / 10**6)}M"


# --- a GGUF file -----------------------------------------------------------------------------


def _from_header(ident: ModelIdentity, header: GGUFHeader) -> ModelIdentity:
    meta = header.metadata
    template = meta.get("tokenizer.chat_template")
    ctx = header.arch("context_length")
    return replace(
        ident, family=ident.family or header.architecture,
        parameters=ident.parameters or str(meta.get("general.size_label") or "") or count_label(header.parameters),
        quantisation=ident.quantisation or header.quantisation,
        trained_context=ident.trained_context or (ctx if isinstance(ctx, int) and ctx > 0 else None),
        # A template that never mentions tools cannot render them.
        tools=ident.tools if ident.tools is not None else (("tools" in template) if isinstance(template, str) else None),
    )


def fingerprint(path: str | Path) -> str:
    """sha256 of the file's size, first MiB and last MiB: changes with the header (and
    the metadata in it) and the file's length, in a few milliseconds."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        h.update(struct.pack("<Q", size))
        h.update(fh.read(FINGERPRINT_SPAN))
        if size > 2 * FINGERPRINT_SPAN:
            fh.seek(size - FINGERPRINT_SPAN)
            h.update(fh.read(FINGERPRINT_SPAN))
    return "file-sha256:" + h.hexdigest()[:16]


def identify_file(backend: str, path: str | Path, *, configured_context: int | None = None) -> ModelIdentity:
    """A model known only by its GGUF file (the embedded server before it starts)."""
    p = Path(path)
    ident = ModelIdentity(backend, server="file", name=p.name, file=str(p), configured_context=configured_context,
                          reachable=False)
    return _with_file(ident, p)


def _with_file(ident: ModelIdentity, path: Path) -> ModelIdentity:
    """What the GGUF file adds: the fingerprint, family, size, quantisation, trained
    context and template; nothing when the file cannot be read here."""
    try:
        header = read_gguf(path)
        digest = fingerprint(path)
        size = path.stat().st_size
    except (OSError, GGUFError):
        return ident
    return replace(_from_header(ident, header), digest=digest, size_bytes=ident.size_bytes or size)


# --- a running server ------------------------------------------------------------------------------


async def _json(session: aiohttp.ClientSession, method: str, url: str, body: Any = None,
                headers: dict[str, str] | None = None, timeout: float = PROBE_TIMEOUT) -> Any:
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError, ValueError):
        async with session.request(method, url, data=orjson.dumps(body) if body is not None else None,
                                   headers={"accept": "application/json", **(headers or {})},
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status == 200:
                return orjson.loads(await read_capped(r))
    return None


async def identify(session: aiohttp.ClientSession, cfg: LocalBackendConfig, *, timeout: float = PROBE_TIMEOUT) -> ModelIdentity:
    """The model `cfg`'s server runs now, within `timeout` seconds in all (a server that
    stalls on one question is not waited for twice). Never raises: a server that does not
    answer gives an identity with `reachable` false and only what the config says."""
    base = cfg.url.rstrip("/").removesuffix("/v1")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    found = await probe_server(session, base, timeout, cfg.model)
    if found is None:
        return ModelIdentity(cfg.name, name=cfg.model, configured_context=cfg.context_window, reachable=False)
    ident = ModelIdentity(cfg.name, server=found.kind, name=cfg.model or found.model, configured_context=cfg.context_window,
                          server_context=found.context_window, tools=found.tools)
    timeout = deadline - loop.time()
    if timeout <= 0.05:  # what the probe learned is all there is time for
        return ident
    headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    if found.kind == "llamacpp":
        return await _llamacpp(session, base, ident, headers, timeout)
    if found.kind == "ollama":
        return await _ollama(session, base, ident, headers, timeout)
    if found.kind == "lmstudio":
        return await _lmstudio(session, base, ident, headers, timeout)
    models = await _json(session, "GET", base + "/v1/models", headers=headers, timeout=timeout)
    entry = _entry(models, ident.name)
    if entry:
        ident = replace(ident, trained_context=_pos(entry.get("max_model_len")) or ident.trained_context)
    return ident


def _entry(listing: Any, name: str, key: str = "id") -> dict[str, Any]:
    data = listing.get("data") if isinstance(listing, dict) else None
    items = [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
    return next((e for e in items if e.get(key) == name), items[0] if items else {})


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _pos(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


async def _llamacpp(session: aiohttp.ClientSession, base: str, ident: ModelIdentity, headers: dict[str, str],
                    timeout: float) -> ModelIdentity:
    props, models = await asyncio.gather(_json(session, "GET", base + "/props", headers=headers, timeout=timeout),
                                         _json(session, "GET", base + "/v1/models", headers=headers, timeout=timeout))
    props = _dict(props)
    entry = _entry(models, ident.name)
    meta = _dict(entry.get("meta"))
    path = str(props.get("model_path") or "")
    ident = replace(
        ident, name=path or ident.name or str(entry.get("id") or ""), file=path,
        quantisation=str(props.get("model_ftype") or meta.get("ftype") or ""),
        parameters=count_label(_pos(meta.get("n_params"))), size_bytes=_pos(meta.get("size")),
        trained_context=_pos(meta.get("n_ctx_train")),
    )
    if path and Path(path).is_file():
        ident = await asyncio.to_thread(_with_file, ident, Path(path))
    # A file on another machine: its path, quantisation and size make the key.
    return ident


async def _ollama(session: aiohttp.ClientSession, base: str, ident: ModelIdentity, headers: dict[str, str],
                  timeout: float) -> ModelIdentity:
    show, tags = await asyncio.gather(
        _json(session, "POST", base + "/api/show", {"model": ident.name}, headers=headers, timeout=timeout),
        _json(session, "GET", base + "/api/tags", headers=headers, timeout=timeout))
    show = _dict(show)
    details = _dict(show.get("details"))
    info = _dict(show.get("model_info"))
    arch = str(info.get("general.architecture") or details.get("family") or "")
    caps = show.get("capabilities")
    pulled = [m for m in (tags.get("models") if isinstance(tags, dict) else None) or [] if isinstance(m, dict)]
    mine = next((m for m in pulled if ident.name in (m.get("name"), m.get("model"))), {})
    mine_details = _dict(mine.get("details"))
    return replace(
        ident, family=arch, parameters=str(details.get("parameter_size") or count_label(_pos(info.get("general.parameter_count")))),
        quantisation=str(details.get("quantization_level") or mine_details.get("quantization_level") or ""),
        digest=str(mine.get("digest") or ""), size_bytes=_pos(mine.get("size")),
        trained_context=_pos(info.get(f"{arch}.context_length")) if arch else None,
        tools=("tools" in caps) if isinstance(caps, list) else ident.tools,
        available=tuple(_available_ollama(m) for m in pulled if m is not mine),
    )


def _available_ollama(m: dict[str, Any]) -> Available:
    d = _dict(m.get("details"))
    return Available(str(m.get("name") or m.get("model") or ""), _pos(m.get("size")), str(m.get("digest") or ""),
                     str(d.get("quantization_level") or ""), str(d.get("parameter_size") or ""))


async def _lmstudio(session: aiohttp.ClientSession, base: str, ident: ModelIdentity, headers: dict[str, str],
                    timeout: float) -> ModelIdentity:
    listing = await _json(session, "GET", base + "/api/v0/models", headers=headers, timeout=timeout)
    data = listing.get("data") if isinstance(listing, dict) else None
    entries = [e for e in data if isinstance(e, dict) and e.get("type", "llm") in ("llm", "vlm")] if isinstance(data, list) else []
    mine = next((e for e in entries if e.get("id") == ident.name), {})
    caps = mine.get("capabilities")
    return replace(
        ident, family=str(mine.get("arch") or ""), quantisation=str(mine.get("quantization") or ""),
        trained_context=_pos(mine.get("max_context_length")),
        server_context=_pos(mine.get("loaded_context_length")) or ident.server_context,
        tools=("tool_use" in caps) if isinstance(caps, list) else ident.tools,
        available=tuple(Available(str(e.get("id")), quantisation=str(e.get("quantization") or ""))
                        for e in entries if e is not mine and isinstance(e.get("id"), str)),
    )
