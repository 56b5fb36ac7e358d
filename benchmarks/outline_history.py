"""What reading a request costs nonstop as a session's history grows (one core, in process).

    python benchmarks/outline_history.py [--turns 0 50 200] [--repeat 300]

The benchmark's Claude Code request has six messages; a session an hour in sends
hundreds, and every one of them is read again on every request. This times
`nonstop.wire.outline.outline` on the 50 KB Claude Code request with N tool-call turns
(a Read and its 600-byte result each) before its last message, three ways:

  first look       a body nothing was learnt from (the whole body decoded, every
                   message checked), as every request was read before 8a94a4b; a
                   session's first request also learns its end then (once: two more
                   decodes of the body's halves)
  in a session     the request before it ended alike and had the same history but for
                   its last message (Claude Code moves its cache breakpoint) and one turn
                   fewer: the kept end is not scanned, and the history it shares with
                   that request (all but its last two messages) is neither decoded nor
                   checked again
  orjson.loads     parsing the whole body, for scale (the full path does that and more)

Prints the table (median µs of `--repeat` calls, after 20 unrecorded) and writes it to
benchmarks/results/<date>-outline-history.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine, source_fingerprint, write_unique  # noqa: E402
from payload import claude_code_request  # noqa: E402

from nonstop.wire.outline import Tails, outline  # noqa: E402


def _turns(n: int, start: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(start, start + n):
        tid = f"toolu_01Hist{i:06d}"
        out.append({"role": "assistant", "content": [
            {"type": "text", "text": "Let me read the next file."},
            {"type": "tool_use", "id": tid, "name": "Read", "input": {"file_path": f"/work/project/src/m{i}.py"}}]})
        out.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid,
                                                 "content": "".join(f"{n:>6}\tvalue_{n} = {n} * 2\n" for n in range(24))}]})
    return out


def session(turns: int) -> tuple[bytes, bytes]:
    """The request before (turns - 1 turns, its last message marked for the cache) and
    this one (`turns` turns, the mark moved to its own last message)."""
    base = claude_code_request(stream=True)
    first, last = base["messages"][:-1], base["messages"][-1]
    unmarked = {"role": "user", "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in last["content"]]}
    before = {**base, "messages": first + _turns(max(turns - 1, 0)) + [last]}
    now = copy.deepcopy(base)
    now["messages"] = first + _turns(max(turns - 1, 0)) + [unmarked] + _turns(1, turns) + [last]
    return orjson.dumps(before), orjson.dumps(now)


def median_us(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, nargs="+", default=[0, 50, 200])
    ap.add_argument("--repeat", type=int, default=300)
    args = ap.parse_args()
    m, src = machine(), source_fingerprint()
    rows = []
    warm_before, warm_now = session(1)
    for _ in range(200):  # (the first row timed cold read high)
        tails = Tails()
        for body in (warm_before, warm_before, warm_now):
            outline(body, tails)
    for turns in args.turns:
        before, now = session(turns)
        assert outline(now, Tails()) is not None

        def first_look(body: bytes = now) -> object:
            tails = Tails()
            tails.missed = Tails.LEARN_EVERY + 1  # (learns nothing: that look is a session's once)
            return outline(body, tails)

        def in_session(before: bytes = before, body: bytes = now) -> object:
            tails = Tails()
            outline(before, tails)  # learns the end
            outline(before, tails)  # remembers the history
            return tails

        primed: list[Tails] = []

        def next_request(body: bytes = now, primed: list[Tails] = primed) -> object:
            return outline(body, primed.pop())

        look = median_us(first_look, args.repeat)
        primed[:] = [in_session() for _ in range(args.repeat + 20)]  # (each call meets a session primed afresh)
        sess = median_us(next_request, args.repeat)
        whole = median_us(lambda body=now: orjson.loads(body), args.repeat)
        messages = len(orjson.loads(now)["messages"])
        rows.append(f"| {messages} | {len(now):,} | {look:.1f} | {sess:.1f} | {whole:.1f} |")
        print(f"{messages} messages: first look {look:.1f} µs, in a session {sess:.1f} µs, orjson.loads {whole:.1f} µs",
              flush=True)
    text = (f"# Reading a request as a session's history grows (benchmarks/outline_history.py)\n\n"
            f"Machine: {m['cpu']} at {m['cpu_mhz']} MHz, {m['cores']} cores; Python {m['python']}; load average at start {m['load_at_start']}. Source {src['sha256']} "
            f"({src['files']} files, newest change {src['newest_change']}). One core, in process; "
            f"median µs of {args.repeat} calls.\n\n"
            "| messages | body bytes | outline, first look | outline, in a session | orjson.loads (scale) |\n"
            "|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n")
    write_unique("outline-history", text)


if __name__ == "__main__":
    main()
