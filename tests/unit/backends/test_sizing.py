"""Sizing arithmetic as tables: KV cache per token, the window a machine holds, and what
doctor says about it."""

from __future__ import annotations

import pytest

from nonstop.backends.sizing import (
    GIB,
    MIB,
    OVERHEAD,
    Device,
    ModelShape,
    advise,
    devices,
    fit,
    parameters_from_label,
    parse_meminfo,
    parse_nvidia_smi,
    round_window,
    settings,
    shape_from_metadata,
    window_need,
)


def meta(arch: str, layers: int, heads: int | list[int], kv: int | list[int] | None, embedding: int,
         ctx: int | None = None, **extra: int) -> dict:
    m = {"general.architecture": arch, f"{arch}.block_count": layers, f"{arch}.attention.head_count": heads,
         f"{arch}.embedding_length": embedding}
    if kv is not None:
        m[f"{arch}.attention.head_count_kv"] = kv
    if ctx:
        m[f"{arch}.context_length"] = ctx
    m.update({f"{arch}.{k.replace('__', '.')}": v for k, v in extra.items()})
    return m


# The shapes as their GGUF files (or Ollama's model_info) give them.
SMOLLM2_135M = meta("llama", 30, 9, 3, 576, 8192)
QWEN25_7B = meta("qwen2", 28, 28, 4, 3584, 32768)
LLAMA3_8B = meta("llama", 32, 32, 8, 4096, 8192)
GEMMA2_9B = meta("gemma2", 42, 16, 8, 3584, 8192, attention__key_length=256, attention__value_length=256)
NO_GQA = meta("gpt2", 12, 12, None, 768, 1024)  # no head_count_kv: every head has its own K and V
HYBRID = meta("jamba", 4, 32, [8, 0, 8, 0], 4096)  # attention in two of four layers


@pytest.mark.parametrize(("m", "per_token"), [
    (SMOLLM2_135M, 30 * 3 * (64 + 64) * 2),  # 23,040: llama-server's 90 MiB for 4096 cells
    (QWEN25_7B, 28 * 4 * (128 + 128) * 2),  # 57,344 (56 KiB)
    (LLAMA3_8B, 32 * 8 * (128 + 128) * 2),  # 131,072 (128 KiB)
    (GEMMA2_9B, 42 * 8 * (256 + 256) * 2),  # key_length given: not 3584 / 16
    (NO_GQA, 12 * 12 * (64 + 64) * 2),
    (HYBRID, 16 * (128 + 128) * 2),
])
def test_kv_cache_per_token(m: dict, per_token: int) -> None:
    assert shape_from_metadata(m).kv_bytes_per_token() == per_token


def test_kv_cache_per_token_with_a_q8_0_cache() -> None:
    assert shape_from_metadata(SMOLLM2_135M).kv_bytes_per_token(34 / 32) == pytest.approx(23040 / 2 * 34 / 32)


@pytest.mark.parametrize("m", [{}, {"general.architecture": "x"}, meta("x", 0, 8, 8, 512), meta("x", 4, 8, 8, 0)])
def test_an_incomplete_shape_has_no_kv_size(m: dict) -> None:
    assert shape_from_metadata(m).kv_bytes_per_token() is None


def test_shape_reads_names_parameters_and_trained_context() -> None:
    s = shape_from_metadata({**QWEN25_7B, "general.name": "Qwen2.5 Coder 7B", "general.parameter_count": 7_615_616_512})
    assert (s.name, s.parameters, s.trained_context, s.layers) == ("Qwen2.5 Coder 7B", 7_615_616_512, 32768, 28)
    given = shape_from_metadata(QWEN25_7B, name="qwen2.5-coder:7b", parameters=7_600_000_000, quantisation="Q4_K_M")
    assert (given.name, given.parameters, given.quantisation) == ("qwen2.5-coder:7b", 7_600_000_000, "Q4_K_M")


