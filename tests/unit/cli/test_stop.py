"""`nonstop stop`: a real gateway is stopped as SIGTERM stops it, found where the other
commands find it; nothing else is ever signalled."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nonstop.cli import stop
from nonstop.config import parse_config
from nonstop.store import listening
from tests.support import rawhttp
from tests.support.procs import free_port
from tests.unit.store.test_listening import Gateway, closed_port, gateway, listener  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[3]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "NONSTOP_", "CLAUDE_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _config(tmp_path: Path, port: int, token: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
                      + (f'token = "{token}"\n' if token else "")
                      + f'[cloud]\nurl = "http://127.0.0.1:{closed_port()}"\n'
                      '[discovery]\nenabled = false\n[embedded]\nmode = "never"\n')
    return config


def _nonstop(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nonstop", *args], capture_output=True, text=True,
                          env=_env(**env), cwd=ROOT, timeout=120)


def _start(*args: str, port: int, token: str = "") -> subprocess.Popen[bytes]:
    """`nonstop serve ARGS`, once its /health at `port` answers."""
    p = subprocess.Popen([sys.executable, "-m", "nonstop", "serve", *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         env=_env(), cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if rawhttp.request("GET", f"http://127.0.0.1:{port}/health",
                               headers={"x-nonstop-token": token} if token else None, timeout=2)[0] == 200:
                return p
        except (OSError, ValueError):
            time.sleep(0.1)
    p.kill()
    p.wait()
    raise AssertionError("the gateway did not start")


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """A real gateway started with --port, so only its note says where it is."""
    port = free_port()
    config = _config(tmp_path, closed_port())
    p = _start("--config", str(config), "--port", str(port), port=port)
    try:
        yield p, config, port
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_it_stops_the_gateway_its_note_names_and_the_note_goes_with_it(serving) -> None:
    p, config, port = serving
    state = config.parent / "state"
    assert listening.read(state) == [(f"127.0.0.1:{port}", p.pid)]
    done = _nonstop("stop", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stopping the gateway at http://127.0.0.1:{port} (pid {p.pid})" in done.stdout
    assert done.stdout.rstrip().endswith("stopped")
    assert p.wait(5) == 0  # a clean drain
    assert listening.read(state) == []
    again = _nonstop("stop", "--config", str(config))
    assert again.returncode == 1 and "no gateway answers" in again.stderr


def test_with_a_token_it_needs_the_token(tmp_path: Path) -> None:
    port = free_port()
    token = "stop-test-token-0123456789"
    config = _config(tmp_path, port, token=token)
    p = _start("--config", str(config), port=port, token=token)
    try:
        other = tmp_path / "other.toml"
        other.write_text(f'listen = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state2"}"\n')
        refused = _nonstop("stop", "--config", str(other))
        assert refused.returncode == 1 and "another access token" in refused.stderr, refused.stderr
        assert p.poll() is None
        done = _nonstop("stop", "--config", str(other), NONSTOP_TOKEN=token)
        assert done.returncode == 0, done.stderr
        assert p.wait(5) == 0
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_nothing_answers(tmp_path: Path) -> None:
    done = _nonstop("stop", "--config", str(_config(tmp_path, closed_port())))
    assert done.returncode == 1 and "nothing to stop" in done.stderr


def test_something_else_answers(tmp_path: Path, listener: int) -> None:  # noqa: F811
    done = _nonstop("stop", "--config", str(_config(tmp_path, listener)))
    assert done.returncode == 1 and "not as nonstop" in done.stderr


def _said(lines: list[str]):
    return lambda text, file=None: lines.append(text)


def test_a_process_that_is_not_nonstop_is_never_signalled(gateway: Gateway) -> None:  # noqa: F811
    """A /health naming a process of this machine that is not nonstop (a gateway on
    another machine, reached through a tunnel, whose pid is some local program's)."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gateway.pid = victim.pid
        lines: list[str] = []
        cfg = parse_config({"listen": f"127.0.0.1:{gateway.port}"})
        assert stop.stop(cfg, echo=_said(lines)) == 1
        assert "another machine" in lines[-1]
        time.sleep(0.2)
        assert victim.poll() is None
        gateway.pid = os.getpid()  # nor the command itself
        assert stop.stop(cfg, echo=_said(lines)) == 1
    finally:
        victim.kill()
        victim.wait()


def test_a_gateway_that_does_not_stop_in_time_is_named_with_the_way_to_end_it(gateway: Gateway) -> None:  # noqa: F811
    """SIGTERM ignored (a gateway stuck in a drain): the command says so, and how to end it."""
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)", "nonstop"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ready"
        gateway.pid = stubborn.pid
        lines: list[str] = []
        cfg = parse_config({"listen": f"127.0.0.1:{gateway.port}"})
        assert stop.stop(cfg, echo=_said(lines), wait=0.5) == 1
        assert f"kill -9 {stubborn.pid}" in lines[-1]
        assert stubborn.poll() is None
    finally:
        stubborn.kill()
        stubborn.wait()


def test_an_exited_child_not_yet_reaped_counts_as_stopped(gateway: Gateway) -> None:  # noqa: F811
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "nonstop"])
    try:
        gateway.pid = child.pid
        lines: list[str] = []
        assert stop.stop(parse_config({"listen": f"127.0.0.1:{gateway.port}"}), echo=_said(lines), wait=10) == 0
        assert lines[-1] == "nonstop: stopped"
    finally:
        child.wait()


@pytest.mark.skipif(shutil.which("ps") is None, reason="no ps on this machine to read command lines with")
def test_without_proc_the_command_line_comes_from_ps(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and the BSDs have no /proc: `ps` tells whether the process is nonstop."""
    real = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if str(self) == "/proc/self/cmdline" else real(self))
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "nonstop"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert stop.is_nonstop_process(ours.pid) is True
        assert stop.is_nonstop_process(other.pid) is False
        monkeypatch.setenv("PATH", "/nonexistent")  # no ps either: nobody can tell, so nothing is signalled
        assert stop.is_nonstop_process(ours.pid) is None
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


def test_when_nothing_can_tell_nothing_is_signalled(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "nonstop"])
    try:
        gateway.pid = victim.pid
        monkeypatch.setattr(stop, "is_nonstop_process", lambda pid: None)
        lines: list[str] = []
        assert stop.stop(parse_config({"listen": f"127.0.0.1:{gateway.port}"}), echo=_said(lines)) == 1
        assert f"kill {victim.pid}" in lines[-1]
        time.sleep(0.2)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
