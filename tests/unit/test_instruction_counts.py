"""The counting tools of benchmarks/instructions.py: reading a callgrind dump, and
counting a program's bytecodes between two signals (benchmarks/opcount.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import instructions  # noqa: E402

# A dump as callgrind writes one with name compression: an object or function named in
# full the first time, by its number after that; a call's line is followed by the
# call's inclusive cost, which is not the caller's own.
DUMP = """\
version: 1
creator: callgrind-3.19.0
events: Ir
ob=(1) /usr/lib/libpython3.11.so.1.0
fl=(1) ceval.c
fn=(1) _PyEval_EvalFrameDefault
10 1000
cob=(2) /venv/site-packages/msgspec/_core.cpython-311-x86_64-linux-gnu.so
cfi=(2) ???
cfn=(2) json_skip_string
calls=3 0
11 500
12 200
ob=(2)
fl=(2)
fn=(2)
0 500
ob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
fl=(3) memmove.S
fn=(3) __memcpy_avx_unaligned_erms
+2 70
ob=(1)
fl=(1)
fn=(1)
13 30
"""


def test_a_dump_is_summed_by_where_it_ran(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text(DUMP)
    places = instructions.by_place(dump)
    assert places == {"the interpreter": 1230, "msgspec (the outline)": 500, "libc": 70}


def test_function_keys_lose_the_folders_all_share() -> None:
    src = str(instructions.ROOT / "src")
    assert instructions._short(f"{src}/nonstop/server/app.py:66:__call__") == "nonstop/server/app.py:66:__call__"
    assert instructions._short("/v/lib/python3.11/site-packages/aiohttp/client.py:558:_request") == "aiohttp/client.py:558:_request"
    assert instructions._short("/usr/lib/python3.11/asyncio/tasks.py:35:current_task") == "asyncio/tasks.py:35:current_task"
    # Another revision's source (--rev) is nonstop's code too.
    assert instructions._short("/tmp/w/src-abc/src/nonstop/server/app.py:66:__call__") == "nonstop/server/app.py:66:__call__"
    bench = str(instructions.HERE)
    assert instructions._short(f"{bench}/forwarder.py:36:__call__") == "benchmarks/forwarder.py:36:__call__"
    parts = instructions._packages({"nonstop/a.py:1:f": 10, "aiohttp/b.py:2:g": 5, "asyncio/c.py:3:h": 2})
    assert parts == {"nonstop": 10, "aiohttp": 5, "uvicorn": 0}


@pytest.mark.timeout(60)
def test_opcount_counts_only_between_the_signals(tmp_path: Path) -> None:
    script = tmp_path / "work.py"
    script.write_text(
        "import os, signal\n"
        "def before():\n    return sum(range(10))\n"
        "def counted():\n    total = 0\n    for i in range(50):\n        total += i\n    return total\n"
        "before()\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "counted()\n"
        "os.kill(os.getpid(), signal.SIGUSR2)\n"
        "before()\n"
    )
    out = tmp_path / "counts.json"
    subprocess.run([sys.executable, str(BENCH / "opcount.py"), str(out), str(script)], check=True, timeout=60)
    counts = json.loads(out.read_text())
    mine = {k.rsplit(":", 1)[1]: v for k, v in counts.items() if k.startswith(str(script))}
    assert "before" not in mine
    assert mine["counted"] > 50 * 3  # the loop's body, fifty times


# The end of a dump made with --cache-sim=yes --branch-sim=yes: its events, and its totals.
CACHE_DUMP = """\
version: 1
events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim
fn=(1) f
10 1000 400 300 20 10 5 2 1 1 100 8 30 6
summary: 900 400 300 20 10 5 2 1 1 100 8 30 6
totals: 1000 400 300 20 10 5 2 1 1 100 8 30 6
"""


def test_a_cache_dump_gives_its_misses_by_kind(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text(CACHE_DUMP)
    events = instructions.totals(dump)
    assert events["Ir"] == 1000 and events["Bim"] == 6  # the totals line, not the summary
    assert instructions.simulated(events) == {
        "I1 misses": 20, "D1 misses": 15, "LL misses": 4,
        "conditional branches mispredicted": 8, "indirect branches mispredicted": 6}
    # A dump without the simulation counts no misses, rather than failing.
    plain = tmp_path / "plain.out"
    plain.write_text(DUMP + "totals: 1800\n")
    assert set(instructions.simulated(instructions.totals(plain)).values()) == {0}


def test_the_cache_table_gives_ratios_to_the_forwarder() -> None:
    sim = {"I1 misses": 10.0, "D1 misses": 20.0, "LL misses": 1.0,
           "conditional branches mispredicted": 5.0, "indirect branches mispredicted": 4.0}
    rows = [{"target": "forwarder", "per_request": 1000.0, "simulated": sim},
            {"target": "nonstop", "per_request": 1400.0, "simulated": {k: 2 * v for k, v in sim.items()}}]
    lines = instructions._simulated_table(rows, {"forwarder": "the bare forwarder", "nonstop": "nonstop"})
    row = next(line for line in lines if line.startswith("| nonstop |"))
    assert "1,400 (1.40x)" in row and "20 (2.00x)" in row and row.count("(2.00x)") == 5
    text = instructions.render({"meter": "callgrind", "started": "t", "machine": instructions.machine(), "requests": 10, "concurrency": 64,
                                "source": {"sha256": "s", "files": 1, "newest_change": "n"},
                                "labels": {"forwarder": "the bare forwarder", "nonstop": "nonstop"},
                                "rows": [dict(r, stream=True, mode="stream", places={}) for r in rows]})
    assert "10 requests at concurrency 64 after 128 unrecorded" in text
    assert "Simulated by valgrind" in text
