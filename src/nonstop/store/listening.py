"""Where a running gateway listens, for the commands that look for it.

`nonstop serve --port 9000` (or `nonstop claude --port 9000`, which starts one) listens
somewhere the config's `listen` does not say. The gateway notes its address in its state
directory once it listens, and takes the note back when it stops; `nonstop status`,
`logs`, `doctor` and the others read it when nothing answers at the config's address
(cli/common.py gateway_elsewhere).

A note outlives a gateway that was killed (kill -9, a crash): it is trusted only while
its process lives and something accepts connections where it says.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

NOTE_NAME = "listening.json"


def note_path(state_dir: Path) -> Path:
    return state_dir / NOTE_NAME


def note(state_dir: Path, listen: str, pid: int | None = None) -> bool:
    """Note that this process (or `pid`) listens on `listen`. False when it cannot be
    written (the gateway serves all the same: only the note's readers are less helpful)."""
    from nonstop.store.db import ensure_private_dir

    pid = os.getpid() if pid is None else pid
    path = note_path(state_dir)
    tmp = path.with_name(f".{NOTE_NAME}.{pid}")
    try:
        ensure_private_dir(state_dir)
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
    """Take back this process's note; one another gateway has written since stays."""
    pid = os.getpid() if pid is None else pid
    noted = read(state_dir)
    if noted is not None and noted[1] == pid:
        with contextlib.suppress(OSError):
            note_path(state_dir).unlink()


def read(state_dir: Path) -> tuple[str, int] | None:
    """(listen, pid) of the note; None without a readable one."""
    try:
        with open(note_path(state_dir), encoding="utf-8") as fh:
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
    except OSError:
        return False
    return True
