"""The note of where a running gateway listens, and how the commands trust it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
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
    assert json.loads(path.read_text()) == {"listen": "127.0.0.1:9071", "pid": os.getpid()}
    assert path.stat().st_mode & 0o777 == 0o600
    assert listening.read(state) == ("127.0.0.1:9071", os.getpid())
    assert [p.name for p in state.iterdir()] == [listening.NOTE_NAME], "no temporary file left"


def test_forget_takes_back_only_its_own_note(tmp_path: Path) -> None:
    listening.note(tmp_path, "127.0.0.1:9071", pid=1)  # another gateway wrote since
    listening.forget(tmp_path)
    assert listening.read(tmp_path) == ("127.0.0.1:9071", 1)
    listening.note(tmp_path, "127.0.0.1:9072")
    listening.forget(tmp_path)
    assert listening.read(tmp_path) is None
    listening.forget(tmp_path)  # nothing there: nothing to do


@pytest.mark.parametrize("text", ["", "{", "[]", '{"listen": 5, "pid": 1}', '{"listen": "a:1", "pid": "1"}',
                                  '{"listen": "a:1", "pid": 0}', '{"listen": "a:1", "pid": true}', "\xff"])
def test_a_note_gone_bad_is_no_note(tmp_path: Path, text: str) -> None:
    listening.note_path(tmp_path).write_text(text, encoding="latin-1")
    assert listening.read(tmp_path) is None
    assert gateway_elsewhere(tmp_path, "127.0.0.1:8787") is None


def test_a_note_that_cannot_be_written_is_no_failure(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert listening.note(tmp_path / "file", "127.0.0.1:9071") is False


def test_the_gateway_noted_elsewhere_is_found_when_none_answers_here(tmp_path: Path, listener: int) -> None:
    listening.note(tmp_path, f"127.0.0.1:{listener}")
    assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}") == f"127.0.0.1:{listener}"
    # Noted on every address: dialled on loopback.
    listening.note(tmp_path, f"0.0.0.0:{listener}")
    assert gateway_elsewhere(tmp_path, f"127.0.0.1:{closed_port()}") == f"0.0.0.0:{listener}"


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
