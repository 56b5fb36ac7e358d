"""The first-run commands at their edges: `nonstop claude` (its child's signals and exit
status, its own options, the status line offer), `init` (folders it cannot write, backups,
`~`), `statusline --install` (linked settings files), `/health` that is not nonstop's,
and doctor on an Ollama that reports odd sizes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nonstop import cli
from nonstop.backends.sizing import Device
from nonstop.cli import claude, doctor, statusline
from nonstop.config import Config, parse_config

ROOT = Path(__file__).resolve().parents[3]


# --- small fakes ---------------------------------------------------------------------------------


def _server(routes: dict[str, Any]) -> tuple[ThreadingHTTPServer, int]:
    """A loopback HTTP server answering JSON for the given paths (GET, POST, HEAD), 404 else."""

    class H(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = routes.get(self.path)
            if body is None:
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._answer()

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer()

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self._answer()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture
def fake_nonstop() -> Iterator[int]:
    """A port whose /health answers the way a running nonstop does."""
    server, port = _server({"/health": {"status": "ok", "cloud": "serving", "local": [], "pid": 4242}})
    yield port
    server.shutdown()
    server.server_close()


def _fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "claude"
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return script


def _config(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'listen = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n{extra}')
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-config"))
    for name in ("NONSTOP_CONFIG", "NONSTOP_TOKEN", "NONSTOP_STATE_DIR", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


# --- nonstop claude ------------------------------------------------------------------------------


def test_claude_killed_by_a_signal_gives_a_shell_style_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nonstop: int
) -> None:
    """When Claude Code dies from a signal (an OOM killer, `kill`, a closed terminal), `nonstop
    claude` exits as a shell reports it: 128 + the signal number (143 for SIGTERM), not the
    -15 that became status 241."""
    _fake_claude(tmp_path, monkeypatch, "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    code = cli.main(["claude", "--config", str(_config(tmp_path, fake_nonstop)), "-p", "hi"])
    assert code == 128 + signal.SIGTERM, f"exit code {code}"


CTRL_C_CLAUDE = """\
import os, signal, sys, time
ready, cleaned = sys.argv[-2], sys.argv[-1]
def on_int(*_):
    time.sleep(0.5)          # Claude Code finishing its turn, restoring the terminal
    open(cleaned, "w").write("done")
    sys.exit(0)
signal.signal(signal.SIGINT, on_int)
open(ready, "w").write("ready")
time.sleep(30)
"""


def test_ctrl_c_is_left_to_claude_instead_of_sigkilling_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nonstop: int
) -> None:
    """Ctrl-C reaches the whole foreground process group, nonstop and Claude Code alike. Claude
    Code handles it (interrupts the turn, restores the terminal); nonstop ignores it while
    the child runs and returns the child's status, where subprocess.call's handler used to
    SIGKILL the child."""
    script = _fake_claude(tmp_path, monkeypatch, CTRL_C_CLAUDE)
    ready, cleaned = tmp_path / "ready", tmp_path / "cleaned"
    config = _config(tmp_path, fake_nonstop)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "NONSTOP_"))}
    env["PYTHONPATH"] = str(ROOT / "src")
    p = subprocess.Popen(
        [sys.executable, "-m", "nonstop", "claude", "--config", str(config), "-p", "hi", str(ready), str(cleaned)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), f"fake claude ({script}) never started"
        os.killpg(p.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        code = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if p.stderr:
            p.stderr.close()
    assert cleaned.exists(), "Claude Code was killed before it could handle Ctrl-C"
    assert code == 0


def test_claude_accepts_config_with_equals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nonstop claude --config=FILE` uses FILE, as `--config FILE` does and as every other
    command takes it, rather than handing `--config=FILE` to Claude Code."""
    path = tmp_path / "mine.toml"
    path.write_text('listen = "127.0.0.1:9914"\n')
    seen: dict[str, Any] = {}

    def fake_run(cfg: Config, rest: list[str], args: argparse.Namespace) -> int:
        seen.update(cfg=cfg, rest=rest)
        return 0

    monkeypatch.setattr(claude, "run_claude", fake_run)
    assert cli.main(["claude", f"--config={path}", "-p", "hi"]) == 0
    assert seen["rest"] == ["-p", "hi"]
    assert seen["cfg"].source == str(path)


