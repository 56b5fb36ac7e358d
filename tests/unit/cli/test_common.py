"""What the commands share: one gateway address, one set of Claude Code settings paths,
one request-log file."""

from __future__ import annotations

from pathlib import Path

import pytest

from nonstop.cli import claude, statusline
from nonstop.cli.common import (
    claude_settings_files,
    claude_user_settings,
    client_host,
    db_path,
    gateway_url,
)
from nonstop.config import Config
from nonstop.store.db import Store


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", "http://127.0.0.1:8787"),
    ("0.0.0.0", "http://127.0.0.1:8787"),
    ("", "http://127.0.0.1:8787"),
    ("::", "http://[::1]:8787"),
    ("::1", "http://[::1]:8787"),
    ("fd00::5", "http://[fd00::5]:8787"),
    ("192.168.1.5", "http://192.168.1.5:8787"),
    ("localhost", "http://localhost:8787"),
])
def test_gateway_url(host: str, expected: str) -> None:
    assert gateway_url(host, 8787) == expected


@pytest.mark.parametrize("listen", ["127.0.0.1:8787", "0.0.0.0:8787", "[::]:8787", "[::1]:8787", "localhost:8787"])
def test_every_command_dials_the_same_address(listen: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = Config(listen=listen, token="t")
    config_file = tmp_path / "config.toml"
    config_file.write_text(f'listen = "{listen}"\n')
    for name in ("NONSTOP_TOKEN", "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    host, port = statusline.locate(str(config_file), None)[:2]
    assert host == client_host(cfg.host) and port == cfg.port
    assert claude.claude_env(cfg, {})["ANTHROPIC_BASE_URL"] == gateway_url(host, port)


def test_user_settings_default_to_the_home_folder(tmp_path: Path) -> None:
    assert claude_user_settings({"HOME": str(tmp_path)}) == tmp_path / ".claude" / "settings.json"


@pytest.mark.parametrize(("given", "expected"), [("~/cc", "cc"), ("~", ""), ("{tmp}/abs", "abs")])
def test_user_settings_honour_claude_config_dir(tmp_path: Path, given: str, expected: str) -> None:
    env = {"HOME": str(tmp_path), "CLAUDE_CONFIG_DIR": given.format(tmp=tmp_path)}
    assert claude_user_settings(env) == tmp_path / expected / "settings.json"


def test_settings_files_are_those_that_exist_user_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    (home / ".claude").mkdir(parents=True)
    (project / ".claude").mkdir(parents=True)
    monkeypatch.chdir(project)
    env = {"HOME": str(home)}
    assert claude_settings_files(env) == []
    for f in (project / ".claude" / "settings.local.json", home / ".claude" / "settings.json"):
        f.write_text("{}")
    assert claude_settings_files(env) == [home / ".claude" / "settings.json", project / ".claude" / "settings.local.json"]
    (project / ".claude" / "settings.json").write_text("{}")
    assert len(claude_settings_files(env)) == 3


def test_the_commands_read_the_log_the_gateway_writes(tmp_path: Path) -> None:
    assert Store(tmp_path).path == db_path(tmp_path) == tmp_path / "nonstop.db"
