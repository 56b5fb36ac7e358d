"""`nonstop init`: the file it writes loads, carries what discovery found, documents
every key, and is never overwritten by accident."""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import pytest
from aiohttp import web

from nonstop import cli
from nonstop.backends.discovery import DiscoveredServer
from nonstop.backends.llama_stack import INSTALL_HINT
from nonstop.cli import init
from nonstop.config import Config, DiscoveryConfig, LocalBackendConfig, load_config

SMOL = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
NO_STACK = (None, None)


def llamacpp_app(*, n_ctx: int = 16384, jinja: bool = True) -> web.Application:
    """Just enough of llama-server for discovery: /props, /v1/models, /apply-template."""

    async def props(_: web.Request) -> web.Response:
        return web.json_response({
            "default_generation_settings": {"n_ctx": n_ctx, "params": {}},
            "total_slots": 1,
            "model_path": SMOL,
            "chat_template_caps": {"supports_tool_calls": True},
        })

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": SMOL, "object": "model", "meta": {"n_ctx": n_ctx}}]})

    async def apply_template(request: web.Request) -> web.Response:
        body = await request.json()
        if not jinja:
            return web.json_response({"error": {"code": 500, "message": "tools param requires --jinja flag"}}, status=500)
        names = " ".join(t["function"]["name"] for t in body.get("tools", []))
        return web.json_response({"prompt": f"<|im_start|>user hi {names}"})

    app = web.Application()
    app.router.add_get("/props", props)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/apply-template", apply_template)
    return app


