"""The status document: the running gateway and the log a stopped one left behind give
the same document, so the dashboard and `nonstop status` read either the same way."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from nonstop.backends.registry import make_local_backend
from nonstop.cli.status import offline_status
from nonstop.config import parse_config
from nonstop.server.runtime import Runtime
from nonstop.server.status import cloud_entry, start_of_day
from nonstop.store.db import RequestRow


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shape(doc: Any) -> Any:
    """The keys of a document, all the way down (lists by their first item)."""
    if isinstance(doc, dict):
        return {k: shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [shape(doc[0])] if doc else []
    return None


async def test_live_and_offline_documents_have_the_same_keys(tmp_path: Path) -> None:
    cfg = parse_config({
        "listen": f"127.0.0.1:{_closed_port()}", "state_dir": str(tmp_path / "state"),
        "local": [{"name": "llama", "url": "http://127.0.0.1:8080"}],
    })
    gw = Runtime(cfg)
    gw.locals = [make_local_backend(b, None) for b in cfg.local]  # type: ignore[arg-type]
    assert gw.store is not None
    gw.store.open()
    gw.store.log_request(RequestRow(ts=time.time(), backend="llama", outcome="ok", status=200, input_tokens=5))
    gw.store.save_state("quota", gw.quota.snapshot())
    gw.store.flush()
    live = await gw.status()
    gw.store.close()
    offline = offline_status(cfg)

    assert shape(live) == shape(offline)
    assert (live["running"], offline["running"]) == (True, False)
    assert live["today"] == offline["today"] and live["today"]["local"]["requests"] == 1
    assert live["log"] == offline["log"] == str(cfg.state_dir / "nonstop.db")
    assert live["cloud"] == offline["cloud"]
    assert live["local"] == offline["local"]
    assert offline["pid"] is None and offline["uptime"] is None and offline["inflight"] == 0


@pytest.mark.parametrize(("snap", "state", "until"), [
    ({}, "unknown", None),
    ({"state": "serving", "until": 5.0}, "serving", None),
    ({"state": "out", "until": 5.0}, "out", 5.0),
    ({"state": "probing", "until": 5.0}, "probing", 5.0),
])
def test_cloud_entry(snap: dict[str, Any], state: str, until: float | None) -> None:
    c = cloud_entry("https://api.anthropic.com", snap)
    assert (c["state"], c["until"]) == (state, until)


def test_start_of_day_is_local_midnight() -> None:
    now = time.time()
    t = time.localtime(start_of_day(now))
    assert (t.tm_hour, t.tm_min, t.tm_sec) == (0, 0, 0) and 0 <= now - start_of_day(now) < 25 * 3600
