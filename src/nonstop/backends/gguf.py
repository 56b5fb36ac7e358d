"""A GGUF file's header: its metadata and its tensors' shapes, read without the weights.

Pure and dependency-free: it reads a binary stream front to back and stops where the
tensor data starts. GGUF v2 and v3, little-endian:

    magic "GGUF", version u32, tensor count u64, metadata count u64
    each metadata entry   key (u64 length, UTF-8), value type u32, value
    each tensor           name, n_dims u32, dims u64 x n_dims, ggml type u32, offset u64

Values: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array (item
type u32, count u64, items), 10 u64, 11 i64, 12 f64. The vocabulary and merges are long
arrays of strings: they are skipped and kept as their length only (`Skipped`), while
short arrays (per-layer head counts) are kept as lists.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import IO, Any

# Arrays up to this long are kept (per-layer values); longer ones become Skipped(n).
KEEP_ARRAYS = 4096
_MAX_STRING = 1 << 26  # no key, name or template is 64 MiB: such a length means a broken file
_MAX_DIMS = 8

# llama.cpp's llama_ftype (general.file_type): the type most of the weights have.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}

_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """Not a GGUF file, a version this reader does not know, or a header cut short."""


@dataclass(frozen=True)
class Skipped:
    """A long array left unread (the vocabulary): only its length."""

    length: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: Mapping[str, Any]
    tensors: int
    parameters: int  # the weights' element count: the sum over tensors of their dims' product

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture") or "")

    @property
    def quantisation(self) -> str:
        ftype = self.metadata.get("general.file_type")
        return FILE_TYPES.get(ftype, "") if isinstance(ftype, int) else ""

    def arch(self, key: str) -> Any:
        """`{architecture}.{key}`, e.g. arch("block_count")."""
        return self.metadata.get(f"{self.architecture}.{key}")


def read_gguf(path: str | Path) -> GGUFHeader:
    """The header of the GGUF file at `path` (raises GGUFError or OSError)."""
    with open(path, "rb") as fh:
        return read_header(fh)


def read_header(fh: IO[bytes]) -> GGUFHeader:
    r = _Reader(fh)
    if r.take(4) != b"GGUF":
        raise GGUFError("not a GGUF file (no GGUF magic at the start)")
    version = r.scalar(4)
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} is not one this reader knows (2 or 3)")
    tensors, entries = r.scalar(10), r.scalar(10)
    metadata: dict[str, Any] = {}
    for _ in range(entries):
        key = r.string()
        metadata[key] = r.value(r.scalar(4))
    parameters = 0
    for _ in range(tensors):
        r.skip_string()  # the tensor's name
        n_dims = r.scalar(4)
        if n_dims > _MAX_DIMS:
            raise GGUFError(f"a tensor with {n_dims} dimensions: the header is broken")
        parameters += prod(r.scalar(10) for _ in range(n_dims))
        r.take(12)  # its ggml type (u32) and data offset (u64)
    return GGUFHeader(version, metadata, tensors, parameters)


class _Reader:
    def __init__(self, fh: IO[bytes]):
        self.fh = fh

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise GGUFError("the file ends inside its header")
        return data

    def scalar(self, vtype: int) -> Any:
        fmt = _FORMATS.get(vtype)
        if fmt is None:
            raise GGUFError(f"value type {vtype} is not a scalar GGUF knows")
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def length(self) -> int:
        n = int(self.scalar(10))
        if n > _MAX_STRING:
            raise GGUFError(f"a length of {n} in the header: the file is broken")
        return n

    def string(self) -> str:
        return self.take(self.length()).decode("utf-8", "replace")

    def skip_string(self) -> None:
        self.take(self.length())

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            return self.scalar(vtype)
        item, n = self.scalar(4), self.scalar(10)
        if n <= KEEP_ARRAYS:
            return [self.value(item) for _ in range(n)]
        if item == _STRING:
            for _ in range(n):
                self.skip_string()
        elif item in _FORMATS:
            self.take(n * struct.calcsize(_FORMATS[item]))
        else:  # arrays of arrays: nothing a model's shape needs, but read past them
            for _ in range(n):
                self.value(item)
        return Skipped(n)
