"""The configuration model: where state lives by default, and changing the listen address."""

from __future__ import annotations

from pathlib import Path

import pytest

from nonstop.config import ConfigError, parse_config


def test_default_state_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NONSTOP_STATE_DIR", str(tmp_path / "s"))
    assert parse_config({}).state_dir == tmp_path / "s"
    monkeypatch.delenv("NONSTOP_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "x"))
    assert parse_config({}).state_dir == tmp_path / "x" / "nonstop"


def test_with_listen_checks_exposure() -> None:
    cfg = parse_config({})
    assert cfg.with_listen(port=9999).listen == "127.0.0.1:9999"
    assert cfg.with_listen(host="::1").listen == "[::1]:8787"
    with pytest.raises(ConfigError, match="token"):
        cfg.with_listen(host="0.0.0.0")
    # A command that only dials the address holds it to no exposure rule.
    assert cfg.with_listen(host="0.0.0.0", check=False).listen == "0.0.0.0:8787"
