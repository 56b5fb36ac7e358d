"""`nonstop statusline`: one compact line for Claude Code's `statusLine` setting.

Claude Code runs this command after every turn and waits for it, so it must answer in
well under 100 ms even when nonstop is down. Only cheap standard-library modules are
imported (no nonstop.config, urllib or http.client), the status API is asked over a raw
socket with a ~50 ms connect timeout, and stdin is drained without ever blocking. A
gateway behind TLS (a team's load balancer, docs/deploy.md) is asked over `ssl`,
imported only then, with longer timeouts: it is across a network.

Where nonstop is, in order: `--url`; `--config`; ANTHROPIC_BASE_URL (what `nonstop
claude` gives Claude Code, whose environment this command inherits, or a team's
gateway) unless it is Anthropic's own; the default config file; 127.0.0.1:8787.
"""

from __future__ import annotations

import os
import re
import select
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from nonstop.cli.common import claude_user_settings, client_host

if TYPE_CHECKING:
    from pathlib import Path

CONNECT_TIMEOUT = 0.05
# Once connected, nonstop answers from memory plus one indexed query; a gateway that
# cannot answer this fast is better reported as busy than waited for.
READ_TIMEOUT = 0.3
# A gateway behind TLS is across a network, and its handshake is one more round trip.
TLS_CONNECT_TIMEOUT = 0.3
TLS_READ_TIMEOUT = 0.6
STATUS_PATH = "/_nonstop/api/status"
DEFAULT_LISTEN = "127.0.0.1:8787"
COMMAND = "nonstop statusline"
BACKUP_SUFFIX = ".bak-nonstop"

CLOUD_ICON = "☁"
LOCAL_ICON = "⌂"


# --- rendering (pure) ------------------------------------------------------------------------


