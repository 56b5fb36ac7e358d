"""What one open stream holds, by allocation site: nonstop against the bare forwarder.

    python benchmarks/stream_memory.py [--streams 128]

run.py's "memory per open stream" is the growth of RSS while N slow streams are held,
which is coarse (the allocator keeps freed memory) and cannot say whose memory it is.
This runs each server under tracemalloc instead: the fake upstream (upstream.py), then
nonstop in its default configuration (the request log on, one [[local]] backend) or the
forwarder (forwarder.py), warmed up with 300 streamed and 300 JSON requests, then N slow
streams of the 51 KB Claude Code request are opened one after another (loadgen.py's
"hold") and held. A snapshot before and one while they are held give the growth per
stream, split by the package that allocated it (the allocation's own line: aiohttp,
uvicorn, asyncio and uvloop, nonstop, other), with the largest sites.

Results go to benchmarks/results/<date>-stream-memory.md and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import LoadGen, free_port, machine, start, wait_http  # noqa: E402

# Run inside the measured server: tracemalloc from the first import, and a snapshot
# written on SIGUSR1 (numbered, into the folder given).
_TRACED = """
import gc, os, runpy, signal, sys, tracemalloc
tracemalloc.start(1)
folder, kind = sys.argv[1], sys.argv[2]
def dump(sig, frame):
    gc.collect()
    n = len([f for f in os.listdir(folder) if f.startswith("snap")])
    tracemalloc.take_snapshot().dump(os.path.join(folder, f"snap{n}.pickle"))
signal.signal(signal.SIGUSR1, dump)
if kind == "nonstop":
    sys.argv = ["nonstop"] + sys.argv[3:]
    runpy.run_module("nonstop", run_name="__main__")
else:
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""

PACKAGES = (("aiohttp", "/aiohttp/"), ("uvicorn", "/uvicorn/"), ("nonstop", "/nonstop/"),
            ("asyncio and uvloop", "/asyncio/"), ("asyncio and uvloop", "/uvloop/"))


def package(filename: str) -> str:
    return next((name for name, part in PACKAGES if part in filename), "other")


def snapshot(pid: int, folder: Path, n: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    path = folder / f"snap{n}.pickle"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            time.sleep(0.5)  # let the dump finish
            return tracemalloc.Snapshot.load(str(path))
        time.sleep(0.1)
    raise RuntimeError(f"no snapshot from pid {pid}")


def _short(filename: str) -> str:
    for cut in ("site-packages/", "/src/", "/lib/python3."):
        if cut in filename:
            rest = filename.split(cut, 1)[1]
            return rest.split("/", 1)[1] if cut == "/lib/python3." else rest
    return filename


def measure(kind: str, streams: int, work: Path) -> dict[str, Any]:
    folder = work / kind
    folder.mkdir()
    up_port, local_port, port = free_port(), free_port(), free_port()
    upstream = start(f"upstream-{kind}", [sys.executable, str(HERE / "upstream.py"), "--listen", f"127.0.0.1:{up_port}=ok",
                                          "--listen", f"127.0.0.1:{local_port}=ok"], workdir=folder)
    traced = folder / "traced.py"
    traced.write_text(_TRACED)
    env = {"NONSTOP_STATE_DIR": str(folder / "state")}
    if kind == "nonstop":
        cfg = folder / "config.toml"
        cfg.write_text(f'listen = "127.0.0.1:{port}"\nstate_dir = "{folder / "state"}"\n'
                       f'[cloud]\nurl = "http://127.0.0.1:{up_port}"\n[embedded]\nmode = "never"\n'
                       '[discovery]\nenabled = false\n[log]\nenabled = true\n'
                       f'[[local]]\nname = "local"\nurl = "http://127.0.0.1:{local_port}"\n')
        argv = ["serve", "--config", str(cfg)]
        ready = "/health"
    else:
        argv = [str(HERE / "forwarder.py"), "--listen", f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{up_port}"]
        ready = "/_stats"
    server = start(kind, [sys.executable, str(traced), str(folder), kind, *argv], env=env, workdir=folder)
    url = f"http://127.0.0.1:{port}"
    lg = LoadGen()
    try:
        wait_http(upstream, f"http://127.0.0.1:{up_port}/_stats", timeout=30)
        wait_http(server, url + ready, timeout=60)
        for stream in (True, False):
            lg.call({"op": "run", "url": url, "payload": "large", "stream": stream, "concurrency": 16,
                     "requests": 300, "warmup": 16, "max_seconds": 120})
        time.sleep(1.0)
        before = snapshot(server.pid, folder, 0)
        got = lg.call({"op": "hold", "url": url, "streams": streams, "hold": 180})
        time.sleep(2.0)
        during = snapshot(server.pid, folder, 1)
        lg.call({"op": "release"})
    finally:
        lg.close()
        server.stop()
        upstream.stop()
    opened = int(got.get("opened", 0)) or 1
    diff = during.compare_to(before, "lineno")
    by_package: dict[str, float] = {}
    for s in diff:
        name = package(s.traceback[0].filename)
        by_package[name] = by_package.get(name, 0.0) + s.size_diff / opened
    sites = [{"site": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
              "bytes": s.size_diff / opened, "objects": s.count_diff / opened} for s in diff[:12]]
    own = [{"site": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
            "bytes": s.size_diff / opened, "objects": s.count_diff / opened}
           for s in diff if package(s.traceback[0].filename) == "nonstop" and s.size_diff / opened >= 16][:20]
    return {"opened": got.get("opened", 0), "failed": got.get("failed", 0),
            "per_stream_kb": sum(s.size_diff for s in diff) / opened / 1024,
            "by_package_kb": {k: v / 1024 for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])},
            "sites": sites, "own_sites": own}


