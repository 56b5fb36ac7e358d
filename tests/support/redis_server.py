"""A private redis-server on a free port, for tests of the fleet's shared state."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.conftest import _need
from tests.support import procs


class RedisServer:
    def __init__(self, port: int | None = None):
        binary = shutil.which("redis-server")
        _need(binary is not None, "redis-server (Debian package redis-server)")
        self.binary = str(binary)
        self.port = port or procs.free_port()
        self.folder = tempfile.mkdtemp(prefix="redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.folder],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[RedisServer]:
        r = cls().start()
        try:
            yield r
        finally:
            r.stop()

    def restart(self) -> None:
        """What a restart without persistence (or a failover to an empty replica) does:
        every key is gone."""
        self.stop()
        self.start()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started redis-server, stopped after the test (import the fixture to use it)."""
    with RedisServer.running() as r:
        yield r