def _pct(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{round(value * 100)}%"


def _clock(epoch: float, now: float) -> str:
    """Local wall-clock time, with the weekday when it is not within the next day."""
    try:
        t = time.localtime(epoch)
    except (OverflowError, ValueError, OSError):  # from a status written by something else
        return "?"
    if epoch - now >= 20 * 3600:
        return time.strftime("%a %H:%M", t)
    return time.strftime("%H:%M", t)


def _local_name(status: dict[str, Any]) -> str:
    backends = [b for b in status.get("local") or [] if isinstance(b, dict)]
    for b in backends:
        if b.get("healthy") is True:
            return str(b.get("name") or "")
    for b in backends:  # not checked yet: nonstop still tries it
        if b.get("healthy") is None:
            return str(b.get("name") or "")
    return ""


def render(status: dict[str, Any] | None, now: float | None = None, problem: str = "") -> str:
    """The line for a status JSON (None: nonstop is not answering, `problem` says why)."""
    if status is None:
        return f"{LOCAL_ICON} nonstop {problem or 'not running'}"
    now = time.time() if now is None else now
    cloud = status.get("cloud") or {}
    state = cloud.get("state")
    util = status.get("utilization") or {}
    if state == "serving":
        parts = [f"{CLOUD_ICON} cloud"]
        five, seven = _pct(util.get("5h")), _pct(util.get("7d"))
        if five:
            parts.append(f"5h {five}")
        # The weekly window only matters once it is the one about to bind.
        s7 = util.get("7d")
        if seven and isinstance(s7, int | float) and s7 >= 0.8:
            parts.append(f"7d {seven}")
        soon = _running_out(status, now)
        if soon:
            parts.append(soon)
        return " · ".join(parts)
    name = _local_name(status)
    head = f"{LOCAL_ICON} local {name}" if name else f"{LOCAL_ICON} local (no backend up)"
    if state == "probing":
        return f"{head} · checking cloud"
    until = cloud.get("until")
    if state == "out" and isinstance(until, int | float) and until > now:
        if cloud.get("reason") in ("credit_exhausted", "spend_limit"):
            return f"{head} · cloud {str(cloud['reason']).replace('_', ' ')}"
        return f"{head} · cloud back {_clock(until, now)}"
    if state == "out":
        return f"{head} · cloud retry due"
    return f"{head} · cloud {state or 'unknown'}"


def _running_out(status: dict[str, Any], now: float) -> str:
    """'out ~16:40, resets 17:00' for a window forecast to run out before its reset."""
    windows = (status.get("forecast") or {}).get("windows") or []
    for w in windows:
        out, resets = w.get("runs_out"), w.get("resets")
        if not isinstance(out, int | float):
            continue
        if isinstance(resets, int | float) and out > resets:
            continue
        text = f"out ~{_clock(max(out, now), now)}"
        return text + (f", resets {_clock(resets, now)}" if isinstance(resets, int | float) else "")
    return ""


# --- where nonstop is --------------------------------------------------------------------------


# `key = "value"` or `key = 'value'`, optionally followed by a comment.
_SIMPLE_KEY = re.compile(r"""\s*(listen|token)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\s*(?:#.*)?""")
_ANY_KEY = re.compile(r"""\s*["']?(listen|token)["']?\s*=""")


def _top_level_keys(path: str) -> dict[str, str]:
    """`listen` and `token` from the config's top level. A line scan is enough for the
    forms `nonstop init` writes and costs nothing to import; anything fancier (escapes,
    multi-line strings, quoted keys) is handed to tomllib."""
    try:
        with open(path, encoding="utf-8-sig") as fh:  # as the server reads it: a BOM is skipped
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return {}
    found: dict[str, str] = {}
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("["):
            break  # the first table ends the top level
        if not _ANY_KEY.match(raw):
            continue
        m = _SIMPLE_KEY.fullmatch(raw)
        if m is None or (m.group(2) is not None and "\\" in m.group(2)):
            return _toml_top_level(path)
        found[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    return found


def _toml_top_level(path: str) -> dict[str, str]:
    import tomllib

    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = tomllib.loads(fh.read())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    return {k: data[k] for k in ("listen", "token") if isinstance(data.get(k), str)}


def _default_config_path() -> str:
    env = os.environ.get("NONSTOP_CONFIG")
    if env:
        return os.path.expanduser(env)  # as `nonstop init` wrote it
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "nonstop", "config.toml")


def _split_hostport(hostport: str, default_port: int) -> tuple[str, int]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, sep, port = hostport.rpartition(":")
        if not sep:
            host, port = hostport, ""
    return client_host(host), int(port) if port.isdigit() else default_port


class Target(NamedTuple):
    """The nonstop to ask."""

    host: str
    port: int
    prefix: str = ""  # the path nonstop is served under (behind a proxy)
    token: str = ""
    tls: bool = False


def _from_url(url: str) -> Target | None:
    """The target of an http or https URL; None for anything else."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        return None
    tls = scheme == "https"
    hostport, _, path = rest.partition("/")
    host, port = _split_hostport(hostport.rpartition("@")[2], 443 if tls else 80)
    return Target(host, port, ("/" + path).rstrip("/"), tls=tls)


def _anthropics(target: Target) -> bool:
    """Anthropic's own API: Claude Code talks to the cloud directly, with no nonstop."""
    host = target.host.lower().rstrip(".")
    return host == "anthropic.com" or host.endswith(".anthropic.com")


def _headers_token(custom: str) -> str:
    for line in custom.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-nonstop-token":
            return value.strip()
    return ""


def locate(config: str | None, url: str | None) -> Target:
    """The nonstop to ask."""
    env = os.environ
    token = env.get("NONSTOP_TOKEN", "") or _headers_token(env.get("ANTHROPIC_CUSTOM_HEADERS", ""))
    if url:
        target = _from_url(url.rstrip("/")) or Target("127.0.0.1", 8787)
        return target._replace(token=token)
    if not config:
        base = _from_url(env.get("ANTHROPIC_BASE_URL", "").rstrip("/"))
        if base is not None and not _anthropics(base):
            return base._replace(token=token)
    data = _top_level_keys(config or _default_config_path())
    listen = data.get("listen")
    if data.get("token"):
        token = data["token"]
    host, port = _split_hostport(listen or DEFAULT_LISTEN, 8787)
    return Target(host, port, "", token)


# --- asking nonstop ------------------------------------------------------------------------------


class Unavailable(Exception):
    """nonstop did not give a status; the message is what the line shows."""


def _decode_chunked(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, body = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0] or b"0", 16)
        except ValueError:
            raise Unavailable("gave no valid answer") from None
        if size == 0:
            break
        out += body[:size]
        body = body[size + 2:]
    return bytes(out)


