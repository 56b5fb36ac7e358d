"""The embedded server's lifecycle, with a tiny Python script standing in for llama-server.

The stand-in serves /health, and /v1/models listing its --alias, on the --port it is
given. Files next to it steer it:
`crash` makes it exit at once, `sigill` makes it die of an illegal instruction (as a
llama-server built for instructions the CPU does not run does), `delay` holds a number of seconds to wait before serving,
`ignore-term` makes it ignore SIGTERM. Like llama-server, it exits with code 1 when it
cannot bind its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from nonstop.backends import embedded as embedded_module
from nonstop.backends.embedded import EmbeddedServer, EmbeddedUnavailable, backoff_delay
from nonstop.backends.llama_stack import INSTALL_HINT, REBUILD_HINT, exit_description
from nonstop.config import EmbeddedConfig, parse_config
from nonstop.routing.classify import Verdict
from nonstop.server.runtime import Runtime
from tests.support.config import nonstop_config
from tests.support.procs import pid_alive, start_nonstop
from tests.support.waiting import wait_for

FAKE_SERVER = """\
#!{python}
import os, signal, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

here = Path(__file__).parent
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
alias = args[args.index("--alias") + 1] if "--alias" in args else ""
print("fake llama-server", os.getpid(), " ".join(args), flush=True)
if (here / "crash").exists():
    print("crashing on purpose", flush=True)
    sys.exit(3)
if (here / "sigill").exists():
    os.kill(os.getpid(), signal.SIGILL)
