"""A disk that fills up, for the request log's tests: `full_disk_connect` opens the store's
connections as `nonstop.store.db.connect` does, but their writes fail as SQLite's do on a
full disk while FULL is set (reads go on)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import nonstop.store.db as db

FULL = threading.Event()
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class _FullDisk(sqlite3.Connection):
    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if FULL.is_set() and sql.lstrip().upper().startswith(_WRITES):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


def full_disk_connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10, check_same_thread=False, factory=_FullDisk)
    if not readonly:
        db._use_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    return conn