def _tls(sock: socket.socket, host: str, timeout: float) -> socket.socket:
    """The connection, over TLS once its handshake is done."""
    import ssl  # only for a gateway behind TLS: the usual path stays lean

    sock.settimeout(timeout)
    try:
        return ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise Unavailable(f"TLS certificate refused ({exc.verify_message})") from None
    except ssl.SSLError:
        sock.close()
        raise Unavailable("TLS failed") from None


def fetch_status(host: str, port: int, prefix: str = "", token: str = "", *, session: str = "", tls: bool = False,
                 connect_timeout: float | None = None, read_timeout: float | None = None) -> dict[str, Any]:
    """The status document. `tls`: over TLS, the certificate checked against the system's
    authorities (SSL_CERT_FILE names others) and `host`."""
    if connect_timeout is None:
        connect_timeout = TLS_CONNECT_TIMEOUT if tls else CONNECT_TIMEOUT
    if read_timeout is None:
        read_timeout = TLS_READ_TIMEOUT if tls else READ_TIMEOUT
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except (OSError, ValueError):  # a host name no resolver takes (a..b) is a ValueError
        raise Unavailable("not running") from None
    deadline = time.monotonic() + read_timeout
    try:
        if tls:
            sock = _tls(sock, host, read_timeout)
        query = f"?session={session}" if session else ""
        head = f"GET {prefix}{STATUS_PATH}{query} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nAccept: application/json\r\n"
        if token:
            head += f"x-nonstop-token: {token}\r\n"
        sock.sendall((head + "\r\n").encode("latin-1", "replace"))
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable("busy (no answer)")
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except TimeoutError:
        raise Unavailable("busy (no answer)") from None
    except OSError:
        raise Unavailable("not answering") from None
    finally:
        sock.close()
    raw = b"".join(chunks)
    header, _, body = raw.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise Unavailable("gave no valid answer")
    code = int(parts[1])
    if code == 401:
        raise Unavailable("needs its token (NONSTOP_TOKEN)")
    if code != 200:
        raise Unavailable(f"answered {code}")
    import json  # only once there is an answer: the "not running" path stays lean

    if any(line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower() for line in lines[1:]):
        body = _decode_chunked(body)
    try:
        doc = json.loads(body)
    except ValueError:
        raise Unavailable("gave no valid answer") from None
    # Standard library only, and imported only once there is an answer.
    from nonstop.server.status import well_formed

    if not isinstance(doc, dict) or not well_formed(doc):
        raise Unavailable("gave no valid answer")
    return doc


def drain_stdin() -> bytes:
    """Read whatever Claude Code piped in, without waiting: a terminal gives nothing."""
    got = b""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return got
    try:
        for _ in range(64):
            ready, _, _ = select.select([fd], [], [], 0)
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                return got
            got += chunk
    except (OSError, ValueError):  # e.g. Windows pipes, which select cannot watch
        return got
    return got


_SESSION = re.compile(rb'"session_id"\s*:\s*"([A-Za-z0-9_.:-]{1,100})"')


def session_of(stdin: bytes) -> str:
    """The Claude Code session the status line is drawn for (its JSON on stdin), so each
    client sees its own account's state on a shared gateway."""
    m = _SESSION.search(stdin)
    return m.group(1).decode() if m else ""


def line(config: str | None = None, url: str | None = None, session: str = "") -> str:
    t = locate(config, url)
    try:
        return render(fetch_status(t.host, t.port, t.prefix, t.token, session=session, tls=t.tls))
    except Unavailable as exc:
        return render(None, problem=str(exc))


