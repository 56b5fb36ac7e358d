"""`nonstop doctor` sizes each local model for this machine: a scripted machine, small
in-process servers, and the bundled model's real GGUF header."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from nonstop.backends.sizing import GIB, Device
from nonstop.cli import doctor
from nonstop.cli.doctor import Check, Probes
from nonstop.config import CloudConfig, Config, DiscoveryConfig, EmbeddedConfig, LocalBackendConfig
from tests.support.fake_ollama import MODEL, ollama_app

GPU_24 = [Device("gpu", "RTX 4090", 24 * GIB, 23 * GIB), Device("ram", "", 32 * GIB, 20 * GIB)]
RAM_16 = [Device("ram", "", 16 * GIB, 9 * GIB)]


def probes(machine: list[Device], model: Path | None = None) -> Probes:
    return replace(Probes(), machine=lambda: machine, embedded_stack=lambda e: (Path("/opt/llama-server"), model),
                   run_version=lambda argv, env: (0, "version: 9999 (test)\n"), which=lambda name: None)


def config(tmp_path: Path, local: tuple[LocalBackendConfig, ...] = (), embedded: str = "never") -> Config:
    return Config(listen="127.0.0.1:1", state_dir=tmp_path, cloud=CloudConfig(url="http://127.0.0.1:1"),
                  local=local, discovery=DiscoveryConfig(enabled=False), embedded=EmbeddedConfig(mode=embedded))


def sizes(checks: list[Check]) -> dict[str, Check]:
    return {c.check: c for c in checks if c.check == "machine" or c.check.startswith("size ")}




async def test_ollama_at_its_default_window_on_a_24_gb_gpu(tmp_path: Path, serve) -> None:
    url = await serve(ollama_app(load_seconds=0))
    cfg = config(tmp_path, (LocalBackendConfig(name="qwen", url=url, model=MODEL),))
    found = sizes(await doctor.run_checks(cfg, {}, probes(GPU_24)))
    assert found["machine"].detail == "GPU RTX 4090 (24.0 GiB, 23.0 GiB free now); RAM (32.0 GiB, 20.0 GiB free now)"
    c = found["size qwen"]
    assert c.level == "problem"  # Ollama's default 4k: under what Claude Code needs
    assert c.detail.startswith(f"{MODEL} (Q4_K_M, 7.6B parameters, 4.4 GiB) fits in GPU RTX 4090")
    assert "56.0 KiB of KV cache a token" in c.detail and "it runs 4,096" in c.detail
    assert c.fix.startswith("set OLLAMA_CONTEXT_LENGTH=32768")


async def test_llama_server_with_its_model_file_here(tmp_path: Path, serve, smollm2: Path) -> None:
    app = web.Application()

    async def props(_: web.Request) -> web.Response:
        return web.json_response({"default_generation_settings": {"n_ctx": 4096}, "total_slots": 2,
                                  "model_path": str(smollm2)})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": str(smollm2), "meta": {"n_ctx": 4096}}]})

    app.router.add_get("/props", props)
    app.router.add_get("/v1/models", models)
    cfg = config(tmp_path, (LocalBackendConfig(name="llama", url=await serve(app), context_window=16384),))
    c = sizes(await doctor.run_checks(cfg, {}, probes(RAM_16)))["size llama"]
    assert c.level == "problem"  # it runs 4,096 per slot
    assert "22.5 KiB of KV cache a token" in c.detail and "trained on 8,192" in c.detail
    assert c.fix == "set -c 16384 (8192 per slot x 2 slots) and context_window = 8192"


async def test_the_embedded_model_is_sized_from_its_file(tmp_path: Path, smollm2: Path) -> None:
    cfg = config(tmp_path, embedded="auto")
    found = sizes(await doctor.run_checks(cfg, {}, probes(RAM_16, smollm2)))
    c = found["size embedded"]
    assert c.level == "warning" and "at most 8,192 tokens, enough for short tasks only" in c.detail
    assert c.fix == "for more, use a model trained on 32k tokens or more"
    assert found["machine"].detail == "RAM (16.0 GiB, 9.0 GiB free now); no NVIDIA GPU visible (nvidia-smi)"


async def test_a_model_too_large_for_the_machine(tmp_path: Path, serve) -> None:
    url = await serve(ollama_app(load_seconds=0, size=40 * GIB))
    cfg = config(tmp_path, (LocalBackendConfig(name="big", url=url, model=MODEL),))
    c = sizes(await doctor.run_checks(cfg, {}, probes(RAM_16)))["size big"]
    assert not c.ok and "does not fit: RAM (16.0 GiB, 9.0 GiB free now) leaves 12.8 GiB for a model" in c.detail


async def test_nothing_to_size_says_nothing(tmp_path: Path) -> None:
    found = sizes(await doctor.run_checks(config(tmp_path), {}, probes(RAM_16)))
    assert found == {}


async def test_a_server_that_does_not_say_its_model_is_not_sized(tmp_path: Path, serve) -> None:
    app = web.Application()

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "max_model_len": 32768, "owned_by": "vllm"}]})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.9.0"})

    app.router.add_get("/v1/models", models)
    app.router.add_get("/version", version)
    cfg = config(tmp_path, (LocalBackendConfig(name="vllm", url=await serve(app), api="openai"),))
    assert sizes(await doctor.run_checks(cfg, {}, probes(RAM_16))) == {}


def test_sizes_appear_in_the_text_output(tmp_path: Path, smollm2: Path) -> None:
    lines: list[Any] = []
    doctor.main(config(tmp_path, embedded="auto"), probes=probes(RAM_16, smollm2), env={}, out=lines.append)
    text = lines[0]
    assert "\nok       machine: RAM (16.0 GiB, 9.0 GiB free now)" in text
    assert "\nwarning  size embedded: SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1, 135M parameters, 94 MiB) fits in RAM" in text
