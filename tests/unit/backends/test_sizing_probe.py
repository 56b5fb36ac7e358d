"""Reading the machine (with scripted command output) and a model's shape from small
in-process servers and the bundled GGUF file."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import nonstop.backends.sizing_probe as sizing_probe_module
from nonstop.backends.sizing import GIB, MIB
from nonstop.backends.sizing_probe import file_shape, read_machine, server_shape
from tests.support.fake_ollama import MODEL, ollama_app
from tests.support.stalls import stalling

MEMINFO = "MemTotal:       32768000 kB\nMemFree:   1000 kB\nMemAvailable:   20000000 kB\n"


def commands(answers: dict[str, str | None]) -> Callable[[list[str]], str | None]:
    def run(argv: list[str]) -> str | None:
        return answers.get(" ".join(argv[:3]) if argv[0] == "sysctl" else argv[0])
    return run


def test_linux_with_an_nvidia_gpu(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text(MEMINFO)
    run = commands({"nvidia-smi": "NVIDIA GeForce RTX 3060, 12288, 11000\n"})
    places = read_machine(run, str(tmp_path / "meminfo"), "linux")
    assert [(d.kind, d.name, d.total, d.free) for d in places] == [
        ("gpu", "NVIDIA GeForce RTX 3060", 12288 * MIB, 11000 * MIB),
        ("ram", "", 32768000 * 1024, 20000000 * 1024),
    ]


def test_linux_without_a_gpu_or_meminfo_falls_back_to_sysconf(tmp_path: Path) -> None:
    places = read_machine(commands({}), str(tmp_path / "missing"), "linux")
    assert [d.kind for d in places] == ["ram"] and places[0].total > 0


@pytest.mark.parametrize(("arm", "kind"), [("1\n", "unified"), ("0\n", "ram"), (None, "ram")])
def test_macos_memory(arm: str | None, kind: str) -> None:
    run = commands({"sysctl -n hw.memsize": "34359738368\n", "sysctl -n hw.optional.arm64": arm})
    places = read_machine(run, "/nonexistent", "darwin")
    assert [(d.kind, d.total, d.free) for d in places] == [(kind, 32 * GIB, None)]


# --- a model's shape -------------------------------------------------------------------------------



def test_the_bundled_files_shape(smollm2: Path) -> None:
    s = file_shape(smollm2)
    assert s is not None
    assert (s.name, s.parameters, s.quantisation, s.trained_context) == (smollm2.name, 134_515_008, "Q4_1", 8192)
    assert s.weights_bytes == smollm2.stat().st_size
    assert s.kv_bytes_per_token() == 23040


def test_a_file_that_is_not_a_model_has_no_shape(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"not a model")
    assert file_shape(tmp_path / "x.gguf") is None
    assert file_shape(tmp_path / "missing.gguf") is None



def llamacpp_app(model_path: str, slots: int = 2) -> web.Application:
    async def props(_: web.Request) -> web.Response:
        return web.json_response({"total_slots": slots, "model_path": model_path, "model_ftype": "Q4_K_M",
                                  "default_generation_settings": {"n_ctx": 8192}})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model_path, "meta": {
            "n_params": 7_615_616_512, "size": 4_683_087_332, "n_ctx_train": 32768, "n_embd": 3584}}]})

    app = web.Application()
    app.router.add_get("/props", props)
    app.router.add_get("/v1/models", models)
    return app


async def test_llamacpp_with_its_model_file_on_this_machine(serve, smollm2: Path) -> None:
    async with aiohttp.ClientSession() as session:
        served = await server_shape(session, "llamacpp", await serve(llamacpp_app(str(smollm2))), "")
    assert served is not None and served.slots == 2
    assert served.shape.kv_bytes_per_token() == 23040 and served.shape.parameters == 134_515_008


async def test_llamacpp_elsewhere_gives_its_size_but_not_its_layers(serve) -> None:
    async with aiohttp.ClientSession() as session:
        served = await server_shape(session, "llamacpp", await serve(llamacpp_app("/models/qwen2.5-coder-7b.gguf")), "")
    assert served is not None
    s = served.shape
    assert (s.name, s.parameters, s.weights_bytes, s.trained_context, s.quantisation) == (
        "qwen2.5-coder-7b.gguf", 7_615_616_512, 4_683_087_332, 32768, "Q4_K_M")
    assert s.kv_bytes_per_token() is None


async def test_ollama_shape_from_api_show_and_tags(serve) -> None:
    async with aiohttp.ClientSession() as session:
        base = await serve(ollama_app(load_seconds=0))
        served = await server_shape(session, "ollama", base, MODEL)
        missing = await server_shape(session, "ollama", base, "nope:1b")
    assert served is not None
    s = served.shape
    assert (s.name, s.parameters, s.quantisation, s.weights_bytes) == (MODEL, 7_600_000_000, "Q4_K_M", 4_683_087_332)
    assert (s.layers, s.trained_context, s.kv_bytes_per_token()) == (28, 32768, 57344)
    assert missing is None


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_servers_that_do_not_say_or_do_not_answer() -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    async with aiohttp.ClientSession() as session:
        assert await server_shape(session, "vllm", down, "m") is None
        assert await server_shape(session, "llamacpp", down, "") is None
        assert await server_shape(session, "ollama", down, MODEL) is None
        assert await server_shape(session, "ollama", down, "") is None


@pytest.mark.parametrize("how", ["head", "body"])
async def test_a_server_that_stalls_on_its_model_is_not_waited_for(serve, monkeypatch: pytest.MonkeyPatch,
                                                                   how: str) -> None:
    """Sizing (`nonstop doctor`) asks Ollama /api/show about the model; one that never
    finishes its answer costs the short timeout, and the model is then not sized."""
    monkeypatch.setattr(sizing_probe_module, "TIMEOUT", 0.3)
    url = await serve(stalling(ollama_app(0), {"/api/show"}, how))
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        assert await server_shape(session, "ollama", url, MODEL) is None
    assert time.monotonic() - started < 1.0
