"""A shared instance with per-user tokens: who sent each request, and whose bodies each
user may read."""

from __future__ import annotations

import json

import pytest

from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

ADMIN, ANN, BOB = "admin-token-0123456789", "ann-token-0123456789", "bob-token-0123456789"


@pytest.fixture
def shared(cloud, recorder_proc, nonstop_factory):
    return nonstop_factory(nonstop_config(
        cloud.url, local=[{"name": "rec", "url": recorder_proc.url}], token=ADMIN, log={"store_bodies": True},
        users=[{"name": "ann", "token": ANN}, {"name": "bob", "token": BOB}]))


def ask(ns, token: str, text: str) -> int:
    body = {"model": "claude-sonnet-5", "max_tokens": 20, "messages": [{"role": "user", "content": text}]}
    return rawhttp.request("POST", ns.url + "/v1/messages", body,
                           {"x-api-key": procs.PLANTED_KEY, "x-nonstop-token": token})[0]


def rows(ns, token: str) -> list[dict]:
    return json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/requests?limit=10",
                                      headers={"x-nonstop-token": token})[2])["requests"]


def body(ns, token: str, row_id: int) -> tuple[int, dict]:
    status, _, raw = rawhttp.request("GET", ns.url + f"/_nonstop/api/body?id={row_id}", headers={"x-nonstop-token": token})
    return status, json.loads(raw)


def test_requests_are_attributed_and_bodies_are_private(shared):
    assert ask(shared, ANN, "ann's secret question") == 200
    assert ask(shared, BOB, "bob's question") == 200
    assert ask(shared, "not-a-token-0123", "x") == 401
    listed = rows(shared, BOB)
    by_user = {r["user"]: r for r in listed}
    assert set(by_user) >= {"ann", "bob"}  # everyone sees who sent what
    ann_row = by_user["ann"]["id"]
    status, doc = body(shared, BOB, ann_row)
    assert status == 403 and "another user" in doc["error"]
    status, doc = body(shared, ANN, ann_row)
    assert status == 200 and "ann's secret question" in doc["request"]
    status, doc = body(shared, ADMIN, ann_row)
    assert status == 200 and doc["user"] == "ann"
    assert rawhttp.request("GET", shared.url + f"/_nonstop/api/body?id={ann_row}")[0] == 401