def test_claude_install_statusline_with_unparsable_settings_is_a_message_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nonstop: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Claude Code settings.json that is not strict JSON (a comment, a trailing comma) stops
    only the optional status line: nonstop names the file, and Claude Code runs."""
    record = tmp_path / "ran"
    _fake_claude(tmp_path, monkeypatch, f"open({str(record)!r}, 'w').write('ran')\n")
    settings = tmp_path / "claude-config" / "settings.json"
    settings.parent.mkdir()
    settings.write_text('{\n  // my settings\n  "model": "opus",\n}\n')
    try:
        code = cli.main(["claude", "--config", str(_config(tmp_path, fake_nonstop)), "--install-statusline", "-p", "x"])
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"traceback instead of a message: {exc!r}")
    assert str(settings) in capsys.readouterr().err
    assert record.exists() or code != 0
    assert settings.read_text().startswith("{\n  // my settings")  # left alone


def test_statusline_install_keeps_a_symlinked_settings_file_a_symlink(tmp_path: Path) -> None:
    """A settings.json linked from a dotfiles repository is edited where it is: the link stays
    a link."""
    target = tmp_path / "dotfiles" / "claude-settings.json"
    target.parent.mkdir()
    target.write_text('{"model": "opus"}\n')
    link = tmp_path / "claude-config" / "settings.json"
    link.parent.mkdir()
    link.symlink_to(target)
    statusline.install(link)
    assert link.is_symlink(), "the symlink was replaced by a regular file"
    assert json.loads(target.read_text())["statusLine"]["command"] == "nonstop statusline"


def test_health_does_not_take_any_status_json_for_nonstop(tmp_path: Path) -> None:
    """Another program on the port whose /health says {"status": "UP"} is not nonstop: neither
    `nonstop claude` (which would point Claude Code, with the user's credentials, at it) nor
    doctor take it for one."""
    server, port = _server({"/health": {"status": "UP"}})
    try:
        cfg = Config(listen=f"127.0.0.1:{port}", state_dir=tmp_path / "state")
        assert claude.health(cfg) is None, "a foreign /health was taken for nonstop"
    finally:
        server.shutdown()
        server.server_close()


# --- nonstop init --------------------------------------------------------------------------------


def test_init_into_a_path_it_cannot_create_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nonstop init` into a folder it cannot make or write says so and exits non-zero."""
    (tmp_path / "afile").write_text("")
    try:
        code = cli.main(["init", "--no-discover", "--config", str(tmp_path / "afile" / "config.toml")])
    except OSError as exc:
        pytest.fail(f"traceback instead of a message: {exc!r}")
    assert code != 0
    assert "afile" in capsys.readouterr().out


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_init_never_moves_a_folder_or_a_device_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], force: list[str],
) -> None:
    """`--config` naming a folder (or /dev/null) is a mistake: with --force it would have been
    renamed to .bak and a file written in its place."""
    folder = tmp_path / "nonstop"
    folder.mkdir()
    (folder / "config.toml").write_text("# mine\n")
    assert cli.main(["init", "--no-discover", *force, "--config", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"{folder} is not a file but a folder" in out and str(folder / "config.toml") in out, out
    assert not (tmp_path / "nonstop.bak").exists() and (folder / "config.toml").read_text() == "# mine\n"
    assert [p.name for p in folder.iterdir()] == ["config.toml"]
    assert cli.main(["init", "--no-discover", *force, "--config", "/dev/null"]) == 1
    assert "/dev/null is not a file but a special file" in capsys.readouterr().out
    assert Path("/dev/null").is_char_device()


def test_init_force_writes_the_file_a_symlink_names_and_keeps_the_link(tmp_path: Path) -> None:
    """A config kept in a dotfiles folder and linked into place stays linked."""
    (tmp_path / "dotfiles").mkdir()
    real = tmp_path / "dotfiles" / "nonstop.toml"
    real.write_text("# mine\n")
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    assert cli.main(["init", "--no-discover", "--force", "--config", str(link)]) == 0
    assert link.is_symlink() and link.resolve() == real
    assert "[cloud]" in real.read_text()
    assert (tmp_path / "dotfiles" / "nonstop.toml.bak").read_text() == "# mine\n"


def test_init_through_a_symlink_loop_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    loop = tmp_path / "config.toml"
    loop.symlink_to(loop)
    assert cli.main(["init", "--no-discover", "--force", "--config", str(loop)]) == 1
    assert "is a symbolic link that leads to itself" in capsys.readouterr().out
    assert loop.is_symlink()


def test_init_force_twice_keeps_the_users_own_config(tmp_path: Path) -> None:
    """A second `nonstop init --force` keeps the first backup (the user's own file): the next
    one is numbered."""
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "config.toml"
    mine = '# my hand-tuned config\nlisten = "127.0.0.1:9999"\n'
    path.write_text(mine)
    for _ in range(2):
        assert cli.main(["init", "--no-discover", "--force", "--config", str(path)]) == 0
    kept = [p.read_text() for p in path.parent.iterdir() if p.name != "config.toml"]
    assert mine in kept, "the user's original config is no longer anywhere"


def test_init_force_again_and_again_keeps_the_users_own_and_the_newest_backups(tmp_path: Path) -> None:
    """Backups do not pile up: NAME.bak (the user's own file) stays for good, and of the
    numbered ones the newest KEEP_BACKUPS, numbered on from the newest even when older
    ones were removed (so the highest number is always the latest)."""
    from nonstop.cli.init import KEEP_BACKUPS

    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "config.toml"
    path.write_text("# mine\n")
    (tmp_path / "cfg" / "config.toml.bak.x").write_text("not one of ours")
    for i in range(KEEP_BACKUPS + 4):
        assert cli.main(["init", "--no-discover", "--force", "--config", str(path)]) == 0
        path.write_text(f"# edit {i}\n")  # each run replaces what the user made of the last
    names = sorted(p.name for p in path.parent.iterdir())
    numbered = [f"config.toml.bak.{n}" for n in range(4, KEEP_BACKUPS + 4)]
    assert names == sorted(["config.toml", "config.toml.bak", "config.toml.bak.x", *numbered]), names
    assert (path.parent / "config.toml.bak").read_text() == "# mine\n"
    assert (path.parent / f"config.toml.bak.{KEEP_BACKUPS + 3}").read_text() == f"# edit {KEEP_BACKUPS + 2}\n"


def test_init_and_config_check_agree_on_a_tilde_config_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--config=~/n.toml` (a shell leaves `~` as it is after `=`) names the same file for
    `init`, which writes it, and for every command that reads it."""
    home = tmp_path / "home"
    assert cli.main(["init", "--no-discover", "--config=~/n.toml"]) == 0
    assert (home / "n.toml").exists()
    capsys.readouterr()
    assert cli.main(["config", "check", "--config=~/n.toml"]) == 0, capsys.readouterr().out


# --- nonstop doctor ------------------------------------------------------------------------------


def test_doctor_survives_an_ollama_with_a_garbled_parameter_size(tmp_path: Path) -> None:
    """An Ollama reporting a parameter size that is no number ("1.2.3B") leaves the model's
    size unknown; doctor goes on."""
    server, port = _server({
        "/api/version": {"version": "0.15.0"},
        "/api/tags": {"models": [{"name": "m:latest", "size": 100}]},
        "/api/ps": {"models": []},
        "/api/show": {"capabilities": ["completion", "tools"], "details": {"parameter_size": "1.2.3B"},
                      "model_info": {}},
    })
    try:
        cfg = parse_config({"local": [{"name": "x", "url": f"http://127.0.0.1:{port}", "model": "m:latest",
                                       "context_window": 32768}],
                            "state_dir": str(tmp_path / "state"),
                            "cloud": {"url": f"http://127.0.0.1:{port}"}})
        probes = doctor.Probes(
            health=lambda c: None, embedded_stack=lambda e: (None, None), which=lambda n: None,
            run_version=lambda a, e: (0, "v"), machine=lambda: [Device("ram", "RAM", 16 << 30, 8 << 30)],
        )
        lines: list[str] = []
        try:
            doctor.main(cfg, env={}, probes=probes, out=lines.append)
        except ValueError as exc:
            pytest.fail(f"doctor crashed: {exc!r}")
        assert "local x" in "\n".join(lines)
    finally:
        server.shutdown()
        server.server_close()


def test_the_settings_file_is_never_readable_by_others_while_it_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claude Code's settings can hold keys in `env`: the new file is owner-only from its
    first byte, then takes the original's mode as it replaces it."""
    settings = tmp_path / "claude-config" / "settings.json"
    settings.parent.mkdir()
    settings.write_text('{"env": {"ANTHROPIC_API_KEY": "sk-ant-fake"}}\n')
    settings.chmod(0o600)
    modes: list[int] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        modes.append(os.stat(src).st_mode & 0o777)
        real_replace(src, dst)

    monkeypatch.setattr(statusline.os, "replace", replace)
    fchmod: list[int] = []
    real_open = os.open

    def opening(path: Any, flags: int, mode: int = 0o777, *a: Any, **k: Any) -> int:
        if str(path).endswith(f".nonstop-{os.getpid()}"):
            fchmod.append(mode)
        return real_open(path, flags, mode, *a, **k)

    monkeypatch.setattr(statusline.os, "open", opening)
    statusline.install(settings)
    assert fchmod == [0o600] and modes == [0o600]
    assert json.loads(settings.read_text())["env"] == {"ANTHROPIC_API_KEY": "sk-ant-fake"}


def test_a_gateway_shutting_down_is_waited_for_then_a_fresh_one_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose /health says `draining` is about to exit: `nonstop claude` waits
    for it to go, then starts a fresh one, rather than handing it the session."""
    answers = [{"status": "draining", "cloud": "serving", "local": [], "pid": 1}] * 3
    monkeypatch.setattr(claude, "health", lambda cfg, timeout=1.0: answers.pop(0) if answers else None)
    started: list[bool] = []

    def start(cfg: Config, echo: Any = print) -> dict:
        started.append(True)
        return {"status": "ok", "cloud": "serving", "local": [], "pid": 2}

    monkeypatch.setattr(claude, "start_background", start)
    said: list[str] = []
    h = claude.ensure_running(Config(state_dir=tmp_path / "state"), echo=said.append, poll=0.01)
    assert h["pid"] == 2 and started == [True]
    assert said == ["nonstop: the running gateway is shutting down; waiting for it to stop"]


def test_a_gateway_that_stays_shutting_down_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claude, "health", lambda cfg, timeout=1.0: {"status": "draining", "cloud": "serving",
                                                                       "local": [], "pid": 1})
    monkeypatch.setattr(claude, "start_background", lambda *a, **k: pytest.fail("started beside a live gateway"))
    with pytest.raises(RuntimeError, match="is still shutting down"):
        claude.ensure_running(Config(state_dir=tmp_path / "state"), echo=lambda m: None, poll=0.01, wait=0.05)