def main(args: Any) -> int:
    if getattr(args, "install", False) or getattr(args, "uninstall", False):
        try:
            return _install_or_uninstall(args)
        except (ValueError, OSError) as exc:  # a settings file that is not JSON, or not writable
            print(f"nonstop: {exc}", file=sys.stderr)
            return 1
    session = session_of(drain_stdin())
    text = line(getattr(args, "config", None), getattr(args, "url", None), session) + "\n"
    # Claude Code reads UTF-8 whatever the locale says; the icons must not fail to encode.
    out = getattr(sys.stdout, "buffer", None)
    if out is not None:
        sys.stdout.flush()
        out.write(text.encode("utf-8"))
        out.flush()
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0


# --- Claude Code's settings -----------------------------------------------------------------------


def _read_settings(path: Path) -> tuple[dict[str, Any], bytes | None]:
    import json

    if not path.exists():
        return {}, None
    raw = path.read_bytes()
    if not raw.strip():
        return {}, raw
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix it, then run this again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object; fix it, then run this again")
    return data, raw


def _write_settings(path: Path, data: dict[str, Any], old: bytes | None) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    if old is not None:
        backup = path.with_name(path.name + BACKUP_SUFFIX)
        backup.write_bytes(old)
    tmp = path.with_name(f".{path.name}.nonstop-{os.getpid()}")
    # Owner-only from the first byte (settings can hold keys in `env`), then the
    # original file's mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)


def _install_or_uninstall(args: Any) -> int:
    if getattr(args, "install", False):
        print(f"nonstop: status line added to {install()}")
        return 0
    path = uninstall()
    print(f"nonstop: status line removed from {path}" if path else "nonstop: the status line was not installed")
    return 0


def _ours(value: Any) -> bool:
    return isinstance(value, dict) and str(value.get("command", "")).strip().startswith(COMMAND)


def is_installed(settings_path: Path | None = None) -> bool:
    try:
        data, _ = _read_settings(settings_path or claude_user_settings())
    except (ValueError, OSError):
        return False
    return _ours(data.get("statusLine"))


def install(settings_path: Path | None = None, command: str | None = None) -> Path:
    """Point Claude Code's statusLine at nonstop. Only that key changes; an existing file
    is first copied to settings.json.bak-nonstop."""
    # A settings file linked from elsewhere (a dotfiles repository) is edited where it is.
    path = (settings_path or claude_user_settings()).resolve()
    data, old = _read_settings(path)
    wanted = {"type": "command", "command": command or COMMAND}
    if data.get("statusLine") == wanted and old is not None:
        return path
    data["statusLine"] = wanted
    _write_settings(path, data, old)
    return path


def uninstall(settings_path: Path | None = None) -> Path | None:
    """Remove nonstop's statusLine, restoring the one the backup had, if any. Returns the
    settings path, or None when nonstop's status line was not installed."""
    path = (settings_path or claude_user_settings()).resolve()
    data, old = _read_settings(path)
    if not _ours(data.get("statusLine")):
        return None
    import json

    previous = None
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if backup.exists():
        try:
            previous = json.loads(backup.read_bytes()).get("statusLine")
        except (ValueError, AttributeError, OSError):
            previous = None
    if previous is not None and not _ours(previous):
        data["statusLine"] = previous
    else:
        data.pop("statusLine", None)
    _write_settings(path, data, old)
    return path


class _QuickArgs:
    def __init__(self, config: str | None, url: str | None):
        self.config, self.url = config, url


def quick_args(argv: list[str]) -> _QuickArgs:
    """`--config X` / `--url X` (or `--opt=X`) without loading argparse."""
    found: dict[str, str | None] = {"--config": None, "--url": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in found:
            if eq:
                found[name] = value
            elif i + 1 < len(argv):
                found[name] = argv[i + 1]
                i += 1
        i += 1
    return _QuickArgs(found["--config"], found["--url"])
