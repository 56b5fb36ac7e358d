"""The request log and persisted state (db), and the optional shared store (shared).

Importing the package itself costs nothing: the commands use `db_path` without loading
SQLite or orjson.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

DB_NAME = "nonstop.db"
# Less room than this on the state directory's disk is a full disk: a batch of request
# rows and the WAL's growth would not fit.
MIN_FREE = 256 * 1024


def db_path(state_dir: Path) -> Path:
    """The request log's SQLite file in a state directory."""
    return state_dir / DB_NAME


def state_dir_problem(state_dir: Path) -> str | None:
    """Why nonstop cannot write in its state directory, in the system's words ("PATH:
    Permission denied", "PATH is a file, not a folder", "PATH: No space left on device");
    None when it can. See state_dir_check."""
    return state_dir_check(state_dir)[0]


def state_dir_check(state_dir: Path) -> tuple[str | None, bool]:
    """state_dir_problem's answer, and whether the problem is a full disk.

    Nothing is made or changed: a folder that does not exist yet is judged by the nearest
    one above it that does, and writing is tried with a file made and removed at once.
    The request log's files are opened for writing and closed: in a process that has the
    database open, closing another descriptor of it drops SQLite's locks, so this is for
    a process that does not (yet, or any more)."""
    import contextlib
    import errno
    import tempfile

    folder = state_dir
    while not folder.exists() and folder != folder.parent:
        if folder.is_symlink():  # a link to nowhere: making the folder fails on it
            return f"{folder} is a link to {os.readlink(folder)}, which does not exist", False
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder", False
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".nonstop-"):
            pass
    except OSError as exc:
        return f"{folder}: {exc.strerror or exc}", exc.errno in (errno.ENOSPC, errno.EDQUOT)
    with contextlib.suppress(OSError):
        vfs = os.statvfs(folder)
        free = vfs.f_bavail * vfs.f_frsize
        if free < MIN_FREE:
            return (f"{folder}: only {free // 1024} KB free on its disk" if free else f"{folder}: No space left on device"), True
    if folder != state_dir:
        return None, False
    db = db_path(state_dir)
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}", False
        os.close(fd)
    return None, False
