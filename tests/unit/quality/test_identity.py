"""A model's identity: read from a GGUF header and from each kind of server, and a key
that changes when the model does."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nonstop.config import LocalBackendConfig
from nonstop.quality.identity import (
    ModelIdentity,
    count_label,
    fingerprint,
    identify,
    identify_file,
)
from tests.support.scripted_model import scripted_app


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_gguf(path: Path, meta: dict[str, Any], *, padding: int = 0) -> Path:
    """A GGUF file with `meta` (str, int as u32, or a list of str) and no tensors."""
    body = b""
    for key, value in meta.items():
        body += _s(key)
        if isinstance(value, str):
            body += struct.pack("<I", 8) + _s(value)
        elif isinstance(value, list):
            body += struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_s(v) for v in value)
        else:
            body += struct.pack("<II", 4, value)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta)) + body + b"\0" * padding)
    return path


META = {
    "general.architecture": "qwen3moe", "general.name": "Qwen3 Coder 30B A3B", "general.size_label": "30B-A3B",
    "general.file_type": 15, "tokenizer.ggml.tokens": ["<s>", "a", "b"] * 1000, "qwen3moe.context_length": 262144,
    "tokenizer.chat_template": "{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}",
}


def test_a_gguf_file_gives_family_size_quantisation_context_and_template(tmp_path: Path) -> None:
    ident = identify_file("embedded", write_gguf(tmp_path / "m.gguf", META), configured_context=8192)
    assert (ident.family, ident.parameters, ident.quantisation) == ("qwen3moe", "30B-A3B", "Q4_K_M")
    assert ident.trained_context == 262144 and ident.tools is True and ident.size_bytes
    plain = identify_file("embedded", write_gguf(tmp_path / "n.gguf", {**META, "tokenizer.chat_template": "{{ messages }}"}))
    assert plain.tools is False


@pytest.mark.parametrize("data", [b"", b"GGML" + b"\0" * 40, b"GGUF" + struct.pack("<IQQ", 3, 0, 5)])
def test_a_file_that_is_not_a_whole_gguf_header_is_known_by_its_name_only(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    ident = identify_file("embedded", path)
    assert ident.digest == "" and ident.family == "" and ident.name == "bad.gguf"


def test_the_fingerprint_changes_with_the_metadata_and_the_length(tmp_path: Path) -> None:
    a = fingerprint(write_gguf(tmp_path / "a.gguf", META))
    assert a == fingerprint(write_gguf(tmp_path / "same.gguf", META))
    assert a != fingerprint(write_gguf(tmp_path / "b.gguf", {**META, "general.name": "Qwen3 Coder 30B A3C"}))
    assert a != fingerprint(write_gguf(tmp_path / "c.gguf", META, padding=3 << 20))
    assert a.startswith("file-sha256:")


def test_identify_file_labels_the_model_as_people_name_it(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf", META)
    ident = identify_file("embedded", path, configured_context=32768)
    assert ident.label() == "Qwen3-Coder-30B-A3B-Instruct q4_k_m, 32k"
    assert (ident.family, ident.parameters, ident.trained_context, ident.tools) == ("qwen3moe", "30B-A3B", 262144, True)
    assert ident.key == ident.digest and not ident.reachable


def test_the_key_without_a_digest_is_name_quantisation_and_size() -> None:
    a = ModelIdentity("x", name="m", quantisation="Q4_K_M", size_bytes=5)
    assert a.key == "m|Q4_K_M|5" and a.key != ModelIdentity("x", name="m", quantisation="Q8_0", size_bytes=5).key
    assert ModelIdentity.from_dict(a.to_dict()) == a
    assert (count_label(134_515_008), count_label(30_532_122_624), count_label(7_000_000_000)) == ("135M", "30.5B", "7B")


def answer(body: Any) -> Callable[[web.Request], Any]:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(body)

    return handler


async def test_llama_server_with_its_file_on_this_machine(serve: Any, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "coder.Q4_K_M.gguf", META)
    url = await serve(scripted_app(model_path=str(path)))
    async with aiohttp.ClientSession() as session:
        ident = await identify(session, LocalBackendConfig("llama", url, context_window=32768))
    assert (ident.server, ident.name, ident.quantisation, ident.parameters) == ("llamacpp", str(path), "Q4_K_M", "7.6B")
    assert (ident.trained_context, ident.server_context, ident.configured_context) == (32768, 8192, 32768)
    assert ident.digest == fingerprint(path) and ident.family == "qwen3moe" and ident.tools is True


async def test_llama_server_whose_file_is_elsewhere_is_known_by_path_quantisation_and_size(serve: Any) -> None:
    url = await serve(scripted_app(model_path="/elsewhere/coder.Q4_K_M.gguf"))
    async with aiohttp.ClientSession() as session:
        ident = await identify(session, LocalBackendConfig("llama", url))
    assert ident.digest == "" and ident.key == "/elsewhere/coder.Q4_K_M.gguf|Q4_K_M|4683071488"


def ollama_app() -> web.Application:
    tags = {"models": [
        {"name": "qwen3-coder:30b", "model": "qwen3-coder:30b", "digest": "sha256:aaa", "size": 18_556_700_000,
         "details": {"family": "qwen3moe", "parameter_size": "30.5B", "quantization_level": "Q4_K_M"}},
        {"name": "qwen3:8b", "model": "qwen3:8b", "digest": "sha256:bbb", "size": 5_225_000_000,
         "details": {"family": "qwen3", "parameter_size": "8.2B", "quantization_level": "Q4_K_M"}},
    ]}
    show = {"details": {"family": "qwen3moe", "parameter_size": "30.5B", "quantization_level": "Q4_K_M"},
            "model_info": {"general.architecture": "qwen3moe", "qwen3moe.context_length": 262144},
            "capabilities": ["completion", "tools"], "parameters": "num_ctx 32768"}
    app = web.Application()
    app.router.add_get("/api/version", answer({"version": "0.14.2"}))
    app.router.add_get("/api/tags", answer(tags))
    app.router.add_get("/api/ps", answer({"models": []}))
    app.router.add_post("/api/show", answer(show))
    return app


async def test_ollama_gives_the_digest_and_the_other_pulled_models(serve: Any) -> None:
    url = await serve(ollama_app())
    async with aiohttp.ClientSession() as session:
        ident = await identify(session, LocalBackendConfig("ollama", url, model="qwen3-coder:30b", context_window=32768))
    assert (ident.server, ident.digest, ident.quantisation, ident.parameters) == ("ollama", "sha256:aaa", "Q4_K_M", "30.5B")
    assert (ident.trained_context, ident.server_context, ident.tools) == (262144, 32768, True)
    assert [(a.name, a.digest, a.size_bytes) for a in ident.available] == [("qwen3:8b", "sha256:bbb", 5_225_000_000)]


async def test_lm_studio_lists_its_models(serve: Any) -> None:
    models = {"data": [
        {"id": "qwen2.5-coder-14b", "type": "llm", "arch": "qwen2", "quantization": "Q4_K_M", "state": "loaded",
         "max_context_length": 32768, "loaded_context_length": 16384, "capabilities": ["tool_use"]},
        {"id": "gemma-3-4b", "type": "vlm", "arch": "gemma3", "quantization": "Q8_0", "state": "not-loaded"},
    ]}
    app = web.Application()
    app.router.add_get("/api/v0/models", answer(models))
    app.router.add_get("/v1/models", answer({"data": [{"id": m["id"]} for m in models["data"]]}))
    url = await serve(app)
    async with aiohttp.ClientSession() as session:
        ident = await identify(session, LocalBackendConfig("lms", url, api="openai", model="qwen2.5-coder-14b"))
    assert (ident.server, ident.family, ident.quantisation, ident.tools) == ("lmstudio", "qwen2", "Q4_K_M", True)
    assert (ident.trained_context, ident.server_context) == (32768, 16384)
    assert [a.name for a in ident.available] == ["gemma-3-4b"]


async def test_a_server_that_does_not_answer_is_unreachable_not_an_error() -> None:
    async with aiohttp.ClientSession() as session:
        ident = await identify(session, LocalBackendConfig("gone", "http://127.0.0.1:9", model="m"), timeout=0.5)
    assert not ident.reachable and ident.name == "m" and ident.server == ""
