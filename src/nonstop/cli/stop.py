"""`nonstop stop`: stop the gateway running on this machine, as SIGTERM does: the
requests in flight get `drain_timeout` to finish, its embedded llama-server stops with
it, and it takes back its note of where it listens.

The gateway is the one the other commands find (the config's `listen`, a running one's
note, or --host / --port). Its process is the one its /health names, and only one of
this machine that is nonstop's is signalled: a gateway reached at this address may be
another machine's, and a process id can be taken by another program.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nonstop.cli.common import accepts, gateway_url, health_at
from nonstop.config import Config
from nonstop.store.listening import alive

# Beyond drain_timeout: the time a gateway takes to close its sessions and its
# embedded server once its streams are done.
STOP_MARGIN = 15.0


def _state(pid: int) -> str:
    """The process's state: "gone", "zombie" (exited, not yet reaped), or "running"."""
    if not alive(pid):
        return "gone"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "running"  # no /proc here: it lives
    # "pid (comm) S ...": the state follows the last ")" (comm may hold one).
    return "zombie" if stat.rpartition(")")[2].split()[:1] == ["Z"] else "running"


def is_nonstop_process(pid: int) -> bool | None:
    """Whether process `pid` of this machine runs nonstop (its command line says so):
    from /proc, else from `ps` (macOS, the BSDs); None when neither can tell."""
    if Path("/proc/self/cmdline").exists():
        try:
            return b"nonstop" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    import subprocess

    try:
        done = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return b"nonstop" in done.stdout if done.returncode == 0 else False


def stop(cfg: Config, echo: Callable[..., None] = print, wait: float | None = None) -> int:
    url = gateway_url(cfg.host, cfg.port)
    health = health_at(cfg.host, cfg.port, cfg.token)
    if health is None:
        if accepts(cfg.host, cfg.port):
            echo(f"nonstop: something answers at {url}, but not as nonstop (or it wants another access "
                 "token: set NONSTOP_TOKEN or the config's token); nothing was stopped", file=sys.stderr)
        else:
            echo(f"nonstop: no gateway answers at {url}; nothing to stop", file=sys.stderr)
        return 1
    pid = health["pid"]
    mine = is_nonstop_process(pid)
    if mine is None:
        echo(f"nonstop: cannot tell whether process {pid} here is the gateway at {url}; if it is, "
             f"stop it with `kill {pid}`", file=sys.stderr)
        return 1
    if not mine or pid == os.getpid():
        echo(f"nonstop: the gateway at {url} runs on another machine (its process {pid} is not nonstop "
             "here); stop it there", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        echo(f"nonstop: the gateway at {url} (pid {pid}) has already stopped")
        return 0
    except PermissionError:
        echo(f"nonstop: the gateway at {url} (pid {pid}) belongs to another user; stop it as that user "
             f"(kill {pid})", file=sys.stderr)
        return 1
    limit = cfg.drain_timeout + STOP_MARGIN if wait is None else wait
    echo(f"nonstop: stopping the gateway at {url} (pid {pid}); requests in flight get up to "
         f"{cfg.drain_timeout:g} s to finish")
    deadline = time.monotonic() + limit
    while _state(pid) == "running":
        if time.monotonic() >= deadline:
            echo(f"nonstop: the gateway (pid {pid}) is still running after {limit:g} s; `kill -9 {pid}` "
                 "ends it at once (streams in flight are cut)", file=sys.stderr)
            return 1
        time.sleep(0.1)
    echo("nonstop: stopped")
    return 0
