"""Plumbing for the benchmarks: processes, /proc readings, the load generator's pipe,
percentiles, and a description of the machine."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def write_unique(name: str, text: str) -> Path:
    """`text` to results/<today>-<name>.md, never over an earlier file (a second one that
    day gets the time in its name); printed, with where it went."""
    out = HERE / "results" / f"{dt.date.today().isoformat()}-{name}.md"
    if out.exists():
        out = out.with_name(f"{out.stem}-{dt.datetime.now():%H%M}.md")
    out.write_text(text)
    print(text + f"written: {out}")
    return out


def revision_source(rev: str, folder: Path) -> Path:
    """The src/ folder of git revision `rev`, extracted into `folder` with `git archive`
    (OSError or CalledProcessError when git cannot give it)."""
    folder.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
                         capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=tar, check=True)
    return folder / "src"


def run_program(argv: list[str]) -> None:
    """Run the Python program `argv` names (`-m MODULE ...` or `SCRIPT ...`) in this
    process, as its __main__, with sys.argv as it would see it (for the meters that
    wrap a program: opcount.py, phasemark.py)."""
    import runpy

    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(sys.argv[0], run_name="__main__")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def log_written(base_url: str) -> str | None:
    """Wait until a nonstop's request log has written what it was given (a read of its log
    waits for the writer, which batches rows for up to half a second): None when it has,
    else why it could not be read."""
    try:
        status, _ = http_get(base_url + "/_nonstop/api/requests?limit=1", timeout=30)
    except OSError as exc:
        return str(exc)
    return None if status == 200 else f"HTTP {status}"


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


# --- processes -----------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    log: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-n:]
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        # Each was started in its own session: signal the group, so that workers it
        # started itself go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start(name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
          workdir: Path | None = None) -> Proc:
    folder = workdir or Path(tempfile.mkdtemp(prefix=f"nonstop-bench-{name}-"))
    log = folder / f"{name}.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=str(cwd or ROOT), start_new_session=True)
    return Proc(name, proc, log)


def start_upstream(modes: dict[str, str], workdir: Path) -> tuple[Proc, dict[str, int]]:
    """The fake upstream (upstream.py), one port per name answering in its mode
    (`{"ok": "ok", "local": "ok", "limit-past": "limit-past"}`), ready: the process and
    each name's port."""
    ports = {name: free_port() for name in modes}
    argv = [sys.executable, str(HERE / "upstream.py")]
    for name, port in ports.items():
        argv += ["--listen", f"127.0.0.1:{port}={modes[name]}"]
    proc = start("upstream", argv, workdir=workdir)
    for port in ports.values():
        wait_http(proc, f"http://127.0.0.1:{port}/_stats", timeout=30)
    return proc, ports


def wait_http(p: Proc, url: str, timeout: float = 60.0, ok_below: int = 500) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not p.alive():
            raise RuntimeError(f"{p.name} exited with {p.proc.returncode} before {url} answered:\n{p.tail()}")
        try:
            status, _ = http_get(url, timeout=2)
            if status < ok_below:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{p.name}: {url} did not answer within {timeout:.0f}s\n{p.tail()}")


# --- /proc -----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(x) for x in fh.read().split())
    return out


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """utime + stime of the process (all its threads), from /proc/<pid>/stat."""
    total = 0
    for p in tree(pid) if with_children else [pid]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / TICK


def thread_cpu(pid: int) -> tuple[float, float]:
    """(the main thread's, all other threads') CPU seconds, to the nanosecond where the
    kernel keeps schedstat (/proc/<pid>/task/<tid>/schedstat), else in clock ticks.
    Threads that have ended are not counted."""
    main = other = 0.0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    t = int(fh.read().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                try:
                    with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                        f = fh.read().rsplit(")", 1)[1].split()
                    t = (int(f[11]) + int(f[12])) / TICK
                except (OSError, ValueError, IndexError):
                    continue
            if int(tid) == pid:
                main += t
            else:
                other += t
    return main, other


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy (not idle, not waiting on I/O), from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / TICK


def mem_kb(pid: int, key: str = "VmRSS", *, with_children: bool = False) -> int:
    total = 0
    for p in tree(pid) if with_children else [pid]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
                    break
    return total


def rss_mb(pid: int, *, with_children: bool = False) -> float:
    return mem_kb(pid, "VmRSS", with_children=with_children) / 1024


def peak_rss_mb(pid: int, *, with_children: bool = False) -> float:
    return mem_kb(pid, "VmHWM", with_children=with_children) / 1024


# --- the load generator --------------------------------------------------------------------


class LoadGen:
    """The load generator process and its command pipe."""

    def __init__(self) -> None:
        self.log = Path(tempfile.mkdtemp(prefix="nonstop-bench-loadgen-")) / "loadgen.log"
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, str(HERE / "loadgen.py")], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT), start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator died:\n{self.log.read_text(errors='replace')[-2000:]}")
        return orjson.loads(line)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call({"op": "quit"})
        with contextlib.suppress(Exception):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- numbers ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return percentile(values, 50)


# --- the machine and the code ----------------------------------------------------------------


def source_fingerprint(root: Path = ROOT) -> dict[str, Any]:
    """Which nonstop was measured: a hash of src/nonstop/**/*.py under `root` (the results
    name no commit: the benchmark calls git only to fetch a --baseline revision)."""
    import hashlib

    files = sorted((root / "src" / "nonstop").rglob("*.py"))
    h = hashlib.sha256()
    newest = 0.0
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
        newest = max(newest, f.stat().st_mtime)
    import datetime as dt

    return {"sha256": h.hexdigest()[:16], "files": len(files),
            "newest_change": dt.datetime.fromtimestamp(newest).isoformat(timespec="seconds")}



def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mhz = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("cpu MHz"):
                mhz = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        mem = int(fh.readline().split()[1]) // 1024
    load = ""
    with contextlib.suppress(OSError), open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    versions = {}
    for mod in ("uvicorn", "uvloop", "httptools", "aiohttp", "orjson"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[mod] = version(mod)
    return {
        "cpu": model or platform.processor() or "unknown",
        "cpu_mhz": mhz,
        "cores": os.cpu_count(),
        "memory_mb": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_start": load,
        "packages": versions,
    }
