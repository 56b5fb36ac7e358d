"""The CPU time of each of nonstop's own steps on the cloud path, per call, in a live server.

    python benchmarks/step_times.py [--concurrency 1] [--requests 1000] [--stream]

A profiler charges its own cost to what it watches, and py-spy's time per line is a
guess for native code; this times a fixed list of nonstop's synchronous steps (STEPS)
and nothing else. The fake upstream (upstream.py) and nonstop in its default
configuration (the request log on, one [[local]] backend) are started, nonstop under a
runner that wraps each step with the thread's CPU clock (`time.thread_time_ns`, about
1 µs a call of its own here). After a warm-up of 300 requests the wrappers are switched
on (SIGUSR1), the 50 KB Claude Code request is sent N times at the given concurrency,
and the totals are written out (SIGUSR2).

The same steps timed in a warm loop (each called again and again on the same data) take
a fraction of this: what this reads is what a request pays, with the load generator and
the upstream on the same cores between two requests.

Results go to benchmarks/results/<date>-steps-c<N>[-stream].md and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import LoadGen, free_port, machine, start, wait_http  # noqa: E402

# (module, attribute path, when it runs: before the reply goes out, or after it). No step
# calls another, so their sum is what they take together: App._check_head includes the
# head's reading (backends/head.py split_head), which is not timed on its own.
STEPS = [
    ("nonstop.server.app", "App._check_head", "before"),
    ("nonstop.wire.errors", "new_request_id", "before"),
    ("nonstop.wire.outline", "outline", "before"),
    ("nonstop.server.doors.base", "Door.context", "before"),
    ("nonstop.server.pipeline", "Pipeline.facts", "before"),
    ("nonstop.server.pipeline", "Pipeline.plan", "before"),
    ("nonstop.backends.cloud", "CloudBackend.url_for", "before"),
    ("nonstop.backends.cloud", "response_headers", "before"),
    ("nonstop.backends.cloud", "_success_verdict", "before"),
    ("nonstop.backends.cloud", "_not_a_message", "before"),
    ("nonstop.server.pipeline", "Pipeline.cloud_outcome", "before"),
    ("nonstop.server.writers", "AnthropicWriter.headers", "before"),
    ("nonstop.backends.cloud", "CloudBackend._observe", "after"),
    ("nonstop.server.request_log", "RequestLog.record", "after"),
    ("nonstop.server.request_log", "RequestLog.flush", "after"),
]

# Run as the server: wrap the steps, then start nonstop's CLI. A function imported by
# name into another module is replaced there too.
_TIMED = """
import importlib, json, os, runpy, signal, sys, time
folder, steps = sys.argv[1], json.loads(sys.argv[2])
clock = time.thread_time_ns
on = [False]
totals = {}
def wrap(modname, path):
    mod = importlib.import_module(modname)
    *owners, name = path.split(".")
    owner = mod
    for o in owners:
        owner = getattr(owner, o)
    original = getattr(owner, name)
    cell = totals.setdefault(path, [0, 0])
    def timed(*a, **k):
        if not on[0]:
            return original(*a, **k)
        t = clock()
        try:
            return original(*a, **k)
        finally:
            cell[0] += 1
            cell[1] += clock() - t
    if isinstance(owner.__dict__.get(name), staticmethod):
        timed = staticmethod(timed)
    setattr(owner, name, timed)
    if owner is mod:
        for other in list(sys.modules.values()):
            if getattr(other, "__name__", "").startswith("nonstop") and getattr(other, name, None) is original:
                setattr(other, name, timed)
for modname, path, _ in steps:
    wrap(modname, path)
def switch_on(sig, frame):
    on[0] = True
def dump(sig, frame):
    on[0] = False
    with open(os.path.join(folder, "steps.json"), "w") as fh:
        json.dump(totals, fh)
