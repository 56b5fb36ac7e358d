"""Run a Python program and count the bytecodes each function executes, between two signals.

    python benchmarks/opcount.py OUT.json -m nonstop serve --config ...
    python benchmarks/opcount.py OUT.json benchmarks/forwarder.py --listen ...

SIGUSR1 starts counting (in every thread), SIGUSR2 stops it and writes
{"file:line:function": bytecodes} to OUT.json. The program runs many times slower while
counting, but what it counts does not depend on the machine's load: the same requests
give the same counts. benchmarks/instructions.py --opcodes drives it.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
from types import CodeType, FrameType
from typing import Any

from harness import run_program  # the script's folder is sys.path[0]

_counts: collections.Counter[CodeType] = collections.Counter()


def _opcodes(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "opcode":
        _counts[frame.f_code] += 1
    return _opcodes


def _enter(frame: FrameType, event: str, arg: Any) -> Any:
    frame.f_trace_opcodes = True
    return _opcodes


def _start(*_: Any) -> None:
    _counts.clear()
    threading.settrace(_enter)
    sys.settrace(_enter)


def _stop(*_: Any) -> None:
    sys.settrace(None)
    threading.settrace(None)
    out: dict[str, int] = {}
    for code, n in _counts.items():
        key = f"{code.co_filename}:{code.co_firstlineno}:{code.co_name}"
        out[key] = out.get(key, 0) + n
    part = _OUT + ".part"  # whole or not at all: the reader waits for OUT to appear
    with open(part, "w") as fh:
        json.dump(out, fh)
    os.replace(part, _OUT)


if __name__ == "__main__":
    _OUT = sys.argv[1]
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    run_program(sys.argv[2:])
