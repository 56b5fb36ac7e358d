"""Real processes for integration tests: the fake cloud, nonstop itself, a recording
local stand-in."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import rawhttp

ROOT = Path(__file__).resolve().parents[2]
# A planted test key: every output is grepped for it to prove it never leaks.
PLANTED_KEY = "sk-ant-api03-PLANTEDTESTKEY0123456789abcdefABCDEF-nonstop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            if rawhttp.request("GET", url, timeout=2)[0] < 500:  # e.g. 401 from a gateway that requires a token: it is up
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{url} did not answer within {timeout}s\n{tail}")


@dataclass
class Proc:
    proc: subprocess.Popen
    url: str
    log: Path
    port: int
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all_and_check(started: list[Proc]) -> None:
    """Stop each nonstop a test started and check what it wrote: no traceback, and never
    the planted credential."""
    for p in started:
        p.stop()
        out = p.output()
        assert PLANTED_KEY not in out, "a credential appeared in nonstop's output"
        assert "Traceback" not in out, f"nonstop logged a traceback:\n{out[-3000:]}"


def pid_alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _stat(pid)
    return stat is None or stat[0] != "Z"


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent`."""
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and (stat := _stat(int(e.name))) is not None and int(stat[1]) == parent]


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: state, parent, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def start_python(args: list[str], port: int, health: str, name: str, env: dict[str, str] | None = None,
                 timeout: float = 30, cwd: Path | None = None) -> Proc:
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    log = folder / f"{name}.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=str(cwd or ROOT),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + health, timeout=timeout, proc=proc, log=log)
    except Exception:
        proc.kill()
        raise
    return Proc(proc, url, log, port)


def start_fake_cloud(port: int | None = None) -> Proc:
    port = port or free_port()
    return start_python(["-m", "tests.support.fake_cloud", "--port", str(port)], port, "/_fake/requests", "fake-cloud")


def start_recorder(port: int | None = None) -> Proc:
    port = port or free_port()
    return start_python(["-m", "tests.support.recorder", "--port", str(port)], port, "/_recorded", "recorder")


def answered(recorder: Proc) -> list[dict[str, Any]]:
    """The requests a recorder (a local backend) was asked to answer, oldest first. Not
    its token counts: an instance calibrates its estimate against the server at any
    moment after start-up."""
    got = json.loads(rawhttp.request("GET", recorder.url + "/_recorded")[2])
    return [r for r in got if r["path"] != "/v1/messages/count_tokens"]


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.toml"
    path.write_text(text)
    return path


def start_nonstop(config_text: str, *, port: int | None = None, env: dict[str, str] | None = None,
                  timeout: float = 60, state_dir: Path | None = None) -> Proc:
    port = port or free_port()
    folder = Path(tempfile.mkdtemp(prefix="nonstop-test-"))
    state = state_dir or folder / "state"
    cfg = write_config(folder, f'listen = "127.0.0.1:{port}"\nstate_dir = "{state}"\n' + config_text)
    p = start_python(["-m", "nonstop", "serve", "--config", str(cfg)], port, "/health", "nonstop",
                     env={"NONSTOP_STATE_DIR": str(state), **(env or {})}, timeout=timeout)
    p.extra["config"] = cfg
    p.extra["state_dir"] = state
    return p


def set_mode(cloud: Proc, mode: str, **params: Any) -> None:
    status, _, body = rawhttp.request("POST", cloud.url + "/_fake/mode", {"mode": mode, **params})
    assert status == 200, body


def cloud_requests(cloud: Proc) -> list[dict]:
    return json.loads(rawhttp.request("GET", cloud.url + "/_fake/requests")[2])


def start_fake_openai(port: int | None = None) -> Proc:
    port = port or free_port()
    return start_python(["-m", "tests.support.fake_openai", "--port", str(port)], port, "/_recorded", "fake-openai")
