"""`nonstop status` and `nonstop logs`: what the gateway is doing, from its API, or from
the request log on disk when it is not running.

Exit codes: 0 when nonstop answered (logs: when rows could be read), 1 when it is not
running (status still prints what the log on disk knows), 2 when it refused the request
(a missing or wrong access token) or nothing could be read.
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.client
import json
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from nonstop.cli.common import db_path, gateway_url
from nonstop.config import Config
from nonstop.server.status import well_formed

API_TIMEOUT = 2.0
FOLLOW_INTERVAL = 1.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NotRunning(Exception):
    """Nothing answers at the configured address."""


class Refused(Exception):
    """nonstop answered but would not serve the request; the message says how to fix it."""


class NotAnswering(Refused):
    """Something took the connection at the configured address but gave no answer in time
    (a busy gateway), or one that is not nonstop's (something else on the port)."""


# --- talking to the running gateway -----------------------------------------------------------


def api_get(cfg: Config, path: str, params: dict[str, Any] | None = None, timeout: float = API_TIMEOUT) -> Any:
    url = gateway_url(cfg.host, cfg.port) + path
    if params:
        url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v not in ("", None)})
    return _call(cfg, urllib.request.Request(url, headers={"accept": "application/json"}), path, timeout)


def api_post(cfg: Config, path: str, body: Any, timeout: float = API_TIMEOUT) -> Any:
    req = urllib.request.Request(gateway_url(cfg.host, cfg.port) + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"accept": "application/json", "content-type": "application/json"})
    return _call(cfg, req, path, timeout)


def _call(cfg: Config, req: urllib.request.Request, path: str, timeout: float) -> Any:
    if cfg.token:
        req.add_header("x-nonstop-token", cfg.token)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise Refused(
                f"nonstop at {cfg.listen} needs its access token: set token in the config or NONSTOP_TOKEN"
            ) from None
        detail = ""
        with contextlib.suppress(Exception):
            detail = str(json.loads(exc.read()).get("error", ""))[:300]
        raise Refused(f"nonstop at {cfg.listen} answered {exc.code} for {path}" + (f": {detail}" if detail else "")) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):  # the connection was not even taken in time
            raise NotAnswering(f"nonstop at {cfg.listen} did not answer in {timeout:g} s (busy?)") from None
        raise NotRunning(cfg.listen) from None
    except TimeoutError:  # connected, and then no answer
        raise NotAnswering(f"nonstop at {cfg.listen} did not answer in {timeout:g} s (busy?)") from None
    except (ValueError, http.client.HTTPException):  # not JSON, not HTTP: not nonstop's answer
        raise NotAnswering(f"what answers at {cfg.listen} did not give nonstop's answer: "
                           "is something else on this port?") from None
    except (ConnectionError, OSError):
        raise NotRunning(cfg.listen) from None


# --- the log on disk ------------------------------------------------------------------------------


def _open_db(cfg: Config) -> sqlite3.Connection | None:
    from nonstop.store.db import connect

    path = db_path(cfg.state_dir)
    if not path.exists():
        return None
    try:
        return connect(path, readonly=True)
    except sqlite3.Error:
        return None


def offline_status(cfg: Config, now: float | None = None) -> dict[str, Any]:
    """The status document filled from the persisted state and the request log."""
    from nonstop import __version__
    from nonstop.server.status import account_entries, backend_entry, start_of_day, status_document
    from nonstop.store.db import totals_since

    now = time.time() if now is None else now
    snap: dict[str, Any] = {}
    accounts: dict[str, Any] = {}
    today: dict[str, Any] = {}
    conn = _open_db(cfg)
    if conn is not None:
        with closing(conn):
            try:
                snap = _state(conn, "quota")
                # One state for everyone (an older version, or one account): the default account's.
                accounts = _state(conn, "accounts").get("accounts") or ({"": snap} if snap else {})
                if not isinstance(accounts, dict):  # a state gone bad: the status still prints
                    accounts = {}
                today = totals_since(conn, start_of_day(now))
            except (sqlite3.Error, ValueError):
                pass
    return status_document(
        cfg, snap, [backend_entry(b) for b in cfg.local], today, running=False, version=__version__, now=now,
        log=str(db_path(cfg.state_dir)) if conn is not None else "",
        accounts=account_entries(accounts, dict(cfg.accounts)),
        embedded_installed=_embedded_installed(cfg),
    )


