"""The note of where a running gateway listens, and how the commands trust it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nonstop.cli.common import gateway_elsewhere
from nonstop.store import listening


@pytest.fixture
def listener() -> Iterator[int]:
    """A port where something accepts connections."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()


class Gateway(ThreadingHTTPServer):
    """What answers /health as nonstop does: the process id it says (`pid`), and a token
    it asks for (`token`, none by default). Any other path: 404."""

    pid = os.getpid()
    token = ""
    health = True  # False: 404 on /health too (a web server that is not nonstop)

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Health(BaseHTTPRequestHandler):
    server: Gateway

    def do_GET(self) -> None:  # noqa: N802 (the library's name)
        srv = self.server
        if self.path != "/health" or not srv.health:
            self.send_error(404)
            return
        if srv.token and self.headers.get("x-nonstop-token") != srv.token:
            self.send_error(401)
            return
        body = json.dumps({"status": "ok", "cloud": "serving", "local": [], "pid": srv.pid}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    """A port where a nonstop (this process, by default) answers /health."""
    srv = Gateway(("127.0.0.1", 0), _Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_note_is_written_whole_private_and_read_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert listening.note(state, "127.0.0.1:9071")
    path = listening.note_path(state)
    assert path == state / "listening" / f"{os.getpid()}.json"
    assert json.loads(path.read_text()) == {"listen": "127.0.0.1:9071", "pid": os.getpid()}
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o077 == 0
    assert listening.read(state) == [("127.0.0.1:9071", os.getpid())]
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left"


def test_forget_takes_back_only_its_own_note(tmp_path: Path) -> None:
    listening.note(tmp_path, "127.0.0.1:9071", pid=1)  # another gateway, still running
    listening.note(tmp_path, "127.0.0.1:9072")
    listening.forget(tmp_path)
    assert listening.read(tmp_path) == [("127.0.0.1:9071", 1)]
    listening.forget(tmp_path)  # nothing there: nothing to do


def test_two_gateways_sharing_a_state_directory_keep_a_note_each(tmp_path: Path) -> None:
    """The later one's stop does not take the earlier one's note with it."""
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        listening.note(tmp_path, "127.0.0.1:9071", pid=first.pid)
        os.utime(listening.note_path(tmp_path, first.pid), ns=(1, 1))  # written earlier
        listening.note(tmp_path, "127.0.0.1:9072")
        assert listening.read(tmp_path) == [("127.0.0.1:9072", os.getpid()), ("127.0.0.1:9071", first.pid)]
        listening.forget(tmp_path)
        assert listening.read(tmp_path) == [("127.0.0.1:9071", first.pid)]
    finally:
        first.kill()
        first.wait()
    # Its process gone (killed: the note stayed), the note is not trusted, and is removed.
    assert listening.note_path(tmp_path, first.pid).exists()
    assert listening.read(tmp_path) == []
    assert not listening.note_path(tmp_path, first.pid).exists()


@pytest.mark.parametrize("text", ["", "{", "[]", '{"listen": 5, "pid": 1}', '{"listen": "a:1", "pid": "1"}',
                                  '{"listen": "a:1", "pid": 0}', '{"listen": "a:1", "pid": true}', "\xff",
                                  '{"listen": "127.0.0.1:9", "pid": 1}'])  # (another process's, under this one's name)
def test_a_note_gone_bad_is_no_note(tmp_path: Path, text: str) -> None:
    path = listening.note_path(tmp_path)
    path.parent.mkdir()
    path.write_text(text, encoding="latin-1")
    (path.parent / "junk.json").write_text('{"listen": "127.0.0.1:9", "pid": 1}')  # not a process's name
    (path.parent / "1.json").mkdir()  # not a file
    assert listening.read(tmp_path) == []
    assert gateway_elsewhere(tmp_path, "127.0.0.1:8787") is None


def test_no_notes_folder_or_an_unreadable_one_is_no_note(tmp_path: Path) -> None:
    assert listening.read(tmp_path) == []
    (tmp_path / "listening").write_text("")  # a file where the folder would be
    assert listening.read(tmp_path) == []
    assert listening.note(tmp_path, "127.0.0.1:9071") is False


def test_a_note_that_cannot_be_written_is_no_failure(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert listening.note(tmp_path / "file", "127.0.0.1:9071") is False


def test_the_gateway_noted_elsewhere_is_found_when_none_answers_here(tmp_path: Path, gateway: Gateway) -> None:
    listening.note(tmp_path, f"127.0.0.1:{gateway.port}")
    assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}") == f"127.0.0.1:{gateway.port}"
    # Noted on every address: dialled on loopback.
    listening.note(tmp_path, f"0.0.0.0:{gateway.port}")
    assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}") == f"0.0.0.0:{gateway.port}"


def test_a_gateway_that_asks_for_a_token_is_found_with_the_configs(tmp_path: Path, gateway: Gateway) -> None:
    gateway.token = "s3cret"
    listening.note(tmp_path, f"127.0.0.1:{gateway.port}")
    assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}") is None
    assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}", "s3cret") == f"127.0.0.1:{gateway.port}"


