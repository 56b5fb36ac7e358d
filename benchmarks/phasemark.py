"""Run nonstop and note when each phase of each request comes, between two signals.

    python benchmarks/phasemark.py OUT.json -m nonstop serve --config ...
    python benchmarks/phasemark.py OUT.json benchmarks/forwarder.py --listen ... --upstream ...

For requests one at a time (concurrency 1), it notes on the perf_counter clock, from the
moment uvicorn has read the request's head (`head`; its body follows):

- each upstream request: when nonstop calls aiohttp to send it (`<name> sent`) and when
  aiohttp hands back the reply's head (`<name> head`), the upstream named by its port
  (PHASEMARK_UPSTREAMS: `cloud=9100,local=9101`; an upstream asked twice in a request
  gets `<name> 2 sent` and so on);
- the first bytes of the response's body sent to the client (`out`: where the client's
  time to first byte ends; nonstop sends the response's head with them, the forwarder
  just before), and its end (`end`: the last body message, a stream's whole relay
  behind it; a request is written out when it ends);
- for each function named in PHASEMARK_FUNCTIONS (`module:Qual.name`, space-separated),
  when it is entered and when it returns (`Qual.name <` and `Qual.name >`), for finding
  where a segment's time goes.

With PHASEMARK_TRACE=1 it also lists, for each upstream request, every function the
thread enters between `sent` and `head` (sys.setprofile: slow, so read the list, not
the times of a traced run) and writes the lists to OUT.json.calls.

SIGUSR1 starts noting, SIGUSR2 stops and writes every request noted so far (a list of
{phase: µs after the head}) to OUT.json; the next SIGUSR1 goes on adding to it, so
rounds of several targets can interleave. The marks cost a few µs each: compare the
phases of two codes under the same marks, not with timings taken without them.
benchmarks/phases.py drives it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import signal
import sys
import time
from typing import Any

from harness import run_program  # the script's folder is sys.path[0]
from yarl import URL

_clock = time.perf_counter
_current: dict[str, float] = {}  # the request under way: phase -> perf_counter
# When the first bytes came after the last response ended, and whether one has ended since.
_arrived: list[Any] = [0.0, True]
_done: list[dict[str, float]] = []
_on = False


def _note(phase: str) -> None:
    if "head" not in _current:
        return
    name, n = phase, 2
    while name in _current:  # the same phase again in one request: "cloud 2 sent"
        first, _, last = phase.rpartition(" ")
        name, n = f"{first} {n} {last}", n + 1
    _current[name] = _clock()


def _patch(upstreams: dict[int, str], functions: list[str]) -> None:
    import aiohttp
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    on_headers = HttpToolsProtocol.on_headers_complete

    def on_headers_complete(self: Any) -> None:
        global _current
        _current = {"arrived": _arrived[0], "head": _clock()}
        on_headers(self)

    HttpToolsProtocol.on_headers_complete = on_headers_complete  # type: ignore[method-assign]

    data_received = HttpToolsProtocol.data_received

    def received(self: Any, data: bytes) -> None:
        if _arrived[1]:  # the first bytes since the last response ended: a request's head
            _arrived[:] = [_clock(), False]
        data_received(self, data)

    HttpToolsProtocol.data_received = received  # type: ignore[method-assign]

    send = RequestResponseCycle.send

    async def cycle_send(self: Any, message: Any) -> None:
        if message["type"] == "http.response.body" and "head" in _current and "end" not in _current:
            now, noted = _clock(), _current
            first = "out" not in noted
            noted.setdefault("out", now)
            if not message.get("more_body", False):
                noted["end"] = now
                _arrived[1] = True
                if _on:
                    _done.append(noted)
            await send(self, message)
            if first:  # the response's head and first bytes handed to the socket
                noted["written"] = _clock()
            return
        await send(self, message)

    RequestResponseCycle.send = cycle_send  # type: ignore[method-assign]

    request = aiohttp.ClientSession._request

    async def _request(self: Any, method: str, url: Any, *args: Any, **kw: Any) -> Any:
        port = getattr(url, "port", None) if not isinstance(url, str) else _port_of(url)
        name = upstreams.get(port or 0, f"port {port}")
        _note(f"{name} sent")
        calls = [] if _TRACE and _on and "head" in _current else None
        if calls is not None:
            sys.setprofile(_tracer(calls))
        try:
            resp = await request(self, method, url, *args, **kw)
        finally:
            if calls is not None:
                sys.setprofile(None)
                _calls.append(calls)
        _note(f"{name} head")
        return resp

    aiohttp.ClientSession._request = _request  # type: ignore[method-assign]
    for spec in functions:
        _mark(spec)


def _tracer(calls: list[str]) -> Any:
    """A profile function that lists each function the thread enters (Python's by
    `qualname file`, C's by name): whatever the event loop runs while the request is on
    its way, aiohttp's own work and any other callback alike."""
    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            calls.append(f"{code.co_qualname} {code.co_filename.rsplit('/', 1)[-1]}")
        elif event == "c_call":
            calls.append(getattr(arg, "__qualname__", repr(arg)))
    return profile


def _port_of(url: str) -> int | None:
    return URL(url).port


def _mark(spec: str) -> None:
    module, _, qualname = spec.partition(":")
    owner: Any = importlib.import_module(module)
    *path, attr = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    fn = getattr(owner, attr)
    label = qualname

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def marked(*a: Any, **k: Any) -> Any:
            _note(f"{label} <")
            try:
                return await fn(*a, **k)
            finally:
                _note(f"{label} >")
    else:
        @functools.wraps(fn)
        def marked(*a: Any, **k: Any) -> Any:
            _note(f"{label} <")
            try:
                return fn(*a, **k)
            finally:
                _note(f"{label} >")
    setattr(owner, attr, marked)


def _start(*_: Any) -> None:
    global _on
    _on = True


def _stop(*_: Any) -> None:
    global _on
    _on = False
    part = _OUT + ".part"  # whole or not at all: the reader waits for a newer OUT
    with open(part, "w") as fh:  # µs after the head; `at`: the head on the perf_counter clock (s)
        json.dump([{**{k: round((v - d["head"]) * 1e6, 1) for k, v in d.items()}, "at": d["head"]}
                   for d in _done], fh)
    os.replace(part, _OUT)
    if _TRACE:  # the calls of each upstream request noted so far, in order
        with open(_OUT + ".calls.part", "w") as fh:
            json.dump(_calls, fh)
        os.replace(_OUT + ".calls.part", _OUT + ".calls")


def _upstreams(text: str) -> dict[int, str]:
    out = {}
    for item in text.split(","):
        name, _, port = item.partition("=")
        if port.strip().isdigit():
            out[int(port)] = name.strip()
    return out


def main() -> None:
    global _OUT
    _OUT = sys.argv[1]
    _patch(_upstreams(os.environ.get("PHASEMARK_UPSTREAMS", "")), os.environ.get("PHASEMARK_FUNCTIONS", "").split())
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    run_program(sys.argv[2:])


_OUT = ""
_TRACE = bool(os.environ.get("PHASEMARK_TRACE"))
_calls: list[list[str]] = []

if __name__ == "__main__":
    main()
