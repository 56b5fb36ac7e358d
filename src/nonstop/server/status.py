"""The status document: what /_nonstop/api/status answers, the dashboard draws and
`nonstop status` prints.

One builder for the running gateway and for the state a stopped one left on disk, so the
two documents cannot drift apart. Pure and standard library only: the command line
imports it without loading the server.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nonstop.config import Config, LocalBackendConfig


def start_of_day(now: float) -> float:
    """Local midnight before `now`: where "today's totals" begin."""
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def backend_entry(b: LocalBackendConfig, *, model: str = "", healthy: bool | None = None, checked: float = 0.0,
                  error: str = "", embedded: bool = False) -> dict[str, Any]:
    """One local backend. `healthy` is None until a health check has run."""
    return {
        "name": b.name, "url": b.url, "api": b.api, "model": b.model or model,
        "context_window": b.context_window, "max_output_tokens": b.max_output_tokens,
        "healthy": healthy, "checked": checked, "error": error, "embedded": embedded,
    }


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
) -> dict[str, Any]:
    """The whole document. `quota` is a quota snapshot, `local` the backend_entry() of
    each backend, `today` the request log's totals since start_of_day(now) ({} without a
    log), `log` the request log's path ("" without one). pid and uptime are None when the
    gateway is not running."""
    return {
        "running": running,
        "version": version,
        "now": now,
        "pid": pid,
        "listen": cfg.listen,
        "uptime": uptime,
        "inflight": inflight,
        "cloud": cloud_entry(cfg.cloud.url, quota),
        "utilization": quota.get("utilization") or {},
        "local": list(local),
        "today": today,
        "log": log,
    }
