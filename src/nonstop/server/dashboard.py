"""nonstop's own pages under /_nonstop/: the dashboard and its JSON/SSE API.

Read-only unless an access token is configured (then the one write action, "probe the
cloud now", is allowed for requests that carry the token).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote

import orjson

from nonstop.routing.accounts import credential_of
from nonstop.server.asgi import (
    TOKEN_VIA,
    BadBody,
    ClientGone,
    Receive,
    Scope,
    Send,
    read_json_body,
    send_bytes,
    send_json,
)
from nonstop.server.explain import explain, request_facts
from nonstop.wire.validate import validate_messages_request

log = logging.getLogger("nonstop")

if TYPE_CHECKING:
    from nonstop.server.runtime import Runtime

# No external assets, no inline event handlers from data: a strict policy is possible.
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
_STATIC_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8"}


def _static(name: str) -> bytes | None:
    try:
        return resources.files("nonstop.server").joinpath("static", name).read_bytes()
    except (FileNotFoundError, OSError):
        return None


async def handle(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    method = scope["method"]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if path in ("/_nonstop", "/_nonstop/"):
        path = "/_nonstop/index.html"
        extra = list(_SECURITY_HEADERS)
        token = (query.get("token") or [""])[0]
        if token and scope.get(TOKEN_VIA) == "query":  # the token in the address let this request in
            # Quoted: a token may hold what a cookie cannot (a space, a semicolon).
            extra.append((b"set-cookie", f"nonstop_token={quote(token, safe='')}; HttpOnly; SameSite=Strict; Path=/".encode()))
    else:
        extra = list(_SECURITY_HEADERS)
    if method == "GET" and path == "/_nonstop/api/status":
        session = (query.get("session") or [""])[0][:100]
        await send_json(send, 200, await rt.status(session), extra=[(b"cache-control", b"no-store")])
        return
    if method == "GET" and path == "/_nonstop/api/body":
        await _body(rt, scope, _int(query.get("id"), 0), send)
        return
    if method == "GET" and path == "/_nonstop/api/fleet":
        await send_json(send, 200, await rt.clouds.fleet(), extra=[(b"cache-control", b"no-store")])
        return
    if method == "GET" and path == "/_nonstop/api/requests":
        limit = min(max(_int(query.get("limit"), 50), 1), 10_000)
        after = _int(query.get("after_id"), 0)
        rows: list = []
        if rt.store is not None:
            try:
                rows = await asyncio.to_thread(
                    rt.store.recent, limit=limit, after_id=after,
                    backend=(query.get("backend") or [""])[0], outcome=(query.get("outcome") or [""])[0],
                    model=(query.get("model") or [""])[0],
                )
            except Exception as exc:  # the dashboard lives on: the log is a courtesy
                log.warning("the request log could not be read: %s", exc)
        else:
            rows = list(rt.request_log.recent)[-limit:]
        await send_json(send, 200, {"requests": rows}, extra=[(b"cache-control", b"no-store")])
        return
    if method == "GET" and path == "/_nonstop/api/events":
        await _events(rt, receive, send)
        return
    if method == "POST" and path == "/_nonstop/api/probe":
        if not rt.cfg.token:
            await send_json(send, 403, {"error": "write actions need an access token: set token in the config"})
            return
        if scope.get("nonstop.user", "") != "":  # it probes every account: the administrator's action
            await send_json(send, 403, {"error": "probing the cloud for every account needs the administrator's token"})
            return
        for q in rt.clouds.accounts.states.values():
            q.probe_now()
        await send_json(send, 200, {"ok": True, "cloud": rt.quota.state.value})
        return
    if method == "POST" and path == "/_nonstop/api/explain":
        await _explain(rt, scope, receive, send)
        return
    if method in ("GET", "HEAD") and path.startswith("/_nonstop/") and "/api/" not in path:
        name = path.removeprefix("/_nonstop/")
        suffix = name[name.rfind("."):] if "." in name else ""
        if "/" not in name and suffix in _STATIC_TYPES:
            data = _static(name)
            if data is not None:
                await send_bytes(send, 200, data if method == "GET" else b"", _STATIC_TYPES[suffix], extra=extra)
                return
    await send_json(send, 404, {"error": f"no such page: {path[:100]}"})


async def _explain(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    """The plan for a request body, against the live state; nothing is sent anywhere."""
    try:
        _, doc = await read_json_body(scope, receive, rt.cfg.max_body_bytes)
    except BadBody as exc:
        await send_json(send, exc.status, {"error": f"{exc.message}: send {{\"request\": {{...}}, \"headers\": {{...}}}}"})
        return
    except ClientGone:
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("request"), dict):
        await send_json(send, 400, {"error": "send {\"request\": {...}, \"headers\": {...}}: the request's body "
                                             "as a JSON object, and the headers the plan reads (optional)"})
        return
    req, headers = doc["request"], doc.get("headers")
    problem = validate_messages_request(req)
    if problem:
        await send_json(send, 400, {"error": problem})
        return
    headers = {str(k).lower(): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}
    # The account of the credential given, else the latest request's (one user: theirs).
    raw = [(k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in headers.items()]
    account = rt.clouds.accounts.label(credential_of(raw)) if credential_of(raw) else rt.clouds.accounts.last
    await send_json(send, 200, explain(request_facts(req, headers), rt.view(account), rt.policy))


async def _body(rt: Runtime, scope: Scope, request_id: int, send: Send) -> None:
    """A logged request's bodies (with [log] store_bodies). On a gateway with per-user
    tokens, a user sees only their own; the administrator's token sees all."""
    found = await asyncio.to_thread(rt.store.bodies, request_id) if rt.store is not None else None
    if found is None:
        await send_json(send, 404, {"error": f"no stored bodies for request {request_id} (log.store_bodies is off, or it is gone)"})
        return
    owner, request, response = found
    asker = scope.get("nonstop.user")
    if rt.cfg.users and asker not in ("", owner):
        await send_json(send, 403, {"error": "that request was sent by another user: only they (or the administrator) can see its bodies"})
        return
    await send_json(send, 200, {"id": request_id, "user": owner, "request": request, "response": response})


# SQLite's integers: a number outside them is no row, and no limit.
_INT_RANGE = (-(2**63), 2**63 - 1)


def _int(values: list[str] | None, default: int) -> int:
    try:
        n = int(values[0][:20]) if values else default
    except ValueError:
        return default
    return min(max(n, _INT_RANGE[0]), _INT_RANGE[1])


async def _events(rt: Runtime, receive: Receive, send: Send) -> None:
    """Server-sent events: a status snapshot now and on every change, each request row
    as it is logged, and a keep-alive comment every 15 s."""
    q = rt.bus.subscribe()
    await send({
        "type": "http.response.start", "status": 200,
        "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store")],
    })

    async def wait_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    gone = asyncio.ensure_future(wait_gone())
    try:
        await send({"type": "http.response.body", "body": _sse("status", await rt.status()), "more_body": True})
        while not gone.done():
            getter = asyncio.ensure_future(q.get())
            done, _ = await asyncio.wait({getter, gone}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if not gone.done():
                    await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                continue
            event = getter.result()
            if event.get("type") == "status":
                payload = _sse("status", await rt.status())
            else:
                payload = _sse(event.get("type", "message"), event)
            await send({"type": "http.response.body", "body": payload, "more_body": True})
    except OSError:
        pass
    finally:
        rt.bus.unsubscribe(q)
        gone.cancel()
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _sse(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