def test_a_note_whose_process_id_and_port_were_taken_by_others_is_not_trusted(
    tmp_path: Path, gateway: Gateway, listener: int,
) -> None:
    """After a kill -9 (or a reboot) the note's process id may be another program's, and
    its port too: something answers there, but not that gateway."""
    here = f"127.0.0.1:{closed_port()}"
    listening.note(tmp_path, f"127.0.0.1:{listener}")  # a program that accepts and says nothing
    assert gateway_elsewhere(tmp_path, here) is None
    gateway.health = False  # a web server that is not nonstop
    listening.note(tmp_path, f"127.0.0.1:{gateway.port}")
    assert gateway_elsewhere(tmp_path, here) is None
    gateway.health, gateway.pid = True, 1  # another nonstop, not the note's process
    assert gateway_elsewhere(tmp_path, here) is None
    gateway.pid = os.getpid()
    assert gateway_elsewhere(tmp_path, here) == f"127.0.0.1:{gateway.port}"


@pytest.mark.parametrize("listen", ["127.0.0.1:\u00b2", "127.0.0.1:\u0663", "a" * 64 + ":9000", "..:9000",
                                    "127.0.0.1:99999", "nohost", "[::1:9000"])
def test_a_note_with_an_address_gone_bad_is_no_note(tmp_path: Path, listen: str) -> None:
    listening.note(tmp_path, listen)
    assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}") is None


def test_a_note_with_a_process_id_no_process_can_have_is_no_note(tmp_path: Path) -> None:
    for pid in (2**63, 99999999999):
        path = listening.note_path(tmp_path, pid)
        listening.note(tmp_path, "127.0.0.1:9000", pid=pid)
        assert path.exists()
        assert listening.read(tmp_path) == []
        assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}") is None


def test_the_gateway_at_the_configs_address_comes_first(tmp_path: Path, listener: int) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        listening.note(tmp_path, f"127.0.0.1:{other.getsockname()[1]}")
        assert gateway_elsewhere(tmp_path, f"127.0.0.1:{listener}") is None


def test_a_note_is_not_trusted_past_its_gateway(tmp_path: Path, listener: int) -> None:
    here = f"127.0.0.1:{closed_port()}"
    listening.note(tmp_path, f"127.0.0.1:{listener}", pid=dead_pid())  # killed: the note stayed
    assert gateway_elsewhere(tmp_path, here) is None
    listening.note(tmp_path, f"127.0.0.1:{closed_port()}")  # alive, but not listening there (any more)
    assert gateway_elsewhere(tmp_path, here) is None
    listening.note(tmp_path, here)  # the config's own address
    assert gateway_elsewhere(tmp_path, here) is None


def test_of_several_gateways_noted_the_newest_that_answers_is_found(tmp_path: Path, gateway: Gateway) -> None:
    gateway.pid = 1
    listening.note(tmp_path, f"127.0.0.1:{gateway.port}", pid=1)  # an older gateway, answering
    os.utime(listening.note_path(tmp_path, 1), ns=(1, 1))
    listening.note(tmp_path, f"127.0.0.1:{closed_port()}")  # the newest, not (or no longer) answering
    assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}") == f"127.0.0.1:{gateway.port}"
    with Gateway(("127.0.0.1", 0), _Health) as newest:  # the newest, answering: it comes first
        threading.Thread(target=newest.serve_forever, daemon=True).start()
        listening.note(tmp_path, f"localhost:{newest.port}")
        assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}") == f"localhost:{newest.port}"
        newest.shutdown()
