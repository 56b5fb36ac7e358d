"""Sizing against the real llama-server: the KV cache the formula predicts is the one the
server allocates, and doctor reads the running server's model, slots and window."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from nonstop.backends.sizing import MIB, Device
from nonstop.backends.sizing_probe import server_shape
from nonstop.cli import doctor
from nonstop.config import CloudConfig, Config, DiscoveryConfig, EmbeddedConfig, LocalBackendConfig
from tests.integration.llama import LlamaServer, require_llama, start_llama_server

pytestmark = pytest.mark.integration

CTX, SLOTS = 2048, 2


@pytest.fixture(scope="module")
def llama() -> LlamaServer:
    require_llama()
    server = start_llama_server(ctx=CTX, parallel=SLOTS, extra_args=["-v"])  # -v: the KV cache size in the log
    yield server
    server.stop()


def allocated_kv_mib(server: LlamaServer) -> float:
    """What llama-server says its KV cache takes: `llama_kv_cache: size = 90.00 MiB (...)`."""
    sizes = re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", server.log_path.read_text(errors="replace"))
    assert sizes, f"no KV cache size in the log:\n{server.log_tail()}"
    return float(sizes[-1])


async def test_the_kv_formula_is_what_llama_server_allocates(llama: LlamaServer) -> None:
    async with aiohttp.ClientSession() as session:
        served = await server_shape(session, "llamacpp", llama.url, "")
    assert served is not None and served.slots == SLOTS
    per_token = served.shape.kv_bytes_per_token()
    assert per_token == 23040
    assert per_token * CTX * SLOTS / MIB == allocated_kv_mib(llama)


async def test_doctor_sizes_the_running_server(llama: LlamaServer, tmp_path: Path) -> None:
    cfg = Config(listen="127.0.0.1:1", state_dir=tmp_path, cloud=CloudConfig(url="http://127.0.0.1:1"),
                 local=(LocalBackendConfig(name="llama", url=llama.url, context_window=CTX, max_output_tokens=256),),
                 discovery=DiscoveryConfig(enabled=False), embedded=EmbeddedConfig(mode="never"))
    probes = replace(doctor.Probes(), machine=lambda: [Device("ram", "", 8 << 30, 6 << 30)], which=lambda name: None)
    checks = {c.check: c for c in await doctor.run_checks(cfg, {}, probes)}
    c = checks["size llama"]
    assert not c.ok  # 2,048 a slot: under what Claude Code needs
    assert "SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1, 135M parameters, 94 MiB) fits in RAM (8.0 GiB" in c.detail
    assert "22.5 KiB of KV cache a token" in c.detail and "it runs 2,048" in c.detail
    assert c.fix == "set -c 16384 (8192 per slot x 2 slots) and context_window = 8192"
