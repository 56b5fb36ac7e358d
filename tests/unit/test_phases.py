"""benchmarks/phases.py and its marker (phasemark.py): what nonstop's request timeline
is read from, and how the tables are made of it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import phasemark  # noqa: E402
import phases  # noqa: E402


def test_the_places_the_marker_hooks_are_there() -> None:
    # The marker wraps these by name: renamed, the tool would note nothing.
    import aiohttp
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    from nonstop.server.head_guard import HeadGuardedProtocol

    assert issubclass(HeadGuardedProtocol, HttpToolsProtocol)  # nonstop's protocol is noted as uvicorn's
    assert callable(HttpToolsProtocol.on_headers_complete) and callable(RequestResponseCycle.send)
    assert callable(aiohttp.ClientSession._request)


def test_a_phase_met_again_in_one_request_is_numbered(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(100))
    monkeypatch.setattr(phasemark, "_clock", lambda: next(ticks))
    monkeypatch.setattr(phasemark, "_current", {})
    phasemark._note("cloud sent")  # before a request's head: nothing
    assert phasemark._current == {}
    phasemark._current["head"] = -1
    for phase in ("cloud sent", "cloud head", "cloud sent", "cloud head", "cloud sent", "Pipeline.plan <"):
        phasemark._note(phase)
    assert list(phasemark._current) == ["head", "cloud sent", "cloud head", "cloud 2 sent", "cloud 2 head",
                                        "cloud 3 sent", "Pipeline.plan <"]


def test_upstreams_are_named_by_port() -> None:
    assert phasemark._upstreams("cloud=9100, local=9101,bad=x,") == {9100: "cloud", 9101: "local"}
    assert phasemark._upstreams("") == {}


def test_phases_are_ordered_by_their_medians_and_segments_read_request_by_request() -> None:
    requests = [
        {"head": 0, "cloud sent": 100, "cloud head": 400, "out": 500},
        {"head": 0, "cloud sent": 300, "cloud head": 500, "out": 520},
        {"head": 0, "cloud sent": 200, "cloud head": 450, "out": 600},
    ]
    rows = phases.phase_table(requests)
    assert [r[0] for r in rows] == ["head", "cloud sent", "cloud head", "out"]
    assert rows[1][1:] == (200, 200)  # after the head; since the head
    assert rows[2][1:] == (450, 250)  # 300, 200 and 250, request by request
    assert rows[3][1:] == (520, 100)  # the median of 100, 20, 150


def test_a_phase_some_requests_lack_is_read_where_it_is() -> None:
    requests = [{"head": 0, "local sent": 100, "out": 300}, {"head": 0, "cloud sent": 50, "local sent": 120, "out": 320}]
    rows = {r[0]: r for r in phases.phase_table(requests)}
    assert rows["cloud sent"][1] == 50
    assert rows["local sent"][2] == 70  # only the request that has both
