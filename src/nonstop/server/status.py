"""The status document: what /_nonstop/api/status answers, the dashboard draws and
`nonstop status` prints.

One builder for the running gateway and for the state a stopped one left on disk, so the
two documents cannot drift apart. Pure and standard library only: the command line
imports it without loading the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nonstop.config import Config, LocalBackendConfig
    from nonstop.routing.view import BackendView, WindowForecast


def start_of_day(now: float) -> float:
    """Local midnight before `now`: where "today's totals" begin."""
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def backend_entry(b: LocalBackendConfig, *, model: str = "", healthy: bool | None = None, checked: float = 0.0,
                  error: str = "", embedded: bool = False, live: BackendView | None = None,
                  verdict: Mapping[str, Any] | None = None, folds_turns: bool = False,
                  window_assumed: bool = False) -> dict[str, Any]:
    """One local backend. `healthy` is None until a health check has run; `live` is
    the planner's view of it (load, speed, the window it really has) while running;
    `verdict` its last eval (nonstop.quality.verdict.verdict_entry), None when the
    caller did not read it; `folds_turns`: its chat template refused a user message after
    tool results, and the text beside them now goes inside the last one; `window_assumed`:
    the window is discovery's assumption (the server has not said it yet)."""
    entry: dict[str, Any] = {
        "name": b.name, "url": b.url, "api": b.api, "model": b.model or model,
        "context_window": b.context_window, "max_output_tokens": b.max_output_tokens,
        "healthy": healthy, "checked": checked, "error": error, "embedded": embedded,
        "window": b.context_window, "inflight": 0, "free_slots": None, "demoted": False, "demoted_why": "",
        "prompt_tps": None, "gen_tps": None, "token_ratio": None, "warmth": "", "score": None,
        "eval": dict(verdict) if verdict is not None else None, "folds_turns": folds_turns,
        "window_assumed": window_assumed,
    }
    if live is not None:
        entry.update(
            window=live.caps.context_window, inflight=live.inflight, free_slots=live.free_slots,
            demoted=live.demoted, demoted_why=live.demoted_why, prompt_tps=live.prompt_tps,
            gen_tps=live.gen_tps, token_ratio=live.token_ratio, warmth=live.warmth, score=live.score,
        )
    return entry


def account_entries(accounts: Mapping[str, Any], names: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each account's state (labels, never credentials), from the accounts snapshot
    (Accounts.snapshot()["accounts"])."""
    out = []
    for account, snap in sorted(accounts.items()):
        if not isinstance(snap, Mapping):
            continue
        state = str(snap.get("state") or "serving")
        label = account or "default"
        out.append({
            "account": label, "name": names.get(account) or names.get(account.partition(":")[2]) or label,
            "state": state, "until": snap.get("until") if state != "serving" else None,
            "reason": snap.get("reason", ""), "utilization": snap.get("utilization") or {},
            "conserving": bool((snap.get("forecast") or {}).get("conserving")),
        })
    return out


def forecast_entry(w: WindowForecast) -> dict[str, Any]:
    return {"window": w.window, "utilization": w.utilization, "resets": w.resets, "runs_out": w.runs_out, "method": w.method}


def cloud_entry(url: str, quota: Mapping[str, Any]) -> dict[str, Any]:
    """The cloud's state from a quota snapshot (QuotaState.snapshot()); an empty snapshot,
    when none was ever recorded, reads as "unknown"."""
    state = str(quota.get("state") or ("serving" if quota else "unknown"))
    return {
        "url": url,
        "state": state,
        "until": quota.get("until") if state not in ("serving", "unknown") else None,
        "reason": quota.get("reason", ""),
        "detail": quota.get("detail", ""),
        "since": quota.get("since", 0.0),
    }


# The parts of a status document its readers walk, and the shape each has.
_SHAPES: tuple[tuple[str, type], ...] = (
    ("cloud", dict), ("utilization", dict), ("local", list), ("today", dict), ("forecast", dict),
    ("decisions", list), ("accounts", list), ("shadow", dict),
)


def well_formed(doc: Mapping[str, Any]) -> bool:
    """Whether a status document (read from another process, or from disk) has the shapes
    its readers walk: one that does not is not nonstop's answer."""
    for key, kind in _SHAPES:
        value = doc.get(key)
        if value is not None and not isinstance(value, kind):
            return False
    return all(isinstance(e, dict) for key in ("local", "decisions", "accounts") for e in doc.get(key) or ())


def status_document(
    cfg: Config,
    quota: Mapping[str, Any],
    local: Sequence[dict[str, Any]],
    today: dict[str, Any],
    *,
    running: bool,
    version: str,
    now: float,
    pid: int | None = None,
    uptime: float | None = None,
    inflight: int = 0,
    log: str = "",
    forecast: Sequence[WindowForecast] = (),
    conserving: bool | None = None,
    decisions: Sequence[dict[str, Any]] = (),
    first_byte: Mapping[str, float] | None = None,
    accounts: Sequence[dict[str, Any]] = (),
    fleet: str = "",
    shadow: Mapping[str, Any] | None = None,
    embedded_installed: bool | None = None,
) -> dict[str, Any]:
    """The whole document. `quota` is a quota snapshot, `local` the backend_entry() of
    each backend, `today` the request log's totals since start_of_day(now) ({} without a
    log), `log` the request log's path ("" without one). pid and uptime are None when the
    gateway is not running. `embedded_installed`: whether the embedded model's server and
    file were found (None: not looked for)."""
    if not isinstance(quota.get("utilization"), dict | None) or not isinstance(quota.get("forecast"), dict | None):
        quota = {k: v for k, v in quota.items() if k not in ("utilization", "forecast")}  # a state file gone bad
    return {
        "running": running,
        "version": version,
        "now": now,
        "pid": pid,
        "listen": cfg.listen,
        "uptime": uptime,
        "inflight": inflight,
        "cloud": {**cloud_entry(cfg.cloud.url, quota), "first_byte_deadlines": dict(first_byte or {})},
        "utilization": quota.get("utilization") or {},
        "local": list(local),
        # Whether the embedded model stands in when no local server is configured or found.
        "embedded": cfg.embedded.mode,
        "embedded_installed": embedded_installed,
        # Whether the gateway looks for local servers when none is configured.
        "discovery": cfg.discovery.enabled,
        "today": today,
        "log": log,
        "forecast": {
            "conserving": bool(conserving if conserving is not None else (quota.get("forecast") or {}).get("conserving")),
            "windows": [forecast_entry(w) for w in forecast],
        },
        "decisions": list(decisions),
        "accounts": list(accounts),
        "fleet": fleet,
        "shadow": dict(shadow) if shadow is not None else None,
    }
