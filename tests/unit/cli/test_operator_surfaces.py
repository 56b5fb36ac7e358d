"""The configuration and the operator-facing surfaces (status, statusline, explain, the
dashboard's API, /metrics, token and Host checks) against odd values and odd answers:
a clear message or a refusal naming the key, never a traceback, and never a team
locked out."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from nonstop.cli import explain as explain_cmd
from nonstop.cli import status as status_cmd
from nonstop.cli import statusline as sl
from nonstop.config import ConfigError, load_config, parse_config
from nonstop.server.app import App
from nonstop.store.db import connect, db_path, migrate
from tests.support.inprocess import exchange

ANN = "ann-token-0123456789"
REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in ("NONSTOP_TOKEN", "NONSTOP_CONFIG", "NONSTOP_STATE_DIR", "NONSTOP_LISTEN", "XDG_STATE_HOME",
              "ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


async def _exchange(app: App, method: str, path: str, headers: list[tuple[bytes, bytes]],
                    query: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    """One request over ASGI with exactly `headers` (the Host header included)."""
    return await exchange(app, method, path, query=query, headers=headers, exact=True)


def _one_reply_server(reply: bytes) -> tuple[socket.socket, int]:
    """A TCP listener that answers every connection with `reply` and closes it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)

    def run() -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            try:
                c.settimeout(2)
                c.recv(65536)
                c.sendall(reply)
            except OSError:
                pass
            finally:
                c.close()

    threading.Thread(target=run, daemon=True).start()
    return s, s.getsockname()[1]


@pytest.fixture
def reply_server() -> Iterator[Any]:
    opened: list[socket.socket] = []

    def start(reply: bytes) -> int:
        s, port = _one_reply_server(reply)
        opened.append(s)
        return port

    yield start
    for s in opened:
        s.close()


def _state_db(state_dir: Path, values: dict[str, str]) -> None:
    conn = connect(db_path(state_dir))
    migrate(conn)
    for k, v in values.items():
        conn.execute("INSERT INTO state VALUES (?, ?, ?)", (k, v, time.time()))
    conn.commit()
    conn.close()


# --- the token and Host checks ----------------------------------------------------------------------


async def test_a_users_only_gateway_serves_its_users_under_the_gateways_own_host_name(tmp_path: Path) -> None:
    """listen = "0.0.0.0:8787" with [[users]] tokens and no global token (a documented set-up):
    every request needs a token, so the DNS-rebinding Host check does not apply, and a team
    reaches the gateway by its own name (Host: gpu-box.lan:8787)."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "listen": "0.0.0.0:8787",
                            "users": [{"name": "ann", "token": ANN}]}))
    status, _, body = await _exchange(app, "GET", "/_nonstop/api/status",
                                      [(b"host", b"gpu-box.lan:8787"), (b"x-nonstop-token", ANN.encode())])
    assert status == 200, body


async def test_the_dashboard_cookie_lets_the_page_in_for_a_token_with_spaces(tmp_path: Path) -> None:
    """A token may be a passphrase ("correct horse battery staple"): the dashboard's cookie
    carries it encoded, so the browser sends it back whole and the page's API calls are let in."""
    token = "correct horse battery staple"
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "token": token}))
    host = [(b"host", b"127.0.0.1:8787")]
    status, headers, _ = await _exchange(app, "GET", "/_nonstop/", host, query=b"token=correct%20horse%20battery%20staple")
    assert status == 200
    set_cookie = headers[b"set-cookie"].decode()
    pair = set_cookie.split(";", 1)[0]  # what a browser keeps and sends back (RFC 6265 5.2)
    status, _, body = await _exchange(app, "GET", "/_nonstop/api/status", [*host, (b"cookie", pair.encode())])
    assert status == 200, body