def _embedded_installed(cfg: Config) -> bool | None:
    """Whether the embedded llama-server and model are on this machine (None: not needed)."""
    if cfg.local or cfg.embedded.mode == "never":
        return None
    from nonstop.backends.llama_stack import find_bundled_model, find_llama_server

    return (find_llama_server(cfg.embedded.server_path) is not None
            and find_bundled_model(cfg.embedded.model_path) is not None)


def _state(conn: sqlite3.Connection, key: str) -> dict[str, Any]:
    row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    loaded = json.loads(row[0]) if row is not None else None
    return loaded if isinstance(loaded, dict) else {}


def get_status(cfg: Config) -> dict[str, Any]:
    """The live status (running: true) or the one on disk (running: false)."""
    try:
        st = api_get(cfg, "/_nonstop/api/status")
    except NotRunning:
        return offline_status(cfg)
    if not isinstance(st, dict) or not well_formed(st):
        raise NotAnswering(f"what answers at {cfg.listen} did not give nonstop's status: "
                           "is something else on this port?")
    return {**st, "running": True}


def add_verdicts(cfg: Config, st: dict[str, Any]) -> None:
    """Fill in each local backend's `eval` (its last score, stale when the model changed)
    where the document has none: a gateway that does not report it, or the log on disk.
    The servers are asked which model they run now, briefly."""
    entries = [e for e in st.get("local") or [] if isinstance(e, dict) and e.get("eval") is None]
    if not entries:
        return
    from nonstop.quality.verdict import verdicts

    current = _identities(entries)
    names = [str(e.get("name", "")) for e in entries]
    models = {str(e.get("name", "")): str(e.get("model") or "") for e in entries}
    found = verdicts(db_path(cfg.state_dir), names, current=current, models=models)
    for e in entries:
        e["eval"] = found.get(str(e.get("name", "")))


def _identities(entries: list[dict[str, Any]]) -> dict[str, Any]:
    import asyncio

    import aiohttp

    from nonstop.cli.eval import from_status
    from nonstop.quality.identity import identify

    configs = [c for c in map(from_status, entries) if c is not None]

    async def read() -> dict[str, Any]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            found = await asyncio.gather(*(identify(session, c, timeout=API_TIMEOUT) for c in configs))
        return {i.backend: i for i in found if i.reachable}

    try:
        return asyncio.run(read())
    except (OSError, RuntimeError):
        return {}


# --- rendering (pure) ------------------------------------------------------------------------------


def utc_hhmm(epoch: float, now: float) -> str:
    try:
        d = datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, ValueError, OSError):  # from a status written by something else
        return "an unknown time"
    if abs(epoch - now) >= 20 * 3600:
        return d.strftime("%Y-%m-%d %H:%M UTC")
    return d.strftime("%H:%M UTC")


