"""Opt-in body storage: capped and redacted."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration


def test_bodies_are_opt_in_capped_and_redacted(cloud, recorder_proc, nonstop_factory):
    secret_text = "my key is " + procs.PLANTED_KEY + " " + "x" * 5000
    body = {"model": "claude-sonnet-5", "max_tokens": 20, "messages": [{"role": "user", "content": secret_text}]}
    for store, cap in ((False, 0), (True, 1024)):
        ns = nonstop_factory(nonstop_config(cloud.url, local=[{"name": "rec", "url": recorder_proc.url}],
                                            log={"store_bodies": store, "body_cap_bytes": cap or 65536}))
        status, _, _ = rawhttp.request("POST", ns.url + "/v1/messages", body, {"x-api-key": procs.PLANTED_KEY})
        assert status == 200
        ns.stop()
        db = ns.extra["state_dir"] / "nonstop.db"
        deadline = time.monotonic() + 5
        while True:
            rows = sqlite3.connect(db).execute("SELECT request, response FROM bodies").fetchall()
            if rows or not store or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not store:
            assert rows == []
            continue
        assert len(rows) == 1
        request, response = rows[0]
        assert procs.PLANTED_KEY not in request and "[redacted]" in request
        assert len(request.encode()) <= 1024 + 20
        assert "Hello from the cloud." in response
        raw = db.read_bytes() + (db.parent / "nonstop.db-wal").read_bytes() if (db.parent / "nonstop.db-wal").exists() else db.read_bytes()
        assert procs.PLANTED_KEY.encode() not in raw
