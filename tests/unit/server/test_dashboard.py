"""server/dashboard: nonstop's own pages under /_nonstop/. Who may do what with which
token, and input from a client that is an answer of its own (400, 404), never an
internal failure."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from nonstop.config import parse_config
from nonstop.server.app import App
from tests.support.inprocess import exchange

ADMIN = "admin-token-0123456789"
ANN = "ann-token-0123456789"


# --- tokens ---------------------------------------------------------------------------------------


async def test_a_users_token_cannot_make_the_cloud_probe_for_everyone(tmp_path: Path) -> None:
    """Probing the cloud for every account is the administrator's action: a [[users]]
    token is refused (403), so one user cannot force the whole shared gateway, other
    people's accounts included, into probing; the global token may."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "token": ADMIN,
                            "users": [{"name": "ann", "token": ANN}]}))
    status, _, body = await exchange(app, "POST", "/_nonstop/api/probe", headers=[(b"x-nonstop-token", ANN.encode())])
    assert status == 403, body
    status, _, _ = await exchange(app, "POST", "/_nonstop/api/probe", headers=[(b"x-nonstop-token", ADMIN.encode())])
    assert status == 200


async def test_a_users_only_gateway_lets_its_users_open_the_dashboard(tmp_path: Path) -> None:
    """On a gateway with [[users]] tokens and no global token, opening
    /_nonstop/?token=<user token> sets the dashboard's cookie, so the page's own calls
    and its event stream are let in too."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "listen": "0.0.0.0:8787",
                            "users": [{"name": "ann", "token": ANN}]}))
    status, headers, _ = await exchange(app, "GET", "/_nonstop/", query=f"token={ANN}".encode())
    assert status == 200
    cookie = headers.get(b"set-cookie", b"")
    assert cookie.startswith(f"nonstop_token={ANN}".encode()), "no cookie: the dashboard's API calls will all be refused"


async def test_a_stale_dashboard_cookie_does_not_lock_out_the_right_token(tmp_path: Path) -> None:
    """The right ?token= in the address lets the dashboard in whatever nonstop_token
    cookie the browser sends (one from another nonstop on the same host, or an old one
    left when the token changed), and replaces that cookie."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "token": ADMIN}))
    status, headers, _ = await exchange(app, "GET", "/_nonstop/", query=f"token={ADMIN}".encode(),
                                        headers=[(b"cookie", b"nonstop_token=token-of-the-instance-on-8788")])
    assert status == 200
    assert headers.get(b"set-cookie", b"").startswith(f"nonstop_token={ADMIN}".encode())


# --- a client's odd input -------------------------------------------------------------------------


async def test_a_huge_request_id_in_the_query_is_not_an_internal_error(tmp_path: Path, caplog) -> None:
    """/_nonstop/api/body?id=99999999999999999999 is a request id that does not exist:
    it is answered 400 or 404, with no error logged, so no query string can fill the
    gateway's log with internal-failure tracebacks."""
    app = App(parse_config({"state_dir": str(tmp_path)}))
    assert app.rt.store is not None
    app.rt.store.open()
    try:
        with caplog.at_level(logging.ERROR, logger="nonstop"):
            status, _, body = await exchange(app, "GET", "/_nonstop/api/body", query=b"id=99999999999999999999")
    finally:
        app.rt.store.close()
    assert status in (400, 404), body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_non_latin1_header_value_in_explain_is_a_bad_request_not_an_internal_error(tmp_path: Path) -> None:
    """POST /_nonstop/api/explain with a header value outside latin-1 (such as "€") is
    explained or refused as the client's input (200 or 400), not answered 500 with a
    logged traceback."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}))
    req = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    status, _, body = await exchange(app, "POST", "/_nonstop/api/explain",
                                     body=orjson.dumps({"request": req, "headers": {"x-api-key": "€"}}))
    assert status in (200, 400), body


@pytest.mark.parametrize("doc", [b"[]", b"5", b'{"request": 5}', b'{"request": [1]}', b'{"headers": {}}'])
async def test_an_explain_without_a_request_object_says_what_to_send(tmp_path: Path, doc: bytes) -> None:
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}))
    status, _, body = await exchange(app, "POST", "/_nonstop/api/explain", body=doc)
    assert status == 400, body
    assert orjson.loads(body)["error"].startswith('send {"request": {...}, "headers": {...}}: the request'), body


@pytest.mark.parametrize("cookies", [
    b'prefs={"dark":true}; nonstop_token=%s', b"msg=hello world; nonstop_token=%s", b"flag; nonstop_token=%s",
    b"nonstop_token=%s; foo=bar baz", b'theme=dark;nonstop_token="%s"', b"nonstop_token=stale; nonstop_token=%s",
])
async def test_another_site_s_odd_cookie_does_not_hide_the_token(tmp_path: Path, cookies: bytes) -> None:
    """Cookies are not kept apart by port: another app on this host may set one a strict
    parser refuses (JSON, a space, no `=`). The dashboard's token cookie still counts."""
    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}, "token": ADMIN}))
    status, _, _ = await exchange(app, "GET", "/_nonstop/api/status",
                                  headers=[(b"cookie", cookies.replace(b"%s", ADMIN.encode()))])
    assert status == 200
    status, _, _ = await exchange(app, "GET", "/_nonstop/api/status", headers=[(b"cookie", b"prefs={; nonstop_token=wrong")])
    assert status == 401
