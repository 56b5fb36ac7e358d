"""Will a local model fit this machine, and how large a window can it hold? Pure
arithmetic on a model's shape and the machine's memory; backends/sizing_probe.py reads
both.

The memory a model needs is its weights, its KV cache, and the runtime's buffers:

    kv bytes per token = sum over attention layers of
                         kv_heads x (key_length + value_length) x bytes per element
                         (key_length = value_length = embedding_length / head_count
                         unless the model says; f16 cache: 2 bytes per element)
    window             = (usable memory - weights - OVERHEAD) / kv bytes per token / slots,
                         at most the trained context

For SmolLM2-135M: 30 layers x 3 KV heads x (64 + 64) x 2 = 23,040 bytes a token, the
90 MiB llama-server reports for a 4096-token cache. Models with sliding-window layers
(Gemma 2 and 3) need less than this; it is an upper bound for them.

Usable memory is the whole of the device the model runs on, less what the rest of the
machine needs: a GPU's total less RESERVE_GPU; Apple's unified memory up to
UNIFIED_SHARE (Metal's default working-set limit); RAM less RESERVE_RAM (the OS, Claude
Code, an editor). Free memory right now is reported beside it, not planned with: other
programs come and go, and a loaded model's own memory is not free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nonstop.backends.base import positive_int

GIB = 1 << 30
MIB = 1 << 20
# Compute buffers, the output buffer and the runtime's own allocations.
OVERHEAD = 512 * MIB
RESERVE_GPU = 512 * MIB
UNIFIED_SHARE = 0.75
RESERVE_RAM_SHARE = 0.2
RESERVE_RAM_MIN = 2 * GIB
KV_F16 = 2.0
KV_Q8_0 = 34 / 32  # q8_0: 32 values in 34 bytes

# Claude Code's needs once nonstop has fitted its request (docs/local-models.md).
USEFUL_FLOOR = 8192
FOCUSED_EDITS = 16384
REAL_WORK = 32768

# Bits per weight of the common quantisations, for a model whose file size is unknown.
BITS_PER_WEIGHT = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_K_S": 5.54,
    "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.85, "Q4_K_S": 4.58, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_XS": 4.25,
    "IQ4_NL": 4.5, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "IQ3_M": 3.66, "IQ3_XXS": 3.06,
    "Q2_K": 3.35, "IQ2_M": 2.7, "IQ2_XS": 2.31, "IQ2_XXS": 2.06, "IQ1_S": 1.56,
}


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs of a model; None: not known."""

    name: str = ""
    parameters: int | None = None
    weights_bytes: int | None = None
    quantisation: str = ""
    layers: int | None = None
    kv_heads: tuple[int, ...] = ()  # one per layer (0: a layer without attention)
    key_length: int | None = None
    value_length: int | None = None
    trained_context: int | None = None

    def kv_bytes_per_token(self, element_bytes: float = KV_F16) -> float | None:
        if not self.kv_heads or not self.key_length or not self.value_length:
            return None
        return sum(self.kv_heads) * (self.key_length + self.value_length) * element_bytes

    def weights(self) -> int | None:
        """The weights' size: known, or from the parameter count and the quantisation."""
        if self.weights_bytes:
            return self.weights_bytes
        bits = BITS_PER_WEIGHT.get(self.quantisation.upper())
        if self.parameters and bits:
            return int(self.parameters * bits / 8)
        return None


def shape_from_metadata(meta: Mapping[str, Any], *, name: str = "", weights_bytes: int | None = None,
                        parameters: int | None = None, quantisation: str = "") -> ModelShape:
    """A shape from GGUF-style metadata: a GGUF header's, or Ollama's /api/show
    `model_info`, which carries the same keys."""
    arch = str(meta.get("general.architecture") or "")

    def key(k: str) -> Any:
        return meta.get(f"{arch}.{k}")

    layers = positive_int(key("block_count"))
    heads = _per_layer(key("attention.head_count"), layers)
    kv = _per_layer(key("attention.head_count_kv"), layers) or heads
    embedding = positive_int(key("embedding_length"))
    key_len = positive_int(key("attention.key_length"))
    if key_len is None and embedding and heads and max(heads):
        key_len = embedding // max(heads)
    value_len = positive_int(key("attention.value_length")) or key_len
    return ModelShape(
        name=name or str(meta.get("general.name") or ""),
        parameters=parameters or positive_int(meta.get("general.parameter_count")),
        weights_bytes=weights_bytes, quantisation=quantisation, layers=layers, kv_heads=kv,
        key_length=key_len, value_length=value_len, trained_context=positive_int(key("context_length")),
    )


