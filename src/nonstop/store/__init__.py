"""The request log and persisted state (db), and the optional shared store (shared).

Importing the package itself costs nothing: the commands use `db_path` without loading
SQLite or orjson.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

DB_NAME = "nonstop.db"


def db_path(state_dir: Path) -> Path:
    """The request log's SQLite file in a state directory."""
    return state_dir / DB_NAME
