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
from collections.abc import Iterator
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


# --- --host / --port: where the gateway listens, or is dialled ------------------------------------------


@pytest.fixture
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config-here"))
    monkeypatch.setenv("NONSTOP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("NONSTOP_CONFIG", raising=False)
    monkeypatch.delenv("NONSTOP_TOKEN", raising=False)
    return tmp_path


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--port", "70000", "'70000' is not a port number; use 1-65535"),
    ("--port", "0", "'0' is not a port number; use 1-65535"),
    ("--port", "-5", "'-5' is not a port number; use 1-65535"),
    ("--port", "http", "'http' is not a port number; use 1-65535"),
    ("--port", "\u00b2", "'\u00b2' is not a port number; use 1-65535"),
    ("--port", "\u0663", "'\u0663' is not a port number; use 1-65535"),
    ("--host", "..", "'..' is not a host name or address"),
    ("--host", "a" * 64, f"'{'a' * 64}' is not a host name or address"),
    ("--host", "localhost:8787", "'localhost:8787' is not a host name or address; give the port with --port"),
    ("--host", "[::1]:8787", "give the port with --port"),
    ("--host", "http://127.0.0.1", "is a URL; give only the host name or address"),
    ("--host", "", "'' is not a host name or address"),
    ("--host", "a b", "'a b' is not a host name or address"),
])
@pytest.mark.parametrize("command", ["serve", "status", "logs", "doctor", "eval", "models", "claude"])
def test_a_bad_address_option_is_refused_as_that_option(
    no_config: Path, capsys: pytest.CaptureFixture[str], command: str, option: str, value: str, says: str,
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and says in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-5", "10001", "many", ""])
def test_a_bad_number_of_log_rows_is_refused(no_config: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    """`nonstop logs -n 0` would print every row the gateway gives, and -5 the oldest: refused."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["logs", "-n", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument -n/--limit: {value!r} is not a number of rows; use 1-10000" in err, err


def test_every_option_says_what_it_does() -> None:
    """`--help` explains each option (the reference in docs/reference.md lists them too)."""
    from nonstop.cli.commands import build_parser

    def actions(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from ((f"{name} {where}".strip(), b) for where, b in actions(sub))
            else:
                yield "", a

    silent = [(where, a.option_strings or a.dest) for where, a in actions(build_parser()) if not a.help]
    assert silent == [], silent


@pytest.mark.parametrize(("argv", "listen"), [
    (["--host", "[::1]"], "[::1]:8787"),
    (["--host", "::1", "--port", "9914"], "[::1]:9914"),
    (["--host", "localhost"], "localhost:8787"),
    (["--port", "65535"], "127.0.0.1:65535"),
])
@pytest.mark.parametrize("command", ["status", "logs", "doctor", "eval", "models"])
def test_the_dialling_commands_take_the_address_given(
    no_config: Path, monkeypatch: pytest.MonkeyPatch, command: str, argv: list[str], listen: str,
) -> None:
    """eval and models read the running gateway's backends, as status, logs and doctor read
    its state: a gateway started with `nonstop serve --port N` is found with the same option."""
    from nonstop.cli import doctor, models, status
    from nonstop.cli import eval as eval_cmd

    seen: list[str] = []
    for module, name in ((status, "cmd_status"), (status, "cmd_logs"), (doctor, "main"), (eval_cmd, "main"),
                         (models, "main")):
        monkeypatch.setattr(module, name, lambda cfg, *a, **kw: seen.append(cfg.listen) or 0)
    assert cli.main([command, *argv]) == 0
    assert seen == [listen]


@pytest.mark.parametrize("command", ["status", "logs", "doctor", "eval", "models"])
def test_dialling_an_exposed_address_needs_no_token(
    no_config: Path, monkeypatch: pytest.MonkeyPatch, command: str,
) -> None:
    """Only a gateway that listens beyond loopback needs a token; a command that dials one
    (its token comes from the config or NONSTOP_TOKEN, where the gateway asks for it) is not refused."""
    from nonstop.cli import doctor, models, status
    from nonstop.cli import eval as eval_cmd

    seen: list[str] = []
    for module, name in ((status, "cmd_status"), (status, "cmd_logs"), (doctor, "main"), (eval_cmd, "main"),
                         (models, "main")):
        monkeypatch.setattr(module, name, lambda cfg, *a, **kw: seen.append(cfg.listen) or 0)
    assert cli.main([command, "--host", "0.0.0.0"]) == 0
    assert seen == ["0.0.0.0:8787"]


@pytest.mark.parametrize("command", ["serve", "claude"])
def test_listening_beyond_loopback_without_a_token_is_refused_as_the_option_given(
    no_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str,
) -> None:
    from nonstop.server import run

    monkeypatch.setattr(run, "serve", lambda cfg: pytest.fail("served without a token"))
    monkeypatch.setattr(claude, "run_claude", lambda *a: pytest.fail("started without a token"))
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--host", "0.0.0.0", "--port", "9914"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nonstop: --host 0.0.0.0 --port 9914 is reachable from other machines, "
                          "so an access token is required"), err
    assert "configuration problem" not in err and "listen:" not in err


@pytest.mark.parametrize(("argv", "serve"), [
    ([], "nonstop serve"),
    (["--port", "9914"], "nonstop serve --port 9914"),
    (["--host", "::1", "--port", "9914"], "nonstop serve --host ::1 --port 9914"),
    (["--config", "my config.toml"], "nonstop serve --config 'my config.toml'"),
])
@pytest.mark.parametrize("command", ["status", "logs", "doctor"])
def test_the_start_hint_names_the_address_given(
    no_config: Path, monkeypatch: pytest.MonkeyPatch, command: str, argv: list[str], serve: str,
) -> None:
    """`nonstop status --port N` with nothing there says to start `nonstop serve --port N`,
    the gateway it looked for, not one on the config's address."""
    from nonstop.cli import doctor, status

    monkeypatch.chdir(no_config)
    (no_config / "my config.toml").write_text("")
    seen: list[str] = []
    for module, name in ((status, "cmd_status"), (status, "cmd_logs"), (doctor, "main")):
        monkeypatch.setattr(module, name, lambda cfg, *a, serve, **kw: seen.append(serve) or 0)
    assert cli.main([command, *argv]) == 0
    assert seen == [serve]


@pytest.mark.parametrize("command", ["status", "logs", "doctor", "eval", "models", "explain", "claude"])
def test_a_gateway_started_on_another_port_is_found_by_its_note(
    no_config: Path, monkeypatch: pytest.MonkeyPatch, command: str,
) -> None:
    """`nonstop serve --port N` notes where it listens; `nonstop status` (no option) finds it
    there when nothing answers at the config's address and the gateway there says it is
    the note's process (its /health). An option given wins."""
    from nonstop.cli import claude, common, doctor, explain, models, status
    from nonstop.cli import eval as eval_cmd
    from nonstop.store import listening

    seen: list[str] = []
    for module, name in ((status, "cmd_status"), (status, "cmd_logs"), (doctor, "main"), (eval_cmd, "main"),
                         (models, "main"), (explain, "main"), (claude, "run_claude")):
        monkeypatch.setattr(module, name, lambda cfg, *a, **kw: seen.append(cfg.listen) or 0)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        there = f"127.0.0.1:{port}"
        listening.note(no_config / "state", there)
        monkeypatch.setattr(common, "accepts", lambda host, p, wait=0.5: p == port)
        monkeypatch.setattr(common, "answers_as", lambda host, p, pid, token="", wait=1.0: p == port and pid == os.getpid())
        extra = ["-"] if command == "explain" else []
        assert cli.main([command, *extra]) == 0
        assert cli.main([command, "--port", "9914", *extra]) == 0
    assert seen == [there, "127.0.0.1:9914"]