def parameters_from_label(label: str) -> int | None:
    """Ollama's parameter_size ("7.6B", "135M", "1.5T") as a count."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMBT])\s*", label or "", re.I)
    if not m:
        return None
    return int(float(m.group(1)) * {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(2).upper()])


# --- the machine ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """Where a model can run: a GPU, Apple's unified memory, or RAM."""

    kind: str  # "gpu", "unified", "ram"
    name: str
    total: int
    free: int | None = None

    def usable(self) -> int:
        if self.kind == "gpu":
            return max(0, self.total - RESERVE_GPU)
        if self.kind == "unified":
            return int(self.total * UNIFIED_SHARE)
        return max(0, self.total - max(RESERVE_RAM_MIN, int(self.total * RESERVE_RAM_SHARE)))

    def describe(self) -> str:
        free = f", {gib(self.free)} free now" if self.free is not None else ""
        what = {"gpu": f"GPU {self.name}", "unified": "unified memory", "ram": "RAM"}[self.kind]
        return f"{what} ({gib(self.total)}{free})"


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """(total, available) bytes from /proc/meminfo."""
    values = {m.group(1): int(m.group(2)) * 1024 for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}
    return values.get("MemTotal"), values.get("MemAvailable", values.get("MemFree"))


def parse_nvidia_smi(text: str) -> list[Device]:
    """GPUs from `nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader`
    (MiB, with or without the unit)."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) != 3:
            continue
        total, free = _mib(parts[1]), _mib(parts[2])
        if total:
            out.append(Device("gpu", parts[0], total, free))
    return out


def devices(ram_total: int | None, ram_free: int | None, gpus: list[Device], *, unified: bool = False) -> list[Device]:
    """The places a model can run, best first: GPUs (largest first), then memory."""
    out = sorted(gpus, key=lambda d: -d.total)
    if ram_total:
        out.append(Device("unified" if unified else "ram", "", ram_total, ram_free))
    return out


# --- the fit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    device: Device
    weights: int
    kv_per_token: float | None
    most: int | None  # the largest window (per slot) that fits beside the weights
    window: int | None  # the window to set: `most`, rounded down, at most the trained context
    fits: bool
    by_training: bool = False  # the trained context, not memory, sets `window`


def fit(shape: ModelShape, places: list[Device], *, slots: int = 1, element_bytes: float = KV_F16) -> Fit | None:
    """Where the model runs best and the window it holds there: the first place (GPUs
    first) that holds the weights and a window for focused edits; else the first that
    holds a useful window, else the first that holds the weights at all, else (it does
    not fit) the largest. None: the weights' size is not known."""
    weights = shape.weights()
    if weights is None or not places:
        return None
    per_token = shape.kv_bytes_per_token(element_bytes)
    slots = max(1, slots)
    results = [_fit_on(d, weights, per_token, slots, shape.trained_context) for d in places]
    for floor in (FOCUSED_EDITS, USEFUL_FLOOR, 0):
        good = [f for f in results if f.fits and (f.window is None or f.window >= floor)]
        if good:
            return good[0]
    return max(results, key=lambda f: f.device.usable())


def _fit_on(d: Device, weights: int, per_token: float | None, slots: int, trained: int | None) -> Fit:
    room = d.usable() - weights - OVERHEAD
    if room <= 0:
        return Fit(d, weights, per_token, 0 if per_token else None, 0 if per_token else None, False)
    if not per_token:
        return Fit(d, weights, None, None, None, True)
    most = int(room / per_token / slots)
    by_training = bool(trained and trained <= most)
    window = round_window(trained if trained and by_training else most)
    return Fit(d, weights, per_token, most, window, window > 0, by_training)


def round_window(tokens: int) -> int:
    """A window to configure: a multiple of 4096 (of 1024 below that)."""
    step = 4096 if tokens >= 4096 else 1024
    return tokens // step * step


def window_need(window: int) -> tuple[str, str]:
    """("problem" | "warning" | "ok", what a window of that size means for Claude Code)."""
    if window < USEFUL_FLOOR:
        return "problem", (f"under the {USEFUL_FLOOR // 1024}k tokens Claude Code needs to be useful "
                           "(its first request fits 4k only with most of it cut)")
    if window < FOCUSED_EDITS:
        return "warning", "enough for short tasks only (8-16k: one or two file reads per request)"
    if window < REAL_WORK:
        return "ok", "enough for focused edits (16-32k)"
    return "ok", "enough for real work (32k and more)"


