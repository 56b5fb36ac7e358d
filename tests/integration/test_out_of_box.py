"""Out of the box: `nonstop serve` with no configuration at all starts its own llama-server,
answers when the cloud cannot, keeps that child alive, leaves nothing behind, prefers a
real local server that discovery finds, and stands in for that server once it has quit."""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.llama import require_llama, start_llama_server
from tests.support import procs, rawhttp, wirecheck
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

DEFAULT_PORTS = (8080, 11434, 1234, 8000)
START_TIMEOUT = 240.0
REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 24, "messages": [{"role": "user", "content": "Say hello."}]}
HEADERS = {"x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01"}


# --- processes ---------------------------------------------------------------------------------


def closed_port() -> int:
    return procs.free_port()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def llama_children(parent: int) -> list[int]:
    """PIDs of llama-server processes whose parent is `parent`."""
    return [pid for pid in procs.child_pids(parent) if _program(pid).endswith(b"llama-server")]


def _program(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return b""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., procs.Proc]]:
    """`nonstop serve` with a private, empty XDG config home and state directory."""
    started: list[procs.Proc] = []

    def start(config_text: str | None) -> procs.Proc:
        port = procs.free_port()
        home = tmp_path / f"run{len(started)}"
        (home / "xdg").mkdir(parents=True)
        args = ["-m", "nonstop", "serve", "--port", str(port)]
        if config_text is not None:
            path = procs.write_config(home, config_text)
            args += ["--config", str(path)]
        env = {"XDG_CONFIG_HOME": str(home / "xdg"), "NONSTOP_STATE_DIR": str(home / "state"),
               "NONSTOP_CONFIG": "", "XDG_CACHE_HOME": str(home / "cache")}
        p = procs.start_python(args, port, "/health", "nonstop", env=env, timeout=START_TIMEOUT)
        p.extra["state_dir"] = home / "state"
        started.append(p)
        return p

    yield start
    procs.stop_all_and_check(started)


def status(ns: procs.Proc) -> dict:
    code, _, body = rawhttp.request("GET", ns.url + "/_nonstop/api/status")
    assert code == 200, body
    return json.loads(body)


def request_log(ns: procs.Proc) -> list[dict]:
    code, _, body = rawhttp.request("GET", ns.url + "/_nonstop/api/requests?limit=50")
    assert code == 200, body
    return json.loads(body)["requests"]


def logged_messages(ns: procs.Proc, at_least: int) -> list[dict]:
    """/v1/messages rows of the request log, once there are `at_least` of them (rows are
    written off the request path, a moment after the answer)."""

    def rows() -> list[dict]:
        found = [r for r in request_log(ns) if r["path"] == "/v1/messages"]
        return found if len(found) >= at_least else []

    return wait_for(rows, 10, f"{at_least} logged request(s)")


def ask(ns: procs.Proc, stream: bool = False) -> tuple[int, dict[str, str], bytes]:
    return rawhttp.request("POST", ns.url + "/v1/messages", {**REQUEST, "stream": stream}, HEADERS, timeout=180)


def assert_message(body: bytes) -> dict:
    msg = json.loads(body)
    assert msg["type"] == "message" and msg["role"] == "assistant", msg
    assert msg["content"] and all(b["type"] in ("text", "thinking") for b in msg["content"]), msg
    assert msg["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence"), msg
    assert msg["usage"]["input_tokens"] > 0 and msg["usage"]["output_tokens"] > 0, msg
    return msg


def served_locally(ns: procs.Proc, backend: str, stream: bool = False) -> None:
    code, headers, body = ask(ns, stream)
    assert code == 200, body[:500]
    assert headers.get("x-nonstop-backend") == backend, headers
    if stream:
        v = wirecheck.check_anthropic(code, headers["content-type"], body, stream=True)
        assert v.outcome == "ok" and "content_block_delta" in v.events, (v.problem, body[-500:])
    else:
        assert_message(body)


# --- (1) no configuration: the embedded server ----------------------------------------------------


def test_no_config_but_discovery_ports_serves_from_embedded(cloud, serve) -> None:
    require_llama()
    procs.set_mode(cloud, "subscription_limit")
    ns = serve(nonstop_config(cloud.url, discovery={"ports": [closed_port()]}, embedded=None))
    code, _, body = rawhttp.request("GET", ns.url + "/health")
    health = json.loads(body)
    assert code == 200 and health["status"] == "ok"
    assert [b["name"] for b in health["local"]] == ["embedded"]

    served_locally(ns, "embedded")
    served_locally(ns, "embedded", stream=True)

    rows = logged_messages(ns, 2)
    assert len(rows) == 2 and {r["backend"] for r in rows} == {"embedded"}, rows
    assert all(r["outcome"] == "ok" for r in rows), rows
    sent = [r for r in procs.cloud_requests(cloud) if r["path"] == "/v1/messages"]
    assert sent, "the cloud was not asked first"
    log = (ns.extra["state_dir"] / "embedded-llama.log").read_text(errors="replace")
    assert procs.PLANTED_KEY not in log


