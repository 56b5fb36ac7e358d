"""The command line's dispatch: Ctrl-C ends every command at once, however it was started,
and `nonstop config check` names what is wrong with a config."""

from __future__ import annotations

import argparse
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nonstop import cli
from nonstop.cli import claude
from nonstop.cli.commands import cmd_config_check
from nonstop.config import Config, ConfigError, load_config
from nonstop.store.db import RequestRow, Store
from tests.unit.cli.ctrl_c import SIGINT_IGNORED, interrupt

ROOT = Path(__file__).resolve().parents[3]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_ends_logs_follow_even_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = Store(state)
    store.open()
    store.log_request(RequestRow(ts=time.time(), model="m", backend="cloud", outcome="ok", status=200))
    store.flush()
    store.close()
    config = tmp_path / "config.toml"
    config.write_text(f'listen = "127.0.0.1:{closed_port()}"\nstate_dir = "{state}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "NONSTOP_"))}
    p = subprocess.Popen(
        [*SIGINT_IGNORED, sys.executable, "-m", "nonstop", "logs", "--follow", "--json", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in p.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert '"backend": "cloud"' in lines.get(timeout=60)  # started, and now following the log
        code, took = interrupt(p, "`nonstop logs --follow`")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        reader.join(timeout=10)
        if p.stdout:
            p.stdout.close()
    assert code == 0
    assert took < 2.0, f"it took {took:.1f}s to end after Ctrl-C"


def test_ctrl_c_while_nonstop_claude_starts_the_gateway_ends_with_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'listen = "127.0.0.1:{closed_port()}"\n')

    def interrupted(cfg: Config, rest: list[str], args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(claude, "run_claude", interrupted)
    assert cli.main(["claude", "--config", str(config), "-p", "hi"]) == 130
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("toml", [
    '[cloud]\nurl = "http://[::1:8080"\n',
    '[[local]]\nname = "llama"\nurl = "http://[fe80::1:8080/"\n',
], ids=["cloud", "local"])
def test_a_malformed_ipv6_url_is_reported_as_a_config_problem(
    tmp_path: Path, toml: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL with an unclosed IPv6 bracket (a one-character typo) in a config file is a
    config problem naming its key: `nonstop config check` lists it and exits 1, and
    `serve`, `status` and `doctor` report it the same way, with no traceback."""
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("url" in p for p in caught.value.problems), caught.value.problems
    assert cmd_config_check(argparse.Namespace(file=str(path), config=None)) == 1
    assert "problems found" in capsys.readouterr().out
