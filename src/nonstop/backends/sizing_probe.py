"""What sizing reads: this machine's memory and GPUs, and the shape of the model a local
server runs (backends/sizing.py does the arithmetic). Nothing here raises: what cannot
be read comes back as None or an empty list.

    RAM           /proc/meminfo (MemTotal, MemAvailable), else os.sysconf
    NVIDIA GPUs   nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits
    Apple         sysctl -n hw.memsize; on Apple silicon (hw.optional.arm64) it is
                  unified memory, which the GPU shares
    llama-server  /props: model_path (its GGUF header, when the file is on this machine)
                  and total_slots; else /v1/models `meta` (n_params, size, n_ctx_train)
    Ollama        /api/show: `model_info` (the GGUF keys), `details` (parameter_size,
                  quantization_level); /api/tags: the model's size
    a GGUF file   its header and size (the embedded server's model)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from nonstop.backends.base import read_capped
from nonstop.backends.gguf import GGUFError, read_gguf
from nonstop.backends.sizing import (
    Device,
    ModelShape,
    devices,
    parameters_from_label,
    parse_meminfo,
    parse_nvidia_smi,
    shape_from_metadata,
)

TIMEOUT = 3.0
Run = Callable[[list[str]], str | None]


def run_command(argv: list[str]) -> str | None:
    """A command's output, or None if it is missing, fails or hangs."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def read_machine(run: Run = run_command, meminfo: str = "/proc/meminfo", platform: str = sys.platform) -> list[Device]:
    """The places a model can run on this machine, best first."""
    gpus = parse_nvidia_smi(run(["nvidia-smi", "--query-gpu=name,memory.total,memory.free",
                                 "--format=csv,noheader,nounits"]) or "")
    if platform == "darwin":
        unified = (run(["sysctl", "-n", "hw.optional.arm64"]) or "").strip() == "1"
        return devices(_int(run(["sysctl", "-n", "hw.memsize"])), None, gpus, unified=unified)
    total: int | None = None
    free: int | None = None
    with contextlib.suppress(OSError):
        total, free = parse_meminfo(Path(meminfo).read_text())
    if total is None:
        total, free = _sysconf("SC_PHYS_PAGES"), _sysconf("SC_AVPHYS_PAGES")
    return devices(total, free, gpus)


@dataclass(frozen=True)
class Served:
    """The model a server runs: its shape, and the slots its window is split between."""

    shape: ModelShape
    slots: int = 1


def file_shape(path: str | Path) -> ModelShape | None:
    """A model's shape from its GGUF file, or None where the file cannot be read here."""
    p = Path(path)
    try:
        header = read_gguf(p)
        size = p.stat().st_size
    except (OSError, GGUFError):
        return None
    return shape_from_metadata(header.metadata, name=p.name, weights_bytes=size, parameters=header.parameters,
                               quantisation=header.quantisation)


async def server_shape(session: aiohttp.ClientSession, kind: str, base: str, model: str,
                       headers: dict[str, str] | None = None) -> Served | None:
    """The shape of the model a server of `kind` runs (llama-server and Ollama say enough;
    other servers do not say their model's layers)."""
    if kind == "llamacpp":
        return await _llamacpp(session, base, headers or {})
    if kind == "ollama" and model:
        return await _ollama(session, base, model, headers or {})
    return None


async def _llamacpp(session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> Served | None:
    props = await _json(session, "GET", base + "/props", headers)
    if not isinstance(props, dict):
        return None
    slots = _int(props.get("total_slots")) or 1
    path = props.get("model_path")
    shape = file_shape(path) if isinstance(path, str) and path and Path(path).is_file() else None
    if shape is None:
        listed = await _json(session, "GET", base + "/v1/models", headers)
        data = listed.get("data") if isinstance(listed, dict) else None
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        meta = first.get("meta")
        if not isinstance(meta, dict):
            return None
        name = Path(str(path)).name if path else str(first.get("id") or "")
        shape = ModelShape(name=name, parameters=_int(meta.get("n_params")), weights_bytes=_int(meta.get("size")),
                           quantisation=str(props.get("model_ftype") or meta.get("ftype") or ""),
                           trained_context=_int(meta.get("n_ctx_train")))
    return Served(shape, slots)


async def _ollama(session: aiohttp.ClientSession, base: str, model: str, headers: dict[str, str]) -> Served | None:
    show = await _json(session, "POST", base + "/api/show", headers, {"model": model})
    if not isinstance(show, dict):
        return None
    details = show.get("details")
    details = details if isinstance(details, dict) else {}
    info = show.get("model_info")
    info = info if isinstance(info, dict) else {}
    tags = await _json(session, "GET", base + "/api/tags", headers)
    listed = tags.get("models") if isinstance(tags, dict) else None
    size = next((_int(m.get("size")) for m in listed or [] if isinstance(m, dict) and model in (m.get("name"), m.get("model"))), None)
    shape = shape_from_metadata(info, name=model, weights_bytes=size,
                                parameters=parameters_from_label(str(details.get("parameter_size") or "")),
                                quantisation=str(details.get("quantization_level") or ""))
    return Served(shape)


async def _json(session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: Any = None) -> Any:
    try:
        async with session.request(method, url, data=orjson.dumps(body) if body is not None else None,
                                   headers={"accept": "application/json", **headers},
                                   timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as r:
            return orjson.loads(await read_capped(r)) if r.status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError):
        return None


def _int(value: Any) -> int | None:
    try:
        n = int(str(value).strip()) if isinstance(value, str) else value
    except ValueError:
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _sysconf(name: str) -> int | None:
    try:
        return int(os.sysconf(name)) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