if (here / "ignore-term").exists():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if (here / "delay").exists():
    time.sleep(float((here / "delay").read_text()))


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path in ("/health", "/v1/models")
        body = b'{{"status":"ok"}}' if self.path == "/health" else (
            ('{{"object":"list","data":[{{"id":"' + alias + '"}}]}}').encode() if ok else b'{{"error":"not found"}}')
        self.send_response(200 if ok else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


try:
    server = HTTPServer(("127.0.0.1", port), Health)
except OSError as exc:
    print("couldn't bind HTTP server socket:", exc, flush=True)
    sys.exit(1)
server.serve_forever()
"""


async def until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Fake:
    def __init__(self, folder: Path):
        self.folder = folder
        self.script = folder / "llama-server"
        self.script.write_text(FAKE_SERVER.format(python=sys.executable))
        self.script.chmod(0o755)
        self.model = folder / "tiny-model.gguf"
        self.model.write_bytes(b"GGUF")
        self.state = folder / "state"
        self.events: list[str] = []
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def flag(self, name: str, value: str = "") -> None:
        (self.folder / name).write_text(value)

    def unflag(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def config(self, **overrides: Any) -> EmbeddedConfig:
        values: dict[str, Any] = {
            "server_path": str(self.script),
            "model_path": str(self.model),
            "context_window": 4096,
            "max_output_tokens": 1024,
            "threads": 1,
            "parallel": 2,
            "ready_timeout": 10.0,
        }
        values.update(overrides)
        return EmbeddedConfig(**values)

    async def launcher(self, *argv: str, **kwargs: Any) -> Any:
        self.calls.append((argv, kwargs))
        return await asyncio.create_subprocess_exec(*argv, **kwargs)

    def server(self, cfg: EmbeddedConfig | None = None, **kwargs: Any) -> EmbeddedServer:
        kwargs.setdefault("backoff_initial", 0.05)
        return EmbeddedServer(
            cfg or self.config(), self.state, on_event=self.events.append, launcher=self.launcher, **kwargs
        )


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[Fake]:
    f = Fake(tmp_path)
    yield f


async def test_start_serves_then_stop_ends_the_child(fake: Fake) -> None:
    server = fake.server(fake.config(extra_args=("--mlock",)))
    backend = await server.start()
    try:
        assert backend.name == "embedded"
        assert backend.url == server.url and server.url.startswith("http://127.0.0.1:")
        assert (backend.api, backend.model) == ("anthropic", "tiny-model")
        assert (backend.context_window, backend.max_output_tokens) == (4096, 1024)
        assert server.healthy and server.restarts == 0
        pid = server.pid
        assert pid is not None and pid_alive(pid)

        argv, kwargs = fake.calls[0]
        port = server.url.rsplit(":", 1)[1]
        assert argv[0] == str(fake.script)
        assert list(argv[1:]) == [
            "-m", str(fake.model), "-c", "8192", "-np", "2", "-t", "1", "--jinja",
            "--alias", "tiny-model", "--host", "127.0.0.1", "--port", port, "--mlock",
        ]
        assert kwargs["start_new_session"] is False
        if sys.platform.startswith("linux"):
            assert callable(kwargs["preexec_fn"])
        assert str(fake.script.parent) in kwargs["env"]["LD_LIBRARY_PATH"]
        assert any("ready" in e for e in fake.events)
    finally:
        await server.stop()
    assert server.pid is None and not server.healthy
    assert not pid_alive(pid)
    await server.stop()  # idempotent
    log = (fake.state / "embedded-llama.log").read_text()
    assert "fake llama-server" in log and "--jinja" in log


async def test_killed_child_is_restarted_with_backoff(fake: Fake) -> None:
    server = fake.server()
    await server.start()
    try:
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: server.healthy and server.pid not in (None, first), what="a restart")
        assert server.restarts == 1
        assert server.url.endswith(fake.calls[1][0][-1])  # the same port
        assert any("exited with code -9; restarting in 0.05s (restart 1)" in e for e in fake.events)

        # Now it keeps crashing: each retry waits twice as long as the one before.
        fake.flag("crash")
        second = server.pid
        assert second is not None
        os.kill(second, signal.SIGKILL)
        await until(lambda: server.restarts >= 4, what="repeated restarts")
        fake.unflag("crash")
        await until(lambda: server.healthy, what="recovery")
        delays = [e.split("restarting in ")[1].split("s ")[0] for e in fake.events if "restarting in" in e]
        assert delays[:4] == ["0.05", "0.1", "0.2", "0.4"]
        assert any("restart failed" in e for e in fake.events)
    finally:
        await server.stop()
    assert server.pid is None


async def test_stop_while_backing_off(fake: Fake) -> None:
    server = fake.server(backoff_initial=5.0)
    await server.start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await until(lambda: any("restarting in 5s" in e for e in fake.events), what="the backoff")
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 1.0
    assert len(fake.calls) == 1 and server.pid is None


async def test_stop_kills_a_child_that_ignores_sigterm(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_module, "STOP_GRACE", 0.3)
    fake.flag("ignore-term")
    server = fake.server()
    await server.start()
    pid = server.pid
    assert pid is not None
    await server.stop()
    assert not pid_alive(pid)


async def test_child_that_exits_while_loading(fake: Fake) -> None:
    fake.flag("crash")
    server = fake.server()
    with pytest.raises(EmbeddedUnavailable) as info:
        await server.start()
    assert "exited with code 3" in str(info.value)
    assert "crashing on purpose" in str(info.value)  # the log's last lines
    assert server.pid is None


async def test_a_child_that_dies_of_an_illegal_instruction_says_to_rebuild_it(fake: Fake) -> None:
    """A llama-server built for instructions the CPU does not run (a native build where a
    virtual machine advertises AMX, or one carried in a cache from another CPU) dies of
    SIGILL as it loads: the message says so and how to rebuild it."""
    fake.flag("sigill")
    server = fake.server()
    with pytest.raises(EmbeddedUnavailable) as info:
        await server.start()
    message = str(info.value)
    assert f"exited with code {-signal.SIGILL}" in message
    assert "illegal instruction" in message and REBUILD_HINT in message
    assert REBUILD_HINT.startswith("CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --force-reinstall --no-cache-dir")


def test_exit_description_names_only_an_illegal_instruction() -> None:
    assert exit_description(3) == "exited with code 3"
    assert exit_description(-signal.SIGKILL) == f"exited with code {-signal.SIGKILL}"
    assert "illegal instruction" in exit_description(128 + signal.SIGILL)  # as a shell reports it


async def test_ready_timeout(fake: Fake) -> None:
    fake.flag("delay", "30")
    server = fake.server(fake.config(ready_timeout=0.5))
    started = time.monotonic()
    with pytest.raises(EmbeddedUnavailable, match="ready_timeout"):
        await server.start()
    assert time.monotonic() - started < 5
    argv, _ = fake.calls[0]
    await asyncio.sleep(0.1)
    assert server.pid is None


async def test_progress_while_loading(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_module, "PROGRESS_EVERY", 0.2)
    fake.flag("delay", "0.8")
    server = fake.server()
    await server.start()
    await server.stop()
    assert any(e.startswith("loading model tiny-model... ") and e.endswith("s") for e in fake.events)


async def test_missing_binary_names_the_fix(fake: Fake) -> None:
    server = fake.server(fake.config(server_path=str(fake.folder / "nope")))
    with pytest.raises(EmbeddedUnavailable) as info:
        await server.start()
    assert "embedded.server_path" in str(info.value) and INSTALL_HINT in str(info.value)


async def test_missing_model_names_the_fix(fake: Fake) -> None:
    server = fake.server(fake.config(model_path=str(fake.folder / "nope.gguf")))
    with pytest.raises(EmbeddedUnavailable) as info:
        await server.start()
    assert "embedded.model_path" in str(info.value) and INSTALL_HINT in str(info.value)


async def test_oversized_max_output_is_capped(fake: Fake) -> None:
    server = fake.server(fake.config(context_window=1024, max_output_tokens=4096))
    backend = await server.start()
    await server.stop()
    assert backend.max_output_tokens < backend.context_window


class Squatter:
    """Another program on a port: it answers /health, and /v1/models with the same alias
    as the embedded server (another nonstop's embedded server with the bundled model, say),
    and records every request it gets."""

    def __init__(self, alias: str):
        self.alias = alias
        self.seen: list[str] = []
        self.runner: web.AppRunner | None = None

    async def take(self, port: int) -> None:
        async def any_path(request: web.Request) -> web.Response:
            self.seen.append(f"{request.method} {request.path}")
            if request.path == "/v1/models":
                return web.json_response({"object": "list", "data": [{"id": self.alias}]})
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_path)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def leave(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def squatter() -> AsyncIterator[Squatter]:
    s = Squatter("tiny-model")
    yield s
    await s.leave()


async def test_the_embedded_server_moves_off_a_port_another_program_took_before_it_started(
        fake: Fake, squatter: Squatter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port taken by another program between its choice and llama-server's start
    (another instance starting its own embedded server, say) is not used, even though that
    program answers /health and lists the same model: llama-server starts on a free port,
    the log says so, and the program on the old port is never asked anything."""
    taken = embedded_module.free_loopback_port()
    await squatter.take(taken)
    chosen = iter([taken])
    real = embedded_module.free_loopback_port
    monkeypatch.setattr(embedded_module, "free_loopback_port", lambda: next(chosen, None) or real())
    moved: list[str] = []
    server = fake.server(on_moved=moved.append)
    try:
        assert server.prepare().url.endswith(f":{taken}")
        backend = await server.start()
        assert server.healthy and urlsplit(server.url).port != taken
        assert moved == [server.url] and backend.url == server.url
        assert any(f"port {taken} is taken by another program" in e and server.url in e for e in fake.events)
        assert squatter.seen == []
    finally:
        await server.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="who listens on a port is read from /proc")
async def test_a_port_taken_just_after_it_was_checked_is_not_mistaken_for_the_servers_own(
        fake: Fake, squatter: Squatter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program may take the port after nonstop found it free and before
    llama-server binds it. Answering /health and listing the same model does not make it
    nonstop's server: only the child's own socket does; the child, unable to bind, exits,
    and llama-server is started again on a free port."""
    taken = embedded_module.free_loopback_port()
    await squatter.take(taken)
    chosen, looks_free = iter([taken]), iter([True])  # the first check misses the other program
    real_port, real_free = embedded_module.free_loopback_port, embedded_module.loopback_port_free
    monkeypatch.setattr(embedded_module, "free_loopback_port", lambda: next(chosen, None) or real_port())
    monkeypatch.setattr(embedded_module, "loopback_port_free", lambda port: next(looks_free, None) or real_free(port))
    server = fake.server()
    try:
        await server.start()
        assert server.healthy and urlsplit(server.url).port != taken
        assert len(fake.calls) == 2  # the child that could not bind, and the one on a free port
    finally:
        await server.stop()


async def test_a_restart_whose_port_another_program_took_moves_to_a_free_port(fake: Fake, squatter: Squatter) -> None:
    """The embedded llama-server is restarted on the port it had; when another program
    has taken that port since (the same model's alias on it, as another nonstop's embedded
    server would have), the restart goes to a free port, says so, and tells its backend
    where it now is: nothing is asked of the other program."""
    moved: list[str] = []
    server = fake.server(backoff_initial=0.5, on_moved=moved.append)
    await server.start()
    try:
        old, pid = server.url, server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: server.pid is None, what="the child's exit")
        await squatter.take(int(urlsplit(old).port or 0))
        await until(lambda: server.healthy and server.url != old, what="a restart on another port")
        assert moved == [server.url]
        assert any(f"port {urlsplit(old).port} is taken by another program" in e for e in fake.events)
        assert squatter.seen == []
    finally:
        await server.stop()


async def test_the_gateway_sends_nothing_to_a_program_that_took_its_embedded_servers_port(
        fake: Fake, squatter: Squatter, tmp_path: Path) -> None:
    """While its embedded llama-server is down, the gateway sends the embedded backend's
    requests nowhere (the next backend takes them), even though another program now
    listens on its port and lists the same model; once the server is back on a free
    port, the backend's requests and readings go there."""
    cfg = parse_config({"state_dir": str(fake.state), "log": {"enabled": False}, "discovery": {"enabled": False},
                        "warmup": {"enabled": False}, "embedded": {
                            "mode": "always", "server_path": str(fake.script), "model_path": str(fake.model),
                            "ready_timeout": 10}})
    rt = Runtime(cfg)
    await rt.start()
    try:
        server, b = rt.embedded, rt.backend("embedded")
        assert b is not None
        await until(lambda: server.healthy, what="the embedded server")
        old, pid = server.url, server.pid
        os.kill(pid, signal.SIGKILL)
        await until(lambda: server.pid is None, what="the child's exit")
        await squatter.take(int(urlsplit(old).port or 0))
        req = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        res = await b.send_request(req, stream=False)
        assert isinstance(res, Verdict) and "not running" in res.detail
        await until(lambda: server.healthy and server.url != old, what="a restart on another port")
        assert (b.base, b.cfg.url) == (server.url, server.url)
        assert squatter.seen == []
    finally:
        await rt.stop()


def test_backoff_delays() -> None:
    assert [backoff_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(3, initial=0.5, cap=1.0) == 1.0


CHILD_OF_DOOMED_PARENT = """\
import asyncio, sys
from pathlib import Path
from nonstop.backends.embedded import EmbeddedServer
from nonstop.config import EmbeddedConfig, parse_config
from nonstop.routing.classify import Verdict
from nonstop.server.runtime import Runtime

async def main():
    cfg = EmbeddedConfig(server_path=sys.argv[1], model_path=sys.argv[2], ready_timeout=10)
    server = EmbeddedServer(cfg, Path(sys.argv[3]), on_event=lambda e: None)
    await server.start()
    print(server.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
async def test_child_dies_when_nonstop_is_killed(fake: Fake) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD_OF_DOOMED_PARENT),
         str(fake.script), str(fake.model), str(fake.state)],
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 15)
        child = int(line)
        assert pid_alive(child)
        parent.kill()  # SIGKILL: no stop(), no atexit; only the kernel can help
        parent.wait()
        await until(lambda: not pid_alive(child), timeout=5, what="the orphan to die")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_nonstop_stops_promptly_while_the_embedded_server_is_still_loading(tmp_path: Path) -> None:
    """nonstop serves while its embedded llama-server loads a model, and a SIGTERM (a service
    manager's stop) meanwhile ends it at once, and the llama-server with it."""
    fake = Fake(tmp_path)
    fake.flag("delay", "120")
    log = fake.state / "embedded-llama.log"
    ns = start_nonstop(nonstop_config("http://127.0.0.1:9", log={"enabled": False}, embedded={
        "mode": "auto", "server_path": str(fake.script), "model_path": str(fake.model), "ready_timeout": 60,
    }), state_dir=fake.state)
    try:
        started = wait_for(lambda: log.exists() and re.search(r"fake llama-server (\d+)", log.read_text()), 30,
                           "the embedded llama-server to start loading")
        ns.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            ns.proc.wait(10)
        assert ns.proc.poll() is not None, "nonstop was still running 10 s after SIGTERM"
        wait_for(lambda: not pid_alive(int(started[1])), 5, "the loading llama-server to end")
    finally:
        ns.stop(signal.SIGKILL)