@pytest.mark.parametrize(("label", "count"), [
    ("7.6B", 7_600_000_000), ("135M", 135_000_000), ("1.5t", 1_500_000_000_000), (" 8B ", 8_000_000_000),
    ("", None), ("big", None), ("7.6", None),
])
def test_parameters_from_ollamas_label(label: str, count: int | None) -> None:
    assert parameters_from_label(label) == count


@pytest.mark.parametrize(("shape", "weights"), [
    (ModelShape(weights_bytes=4_683_087_332, parameters=7_600_000_000, quantisation="Q4_K_M"), 4_683_087_332),
    (ModelShape(parameters=8_000_000_000, quantisation="Q4_K_M"), int(8e9 * 4.85 / 8)),
    (ModelShape(parameters=8_000_000_000, quantisation="q8_0"), int(8e9 * 8.5 / 8)),
    (ModelShape(parameters=8_000_000_000, quantisation="F16"), 16_000_000_000),
    (ModelShape(parameters=8_000_000_000), None),
    (ModelShape(quantisation="Q4_K_M"), None),
])
def test_weights_are_the_file_or_parameters_times_bits(shape: ModelShape, weights: int | None) -> None:
    assert shape.weights() == weights


# --- the machine ------------------------------------------------------------------------------


def test_meminfo() -> None:
    text = "MemTotal:       24684632 kB\nMemFree:         1234567 kB\nMemAvailable:   23834560 kB\nBuffers: 1 kB\n"
    assert parse_meminfo(text) == (24684632 * 1024, 23834560 * 1024)
    assert parse_meminfo("MemTotal: 1024 kB\nMemFree: 512 kB\n") == (1024 * 1024, 512 * 1024)
    assert parse_meminfo("") == (None, None)