def settings(kind: str, window: int, slots: int = 1) -> str:
    """How to give a server that window."""
    if kind == "ollama":
        return f"OLLAMA_CONTEXT_LENGTH={window} in Ollama's environment (or num_ctx {window} in the model's Modelfile)"
    if kind == "vllm":
        return f"--max-model-len {window}"
    if kind == "lmstudio":
        return f"a context length of {window} when loading the model"
    per = f" ({window} per slot x {slots} slots)" if slots > 1 else ""
    return f"-c {window * slots}{per}"


def gib(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def _per_layer(value: Any, layers: int | None) -> tuple[int, ...]:
    """A per-layer count: one number for every layer, or a list of one per layer."""
    if isinstance(value, list):
        return tuple(int(v) for v in value if isinstance(v, int | float) and not isinstance(v, bool))
    n = positive_int(value)
    return (n,) * layers if n and layers else ()


def _mib(text: str) -> int | None:
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*(MiB)?\s*$", text)
    return int(float(m.group(1)) * MIB) if m else None


# --- advice ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Advice:
    level: str  # "ok", "warning" or "problem"
    detail: str
    fix: str = ""


QUANTISED_KV = ("a q8_0 KV cache holds about twice the window (llama-server: -fa on -ctk q8_0 -ctv q8_0; "
                "Ollama: OLLAMA_FLASH_ATTENTION=1 OLLAMA_KV_CACHE_TYPE=q8_0)")


def advise(kind: str, shape: ModelShape, f: Fit | None, *, window: int | None = None, slots: int = 1) -> Advice | None:
    """What to tell the user about one model on this machine: whether it fits, the window
    it can hold, and what to set. `window`: the window per slot the server runs now.
    None: too little is known to say anything."""
    if f is None:
        return None
    what = describe_model(shape, f.weights)
    if not f.fits:
        return Advice("problem", f"{what} does not fit: {f.device.describe()} leaves {gib(f.device.usable())} "
                                 f"for a model, and it needs {gib(f.weights + OVERHEAD)} before any context",
                      "use a smaller model or a smaller quantisation (Q4_K_M takes about 0.6 bytes a parameter)")
    if f.kv_per_token is None or f.most is None or f.window is None:
        return Advice("ok", f"{what} fits in {f.device.describe()}; its window cannot be estimated here "
                            "(the server does not say the model's layers)")
    per_slot = " per slot" if slots > 1 else ""
    trained = f", trained on {shape.trained_context:,}" if shape.trained_context else ""
    head = (f"{what} fits in {f.device.describe()}: {f.kv_per_token / 1024:.1f} KiB of KV cache a token, "
            f"room for {f.most:,}{per_slot}{trained}")
    level, need = window_need(f.window)
    if f.by_training:
        better = "a model trained on 32k tokens or more"
    else:
        better = f"a smaller model or quantisation; or {QUANTISED_KV}"
    if level == "problem":
        return Advice("problem", f"{head}: at most {f.window:,} tokens, {need}", f"use {better}")
    if window and window > f.most:
        return Advice("problem", f"{head}: the server runs {window:,}, more than fits (it will swap, or fail to "
                                 "allocate)", f"set {settings(kind, f.window, slots)} and context_window = {f.window}")
    target = min(f.window, max(REAL_WORK, window or 0))
    if window and window < target and window < REAL_WORK:
        now_level, now = window_need(window)
        return Advice("problem" if now_level == "problem" else "warning",
                      f"{head}: it runs {window:,}, {now}; {target:,} fit",
                      f"set {settings(kind, target, slots)} and context_window = {target}")
    if level == "warning":
        return Advice("warning", f"{head}: at most {f.window:,} tokens, {need}", f"for more, use {better}")
    return Advice("ok", f"{head}: {f.window:,} tokens, {need}")


def describe_model(shape: ModelShape, weights: int) -> str:
    """"qwen2.5-coder:7b (Q4_K_M, 7.6B parameters, 4.4 GiB)"."""
    parts = [p for p in (shape.quantisation, _count_label(shape.parameters), gib(weights)) if p]
    return f"{shape.name or 'the model'} ({', '.join(parts)})"


def _count_label(n: int | None) -> str:
    if not n:
        return ""
    return f"{n / 1e9:.1f}B parameters" if n >= 1e9 else f"{n / 1e6:.0f}M parameters"
