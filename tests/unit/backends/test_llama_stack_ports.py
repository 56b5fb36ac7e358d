"""Who listens on a port (llama_stack.listens_on): the embedded server's readiness asks
it, so that another program on its port is never taken for nonstop's llama-server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from nonstop.backends.llama_stack import free_loopback_port, listens_on

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="read from Linux's /proc")

# A wrapper that does not exec its server: the socket is its child's.
_FORKS = """
import os, socket, sys, time
if os.fork() == 0:
    s = socket.socket(socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET)
    s.bind(("::1" if sys.argv[2] == "6" else "127.0.0.1", int(sys.argv[1])))
    s.listen()
    print("listening", flush=True)
    time.sleep(60)
else:
    os.wait()
"""


def _spawn(port: int, family: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _FORKS, str(port), family], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def test_a_socket_of_this_process_and_of_another() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert listens_on(os.getpid(), port) is True
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            assert listens_on(other.pid, port) is False
        finally:
            other.kill()
            other.wait()


@pytest.mark.parametrize("family", ["4", "6"])
def test_a_socket_held_by_a_child_of_the_process_counts_as_its_own(family: str) -> None:
    """A configured server_path may be a wrapper that forks its server: its socket (on
    IPv4 or IPv6) is the wrapper's own for this question."""
    if family == "6" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    port = free_loopback_port()
    try:
        proc = _spawn(port, family)
    except (AssertionError, OSError):
        if family == "6":
            pytest.skip("cannot listen on ::1 here")
        raise
    try:
        deadline = time.monotonic() + 5
        while (got := listens_on(proc.pid, port)) is not True and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got is True
    finally:
        proc.kill()
        proc.wait()


def test_no_listening_socket_on_the_port_cannot_be_told() -> None:
    """Where the tables show nothing listening (some sandboxes hide them), the answer is
    'cannot tell', not 'another program': the caller then goes by what answered."""
    assert listens_on(1, free_loopback_port()) is None
