"""The GGUF header reader: on the bundled SmolLM2 model, and on small files written here
for the cases a real model does not show (per-layer arrays, broken headers)."""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nonstop.backends.gguf import KEEP_ARRAYS, GGUFError, Skipped, read_gguf, read_header


def test_the_bundled_model_reads_as_llama_server_describes_it(smollm2: Path) -> None:
    h = read_gguf(smollm2)
    assert (h.version, h.architecture, h.quantisation) == (3, "llama", "Q4_1")
    # The numbers llama-server prints when it loads this file, and n_params in /v1/models.
    assert (h.arch("block_count"), h.arch("attention.head_count"), h.arch("attention.head_count_kv")) == (30, 9, 3)
    assert (h.arch("embedding_length"), h.arch("context_length")) == (576, 8192)
    assert h.tensors == 272
    assert h.parameters == 134_515_008
    assert h.metadata["general.size_label"] == "135M"
    assert h.metadata["tokenizer.ggml.tokens"] == Skipped(49152)
    assert h.metadata["general.languages"] == ["en"]
    assert "{% for message in messages %}" in h.metadata["tokenizer.chat_template"]


# --- written by hand --------------------------------------------------------------------------


def s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def array(item: int, values: list[Any]) -> bytes:
    body = b"".join(s(v) if item == 8 else struct.pack("<i", v) for v in values)
    return struct.pack("<IQ", item, len(values)) + body


def gguf(entries: list[bytes], tensors: Sequence[list[int]] = (), version: int = 3) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(entries))
    infos = b"".join(s(f"t{i}") + u32(len(d)) + b"".join(struct.pack("<Q", x) for x in d) + u32(0) + struct.pack("<Q", 0)
                     for i, d in enumerate(tensors))
    return head + b"".join(entries) + infos


def test_every_value_type_reads() -> None:
    data = gguf([
        kv("a.u8", 0, struct.pack("<B", 7)), kv("a.i8", 1, struct.pack("<b", -7)),
        kv("a.u16", 2, struct.pack("<H", 700)), kv("a.i16", 3, struct.pack("<h", -700)),
        kv("a.u32", 4, u32(70000)), kv("a.i32", 5, struct.pack("<i", -70000)),
        kv("a.f32", 6, struct.pack("<f", 0.5)), kv("a.bool", 7, struct.pack("<?", True)),
        kv("a.str", 8, s("héllo")), kv("a.u64", 10, struct.pack("<Q", 2**40)),
        kv("a.i64", 11, struct.pack("<q", -(2**40))), kv("a.f64", 12, struct.pack("<d", 0.25)),
    ])
    m = read_header(io.BytesIO(data)).metadata
    assert m == {"a.u8": 7, "a.i8": -7, "a.u16": 700, "a.i16": -700, "a.u32": 70000, "a.i32": -70000, "a.f32": 0.5,
                 "a.bool": True, "a.str": "héllo", "a.u64": 2**40, "a.i64": -(2**40), "a.f64": 0.25}


def test_per_layer_arrays_are_kept_and_long_ones_skipped() -> None:
    per_layer = [8, 0, 8, 0]  # a hybrid model: attention in every other layer
    data = gguf([
        kv("general.architecture", 8, s("jamba")),
        kv("jamba.attention.head_count_kv", 9, array(5, per_layer)),
        kv("tokenizer.ggml.tokens", 9, array(8, [f"t{i}" for i in range(KEEP_ARRAYS + 1)])),
        kv("tokenizer.ggml.token_type", 9, array(5, [1] * (KEEP_ARRAYS + 1))),
        kv("general.file_type", 4, u32(15)),
    ])
    h = read_header(io.BytesIO(data))
    assert h.arch("attention.head_count_kv") == per_layer
    assert h.metadata["tokenizer.ggml.tokens"] == Skipped(KEEP_ARRAYS + 1)
    assert h.metadata["tokenizer.ggml.token_type"] == Skipped(KEEP_ARRAYS + 1)
    assert h.quantisation == "Q4_K_M"  # read on past the skipped arrays


def test_parameters_are_the_tensors_elements() -> None:
    h = read_header(io.BytesIO(gguf([], tensors=[[576, 49152], [576], [1536, 576]])))
    assert (h.tensors, h.parameters) == (3, 576 * 49152 + 576 + 1536 * 576)


@pytest.mark.parametrize(("data", "message"), [
    (b"GGML" + bytes(20), "not a GGUF file"),
    (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "GGUF version 1 is not one this reader knows"),
    (gguf([kv("a", 8, s("abc"))])[:-2], "the file ends inside its header"),
    (gguf([kv("a", 13, b"")]), "value type 13 is not a scalar GGUF knows"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**40), "a length of 1099511627776"),
    (b"", "the file ends inside its header"),
])
def test_a_broken_header_is_a_gguf_error(data: bytes, message: str) -> None:
    with pytest.raises(GGUFError, match=message):
        read_header(io.BytesIO(data))


def test_a_file_that_is_not_there_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_gguf(tmp_path / "missing.gguf")