def span(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def count(n: Any) -> str:
    n = int(n or 0)
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return str(n)


def _n(n: Any, noun: str) -> str:
    return f"{count(n)} {noun}{'' if int(n or 0) == 1 else 's'}"


def pct(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return f"{value * 100:.0f}%"


def cloud_line(cloud: dict[str, Any], now: float) -> str:
    state = cloud.get("state")
    reason = cloud.get("reason") or ""
    detail = cloud.get("detail") or ""
    why = f"{reason}: {detail}" if reason and detail else reason or detail
    until = cloud.get("until")
    if state == "serving":
        return "serving"
    if state == "out":
        if isinstance(until, int | float):
            when = utc_hhmm(until, now)
            if until > now:
                text = f"out until {when} (in {span(until - now)})"
            else:
                text = f"out until {when} (passed: the next request checks the cloud)"
        else:
            text = "out"
        return f"{text} — {why}" if why else text
    if state == "probing":
        return "probing: one request is checking whether the cloud is back" + (f" (was: {why})" if why else "")
    return "unknown: no state recorded yet"


def shadow_line(sh: Any) -> str:
    """How often the local model did what the cloud did, per workload class."""
    if not isinstance(sh, dict):
        return ""
    by_class = sh.get("by_class") or {}
    head = f"{pct(sh.get('sample'))} of cloud answers replayed locally"
    if not by_class:
        return head + ": no comparisons yet"
    parts = [f"{cls} {pct(c.get('rate'))} agree (n={c.get('n')}, same tool {pct(c['same_tool'] / c['n'])}, "
             f"same stop {pct(c['same_stop'] / c['n'])})" for cls, c in sorted(by_class.items()) if c.get("n")]
    return head + f" (last {sh.get('days', 7):g} days): " + "; ".join(parts)


def forecast_line(f: dict[str, Any], now: float) -> str:
    """Each quota window's forecast, and whether deferrable work is being conserved."""
    parts = []
    for w in f.get("windows") or []:
        out, resets = w.get("runs_out"), w.get("resets")
        text = f"{w.get('window', '?')} {pct(w.get('utilization'))}"
        if isinstance(out, int | float) and not (isinstance(resets, int | float) and out > resets):
            text += f" · out ~{utc_hhmm(max(out, now), now)}"
        else:
            text += " · not forecast to run out"
        if isinstance(resets, int | float):
            text += f", resets {utc_hhmm(resets, now)}"
        parts.append(text)
    if not parts:
        return ""
    line = "; ".join(parts)
    if f.get("conserving"):
        line += " — conserving: background work and subagents go local first"
    return line


def backend_details(b: dict[str, Any]) -> str:
    """The live part of a backend: its real window, load, speed, demotion, warmth."""
    bits = []
    window, configured = b.get("window"), b.get("context_window")
    if isinstance(window, int) and window:
        bits.append(f"{window // 1024}k window" + (
            " (assumed: the server has not said it yet)" if b.get("window_assumed")
            else f" (configured {configured // 1024}k)" if isinstance(configured, int) and configured > window else ""))
    if b.get("inflight"):
        bits.append(f"{b['inflight']} in flight")
    for key, what in (("prompt_tps", "prompt"), ("gen_tps", "output")):
        if isinstance(b.get(key), int | float):
            bits.append(f"{b[key]:.0f} {what} tok/s")
    if b.get("warmth"):
        bits.append(str(b["warmth"]))
    if b.get("demoted"):
        bits.append("demoted: " + str(b.get("demoted_why") or "failed recently"))
    if b.get("folds_turns"):
        bits.append("its template refuses a user turn after tool results: text beside them sent inside the last")
    return " · ".join(bits)


def render_status(st: dict[str, Any], now: float | None = None, serve: str = "nonstop serve") -> str:
    """`serve`: the command that starts the gateway this status was asked of."""
    now = (st.get("now") or time.time()) if now is None else now
    out: list[str] = []
    if st.get("running", True):
        pid = f"pid {st['pid']}, " if st.get("pid") else ""
        out.append(f"nonstop {st.get('version', '')} running on {st.get('listen', '')} ({pid}up {span(st.get('uptime') or 0)})")
    else:
        elsewhere = " (one listening elsewhere: --host / --port)" if serve == "nonstop serve" else ""
        out.append(f"nonstop is not running on {st.get('listen', '')}: start it with `{serve}`{elsewhere}")
        out.append(f"  (last known state, from {st['log']})" if st.get("log") else "  (no request log found yet)")
    out.append(f"cloud    {cloud_line(st.get('cloud') or {}, now)}")
    accounts = st.get("accounts") or []
    if len(accounts) > 1:  # a shared gateway: each account's quota is its own
        for a in accounts:
            five = pct((a.get("utilization") or {}).get("5h"))
            out.append(f"account  {a.get('name') or a.get('account')}  {cloud_line(a, now)} · 5h {five}")
    if st.get("fleet"):
        out.append(f"fleet    {st['fleet']} (`nonstop status --fleet` lists the instances)")
    shadow = shadow_line(st.get("shadow"))
    if shadow:
        out.append(f"shadow   {shadow}")
    u = st.get("utilization") or {}
    quota = f"5h {pct(u.get('5h'))}"
    if isinstance(u.get("5h_reset"), int | float):
        quota += f" (resets {utc_hhmm(u['5h_reset'], now)})"
    quota += f" · 7d {pct(u.get('7d'))}"
    if isinstance(u.get("7d_reset"), int | float):
        quota += f" (resets {utc_hhmm(u['7d_reset'], now)})"
    if isinstance(u.get("updated"), int | float) and u["updated"]:
        quota += f" · seen {span(now - u['updated'])} ago"
    elif u.get("5h") is None and u.get("7d") is None:
        quota = "not seen yet (the cloud reports it on each reply)"
    out.append(f"quota    {quota}")
    forecast = forecast_line(st.get("forecast") or {}, now)
    if forecast:
        out.append(f"forecast {forecast}")
    first_byte = (st.get("cloud") or {}).get("first_byte_deadlines") or {}
    if first_byte:
        out.append("deadline " + " · ".join(f"{size} waits {secs:g}s" for size, secs in first_byte.items())
                   + " for the cloud's first byte (learned)")
    backends = st.get("local") or []
    ways = [way for way, can in (
        ("finds the local servers running", st.get("discovery") is True),
        ("starts its own small model", st.get("embedded", "never") != "never" and st.get("embedded_installed") is not False),
    ) if can]
    if not backends and not st.get("running", True) and ways:
        out.append(f"local    none configured: `{serve}` " + ", or ".join(ways))
    elif not backends:
        out.append("local    none configured — run `nonstop doctor`")
    width = max([len(str(b.get("name", ""))) for b in backends] or [0])
    for i, b in enumerate(backends):
        label = "local    " if i == 0 else "         "
        healthy = b.get("healthy")
        if healthy is True:
            health = "up"
        elif healthy is False:
            health = "down" + (f": {b['error']}" if b.get("error") else "")
        else:
            health = "not checked yet" if st.get("running", True) else "unknown"
        model = f" · {b['model']}" if b.get("model") else ""
        out.append(f"{label}{str(b.get('name', '')):<{width}}  {health} · {b.get('url', '')}{model}")
        verdict = b.get("eval")
        if isinstance(verdict, dict) and verdict.get("text"):
            out.append(f"         {'':<{width}}  eval: {verdict['text']}")
        live = backend_details(b)
        if live:
            out.append(f"         {'':<{width}}  {live}")
    today = st.get("today") or {}
    if today:
        for i, side in enumerate(("cloud", "local")):
            t = today.get(side) or {}
            label = "today    " if i == 0 else "         "
            out.append(
                f"{label}{side:<5}  {_n(t.get('requests'), 'request')} · "
                f"{count(t.get('input_tokens'))} in / {count(t.get('output_tokens'))} out tokens"
            )
    else:
        out.append("today    no request log (log.enabled = false or nothing logged yet)")
    return "\n".join(out)


def _ms(v: Any) -> str:
    if not isinstance(v, int | float):
        return "-"
    return f"{v / 1000:.1f}s" if v >= 10_000 else f"{v:.0f}ms"


def _cut(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


LOG_HEADER = f"{'time':<8}  {'model':<26} {'backend':<10} {'result':<12} {'ttfb':>7} {'total':>7} {'tokens in/out':>13}  why"


def render_row(row: dict[str, Any]) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(float(row.get("ts") or 0)))
    result = f"{row.get('outcome') or '?'} {row.get('status') or ''}".strip()
    tokens = f"{count(row.get('input_tokens'))}/{count(row.get('output_tokens'))}"
    why = row.get("reason") or ""
    if row.get("error"):
        why = f"{why}; {row['error']}" if why else row["error"]
    return (
        f"{t:<8}  {_cut(row.get('model') or '-', 26):<26} {_cut(row.get('backend') or '-', 10):<10} "
        f"{_cut(result, 12):<12} {_ms(row.get('ttfb_ms')):>7} {_ms(row.get('total_ms')):>7} {tokens:>13}  {_cut(why, 80)}"
    ).rstrip()


def row_key(row: dict[str, Any]) -> int:
    """Rows from the log have an id; rows kept in memory (log disabled) a sequence number."""
    return int(row.get("id") or row.get("seq") or 0)


@dataclass(frozen=True)
class Filters:
    backend: str = ""  # "cloud", "local", or a backend's name
    outcome: str = ""
    model: str = ""  # a name or a glob

    def matches(self, row: dict[str, Any]) -> bool:
        b = row.get("backend") or ""
        if self.backend == "local":
            if b in ("cloud", ""):
                return False
        elif self.backend and b != self.backend:
            return False
        if self.outcome and row.get("outcome") != self.outcome:
            return False
        model = (row.get("model") or "").lower()
        return not self.model or fnmatch.fnmatchcase(model, self.model.lower().replace("%", "*"))


# --- where rows come from ------------------------------------------------------------------------


class RowSource(Protocol):
    def rows(self, after_id: int, limit: int, f: Filters) -> list[dict[str, Any]]: ...


class ApiRows:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def rows(self, after_id: int, limit: int, f: Filters) -> list[dict[str, Any]]:
        doc = api_get(self.cfg, "/_nonstop/api/requests", {
            "limit": limit, "after_id": after_id or "", "backend": f.backend, "outcome": f.outcome, "model": f.model,
        })
        rows = doc.get("requests", []) if isinstance(doc, dict) else []
        # The in-memory list (log disabled) ignores the filters; applying them again is harmless.
        picked = [r for r in rows if isinstance(r, dict) and row_key(r) > after_id and f.matches(r)]
        return picked[-limit:]


class DbRows:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def rows(self, after_id: int, limit: int, f: Filters) -> list[dict[str, Any]]:
        from nonstop.store.db import recent

        conn = _open_db(self.cfg)
        if conn is None:
            raise FileNotFoundError(db_path(self.cfg.state_dir))
        with closing(conn):
            return recent(conn, limit=limit, after_id=after_id, backend=f.backend, outcome=f.outcome, model=f.model)


class TolerantDbRows(DbRows):
    """While following: a log that is not there yet, or busy, reads as no new rows."""

    def rows(self, after_id: int, limit: int, f: Filters) -> list[dict[str, Any]]:
        try:
            return super().rows(after_id, limit, f)
        except (FileNotFoundError, sqlite3.Error):
            return []


def follow_rows(source: RowSource, first: list[dict[str, Any]], f: Filters, *,
                sleep: Callable[[float], None] = time.sleep, interval: float = FOLLOW_INTERVAL) -> Iterator[dict[str, Any]]:
    """The rows already read, then new ones as they are logged, forever."""
    last = 0
    for r in first:
        last = max(last, row_key(r))
        yield r
    while True:
        sleep(interval)
        try:
            rows = source.rows(last, 1000, f)
        except NotAnswering:  # busy for a moment: asked again at the next turn
            continue
        for r in rows:
            last = max(last, row_key(r))
            yield r


# --- the commands ------------------------------------------------------------------------------------


def cmd_status(cfg: Config, as_json: bool = False, fleet: bool = False, serve: str = "nonstop serve") -> int:
    if fleet:
        return cmd_fleet(cfg, as_json)
    try:
        st = get_status(cfg)
    except Refused as exc:
        print(f"nonstop: {exc}", file=sys.stderr)
        return 2
    add_verdicts(cfg, st)
    if as_json:
        print(json.dumps(st, indent=2, ensure_ascii=False))
    else:
        print(render_status(st, serve=serve))
    return 0 if st.get("running") else 1


def cmd_fleet(cfg: Config, as_json: bool = False) -> int:
    try:
        doc = api_get(cfg, "/_nonstop/api/fleet")
    except NotRunning:
        print(f"nonstop is not running on {cfg.listen}: the fleet is seen through a running instance", file=sys.stderr)
        return 1
    except Refused as exc:
        print(f"nonstop: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(render_fleet(doc, time.time()))
    return 0


def render_fleet(doc: dict[str, Any], now: float) -> str:
    """Every instance of the fleet and each account's shared state."""
    redis = str(doc.get("redis", "unknown"))
    if redis != "ok" and not redis.startswith("partial"):
        return f"fleet    Redis {redis}: this instance runs on its own state"
    out = [f"fleet    {_n(len(doc.get('instances') or []), 'instance')} sharing state through Redis"
           + ("" if redis == "ok" else f"; the listing is {redis}: Redis failed while it was read")]
    marks: dict[str, list[str]] = {}
    for i in doc.get("instances") or []:
        if isinstance(i, dict) and isinstance(i.get("labels"), str):
            marks.setdefault(i["labels"], []).append(str(i.get("instance", "?")))
    if len(marks) > 1:
        out.append("warning  the instances label accounts differently, so they share no account's state ("
                   + "; ".join(f"{', '.join(who)}: labels {mark}" for mark, who in sorted(marks.items()))
                   + "): set the same [shared] account_salt on each")
    for i in doc.get("instances") or []:
        if not isinstance(i, dict):
            continue
        backends: dict[str, Any] = i["backends"] if isinstance(i.get("backends"), dict) else {}
        local = ", ".join(f"{n} on {name}" for name, n in backends.items() if n) or "none local"
        out.append(f"         {i.get('instance', '?')}  v{i.get('version', '?')} · {i.get('listen', '')} · "
                   f"{i.get('inflight', 0)} in flight ({local})" + (" · draining" if i.get("draining") else "")
                   + f" · seen {span(max(0.0, now - (i['beat'] if isinstance(i.get('beat'), int | float) else now)))} ago")
    for account, a in sorted((doc.get("accounts") or {}).items()):
        snap = a.get("snapshot") or {}
        line = cloud_line({**snap, "until": snap.get("until") if snap.get("state") != "serving" else None}, now)
        out.append(f"account  {account or 'default'}  {line} (by {a.get('by', '?')})")
    return "\n".join(out)


def _first_rows(cfg: Config, limit: int, f: Filters) -> tuple[RowSource, bool, list[dict[str, Any]]]:
    """(source, running, rows): the API while nonstop runs, else the log on disk."""
    api = ApiRows(cfg)
    try:
        return api, True, api.rows(0, limit, f)
    except NotRunning:
        db = DbRows(cfg)
        return db, False, db.rows(0, limit, f)


def cmd_logs(cfg: Config, as_json: bool = False, follow: bool = False, limit: int = 20,
             backend: str = "", outcome: str = "", model: str = "", serve: str = "nonstop serve") -> int:
    f = Filters(backend, outcome, model)
    try:
        source, running, rows = _first_rows(cfg, max(1, limit), f)
    except Refused as exc:
        print(f"nonstop: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, sqlite3.Error):
        print(f"nonstop: not running on {cfg.listen} and no readable request log at {db_path(cfg.state_dir)}; "
              f"start it with `{serve}`", file=sys.stderr)
        return 2
    if not running and not as_json:
        print(f"(nonstop is not running; reading {db_path(cfg.state_dir)})", file=sys.stderr)
    if not as_json:
        print(LOG_HEADER)
    try:
        stream = _follow(cfg, source, running, rows, f) if follow else iter(rows)
        for r in stream:
            print(json.dumps(r, ensure_ascii=False) if as_json else render_row(r), flush=follow)
    except KeyboardInterrupt:
        return 0
    except Refused as exc:
        print(f"nonstop: {exc}", file=sys.stderr)
        return 2
    return 0


def _follow(cfg: Config, source: RowSource, running: bool, rows: list[dict[str, Any]], f: Filters) -> Iterator[dict[str, Any]]:
    """Follow the API; when the gateway stops, keep following the log on disk."""
    if not running:
        yield from follow_rows(TolerantDbRows(cfg), rows, f)
        return
    seen = 0
    try:
        for r in follow_rows(source, rows, f):
            seen = max(seen, row_key(r))
            yield r
    except NotRunning:
        print(f"(nonstop stopped; following {db_path(cfg.state_dir)})", file=sys.stderr)
        db = TolerantDbRows(cfg)
        yield from follow_rows(db, db.rows(seen, 1000, f), f)
