"""Where the running gateways listen, for the commands that look for them.

`nonstop serve --port 9000` (or `nonstop claude --port 9000`, which starts one) listens
somewhere the config's `listen` does not say. Each gateway notes its address in its state
directory once it listens (a file of its own, named by its process id, so that two
gateways sharing a state directory keep a note each), and takes the note back when it
stops; `nonstop status`, `logs`, `doctor` and the others read the notes when nothing
answers at the config's address (cli/common.py gateway_elsewhere).

A note outlives a gateway that was killed (kill -9, a crash), and its process id and port
may then be taken by other programs: it is trusted only while its process lives and the
gateway at its address says, on /health, that it is that process (cli/common.py
answers_as). A reader removes the notes of processes that are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

NOTES_DIR = "listening"
# More notes than this are not read: a state directory is shared by a few gateways.
MAX_NOTES = 64


def note_path(state_dir: Path, pid: int | None = None) -> Path:
    """The note of process `pid` (this one by default)."""
    return state_dir / NOTES_DIR / f"{os.getpid() if pid is None else pid}.json"


def note(state_dir: Path, listen: str, pid: int | None = None) -> bool:
    """Note that this process (or `pid`) listens on `listen`. False when it cannot be
    written (the gateway serves all the same: only the notes' readers are less helpful)."""
    from nonstop.store.db import ensure_private_dir

    pid = os.getpid() if pid is None else pid
    path = note_path(state_dir, pid)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        ensure_private_dir(state_dir)
        ensure_private_dir(path.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"listen": listen, "pid": pid}, fh)
        os.replace(tmp, path)  # whole or not at all, for a reader at the same moment
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


def forget(state_dir: Path, pid: int | None = None) -> None:
    """Take back this process's note (or `pid`'s); the others stay."""
    with contextlib.suppress(OSError):
        note_path(state_dir, pid).unlink()


def read(state_dir: Path) -> list[tuple[str, int]]:
    """(listen, pid) of each readable note whose process lives, the newest first. The
    notes of processes that are gone are removed."""
    found: list[tuple[int, str, int]] = []
    try:
        entries = [e for e in os.scandir(state_dir / NOTES_DIR) if e.name.endswith(".json") and e.name[:-5].isdigit()]
    except OSError:
        return []
    for entry in entries[:MAX_NOTES]:
        noted = _read_one(entry.path)
        if noted is None or str(noted[1]) != entry.name[:-5]:  # (a note under another's name: not trusted)
            continue
        if not alive(noted[1]):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
            continue
        try:
            written = entry.stat().st_mtime_ns
        except OSError:
            continue
        found.append((written, *noted))
    found.sort(reverse=True)
    return [(listen, pid) for _, listen, pid in found]


def _read_one(path: str) -> tuple[str, int] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    listen, pid = data.get("listen"), data.get("pid")
    if not isinstance(listen, str) or type(pid) is not int or pid <= 0:
        return None
    return listen, pid


def alive(pid: int) -> bool:
    """Whether process `pid` lives (a note's gateway may have been killed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except (OSError, OverflowError):  # (a number no process can have)
        return False
    return True