def render(out: dict[str, Any]) -> str:
    lines = [f"# What one open stream holds ({out['date']})", "",
             f"`python benchmarks/stream_memory.py --streams {out['streams']}` on {_machine(out['machine'])}.",
             "Traced (tracemalloc) growth per held stream, snapshot while held against one before, after the",
             "same warm-up; the 51 KB Claude Code request, the default configuration for nonstop.", "",
             "| | nonstop | forwarder |", "|---|---|---|"]
    n, f = out["nonstop"], out["forwarder"]
    lines.append(f"| per open stream | {n['per_stream_kb']:.1f} KB | {f['per_stream_kb']:.1f} KB |")
    for name in sorted(set(n["by_package_kb"]) | set(f["by_package_kb"]),
                       key=lambda k: -(n["by_package_kb"].get(k, 0) + f["by_package_kb"].get(k, 0))):
        lines.append(f"| allocated in {name} | {n['by_package_kb'].get(name, 0.0):.1f} KB "
                     f"| {f['by_package_kb'].get(name, 0.0):.1f} KB |")
    for kind in ("nonstop", "forwarder"):
        lines += ["", f"Largest sites, {kind}:", "", "| site | bytes per stream | objects per stream |", "|---|---|---|"]
        lines += [f"| `{s['site']}` | {s['bytes']:.0f} | {s['objects']:.1f} |" for s in out[kind]["sites"]]
    if out["nonstop"].get("own_sites"):
        lines += ["", "Sites in nonstop's own code (16 bytes a stream or more):", "",
                  "| site | bytes per stream | objects per stream |", "|---|---|---|"]
        lines += [f"| `{s['site']}` | {s['bytes']:.0f} | {s['objects']:.1f} |" for s in out["nonstop"]["own_sites"]]
    return "\n".join(lines) + "\n"


def _machine(m: dict[str, Any]) -> str:
    pkgs = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
    return f"{m['cores']} cores ({m['cpu']}), {m['memory_mb'] // 1024} GB, Linux {m['kernel']}, Python {m['python']}; {pkgs}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=128)
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args()
    out: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "streams": args.streams,
                           "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="nonstop-bench-memory-") as tmp:
        for kind in ("nonstop", "forwarder"):
            print(f"{kind}: {args.streams} held streams under tracemalloc", flush=True)
            out[kind] = measure(kind, args.streams, Path(tmp))
            print(f"  {out[kind]['per_stream_kb']:.1f} KB per open stream: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in out[kind]["by_package_kb"].items()), flush=True)
    stem = Path(args.out_dir) / f"{out['date'][:10]}-stream-memory"
    stem.with_suffix(".json").write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    stem.with_suffix(".md").write_text(render(out))
    print(f"written: {stem}.md", flush=True)


if __name__ == "__main__":
    main()