async def test_head_metrics_is_answered_by_nonstop_not_forwarded_to_the_cloud(tmp_path: Path) -> None:
    """HEAD /metrics (a monitor's or a proxy's check) is answered by nonstop, as HEAD /health
    is, not forwarded to the cloud."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}))
    forwarded: list[str] = []

    async def to_the_cloud(scope: Any, receive: Any, send: Any) -> None:  # stands in for the cloud's answer
        forwarded.append(scope["path"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    app.anthropic.passthrough = to_the_cloud  # type: ignore[method-assign]
    status, _, body = await _exchange(app, "HEAD", "/metrics", [(b"host", b"127.0.0.1:8787")])
    assert forwarded == [], "HEAD /metrics was forwarded to the cloud"
    assert status == 200, body


async def test_api_requests_limit_zero_or_negative_does_not_return_the_whole_log(tmp_path: Path) -> None:
    """/_nonstop/api/requests?limit=0 or -1 gives at most one row, as the SQLite path does,
    not the whole in-memory log."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}))
    app.rt.request_log.recent.extend({"seq": i, "model": "m"} for i in range(1, 11))
    host = [(b"host", b"127.0.0.1:8787")]
    for q in (b"limit=0", b"limit=-1"):
        status, _, body = await _exchange(app, "GET", "/_nonstop/api/requests", host, query=q)
        assert status == 200
        rows = orjson.loads(body)["requests"]
        assert len(rows) <= 1, (q, len(rows))


# --- configuration ------------------------------------------------------------------------------------


def test_a_non_ascii_nonstop_token_is_refused_like_one_in_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token that is not ASCII is refused from NONSTOP_TOKEN as from the file (it travels in
    an HTTP header: no client could ever match it)."""
    monkeypatch.setenv("NONSTOP_TOKEN", "pässwort-geheim-123")
    with pytest.raises(ConfigError, match="NONSTOP_TOKEN|ASCII"):
        parse_config({})


def test_a_cloud_url_ending_in_v1_is_refused_like_a_local_one() -> None:
    """[cloud] url ending in /v1 is refused, as a [[local]] one is: the client's path is added
    to it, and every request would go to /v1/v1/messages."""
    with pytest.raises(ConfigError, match="cloud.url"):
        parse_config({"cloud": {"url": "https://api.anthropic.com/v1"}})


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"cloud": {"first_byte_timeout": 0}}, "cloud.first_byte_timeout"),
        ({"shared": {"heartbeat": 0}}, "shared.heartbeat"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
    ],
    ids=["cloud-first-byte-0", "heartbeat-0", "max-body-0"],
)
def test_a_zero_that_disables_the_gateway_is_refused(data: dict, key: str) -> None:
    """A 0 that would disable the gateway is refused, naming the key: cloud.first_byte_timeout
    (every cloud request would time out), shared.heartbeat (a busy loop on Redis),
    max_body_bytes (every request with a body refused)."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(data)


def test_a_discovery_port_out_of_range_is_refused() -> None:
    """[discovery] ports outside 1-65535 are refused, not a discovery silently turned off."""
    with pytest.raises(ConfigError, match="discovery.ports"):
        parse_config({"discovery": {"ports": [11434, 70000]}})


def test_a_config_file_with_a_utf8_bom_is_read_or_the_bom_is_named(tmp_path: Path) -> None:
    """A config an editor saved with a UTF-8 byte order mark (and CRLF line ends) is read: the
    mark is no part of the TOML."""
    p = tmp_path / "config.toml"
    p.write_bytes(b'\xef\xbb\xbflisten = "127.0.0.1:9000"\r\n[cloud]\r\nurl = "https://api.anthropic.com"\r\n')
    try:
        cfg = load_config(p)
    except ConfigError as exc:
        assert "BOM" in str(exc) or "byte order mark" in str(exc), str(exc)
    else:
        assert cfg.port == 9000


