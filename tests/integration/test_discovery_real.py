"""Discovery against real llama-server processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from nonstop.backends.discovery import describe, discover, probe_server, to_backend_config
from nonstop.config import DiscoveryConfig
from tests.integration.llama import LlamaServer, free_port, require_llama, start_llama_server

pytestmark = pytest.mark.integration

# A chat template that shows the model its tools, unlike SmolLM2's own.
TOOL_TEMPLATE = """\
{%- if tools %}<|im_start|>system
You can call these tools: {{ tools | tojson }}<|im_end|>
{% endif -%}
{%- for message in messages %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}
"""


@pytest.fixture(scope="module")
def smol() -> Iterator[LlamaServer]:
    require_llama()
    with start_llama_server(ctx=8192, parallel=2) as server:
        yield server


async def test_probe_identifies_llama_server(smol: LlamaServer) -> None:
    async with aiohttp.ClientSession() as session:
        d = await probe_server(session, smol.url, 2.0)
    assert d is not None
    assert (d.kind, d.url, d.api) == ("llamacpp", smol.url, "anthropic")
    assert d.model and Path(d.model).name == smol.model_path.name
    assert d.model in d.models
    assert d.context_window == 8192  # each slot's share of -c 16384
    # SmolLM2's own chat template drops tools, so llama-server never shows them to it.
    assert d.tools is False
    assert any("tool" in n for n in d.notes)
    assert "llama.cpp at" in describe(d) and "context 8192" in describe(d)


async def test_discover_finds_it_among_closed_ports(smol: LlamaServer) -> None:
    cfg = DiscoveryConfig(ports=(free_port(), smol.port, free_port()), timeout=2.0)
    async with aiohttp.ClientSession() as session:
        found = await discover(cfg, session)
    assert [d.url for d in found] == [smol.url]
    backend = to_backend_config(found[0])
    assert (backend.api, backend.url, backend.context_window) == ("anthropic", smol.url, 8192)
    assert 1 <= backend.max_output_tokens < backend.context_window


async def test_tools_follow_the_chat_template(tmp_path: Path) -> None:
    require_llama()
    template = tmp_path / "tools.jinja"
    template.write_text(TOOL_TEMPLATE)
    with_tools = start_llama_server(
        ctx=2048, parallel=1, extra_args=["--chat-template-file", str(template)], log_dir=tmp_path
    )
    without_jinja = start_llama_server(
        ctx=2048, parallel=1, extra_args=["--no-jinja"], log_dir=tmp_path
    )
    try:
        async with aiohttp.ClientSession() as session:
            capable = await probe_server(session, with_tools.url, 2.0)
            refused = await probe_server(session, without_jinja.url, 2.0)
    finally:
        with_tools.stop()
        without_jinja.stop()
    assert capable is not None and capable.tools is True and capable.context_window == 2048
    assert refused is not None and refused.tools is False
    assert any("--jinja" in n for n in refused.notes)
