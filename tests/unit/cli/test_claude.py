"""`nonstop claude`: the environment Claude Code gets, and running it."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nonstop import cli
from nonstop.cli import claude, common
from nonstop.cli.common import gateway_url
from nonstop.config import Config
from tests.support.procs import PLANTED_KEY


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cfg_at(port: int = 8787, host: str = "127.0.0.1", token: str = "", tmp: Path | None = None) -> Config:
    kw: dict[str, Any] = {"listen": f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "token": token}
    if tmp is not None:
        kw["state_dir"] = tmp / "state"
    return Config(**kw)


# --- claude_env ----------------------------------------------------------------------------------


def test_claude_env_points_at_nonstop_and_leaves_credentials_alone() -> None:
    base = {"ANTHROPIC_API_KEY": PLANTED_KEY, "ANTHROPIC_AUTH_TOKEN": "tok-123", "PATH": "/bin",
            "ANTHROPIC_BASE_URL": "https://api.anthropic.com"}
    env = claude.claude_env(cfg_at(9911), base)
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9911"
    assert env["ANTHROPIC_API_KEY"] == PLANTED_KEY and env["ANTHROPIC_AUTH_TOKEN"] == "tok-123"
    assert env["PATH"] == "/bin"
    assert "ANTHROPIC_CUSTOM_HEADERS" not in env
    # The caller's mapping is not changed.
    assert base["ANTHROPIC_BASE_URL"] == "https://api.anthropic.com"


def test_claude_env_adds_no_credentials_of_its_own() -> None:
    env = claude.claude_env(cfg_at(), {})
    assert set(env) == {"ANTHROPIC_BASE_URL", "CLAUDE_CODE_GATEWAY_HINT_HEADERS"}


def test_claude_env_asks_claude_code_for_the_request_class_header() -> None:
    assert claude.claude_env(cfg_at(), {})["CLAUDE_CODE_GATEWAY_HINT_HEADERS"] == "1"
    # A user's own choice stands.
    assert claude.claude_env(cfg_at(), {"CLAUDE_CODE_GATEWAY_HINT_HEADERS": "0"})["CLAUDE_CODE_GATEWAY_HINT_HEADERS"] == "0"


def test_claude_env_sends_the_nonstop_token_as_a_custom_header() -> None:
    env = claude.claude_env(cfg_at(token="s3cret-token"), {})
    assert env["ANTHROPIC_CUSTOM_HEADERS"] == "x-nonstop-token: s3cret-token"
    env = claude.claude_env(cfg_at(token="s3cret-token"), {"ANTHROPIC_CUSTOM_HEADERS": "x-team: blue"})
    assert env["ANTHROPIC_CUSTOM_HEADERS"].splitlines() == ["x-team: blue", "x-nonstop-token: s3cret-token"]


@pytest.mark.parametrize(("host", "expected"), [
    ("0.0.0.0", "http://127.0.0.1:8787"),
    ("::", "http://[::1]:8787"),
    ("::1", "http://[::1]:8787"),
    ("localhost", "http://localhost:8787"),
])
def test_claude_env_url_for_each_kind_of_listen_address(host: str, expected: str) -> None:
    env = claude.claude_env(cfg_at(host=host, token="t" if host == "0.0.0.0" else ""), {})
    assert env["ANTHROPIC_BASE_URL"] == expected


def test_claude_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", PLANTED_KEY)
    env = claude.claude_env(cfg_at(9912))
    assert env["ANTHROPIC_API_KEY"] == PLANTED_KEY and env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9912"


# --- health ------------------------------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    body: bytes = b'{"status": "ok", "pid": 4242, "cloud": "serving", "local": []}'
    seen_tokens: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        type(self).seen_tokens.append(self.headers.get("x-nonstop-token", ""))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_nonstop() -> Iterator[int]:
    """Something on a loopback port that answers /health like nonstop does."""
    _Health.seen_tokens = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_health_answers_only_for_nonstop(fake_nonstop: int) -> None:
    h = claude.health(cfg_at(fake_nonstop, token="tok"))
    assert h is not None and h["pid"] == 4242
    assert _Health.seen_tokens == ["tok"]
    assert claude.health(cfg_at(closed_port())) is None


# --- run_claude ----------------------------------------------------------------------------------------


FAKE_CLAUDE = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
with open({record!r}, "w") as fh:
    json.dump({{"argv": args, "env": {{k: v for k, v in os.environ.items() if k.startswith("ANTHROPIC_")}}}}, fh)
sys.exit(int(args[args.index("--exit") + 1]) if "--exit" in args else 0)
"""


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `claude` on PATH that records its arguments and ANTHROPIC_* environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "claude-run.json"
    script = bin_dir / "claude"
    script.write_text(FAKE_CLAUDE.format(python=sys.executable, record=str(record)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return record


def no_start(*_: Any, **__: Any) -> dict:
    raise AssertionError("nonstop must not be started here")


def test_run_claude_without_claude_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(claude, "ensure_running", no_start)
    code = claude.run_claude(cfg_at(tmp=tmp_path), ["-p", "hi"], argparse.Namespace())
    assert code == 127
    err = capsys.readouterr().err
    assert "npm install -g @anthropic-ai/claude-code" in err and "not on PATH" in err


def test_run_claude_passes_arguments_environment_and_exit_code(
    tmp_path: Path, fake_claude: Path, fake_nonstop: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", PLANTED_KEY)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://elsewhere.example")
    cfg = cfg_at(fake_nonstop, tmp=tmp_path)
    args = ["-p", "Say hi", "--output-format", "json", "--tools", "", "--exit", "3"]
    code = claude.run_claude(cfg, args, argparse.Namespace(install_statusline=False))
    assert code == 3
    seen = json.loads(fake_claude.read_text())
    # nonstop's own --settings comes first (it beats settings-file env), then the user's args.
    assert seen["argv"][0] == "--settings"
    assert json.loads(seen["argv"][1]) == {"env": {"ANTHROPIC_BASE_URL": gateway_url(cfg.host, cfg.port)}}
    assert seen["argv"][2:] == args
    assert seen["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{fake_nonstop}"
    assert seen["env"]["ANTHROPIC_API_KEY"] == PLANTED_KEY
    assert "ANTHROPIC_AUTH_TOKEN" not in seen["env"]


@pytest.mark.parametrize("managed_url", ["https://gateway.corp.example", "http://localhost:{port}", None],
                         ids=["elsewhere", "nonstop", "none"])
def test_run_claude_warns_when_managed_settings_send_claude_elsewhere(
    tmp_path: Path, fake_claude: Path, fake_nonstop: int, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], managed_url: str | None,
) -> None:
    """An organization's managed settings win over the launcher's --settings: nonstop
    cannot route around them, but it says so before the session starts."""
    managed = tmp_path / "managed-settings.json"
    if managed_url is not None:
        managed.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": managed_url.format(port=fake_nonstop)}}))
    monkeypatch.setattr(common, "MANAGED_SETTINGS", {})
    monkeypatch.setattr(common, "MANAGED_SETTINGS_ELSEWHERE", str(managed))
    cfg = cfg_at(fake_nonstop, tmp=tmp_path)
    assert claude.run_claude(cfg, ["-p", "hi"], argparse.Namespace(install_statusline=False)) == 0
    err = capsys.readouterr().err
    if managed_url == "https://gateway.corp.example":
        assert f"{managed} (your organization's managed settings)" in err and "gateway.corp.example" in err
        assert "will not go through nonstop" in err
    else:
        assert "managed settings" not in err


def test_run_claude_reports_a_gateway_that_cannot_start(
    tmp_path: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(cfg: Config, echo: Any = print) -> dict:
        raise RuntimeError("nonstop exited with code 2 while starting")

    monkeypatch.setattr(claude, "ensure_running", fail)
    assert claude.run_claude(cfg_at(tmp=tmp_path), ["-p", "x"], argparse.Namespace()) == 1
    assert "exited with code 2" in capsys.readouterr().err
    assert not fake_claude.exists()


# --- the command line keeps claude's arguments intact ----------------------------------------------------


@pytest.mark.parametrize(("argv", "rest", "config", "listen"), [
    (["claude", "-p", "hi", "--definitely-not-a-flag"], ["-p", "hi", "--definitely-not-a-flag"], None, "127.0.0.1:8787"),
    (["claude", "--config", "{cfg}", "-p", "hi", "--model", "x"], ["-p", "hi", "--model", "x"], "{cfg}", "127.0.0.1:9913"),
    (["claude", "--", "--config", "theirs"], ["--config", "theirs"], None, "127.0.0.1:8787"),
    (["claude", "--config", "{cfg}", "--help"], ["--help"], "{cfg}", "127.0.0.1:9913"),
    # nonstop's own --host / --port, before Claude Code's arguments: where the gateway is (or starts).
    (["claude", "--port", "9914", "--config={cfg}", "-p", "hi"], ["-p", "hi"], "{cfg}", "127.0.0.1:9914"),
    (["claude", "--host=127.0.0.2", "--port=9915", "-p", "--port"], ["-p", "--port"], None, "127.0.0.2:9915"),
])
def test_cli_hands_everything_after_claude_to_claude(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], rest: list[str], config: str | None, listen: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('listen = "127.0.0.1:9913"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config-here"))
    monkeypatch.delenv("NONSTOP_CONFIG", raising=False)
    seen: dict[str, Any] = {}

    def fake_run(cfg: Config, got: list[str], args: argparse.Namespace) -> int:
        seen.update(cfg=cfg, rest=got, args=args)
        return 42

    monkeypatch.setattr(claude, "run_claude", fake_run)
    code = cli.main([a.format(cfg=path) for a in argv])
    assert code == 42
    assert seen["rest"] == rest
    assert seen["cfg"].source == (config.format(cfg=path) if config else "")
    assert seen["cfg"].listen == listen