# --- nonstop status -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\":"],
    ids=["not-http", "cut-body"],
)
def test_status_with_something_else_on_the_port_is_a_message_not_a_traceback(
        tmp_path: Path, reply_server: Any, reply: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    """`nonstop status` with something on the port that is not HTTP (an SSH daemon), or that
    cuts its answer short: "is something else on this port?" (exit 2), not a traceback."""
    port = reply_server(reply)
    cfg = parse_config({"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path)})
    rc = status_cmd.cmd_status(cfg)
    assert rc == 2
    assert "nonstop" in capsys.readouterr().err


def test_status_with_a_json_object_that_is_not_nonstops_is_a_message_not_a_traceback(
        tmp_path: Path, reply_server: Any) -> None:
    """A JSON object of another shape at the status path (another program, another version)
    is reported like a non-JSON answer (exit 2), not a crash in the rendering."""
    body = json.dumps({"cloud": "serving", "local": [1]}).encode()
    port = reply_server(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
    cfg = parse_config({"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path)})
    assert status_cmd.cmd_status(cfg) == 2


@pytest.mark.parametrize(
    "state",
    [
        {"accounts": json.dumps({"accounts": ["default"]})},
        {"quota": json.dumps({"state": "serving", "utilization": [0.5]})},
    ],
    ids=["accounts-list", "utilization-list"],
)
def test_status_with_a_corrupt_state_on_disk_still_prints(tmp_path: Path, state: dict[str, str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """With nonstop stopped, a state on disk whose values have the wrong shape (accounts or
    utilization as lists) is skipped: the status still prints."""
    _state_db(tmp_path, state)
    cfg = parse_config({"listen": "127.0.0.1:1", "state_dir": str(tmp_path)})
    assert status_cmd.cmd_status(cfg) == 1
    assert "not running" in capsys.readouterr().out


# --- nonstop explain ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    ["not-a-database", "empty-file", "quota-not-json", "quota-a-list"],
)
def test_explain_offline_with_a_corrupt_state_file_still_plans(tmp_path: Path, make: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`nonstop explain --offline` with a state file gone bad (not a database, empty, a quota
    that is not JSON or not an object) plans as on a fresh start."""
    state = tmp_path / "state"
    state.mkdir()
    if make == "not-a-database":
        db_path(state).write_bytes(b"this is not a database " * 200)
    elif make == "empty-file":
        db_path(state).write_bytes(b"")
    elif make == "quota-not-json":
        _state_db(state, {"quota": "{not json"})
    else:
        _state_db(state, {"quota": "[1]"})
    req = tmp_path / "req.json"
    req.write_text(json.dumps(REQUEST))
    cfg = parse_config({"listen": "127.0.0.1:1", "state_dir": str(state)})
    rc = explain_cmd.main(cfg, str(req), headers=[], offline=True)
    assert rc in (0, 2)


# --- nonstop statusline ---------------------------------------------------------------------------


def test_statusline_and_the_server_agree_on_the_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status line reads the address the way the server does (NONSTOP_LISTEN is read by
    neither): it never asks another port than the gateway listens on."""
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text('[cloud]\nurl = "https://api.anthropic.com"\n')
    monkeypatch.setenv("NONSTOP_LISTEN", "127.0.0.1:9999")
    server = load_config(cfg_file)
    host, port = sl.locate(str(cfg_file), None)[:2]
    assert (host, port) == (server.host, server.port)


def test_statusline_with_a_malformed_base_url_host_prints_a_line() -> None:
    """A malformed host in ANTHROPIC_BASE_URL (http://a..b:8787) gives a line, not a traceback
    after every turn of Claude Code."""
    assert sl.line(url="http://a..b:8787").startswith("⌂ nonstop")


def test_statusline_with_a_json_object_that_is_not_nonstops_prints_a_line(reply_server: Any) -> None:
    """A JSON object of another shape at the status path gives "nonstop gave no valid answer",
    not a traceback on every refresh."""
    body = json.dumps({"cloud": "serving"}).encode()
    port = reply_server(b"HTTP/1.1 200 OK\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert sl.line(url=f"http://127.0.0.1:{port}").startswith("⌂ nonstop")
