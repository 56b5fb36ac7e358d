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