signal.signal(signal.SIGUSR1, switch_on)
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["nonstop"] + sys.argv[3:]
runpy.run_module("nonstop", run_name="__main__")
"""


def measure(work: Path, concurrency: int, requests: int, stream: bool) -> dict[str, Any]:
    up_port, local_port, port = free_port(), free_port(), free_port()
    upstream = start("upstream", [sys.executable, str(HERE / "upstream.py"), "--listen", f"127.0.0.1:{up_port}=ok",
                                  "--listen", f"127.0.0.1:{local_port}=ok"], workdir=work)
    timed = work / "timed.py"
    timed.write_text(_TIMED)
    cfg = work / "config.toml"
    cfg.write_text(f'listen = "127.0.0.1:{port}"\nstate_dir = "{work / "state"}"\n'
                   f'[cloud]\nurl = "http://127.0.0.1:{up_port}"\n[embedded]\nmode = "never"\n'
                   '[discovery]\nenabled = false\n[log]\nenabled = true\n'
                   f'[[local]]\nname = "local"\nurl = "http://127.0.0.1:{local_port}"\n')
    env = {"NONSTOP_STATE_DIR": str(work / "state"), "PYTHONPATH": str(HERE.parent / "src")}
    server = start("nonstop", [sys.executable, str(timed), str(work), orjson.dumps(STEPS).decode(),
                               "serve", "--config", str(cfg)], env=env, workdir=work)
    url = f"http://127.0.0.1:{port}"
    lg = LoadGen()
    job = {"op": "run", "url": url, "path": "/v1/messages?beta=true", "payload": "large", "stream": stream,
           "concurrency": concurrency, "max_seconds": 600}
    try:
        wait_http(upstream, f"http://127.0.0.1:{up_port}/_stats", timeout=30)
        wait_http(server, url + "/health", timeout=60)
        lg.call(job | {"requests": 300, "warmup": min(2 * concurrency, 300)})
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(0.2)
        got = lg.call(job | {"requests": requests, "warmup": 0})
        out = work / "steps.json"
        os.kill(server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        totals = orjson.loads(out.read_bytes())
    finally:
        lg.close()
        server.stop()
        upstream.stop()
    done = got["issued"]
    rows = []
    for _, path, when in STEPS:
        calls, ns = totals.get(path, [0, 0])
        rows.append({"step": path, "when": when, "calls_per_request": calls / done if done else 0.0,
                     "us_per_call": ns / calls / 1000 if calls else 0.0,
                     "us_per_request": ns / done / 1000 if done else 0.0})
    return {"requests": done, "errors": got["errors"], "steps": rows}


def render(out: dict[str, Any]) -> str:
    m = out["machine"]
    mode = "stream" if out["stream"] else "JSON"
    lines = [f"# nonstop's own steps, timed in a live server ({out['date']})", "",
             f"`python benchmarks/step_times.py --concurrency {out['concurrency']} --requests {out['requests']}"
             + (" --stream" if out["stream"] else "") + "` on "
             + f"{m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}. "
             + f"{out['result']['requests']} {mode} requests of the 51 KB Claude Code request at concurrency "
             + f"{out['concurrency']} ({out['result']['errors']} errors), after 300 unrecorded; "
             + "CPU time of the event loop's thread in each step (about 1 µs a call is the timer's own).", "",
             "| step | runs | calls a request | µs a call | µs a request |", "|---|---|---|---|---|"]
    for r in sorted(out["result"]["steps"], key=lambda r: (r["when"] != "before", -r["us_per_request"])):
        lines.append(f"| `{r['step']}` | {r['when']} the reply | {r['calls_per_request']:.2f} "
                     f"| {r['us_per_call']:.1f} | {r['us_per_request']:.1f} |")
    for when in ("before", "after"):
        total = sum(r["us_per_request"] for r in out["result"]["steps"] if r["when"] == when)
        lines.append(f"\nThe steps {when} the reply: {total:.1f} µs a request.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args()
    out: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                           "concurrency": args.concurrency, "requests": args.requests, "stream": args.stream}
    with tempfile.TemporaryDirectory(prefix="nonstop-bench-steps-") as tmp:
        out["result"] = measure(Path(tmp), args.concurrency, args.requests, args.stream)
    text = render(out)
    print(text, flush=True)
    stem = Path(args.out_dir) / (f"{out['date'][:10]}-steps-c{args.concurrency}" + ("-stream" if args.stream else ""))
    stem.with_suffix(".json").write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    stem.with_suffix(".md").write_text(text)
    print(f"written: {stem}.md", flush=True)


if __name__ == "__main__":
    main()
