"""Real llama-server processes for integration tests.

    server = start_llama_server()          # waits for /health 200
    ... server.url, server.port, server.proc ...
    server.stop()                          # SIGTERM, then SIGKILL

`ctx` is each slot's window: the server gets `-c ctx*parallel`, because llama-server
splits its context evenly across slots. Runs SmolLM2-135M with `-t 1` (on a busy 2-core
machine `-t 2` was seen to stall mid-stream) and `--jinja` (needed for tool calls).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from nonstop.backends.llama_stack import (
    INSTALL_HINT,
    die_with_parent,
    find_bundled_model,
    find_llama_server,
    free_loopback_port,
    llama_env,
)
from tests.support import rawhttp

READY_TIMEOUT = 120.0


def free_port() -> int:
    return free_loopback_port()


def llama_available() -> bool:
    return find_llama_server() is not None and find_bundled_model() is not None


def require_llama() -> None:
    """Skip the calling test when the local model stack is not installed (fail in CI,
    where `make test` should have installed it)."""
    if llama_available():
        return
    import pytest

    message = f"llama-server or the bundled model is missing: {INSTALL_HINT}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class LlamaServer:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    model_path: Path
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_llama_server(
    port: int | None = None,
    ctx: int = 8192,
    parallel: int = 2,
    *,
    threads: int = 1,
    extra_args: tuple[str, ...] | list[str] = (),
    log_dir: Path | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> LlamaServer:
    """Start llama-server with the bundled model and wait until /health says 200."""
    binary = find_llama_server()
    model = find_bundled_model()
    if binary is None or model is None:
        raise RuntimeError(f"llama-server or the bundled model is missing: {INSTALL_HINT}")
    port = port or free_port()
    folder = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="llama-test-"))
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"llama-server-{port}.log"
    argv = [
        str(binary), "-m", str(model), "-c", str(ctx * parallel), "-np", str(parallel),
        "-t", str(threads), "--jinja", "--host", "127.0.0.1", "--port", str(port),
        *extra_args,
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=llama_env(binary),
            preexec_fn=die_with_parent(),
        )
    server = LlamaServer(proc, port, log_path, model, argv)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"llama-server exited with code {proc.returncode}:\n{server.log_tail()}"
            )
        if _health_ok(server.url):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"llama-server not ready in {ready_timeout}s:\n{server.log_tail()}")
        time.sleep(0.1)


def _health_ok(url: str) -> bool:
    try:
        return rawhttp.request("GET", url + "/health", timeout=2)[0] == 200
    except (OSError, ValueError):
        return False
