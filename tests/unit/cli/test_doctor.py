"""`nonstop doctor` against small in-process servers: each trap is reported with a fix,
and no credential ever appears in what it prints."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nonstop import cli
from nonstop.backends.llama_stack import INSTALL_HINT
from nonstop.cli import common, doctor
from nonstop.cli.doctor import Check, Probes
from nonstop.config import (
    CloudConfig,
    Config,
    DiscoveryConfig,
    EmbeddedConfig,
    LocalBackendConfig,
)
from tests.support.procs import PLANTED_KEY
from tests.support.stalls import stalling
from tests.unit.cli.ctrl_c import interrupt

STACK = (Path("/opt/llama/bin/llama-server"), Path("/opt/models/SmolLM2-135M-Instruct.Q4_1.gguf"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probes(**changes: Any) -> Probes:
    """Real network probes; the embedded stack, its version run and `which` are fakes."""
    base = Probes(
        embedded_stack=lambda e: STACK,
        run_version=lambda argv, env: (0, "version: 9999 (test)\n"),
        which=lambda name: None,
    )
    return replace(base, **changes)


def config(tmp_path: Path, *, local: tuple[LocalBackendConfig, ...] = (), cloud_url: str = "",
           discovery: DiscoveryConfig | None = None, embedded: EmbeddedConfig | None = None,
           listen_port: int | None = None) -> Config:
    return Config(
        listen=f"127.0.0.1:{listen_port or closed_port()}",
        state_dir=tmp_path / "state",
        cloud=CloudConfig(url=cloud_url or f"http://127.0.0.1:{closed_port()}"),
        local=local,
        discovery=discovery or DiscoveryConfig(enabled=False),
        embedded=embedded or EmbeddedConfig(),
    )


async def run(cfg: Config, env: dict[str, str] | None = None, **changes: Any) -> list[Check]:
    return await doctor.run_checks(cfg, env or {}, probes(**changes))


def find(checks: list[Check], check: str, needle: str = "") -> Check:
    hits = [c for c in checks if c.check == check and needle in c.detail]
    assert hits, f"no {check!r} check with {needle!r} in: " + "\n".join(f"{c.check}: {c.detail}" for c in checks)
    return hits[0]


# --- imitations of the servers -------------------------------------------------------------------


def answer(body: Any, status: int = 200) -> Callable[[web.Request], Any]:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return handler


def llamacpp_app(*, n_ctx: int = 32768, jinja: bool = True) -> web.Application:
    async def apply_template(request: web.Request) -> web.Response:
        if not jinja:
            return web.json_response({"error": {"code": 500, "message": "tools param requires --jinja flag"}}, status=500)
        body = await request.json()
        return web.json_response({"prompt": " ".join(t["function"]["name"] for t in body.get("tools", []))})

    app = web.Application()
    app.router.add_get("/props", answer({"default_generation_settings": {"n_ctx": n_ctx}, "total_slots": 1,
                                         "model_path": "/m/qwen.gguf"}))
    app.router.add_get("/v1/models", answer({"data": [{"id": "/m/qwen.gguf"}]}))
    app.router.add_post("/apply-template", apply_template)
    return app


def ollama_app(version: str = "0.14.2", num_ctx: int | None = None) -> web.Application:
    show: dict[str, Any] = {"capabilities": ["completion", "tools"], "model_info": {"qwen3.context_length": 40960}}
    if num_ctx:
        show["parameters"] = f"num_ctx {num_ctx}"
    app = web.Application()
    app.router.add_get("/api/version", answer({"version": version}))
    app.router.add_get("/api/tags", answer({"models": [{"name": "qwen3:8b", "model": "qwen3:8b"}]}))
    app.router.add_get("/api/ps", answer({"models": []}))
    app.router.add_post("/api/show", answer(show))
    return app


def nonstop_health_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/health", answer({"status": "ok", "cloud": "serving", "pid": 4242,
                                          "local": [{"name": "embedded", "healthy": True}]}))
    return app


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Any]]:
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.close()


def url(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


# --- the cloud --------------------------------------------------------------------------------------


async def test_offline_is_a_warning_not_a_problem(tmp_path: Path) -> None:
    checks = await run(config(tmp_path))
    cloud = find(checks, "cloud")
    assert cloud.ok and cloud.detail.startswith("offline: nonstop will serve locally")
    assert cloud.fix
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


async def test_a_cloud_that_answers_is_ok(tmp_path: Path, serve) -> None:
    server = await serve(web.Application())  # every path: 404, which still proves TCP+HTTP work
    checks = await run(config(tmp_path, cloud_url=url(server)))
    cloud = find(checks, "cloud")
    assert cloud.ok and not cloud.fix and "HTTP 404" in cloud.detail


# --- credentials and Claude Code's own settings -------------------------------------------------------


@pytest.mark.parametrize(("env", "mode"), [
    ({"ANTHROPIC_API_KEY": PLANTED_KEY}, "API key"),
    ({"ANTHROPIC_AUTH_TOKEN": PLANTED_KEY}, "bearer token"),
    ({}, "claude.ai subscription login (OAuth)"),
    ({"ANTHROPIC_API_KEY": ""}, "claude.ai subscription login (OAuth)"),
])
def test_credential_mode_is_named(env: dict[str, str], mode: str) -> None:
    (c,) = doctor.check_credentials(env)
    assert c.ok and c.detail.startswith(mode)


def test_bedrock_switch_bypasses_nonstop() -> None:
    checks = doctor.check_credentials({"CLAUDE_CODE_USE_BEDROCK": "1"})
    bad = [c for c in checks if not c.ok]
    assert bad and "unset CLAUDE_CODE_USE_BEDROCK" in bad[0].fix


def test_planted_key_never_appears_in_any_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"ANTHROPIC_API_KEY": PLANTED_KEY, "ANTHROPIC_AUTH_TOKEN": PLANTED_KEY, "HOME": str(tmp_path),
           "ANTHROPIC_BASE_URL": f"http://127.0.0.1:1/{PLANTED_KEY}"}
    cfg = config(tmp_path, local=(LocalBackendConfig("mine", f"http://127.0.0.1:{closed_port()}", api_key=PLANTED_KEY),))
    printed: list[str] = []
    for as_json in (False, True):
        doctor.main(cfg, as_json, env=env, probes=probes(), out=printed.append)
    text = "\n".join(printed) + capsys.readouterr().out
    assert "API key and bearer token" in text
    for piece in (PLANTED_KEY, "PLANTEDTESTKEY", PLANTED_KEY[-12:]):
        assert piece not in text


# --- ANTHROPIC_BASE_URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "ok"), [
    ("http://127.0.0.1:{port}", True),
    ("http://localhost:{port}/", True),
    ("http://127.0.0.1:{port}/v1", False),
    ("https://api.anthropic.com", False),
    ("http://127.0.0.1:1", False),
])
def test_base_url_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, ok: bool) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = config(tmp_path, listen_port=8787)
    checks = doctor.check_base_url(cfg, {"ANTHROPIC_BASE_URL": value.format(port=8787), "HOME": str(tmp_path)})
    (c,) = checks
    assert c.ok is ok, c
    if not ok:
        assert "http://127.0.0.1:8787" in c.fix


def test_base_url_in_claude_code_settings_overrides_the_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = tmp_path / "home" / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://llm-proxy.example.com", "ANTHROPIC_API_KEY": PLANTED_KEY}}))
    cfg = config(tmp_path, listen_port=8787)
    checks = doctor.check_base_url(cfg, {"HOME": str(tmp_path / "home")})
    bad = [c for c in checks if not c.ok]
    assert len(bad) == 1 and str(settings) in bad[0].detail and "llm-proxy.example.com" in bad[0].detail
    assert "remove ANTHROPIC_BASE_URL" in bad[0].fix
    assert PLANTED_KEY not in repr(checks)


def test_base_url_in_the_organizations_managed_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Managed settings win over the user's files and the environment: doctor names them.
    managed = tmp_path / "etc" / "claude-code" / "managed-settings.json"
    managed.parent.mkdir(parents=True)
    managed.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://gateway.corp.example"}}))
    monkeypatch.setattr(common, "MANAGED_SETTINGS", {})
    monkeypatch.setattr(common, "MANAGED_SETTINGS_ELSEWHERE", str(managed))
    monkeypatch.chdir(tmp_path)
    cfg = config(tmp_path, listen_port=8787)
    bad = [c for c in doctor.check_base_url(cfg, {"HOME": str(tmp_path / "home")}) if not c.ok]
    assert len(bad) == 1 and "managed settings" in bad[0].detail and "gateway.corp.example" in bad[0].detail
    assert "ask whoever manages" in bad[0].fix
    managed.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8787"}}))
    assert all(c.ok for c in doctor.check_base_url(cfg, {"HOME": str(tmp_path / "home")}))


def test_base_url_in_settings_saved_with_a_byte_order_mark(tmp_path: Path) -> None:
    # Editors on Windows save JSON with a BOM; the override must not hide behind it.
    settings = tmp_path / "home" / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_bytes(b"\xef\xbb\xbf" + json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://llm-proxy.example.com"}}).encode())
    cfg = config(tmp_path, listen_port=8787)
    bad = [c for c in doctor.check_base_url(cfg, {"HOME": str(tmp_path / "home")}) if not c.ok]
    assert len(bad) == 1 and "llm-proxy.example.com" in bad[0].detail


# --- nonstop itself ---------------------------------------------------------------------------------


async def test_nonstop_running_not_running_and_port_taken(tmp_path: Path, serve) -> None:
    running = await serve(nonstop_health_app())
    c = find(await run(config(tmp_path, listen_port=running.port)), "nonstop")
    assert c.ok and "pid 4242" in c.detail and "embedded (healthy)" in c.detail

    c = find(await run(config(tmp_path)), "nonstop")
    assert c.ok and "not running" in c.detail and "nonstop claude" in c.fix

    other = await serve(web.Application())
    c = find(await run(config(tmp_path, listen_port=other.port)), "nonstop")
    assert not c.ok and "not nonstop" in c.detail and "listen" in c.fix


async def test_nonstop_not_running_on_the_address_given_says_how_to_start_it_there(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    c = await doctor.check_running(cfg, probes(), "nonstop serve --port 9914")
    assert c.detail == f"not running on {cfg.listen}"
    assert c.fix == "`nonstop claude --port 9914` starts it in the background; or run `nonstop serve --port 9914`"


# --- local backends and their traps ------------------------------------------------------------------


async def test_ollama_with_its_default_context_is_a_problem(tmp_path: Path, serve) -> None:
    server = await serve(ollama_app())
    cfg = config(tmp_path, local=(LocalBackendConfig("ollama", url(server), model="qwen3:8b"),))
    checks = await run(cfg)
    assert find(checks, "local ollama", "Ollama at").ok
    trap = find(checks, "local ollama", "4096-token context")
    assert not trap.ok and "far too small for Claude Code's ~15k-token first request" in trap.detail
    assert "OLLAMA_CONTEXT_LENGTH=32768" in trap.fix
    assert [c for c in checks if not c.ok] == [trap]


async def test_discovered_ollama_with_its_default_context_is_a_problem(tmp_path: Path, serve) -> None:
    server = await serve(ollama_app())
    cfg = config(tmp_path, discovery=DiscoveryConfig(ports=(server.port, closed_port()), timeout=2.0))
    checks = await run(cfg)
    assert "found Ollama" in find(checks, "local ollama", "found").detail
    trap = find(checks, "local ollama", "4096-token context")
    assert not trap.ok and "OLLAMA_CONTEXT_LENGTH=32768" in trap.fix
    # A server was found, so the embedded server is not the only fallback.
    assert find(checks, "embedded").ok


async def test_discovered_ollama_that_stalls_on_api_show_says_the_window_assumed(tmp_path: Path, serve) -> None:
    """An Ollama whose /api/show never answers does not hold the doctor past the discovery
    timeout, and the doctor names the window the gateway will plan with, as an assumption."""
    server = await serve(stalling(ollama_app(), {"/api/show"}, "body"))
    cfg = config(tmp_path, discovery=DiscoveryConfig(ports=(server.port,), timeout=0.5))
    started = time.monotonic()
    checks = await run(cfg)
    assert time.monotonic() - started < 5
    found = find(checks, "local ollama", "found")
    assert "context 4096 (assumed: Ollama's default; /api/show did not answer)" in found.detail


async def test_ollama_with_a_large_context_and_a_missing_model(tmp_path: Path, serve) -> None:
    server = await serve(ollama_app(num_ctx=32768))
    cfg = config(tmp_path, local=(LocalBackendConfig("o", url(server), model="llama9:70b"),))
    checks = await run(cfg)
    assert not [c for c in checks if "context" in c.detail and not c.ok]
    pull = find(checks, "local o", "not pulled")
    assert not pull.ok and "ollama pull llama9:70b" in pull.fix


async def test_configured_window_under_16k_is_a_problem(tmp_path: Path, serve) -> None:
    server = await serve(llamacpp_app(n_ctx=8192))
    cfg = config(tmp_path, local=(LocalBackendConfig("small", url(server), context_window=8192, max_output_tokens=512),))
    checks = await run(cfg)
    trap = find(checks, "local small", "context_window is 8192")
    assert not trap.ok and "32768" in trap.fix
    seen = find(checks, "local small", "can call tools")
    assert seen.ok and seen.detail.startswith(f"answers: llama.cpp at {url(server)}: model qwen.gguf, context 8192")


async def test_configured_window_larger_than_the_server_runs(tmp_path: Path, serve) -> None:
    server = await serve(llamacpp_app(n_ctx=16384))
    cfg = config(tmp_path, local=(LocalBackendConfig("big", url(server), context_window=65536),))
    trap = find(await run(cfg), "local big", "server runs 16384")
    assert not trap.ok and "context_window = 16384" in trap.fix


async def test_backend_url_ending_in_v1(tmp_path: Path, serve) -> None:
    # The loader already refuses such a file; a Config built in code still gets the check.
    server = await serve(llamacpp_app())
    cfg = config(tmp_path, local=(LocalBackendConfig("v1", url(server) + "/v1"),))
    trap = find(await run(cfg), "local v1", "ends in /v1")
    assert not trap.ok and f'url = "{url(server)}"' in trap.fix


async def test_llamacpp_without_jinja_cannot_call_tools(tmp_path: Path, serve) -> None:
    server = await serve(llamacpp_app(jinja=False))
    cfg = config(tmp_path, local=(LocalBackendConfig("nojinja", url(server)),))
    checks = await run(cfg)
    assert "cannot call tools" in find(checks, "local nojinja", "answers").detail
    trap = find(checks, "local nojinja", "cannot call tools, which")
    assert not trap.ok and "--jinja" in trap.fix


async def test_old_ollama_configured_as_anthropic(tmp_path: Path, serve) -> None:
    server = await serve(ollama_app(version="0.12.0", num_ctx=32768))
    cfg = config(tmp_path, local=(LocalBackendConfig("old", url(server)),))
    trap = find(await run(cfg), "local old", "no native /v1/messages")
    assert not trap.ok and 'api = "openai"' in trap.fix


async def test_unreachable_and_unrecognised_backends(tmp_path: Path, serve) -> None:
    other = await serve(web.Application())
    cfg = config(tmp_path, local=(
        LocalBackendConfig("gone", f"http://127.0.0.1:{closed_port()}"),
        LocalBackendConfig("odd", url(other)),
    ))
    checks = await run(cfg)
    gone = find(checks, "local gone")
    assert not gone.ok and "not reachable" in gone.detail and "local[0].url" in gone.fix
    odd = find(checks, "local odd")
    assert not odd.ok and "not like a model server" in odd.detail and "local[1].url" in odd.fix


# --- the embedded fallback ----------------------------------------------------------------------------


async def test_missing_embedded_stack_when_it_is_the_only_fallback(tmp_path: Path) -> None:
    checks = await run(config(tmp_path), embedded_stack=lambda e: (None, None))
    c = find(checks, "embedded")
    assert not c.ok and "llama-server is not installed" in c.detail and c.fix == INSTALL_HINT

    checks = await run(config(tmp_path), embedded_stack=lambda e: (STACK[0], None))
    c = find(checks, "embedded")
    assert not c.ok and "bundled model" in c.detail and c.fix == INSTALL_HINT


async def test_missing_embedded_stack_is_fine_with_a_configured_backend(tmp_path: Path, serve) -> None:
    server = await serve(llamacpp_app())
    cfg = config(tmp_path, local=(LocalBackendConfig("big", url(server)),))
    checks = await run(cfg, embedded_stack=lambda e: (None, None))
    assert find(checks, "embedded").ok
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


async def test_embedded_server_path_that_is_not_a_program(tmp_path: Path) -> None:
    cfg = config(tmp_path, embedded=EmbeddedConfig(server_path=str(tmp_path / "nope")))
    checks = await run(cfg, embedded_stack=Probes().embedded_stack)
    c = find(checks, "embedded")
    assert not c.ok and "server_path" in c.detail and INSTALL_HINT in c.fix


async def test_embedded_llama_server_that_does_not_run(tmp_path: Path) -> None:
    failing = (127, "llama-server: error while loading shared libraries: libllama.so.0: cannot open shared object file\n")
    checks = await run(config(tmp_path), run_version=lambda argv, env: failing)
    c = find(checks, "embedded")
    assert not c.ok and "libllama.so.0" in c.detail and "reinstall" in c.fix


async def test_embedded_never_with_nothing_else(tmp_path: Path) -> None:
    checks = await run(config(tmp_path, embedded=EmbeddedConfig(mode="never")))
    c = find(checks, "embedded")
    assert not c.ok and "requests the cloud cannot serve will fail" in c.detail


async def test_embedded_installed_reports_its_version(tmp_path: Path) -> None:
    c = find(await run(config(tmp_path)), "embedded")
    assert c.ok and "9999 (test)" in c.detail and "SmolLM2-135M-Instruct.Q4_1.gguf" in c.detail


# --- output ------------------------------------------------------------------------------------------


def test_claude_cli_missing_is_a_warning_with_the_install_command() -> None:
    c = doctor.check_claude_cli(probes())
    assert c.ok and c.fix == "npm install -g @anthropic-ai/claude-code"


def test_text_output_is_one_line_per_check_with_fix(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    printed: list[str] = []
    code = doctor.main(cfg, False, env={}, probes=probes(embedded_stack=lambda e: (None, None)), out=printed.append)
    assert code == 1
    lines = printed[0].splitlines()
    embedded = [line for line in lines if line.startswith("problem  embedded:")]
    assert len(embedded) == 1 and embedded[0].endswith(f"— fix: {INSTALL_HINT}")
    assert any(line.startswith("warning  cloud: offline: nonstop will serve locally") for line in lines)
    assert lines[-1].startswith("1 problem(s) to fix")


def test_json_output_and_exit_code(tmp_path: Path) -> None:
    printed: list[str] = []
    code = doctor.main(config(tmp_path), True, env={}, probes=probes(), out=printed.append)
    data = json.loads(printed[0])
    assert code == 0
    assert all(set(item) == {"check", "ok", "detail", "fix"} for item in data)
    assert {item["check"] for item in data} >= {"config", "cloud", "credentials", "claude", "base url", "nonstop", "embedded"}


def test_doctor_through_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ANTHROPIC_API_KEY", PLANTED_KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    path = tmp_path / "config.toml"
    path.write_text(
        f'listen = "127.0.0.1:{closed_port()}"\n[cloud]\nurl = "http://127.0.0.1:{closed_port()}"\n'
        f"[discovery]\nports = [{closed_port()}]\n"
    )
    code = cli.main(["doctor", "--json", "--config", str(path)])
    out = capsys.readouterr().out
    data = json.loads(out)
    assert code in (0, 1)
    assert find([Check(**d) for d in data], "credentials", "API key").ok
    assert PLANTED_KEY not in out and "PLANTEDTESTKEY" not in out
    assert os.environ["ANTHROPIC_API_KEY"] == PLANTED_KEY


# --- Ctrl-C ------------------------------------------------------------------------------------------


def test_a_probe_still_running_does_not_hold_up_the_end() -> None:
    release = threading.Event()
    threading.Timer(15, release.set).start()  # frees the probe if the end waits for it

    async def checks() -> list[Check]:
        await asyncio.wait_for(asyncio.to_thread(release.wait), 0.1)  # ended while a probe hangs
        return []

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        doctor._run(checks())
    took = time.monotonic() - started
    release.set()
    assert took < 5, f"doctor waited {took:.1f}s for a probe it no longer needs"


def test_ctrl_c_ends_doctor_while_claude_version_hangs(tmp_path: Path) -> None:
    started = tmp_path / "claude-started"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude"
    # Hangs for as long as doctor runs, deaf to Ctrl-C, and says when it has started.
    fake.write_text(f"#!/bin/sh\ntrap '' INT\n: > '{started}'\nwhile kill -0 $PPID 2>/dev/null; do sleep 0.1; done\n")
    fake.chmod(0o755)
    path = tmp_path / "config.toml"
    path.write_text(f'listen = "127.0.0.1:{closed_port()}"\n[cloud]\nurl = "http://127.0.0.1:{closed_port()}"\n'
                    "[discovery]\nenabled = false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "NONSTOP_"))}
    env.update(HOME=str(tmp_path), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    p = subprocess.Popen([sys.executable, "-m", "nonstop", "doctor", "--config", str(path)], env=env, cwd=tmp_path,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60  # generous: start-up on a loaded machine
        while not started.exists():
            assert p.poll() is None and time.monotonic() < deadline, "doctor never ran `claude --version`"
            time.sleep(0.05)
        code, took = interrupt(p, "`nonstop doctor`")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert code == 130
    assert took < 2.0, f"it took {took:.1f}s to end after Ctrl-C"