@contextmanager
def serving(app: web.Application) -> Iterator[int]:
    """Run `app` on a free loopback port in a thread of its own (`init` runs its own loop)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prose(text: str) -> str:
    """The comments of a file as one line of words (they are wrapped at 88 columns)."""
    return " ".join(line.removeprefix("#").strip() for line in text.splitlines() if line.startswith("#"))


def init_args(path: Path | None, *, force: bool = False, no_discover: bool = False) -> argparse.Namespace:
    return argparse.Namespace(config=str(path) if path else None, force=force, no_discover=no_discover)


def run_init(path: Path | None, ports: tuple[int, ...], **kw) -> tuple[int, str]:
    lines: list[str] = []
    code = init.cmd_init(
        init_args(path, **kw), discovery_cfg=DiscoveryConfig(ports=ports, timeout=3.0),
        embedded_stack=lambda: NO_STACK, out=lines.append,
    )
    return code, "\n".join(lines)


# --- the written file ------------------------------------------------------------------------


def test_init_prefills_a_discovered_llamacpp_server(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.toml"
    with serving(llamacpp_app(n_ctx=16384)) as port:
        code, said = run_init(path, (port, closed_port()))
    assert code == 0, said
    assert f"found llama.cpp at http://127.0.0.1:{port}" in said
    cfg = load_config(path)
    assert cfg.source == str(path)
    (b,) = cfg.local
    assert (b.name, b.url, b.api, b.model) == ("llamacpp", f"http://127.0.0.1:{port}", "anthropic", SMOL)
    assert b.context_window == 16384 and 1 <= b.max_output_tokens < b.context_window
    text = path.read_text()
    assert f"Found: llama.cpp at http://127.0.0.1:{port}: model SmolLM2-135M-Instruct.Q4_1.gguf, context 16384, tools yes" in prose(text)
    # The embedded server stays off while a [[local]] block is configured: its section is
    # there, commented out, with the reason.
    assert "\n[embedded]" not in text and "# [embedded]" in text
    assert cfg.embedded.mode == "auto"
    # The discovery ports given were not the defaults, so they are written down.
    assert cfg.discovery.ports[0] == port
    assert (path.stat().st_mode & 0o777) == 0o600


def test_init_writes_the_notes_of_a_server_that_cannot_call_tools(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    with serving(llamacpp_app(n_ctx=4096, jinja=False)) as port:
        code, said = run_init(path, (port,))
    assert code == 0
    text = path.read_text()
    assert "Note: tool calls will not work: run llama-server with --jinja" in prose(text)
    assert "small for Claude Code" in prose(text)
    assert "note: tool calls will not work" in said
    (b,) = load_config(path).local
    assert b.context_window == 4096


def test_init_with_nothing_found_explains_the_embedded_default(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    code, said = run_init(path, (closed_port(),))
    assert code == 0
    assert "none found" in said and "embedded llama-server" in said
    cfg = load_config(path)
    assert cfg.local == () and cfg.embedded.mode == "auto"
    text = path.read_text()
    assert "\n[embedded]\n" in text
    assert "SmolLM2-135M" in text
    # The bundled stack is not installed (as injected): the file says how to install it.
    assert f"#   {INSTALL_HINT}" in text
    # An example [[local]] block, commented out, shows how to add a server by hand.
    assert "# [[local]]" in text and "\n[[local]]" not in text


def test_init_names_the_installed_embedded_stack(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    stack = (Path("/opt/llama/bin/llama-server"), Path("/opt/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    code = init.cmd_init(init_args(path, no_discover=True), embedded_stack=lambda: stack, out=lambda _: None)
    assert code == 0
    text = path.read_text()
    assert "# Installed: /opt/llama/bin/llama-server with SmolLM2-135M-Instruct.Q4_1.gguf." in text
    assert INSTALL_HINT not in text
    assert "Discovery was skipped (--no-discover)" in prose(text)
    load_config(path)


def test_init_goes_to_the_xdg_path_that_the_loader_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NONSTOP_CONFIG", raising=False)
    code, _ = run_init(None, (closed_port(),))
    assert code == 0
    assert (tmp_path / "xdg" / "nonstop" / "config.toml").is_file()
    assert load_config().source == str(tmp_path / "xdg" / "nonstop" / "config.toml")


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('listen = "127.0.0.1:9999"\n')
    code, said = run_init(path, (closed_port(),))
    assert code == 1
    assert path.read_text() == 'listen = "127.0.0.1:9999"\n'
    assert "already exists" in said and "--force" in said

    code, said = run_init(path, (closed_port(),), force=True)
    assert code == 0
    assert load_config(path).listen == "127.0.0.1:8787"
    backup = tmp_path / "config.toml.bak"
    assert backup.read_text() == 'listen = "127.0.0.1:9999"\n'
    assert "config.toml.bak" in said


def test_init_through_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    assert cli.main(["init", "--config", str(path), "--no-discover"]) == 0
    assert cli.main(["config", "check", str(path)]) == 0
    assert cli.main(["init", "--config", str(path), "--no-discover"]) == 1
    out = capsys.readouterr().out
    assert "wrote" in out and "OK" in out and "nonstop init --force" in out


# --- every key, documented and valid ------------------------------------------------------------


def uncomment_settings(text: str) -> str:
    """The file with every commented-out setting (and table header) switched on."""
    out = []
    for line in text.splitlines():
        candidate = line[2:] if line.startswith("# ") else None
        if candidate is not None and re.fullmatch(r"\[\[?[a-z_.]+\]\]?", candidate):
            out.append(candidate)
            continue
        if candidate is not None and " = " in candidate:
            try:
                tomllib.loads(candidate)
            except tomllib.TOMLDecodeError:
                pass
            else:
                out.append(candidate)
                continue
        out.append(line)
    return "\n".join(out)


SERVERS = [
    DiscoveredServer("ollama", "http://127.0.0.1:11434", "anthropic", ["qwen3:8b", "llama3.2:3b"], "qwen3:8b", 4096, True,
                     ["Ollama serves qwen3:8b with a 4096-token context, too small for Claude Code: set OLLAMA_CONTEXT_LENGTH=32768"]),
    DiscoveredServer("llamacpp", "http://127.0.0.1:8080", "anthropic", [SMOL], SMOL, 8192, False,
                     ["tool calls will not work: run llama-server with --jinja"]),
]


@pytest.mark.parametrize("servers", [[], SERVERS], ids=["nothing-found", "two-found"])
def test_every_key_is_documented_and_every_commented_default_is_valid(servers: list[DiscoveredServer]) -> None:
    text = init.render_config(servers, stack=NO_STACK)
    lines = text.splitlines()
    keys = {f.name for f in fields(Config) if f.name not in ("source", "cloud", "local", "routes", "log", "hooks",
                                                              "discovery", "embedded", "recovery", "eval", "shared", "routing",
                                                              "users", "accounts", "warmup", "shadow")}
    for section in init.SECTION_TYPES.values():
        keys |= {f.name for f in fields(section) if f.name != "classes"}
    keys |= {f.name for f in fields(LocalBackendConfig)}
    for key in keys:
        at = [i for i, line in enumerate(lines) if re.match(rf"^(# )?{key} = ", line)]
        assert at, f"{key} is missing from the file"
        first = at[0]
        assert lines[first - 1].startswith("#") and not re.match(r"^# \w+ = ", lines[first - 1]), (
            f"{key} has no comment above it"
        )
    # Switching every commented-out default on still gives a valid configuration.
    cfg = load_config_text(uncomment_settings(text))
    assert cfg.embedded.mode == "auto"
    assert cfg.routes and cfg.routes[0].match == "claude-haiku-*"
    assert dict(cfg.routing.classes)["background"].cloud == "fallback"


def load_config_text(text: str) -> Config:
    from nonstop.config import parse_config

    return parse_config(tomllib.loads(text))


def test_discovered_servers_become_local_blocks_in_order_with_notes() -> None:
    text = init.render_config(SERVERS, stack=NO_STACK)
    cfg = load_config_text(text)
    assert [b.name for b in cfg.local] == ["ollama", "llamacpp"]
    assert cfg.local[0].context_window == 4096 and cfg.local[0].model == "qwen3:8b"
    flat = prose(text)
    assert "set OLLAMA_CONTEXT_LENGTH=32768" in flat
    assert "It also offers: llama3.2:3b" in flat
    assert "tools no" in flat


@pytest.mark.parametrize("name", ['a"b', "back\\slash", "new\nline", "tab\there", "del\x7f", "é ☃ 🦙", "[[local]]"])
def test_strange_model_names_survive_the_round_trip(name: str) -> None:
    server = DiscoveredServer("openai", "http://127.0.0.1:8000", "openai", [name], name, 32768, None)
    text = init.render_config([server], stack=NO_STACK)
    (b,) = load_config_text(text).local
    assert b.model == name
    assert init.toml_string(name) in text
