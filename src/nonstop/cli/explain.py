"""`nonstop explain REQUEST.json`: the plan for a saved request, one line per decision.

Against the running instance's live state (its backends' health, load and real windows,
the cloud's state and forecast), or with --offline (or when nothing is running) against
the config and the state on disk. Nothing is sent to any backend.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from nonstop.cli.status import NotRunning, Refused, api_post
from nonstop.config import Config


def read_request(source: str) -> dict[str, Any]:
    """The request body in `source` (a file, or - for standard input); ValueError saying
    what is wrong with it, as a sentence."""
    name = "standard input" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not UTF-8 text: give a Messages request body as JSON") from None
    except OSError as exc:
        raise ValueError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{name} is not JSON ({exc}): give a Messages request body") from None
    if isinstance(doc, dict) and isinstance(doc.get("body"), dict):  # a saved {headers, body}
        doc = doc["body"]
    if not isinstance(doc, dict):
        raise ValueError("the file must hold a Messages request body: a JSON object")
    return doc


def parse_headers(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {item!r}: write NAME: VALUE")
        out[name.strip().lower()] = value.strip()
    return out


def plan_offline(cfg: Config, req: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    from nonstop.server.explain import explain_offline
    from nonstop.store.db import connect, db_path

    snap = None
    path = db_path(cfg.state_dir)
    if path.exists():
        try:
            conn = connect(path, readonly=True)
            try:
                row = conn.execute("SELECT value FROM state WHERE key = 'quota'").fetchone()
                snap = json.loads(row[0]) if row else None
            finally:
                conn.close()
        except (sqlite3.Error, ValueError):  # a state file gone bad: plan as on a fresh start
            snap = None
        if not isinstance(snap, dict):
            snap = None
    return explain_offline(cfg, req, headers, snap, time.time())


def main(cfg: Config, source: str, *, headers: list[str], offline: bool = False, as_json: bool = False) -> int:
    try:
        req = read_request(source)
        hdrs = parse_headers(headers)
    except (OSError, ValueError) as exc:
        print(f"nonstop explain: {exc}", file=sys.stderr)
        return 2
    where = "offline: the config and the state on disk"
    result: dict[str, Any] | None = None
    if not offline:
        try:
            result = api_post(cfg, "/_nonstop/api/explain", {"request": req, "headers": hdrs}, timeout=30)
            where = f"the running instance at {cfg.listen}"
        except NotRunning:
            where = f"offline (nothing answers at {cfg.listen}): the config and the state on disk"
        except Refused as exc:
            print(f"nonstop explain: {exc}", file=sys.stderr)
            return 2
    if result is None:
        result = plan_offline(cfg, req, hdrs)
    if as_json:
        print(json.dumps({**result, "against": where}, indent=2))
        return 0
    print(f"plan against {where}")
    for line in result.get("lines", []):
        print("  " + line)
    return 0