@pytest.mark.parametrize(("text", "gpus"), [
    ("NVIDIA GeForce RTX 4090, 24564, 23012\n", [("NVIDIA GeForce RTX 4090", 24564, 23012)]),
    ("NVIDIA A100-SXM4-80GB, 81920 MiB, 81000 MiB\nTesla T4, 15360 MiB, 15000 MiB\n",
     [("NVIDIA A100-SXM4-80GB", 81920, 81000), ("Tesla T4", 15360, 15000)]),
    ("Quadro, Model X, 8192, 100\n", [("Quadro, Model X", 8192, 100)]),  # a comma in the name
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n", []),
    ("", []),
])
def test_nvidia_smi(text: str, gpus: list[tuple[str, int, int]]) -> None:
    assert [(d.name, d.total // MIB, (d.free or 0) // MIB) for d in parse_nvidia_smi(text)] == gpus


def test_devices_are_gpus_largest_first_then_memory() -> None:
    small, big = Device("gpu", "T4", 16 * GIB, 15 * GIB), Device("gpu", "A100", 80 * GIB, 79 * GIB)
    assert [d.name for d in devices(64 * GIB, 40 * GIB, [small, big])] == ["A100", "T4", ""]
    assert [d.kind for d in devices(32 * GIB, None, [], unified=True)] == ["unified"]
    assert devices(None, None, []) == []


@pytest.mark.parametrize(("device", "usable"), [
    (Device("gpu", "x", 24 * GIB), 24 * GIB - 512 * MIB),
    (Device("unified", "", 32 * GIB), 24 * GIB),
    (Device("ram", "", 32 * GIB), 32 * GIB - int(32 * GIB * 0.2)),
    (Device("ram", "", 8 * GIB), 6 * GIB),  # at least 2 GiB stays for the rest of the machine
    (Device("ram", "", 1 * GIB), 0),
])
def test_usable_memory(device: Device, usable: int) -> None:
    assert device.usable() == usable


# --- the fit ---------------------------------------------------------------------------------------

QWEN_7B_Q4 = shape_from_metadata(QWEN25_7B, name="qwen2.5-coder:7b", weights_bytes=4_683_087_332, quantisation="Q4_K_M")
RTX_4090 = Device("gpu", "RTX 4090", 24 * GIB, 23 * GIB)
RTX_3060 = Device("gpu", "RTX 3060", 12 * GIB, 11 * GIB)
RAM_16 = Device("ram", "", 16 * GIB, 9 * GIB)


def room(d: Device, weights: int) -> int:
    return d.usable() - weights - OVERHEAD


@pytest.mark.parametrize(("places", "slots", "device", "most", "window", "by_training"), [
    # 24 GiB holds 18.6 GiB of KV cache: 348k tokens, more than the 32k it was trained on.
    ([RTX_4090, RAM_16], 1, "RTX 4090", room(RTX_4090, 4_683_087_332) // 57344, 32768, True),
    # 12 GiB: 6.3 GiB of KV cache, 118k tokens: still the trained 32k.
    ([RTX_3060], 1, "RTX 3060", room(RTX_3060, 4_683_087_332) // 57344, 32768, True),
    # Four slots share the cache.
    ([RTX_3060], 4, "RTX 3060", room(RTX_3060, 4_683_087_332) // 57344 // 4, 28672, False),
    # 16 GiB of RAM: 12.8 usable, 7.4 GiB of KV cache.
    ([RAM_16], 1, "", room(RAM_16, 4_683_087_332) // 57344, 32768, True),
])
def test_the_window_a_device_holds(places: list[Device], slots: int, device: str, most: int, window: int,
                                   by_training: bool) -> None:
    f = fit(QWEN_7B_Q4, places, slots=slots)
    assert f is not None and f.fits
    assert (f.device.name, f.most, f.window, f.by_training) == (device, most, window, by_training)


def test_a_gpu_that_holds_under_16k_gives_way_to_ram() -> None:
    tight = Device("gpu", "6 GB", 6 * GIB, 6 * GIB)  # 4.4 GiB of weights leave ~0.7 GiB: 12k tokens
    f = fit(QWEN_7B_Q4, [tight, RAM_16])
    assert f is not None and f.device.kind == "ram" and f.window == 32768
    alone = fit(QWEN_7B_Q4, [tight])
    assert alone is not None and alone.device.name == "6 GB" and alone.window == 8192
    tighter = Device("gpu", "5 GB", 5 * GIB + 800 * MIB, 5 * GIB)
    g = fit(QWEN_7B_Q4, [tighter])
    assert g is not None and g.fits and g.window is not None and g.window < 8192


def test_a_model_larger_than_every_device_does_not_fit() -> None:
    f = fit(shape_from_metadata(LLAMA3_8B, weights_bytes=40 * GIB), [RTX_4090, RAM_16])
    assert f is not None and not f.fits and f.device.name == "RTX 4090"


def test_no_weights_size_no_fit() -> None:
    assert fit(shape_from_metadata(LLAMA3_8B), [RAM_16]) is None
    assert fit(QWEN_7B_Q4, []) is None


def test_without_layers_it_fits_but_has_no_window() -> None:
    f = fit(ModelShape(weights_bytes=4 * GIB), [RAM_16])
    assert f is not None and f.fits and f.window is None


@pytest.mark.parametrize(("tokens", "window"), [(348_000, 344_064), (32768, 32768), (5000, 4096), (4095, 3072),
                                                (1023, 0), (0, 0)])
def test_round_window(tokens: int, window: int) -> None:
    assert round_window(tokens) == window


@pytest.mark.parametrize(("window", "level"), [(4096, "problem"), (8191, "problem"), (8192, "warning"),
                                               (16383, "warning"), (16384, "ok"), (131072, "ok")])
def test_what_a_window_means_for_claude_code(window: int, level: str) -> None:
    assert window_need(window)[0] == level


@pytest.mark.parametrize(("kind", "slots", "text"), [
    ("llamacpp", 1, "-c 32768"),
    ("llamacpp", 2, "-c 65536 (32768 per slot x 2 slots)"),
    ("ollama", 1, "OLLAMA_CONTEXT_LENGTH=32768 in Ollama's environment (or num_ctx 32768 in the model's Modelfile)"),
    ("vllm", 1, "--max-model-len 32768"),
    ("lmstudio", 1, "a context length of 32768 when loading the model"),
])
def test_settings_per_server(kind: str, slots: int, text: str) -> None:
    assert settings(kind, 32768, slots) == text


# --- advice ---------------------------------------------------------------------------------------------


def test_advice_for_a_model_that_does_not_fit() -> None:
    shape = shape_from_metadata(LLAMA3_8B, name="llama3:70b", weights_bytes=40 * GIB, quantisation="Q4_K_M")
    a = advise("ollama", shape, fit(shape, [RAM_16]))
    assert a is not None and a.level == "problem"
    assert a.detail.startswith("llama3:70b (Q4_K_M, 40.0 GiB) does not fit: RAM (16.0 GiB, 9.0 GiB free now)")
    assert "smaller model or a smaller quantisation" in a.fix


def test_advice_for_ollama_at_its_default_4k() -> None:
    a = advise("ollama", QWEN_7B_Q4, fit(QWEN_7B_Q4, [RTX_4090]), window=4096)
    assert a is not None and a.level == "problem"
    assert "56.0 KiB of KV cache a token" in a.detail and "it runs 4,096" in a.detail and "32,768 fit" in a.detail
    assert a.fix == ("set OLLAMA_CONTEXT_LENGTH=32768 in Ollama's environment (or num_ctx 32768 in the model's "
                     "Modelfile) and context_window = 32768")


def test_advice_for_a_window_larger_than_fits() -> None:
    f = fit(QWEN_7B_Q4, [RTX_3060], slots=4)
    a = advise("llamacpp", QWEN_7B_Q4, f, window=32768, slots=4)
    assert a is not None and a.level == "problem" and "more than fits" in a.detail
    assert a.fix == "set -c 114688 (28672 per slot x 4 slots) and context_window = 28672"


def test_advice_for_a_window_that_is_right() -> None:
    a = advise("llamacpp", QWEN_7B_Q4, fit(QWEN_7B_Q4, [RTX_4090]), window=32768)
    assert a is not None and (a.level, a.fix) == ("ok", "")
    assert a.detail.endswith("32,768 tokens, enough for real work (32k and more)")


def test_advice_for_a_model_trained_on_8k() -> None:
    shape = shape_from_metadata(SMOLLM2_135M, name="SmolLM2-135M", weights_bytes=98_362_432, quantisation="Q4_1")
    a = advise("llamacpp", shape, fit(shape, [RAM_16], slots=2), window=8192, slots=2)
    assert a is not None and a.level == "warning"
    assert "trained on 8,192: at most 8,192 tokens, enough for short tasks only" in a.detail
    assert a.fix == "for more, use a model trained on 32k tokens or more"


def test_advice_when_memory_leaves_under_8k() -> None:
    tight = Device("gpu", "5 GB", 5 * GIB + 800 * MIB, 5 * GIB)
    a = advise("llamacpp", QWEN_7B_Q4, fit(QWEN_7B_Q4, [tight]))
    assert a is not None and a.level == "problem"
    assert "under the 8k tokens Claude Code needs" in a.detail
    assert "a smaller model or quantisation" in a.fix and "q8_0 KV cache" in a.fix


def test_no_advice_without_the_weights() -> None:
    assert advise("vllm", ModelShape(), None) is None
    a = advise("llamacpp", ModelShape(name="remote.gguf", weights_bytes=4 * GIB), fit(ModelShape(weights_bytes=4 * GIB), [RAM_16]))
    assert a is not None and a.level == "ok" and "cannot be estimated" in a.detail
