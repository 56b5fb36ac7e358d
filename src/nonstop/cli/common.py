"""What the commands share: the address a client dials, Claude Code's settings files, the
request log's file.

Standard library only, and pathlib only when a path is asked for: `nonstop statusline`
imports this module on every refresh of Claude Code's status bar.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from nonstop.store import db_path

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["accepts", "answers_as", "health_at", "is_nonstop", "claude_settings_files", "claude_user_settings", "client_host", "db_path", "gateway_elsewhere",
           "gateway_url", "managed_settings_file"]

# A gateway listening on every address is reached through the loopback of the same family.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "::1"}


def client_host(host: str) -> str:
    """The host a client on this machine dials for a gateway listening on `host`."""
    return _WILDCARDS.get(host, host)


def accepts(host: str, port: int, wait: float = 0.5) -> bool:
    """Whether something accepts connections where a gateway listening on `host` is dialled."""
    import socket

    try:
        with socket.create_connection((client_host(host), port), timeout=wait):
            return True
    except (OSError, ValueError):  # (a host name IDNA cannot encode is a ValueError)
        return False


def health_at(host: str, port: int, token: str = "", wait: float = 1.0) -> dict | None:
    """The /health answer of the nonstop that listens there (asked with `token`, never
    through a proxy); None when nothing answers, or something that is not nonstop."""
    import json
    import urllib.request

    req = urllib.request.Request(gateway_url(host, port) + "/health")
    if token:
        req.add_header("x-nonstop-token", token)
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=wait) as r:
            data = json.loads(r.read(64 * 1024))
    except (OSError, ValueError):  # (urllib's errors are OSErrors; bad JSON, a bad host: ValueErrors)
        return None
    return data if is_nonstop(data) else None


def is_nonstop(data: object) -> bool:
    """Whether a /health answer is nonstop's: many servers answer /health with a status,
    and pointing Claude Code (with the user's credentials) at another one would be wrong."""
    return (isinstance(data, dict) and data.get("status") in ("ok", "draining") and isinstance(data.get("cloud"), str)
            and isinstance(data.get("local"), list) and isinstance(data.get("pid"), int))


def answers_as(host: str, port: int, pid: int, token: str = "", wait: float = 1.0) -> bool:
    """Whether the gateway of process `pid` answers there: its /health says so. A note
    outlives a gateway that was killed, and after it its process id and its port may both
    be taken by other programs."""
    health = health_at(host, port, token, wait)
    return health is not None and health["pid"] == pid


def gateway_elsewhere(state_dir: Path, listen: str, token: str = "") -> str | None:
    """Where a gateway with this state directory listens (its note: store/listening.py),
    when that is not `listen` and nothing answers at `listen`; else None. A note is trusted
    while its process lives and the gateway at its address says it is that process (its
    /health, asked with `token`); of several, the newest such. A note gone bad in any
    way is no note."""
    from nonstop.config import ConfigError, split_listen
    from nonstop.store import listening

    notes = [(noted, pid) for noted, pid in listening.read(state_dir) if noted != listen]
    if not notes:
        return None
    try:
        if accepts(*split_listen(listen)):
            return None
    except ConfigError:
        return None
    for noted, pid in notes:
        try:
            there = split_listen(noted)
        except ConfigError:
            continue
        if answers_as(*there, pid, token):
            return noted
    return None


def gateway_url(host: str, port: int) -> str:
    """http://HOST:PORT of a gateway listening on `host`, IPv6 literals in brackets."""
    host = client_host(host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# --- Claude Code's settings ------------------------------------------------------------------


def claude_user_settings(env: Mapping[str, str] | None = None) -> Path:
    """The user's settings.json: in CLAUDE_CONFIG_DIR when set, else in ~/.claude."""
    from pathlib import Path

    env = os.environ if env is None else env
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    base = env.get("CLAUDE_CONFIG_DIR")
    if not base:
        return home / ".claude" / "settings.json"
    if base == "~" or base.startswith("~/"):
        return home / base[2:] / "settings.json"
    return Path(base).expanduser() / "settings.json"


# The organization's managed settings, which win over every other file and the
# environment (Claude Code's settings docs), where each system keeps them.
MANAGED_SETTINGS = {
    "darwin": "/Library/Application Support/ClaudeCode/managed-settings.json",
    "win32": "C:\\ProgramData\\ClaudeCode\\managed-settings.json",
}
MANAGED_SETTINGS_ELSEWHERE = "/etc/claude-code/managed-settings.json"  # Linux and WSL


def managed_settings_file() -> Path:
    from pathlib import Path

    return Path(MANAGED_SETTINGS.get(sys.platform, MANAGED_SETTINGS_ELSEWHERE))


def claude_settings_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """Those of Claude Code's settings files that exist, from the weakest to the one that
    wins: the user's, the project's .claude/settings.json and .claude/settings.local.json,
    and the organization's managed settings."""
    from pathlib import Path

    project = Path.cwd() / ".claude"
    files = [claude_user_settings(env), project / "settings.json", project / "settings.local.json", managed_settings_file()]
    seen: list[Path] = []
    for f in files:
        if f.is_file() and f not in seen:
            seen.append(f)
    return seen