def test_truly_no_config_file_serves_from_embedded(serve) -> None:
    require_llama()
    taken = [p for p in DEFAULT_PORTS if listening(p)]
    if taken:
        pytest.skip(f"something already listens on default discovery port(s) {taken}")
    # No file at all: the cloud is the real default URL, which this offline machine
    # cannot reach, so the request must go local.
    ns = serve(None)
    st = status(ns)
    assert st["cloud"]["url"] == "https://api.anthropic.com"
    (local,) = st["local"]
    assert local["name"] == "embedded" and local["embedded"] is True
    served_locally(ns, "embedded")


# --- (2) supervision --------------------------------------------------------------------------------


def test_embedded_child_is_restarted_and_reaped(cloud, serve) -> None:
    require_llama()
    procs.set_mode(cloud, "subscription_limit")
    ns = serve(nonstop_config(cloud.url, discovery={"ports": [closed_port()]}, embedded=None))
    nonstop_pid = ns.proc.pid
    (local,) = status(ns)["local"]
    embedded_port = urlsplit(local["url"]).port
    (child,) = wait_for(lambda: llama_children(nonstop_pid), 10, "the embedded llama-server")
    argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
    assert b"--port" in argv and argv[argv.index(b"--port") + 1] == str(embedded_port).encode()

    def embedded_ready() -> bool:
        code, _, _ = rawhttp.request("GET", f"http://127.0.0.1:{embedded_port}/health", timeout=2) if listening(embedded_port) else (0, {}, b"")
        return code == 200

    # nonstop serves while its model loads; the crash is one of a server that was ready.
    wait_for(embedded_ready, 120, "the llama-server to load its model")
    wait_for(lambda: "embedded llama-server ready" in ns.output(), 10, "nonstop to see it ready")
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: not procs.pid_alive(child), 10, "the killed child to be reaped")
    (new_child,) = wait_for(lambda: llama_children(nonstop_pid), 60, "a restarted llama-server")
    assert new_child != child
    wait_for(embedded_ready, 120, "the restarted llama-server to load its model")
    served_locally(ns, "embedded")
    assert "restarting" in ns.output() and "is back" in ns.output()

    # SIGTERM: nonstop shuts down (uvicorn re-raises the signal once it has, hence
    # -SIGTERM is a clean exit too) and nothing is left behind.
    assert ns.stop(signal.SIGTERM, timeout=30) in (0, -signal.SIGTERM)
    wait_for(lambda: not procs.pid_alive(new_child), 10, "the embedded child to end with nonstop")
    assert not llama_children(nonstop_pid)
    assert not listening(embedded_port)


# --- (3) discovery prefers a real server ---------------------------------------------------------------


class _Garbage(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(4096)
        self.request.sendall(b"\x00\x01 this is not HTTP \xff\r\n\r\n" * 4)


@pytest.fixture
def garbage_port() -> Iterator[int]:
    """A port that answers every connection with bytes that are not HTTP."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Garbage)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_discovery_uses_the_real_llama_server_among_closed_and_garbage_ports(cloud, llama, garbage_port, serve) -> None:
    procs.set_mode(cloud, "subscription_limit")
    ports = [closed_port(), garbage_port, llama.port]
    ns = serve(nonstop_config(cloud.url, discovery={"ports": ports, "timeout": 3.0}, embedded=None))
    (local,) = status(ns)["local"]
    assert local["url"] == llama.url and local["name"] == "llamacpp" and local["embedded"] is False
    assert local["api"] == "anthropic" and local["context_window"] == 8192
    assert not llama_children(ns.proc.pid), "the embedded server started although a server was found"
    assert "found llama.cpp at " + llama.url in ns.output()
    served_locally(ns, "llamacpp")


# --- (4) a discovered server that quits: the embedded one stands in -------------------------------


def test_a_discovered_server_that_quits_is_stood_in_for_by_the_embedded_one(cloud, serve, tmp_path) -> None:
    """The user's llama-server was found at start, then quit: the request that finds it
    gone is told so (nothing else is there yet); once it has been down for
    standby_after seconds the embedded server starts beside it, and the session is
    answered again without a restart or a config file."""
    require_llama()
    procs.set_mode(cloud, "subscription_limit")
    with start_llama_server(ctx=4096, parallel=1, log_dir=tmp_path) as found:
        ns = serve(nonstop_config(cloud.url, discovery={"ports": [found.port], "timeout": 3.0},
                                  embedded={"standby_after": 1}))
        (local,) = status(ns)["local"]
        assert local["name"] == "llamacpp" and local["embedded"] is False
        served_locally(ns, "llamacpp")
        assert not llama_children(ns.proc.pid)
    # It has quit. The first request finds it gone, and with nothing else there, says so.
    code, _, body = ask(ns)
    assert code == 503 and b"llamacpp" in body, body[:500]
    wait_for(lambda: "starting the embedded model as the last local fallback" in ns.output(), 30,
             "the embedded server to stand in")
    assert "llamacpp down for " in ns.output()
    (child,) = wait_for(lambda: llama_children(ns.proc.pid), 10, "the embedded llama-server")
    assert [b["name"] for b in status(ns)["local"]] == ["llamacpp", "embedded"]
    served_locally(ns, "embedded")  # waits for its model to load, within the request's deadline
    served_locally(ns, "embedded", stream=True)
    assert ns.stop(signal.SIGTERM, timeout=30) in (0, -signal.SIGTERM)
    wait_for(lambda: not procs.pid_alive(child), 10, "the embedded child to end with nonstop")
