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


def test_the_client_s_own_phases_join_the_server_s_on_one_clock(tmp_path: Path) -> None:
    out = tmp_path / "phases.json"
    # As phasemark writes them: µs after the head, and the head itself on perf_counter (s).
    out.write_text('[{"arrived": -30.0, "head": 0.0, "out": 500.0, "at": 10.0},'
                   ' {"head": 0.0, "out": 400.0, "at": 20.0}]')
    t = phases.Target("nonstop", None, "http://x", out)  # type: ignore[arg-type]
    t.client = [(10.0 - 0.000250, 10.0 + 0.000600), (20.0 - 0.000200, 20.0 + 0.000550)]
    got = t.noted()
    assert got[0] == {"arrived": -30.0, "head": 0.0, "out": 500.0, "client sent": -250.0, "client first": 600.0}
    assert got[1]["client sent"] == -200.0 and got[1]["client first"] == 550.0
    t.client = t.client[:1]  # counts that disagree: nothing is joined, nothing misread
    assert all("client sent" not in r for r in t.noted())


def test_the_marker_notes_arrival_the_socket_write_and_the_end(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ticks = iter(float(i) for i in range(100))
    monkeypatch.setattr(phasemark, "_clock", lambda: next(ticks) / 1e6)
    monkeypatch.setattr(phasemark, "_done", [])
    monkeypatch.setattr(phasemark, "_arrived", [0.0, True])
    monkeypatch.setattr(phasemark, "_on", True)
    monkeypatch.setattr(phasemark, "_OUT", str(tmp_path / "out.json"), raising=False)
    import asyncio

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    sent: list[object] = []

    async def send(self: object, message: dict) -> None:
        sent.append(message)

    monkeypatch.setattr(HttpToolsProtocol, "data_received", lambda self, data: None)
    monkeypatch.setattr(HttpToolsProtocol, "on_headers_complete", lambda self: None)
    monkeypatch.setattr(RequestResponseCycle, "send", send)
    monkeypatch.setattr(phasemark, "_mark", lambda spec: None)
    import aiohttp
    monkeypatch.setattr(aiohttp.ClientSession, "_request", aiohttp.ClientSession._request)
    phasemark._patch({}, [])
    proto, cycle = object.__new__(HttpToolsProtocol), object.__new__(RequestResponseCycle)
    proto.data_received(b"POST / HTTP/1.1\r\n")  # tick 0: arrived
    proto.data_received(b"more")  # not a new request's first bytes
    proto.on_headers_complete()  # tick 1: head
    asyncio.run(cycle.send({"type": "http.response.start"}))
    asyncio.run(cycle.send({"type": "http.response.body", "body": b"x", "more_body": True}))  # out 2, written 3
    asyncio.run(cycle.send({"type": "http.response.body", "body": b"", "more_body": False}))  # end 4
    assert len(sent) == 3
    phasemark._stop()
    import json
    (noted,) = json.loads((tmp_path / "out.json").read_text())
    assert noted == {"arrived": -1.0, "head": 0.0, "out": 1.0, "written": 2.0, "end": 3.0, "at": 1e-06}


def test_the_tracer_lists_python_and_c_calls_in_order() -> None:
    import sys

    calls: list[str] = []

    def inner() -> int:
        return len("abc")

    sys.setprofile(phasemark._tracer(calls))
    try:
        inner()
    finally:
        sys.setprofile(None)
    assert calls[:2] == ["test_the_tracer_lists_python_and_c_calls_in_order.<locals>.inner test_phases.py", "len"]


def test_window_calls_names_what_one_target_runs_that_another_does_not() -> None:
    traced = {
        "nonstop": [["a", "b", "quota"], ["a", "b", "quota", "quota"]],
        "forwarder": [["a", "b"], ["a", "b", "c"]],
    }
    medians, differ = phases.window_calls(traced)
    assert medians == {"nonstop": 3.5, "forwarder": 2.5}
    # quota: 1.5 a window against none; c: 0.5 against none; a and b alike are left out.
    assert differ == [("quota", {"nonstop": 1.5, "forwarder": 0.0}), ("c", {"nonstop": 0.0, "forwarder": 0.5})]


def test_a_traced_report_says_when_the_windows_are_alike() -> None:
    medians, differ = phases.window_calls({"nonstop": [["a"]], "forwarder": [["a"]]})
    res = {"targets": {n: {"ttfb_ms": [0.5], "requests": [{"head": 0, "out": 1}]} for n in ("nonstop", "forwarder")},
           "direct_ttfb_ms": {"the cloud": [0.1]}, "window": {"medians": medians, "differ": differ}}
    machine = {"cpu": "cpu", "cores": 2, "memory_mb": 1, "kernel": "k", "python": "3", "load_at_start": "0"}
    results = {"started": "now", "machine": machine, "source": {"sha256": "x", "files": 1, "newest_change": "t"},
               "rounds": 1, "requests": 1, "labels": {"nonstop": "this code", "forwarder": "the bare forwarder"},
               "scenarios": {"json": res}}
    text = phases.render(results)
    assert "functions entered between `sent` and `head`" in text
    assert "The same functions, as often, in every target's window." in text
