"""`nonstop claude`: make sure a gateway is running, then run Claude Code through it.

The user's credentials are never read or changed: Claude Code keeps using its own login
(API key or subscription); only ANTHROPIC_BASE_URL points at nonstop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from nonstop.cli.common import db_path, gateway_url, health_at
from nonstop.config import Config, is_loopback

CLAUDE_INSTALL = "npm install -g @anthropic-ai/claude-code"


def health(cfg: Config, timeout: float = 1.0) -> dict | None:
    """The /health answer of the nonstop at the config's address; None without one."""
    return health_at(cfg.host, cfg.port, cfg.token, timeout)


def start_background(cfg: Config, wait: float = 600.0, echo=print) -> dict:
    """Start `nonstop serve` detached, logging to the state directory; wait for /health."""
    from nonstop.config import state_dir_fix
    from nonstop.store import state_dir_problem
    from nonstop.store.db import ensure_private_dir

    log_path = cfg.state_dir / "nonstop.log"
    argv = [sys.executable, "-m", "nonstop", "serve"]
    if cfg.source:
        argv += ["--config", cfg.source]
    argv += ["--host", cfg.host, "--port", str(cfg.port)]
    try:
        ensure_private_dir(cfg.state_dir)
        log = open(log_path, "ab")  # noqa: SIM115 (closed below, once the child has it)
    except OSError as exc:
        why = state_dir_problem(cfg.state_dir) or f"{exc.filename or log_path}: {exc.strerror or exc}"
        raise RuntimeError(f"the gateway's log {log_path} cannot be written: {why}. Fix: {state_dir_fix(cfg)}") from None
    with log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    echo(f"nonstop: starting the gateway in the background (pid {proc.pid}, log {log_path}; "
         "`nonstop stop` stops it)")
    deadline = time.monotonic() + wait
    last_note = time.monotonic()
    while time.monotonic() < deadline:
        h = health(cfg)
        if h is not None:
            echo(f"nonstop: ready at {gateway_url(cfg.host, cfg.port)}")
            return h
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"nonstop exited with code {proc.returncode} while starting:\n{tail}")
        if time.monotonic() - last_note > 5:
            last_note = time.monotonic()
            lines = log_path.read_text(errors="replace").strip().splitlines()
            echo(f"nonstop: still starting… {lines[-1] if lines else ''}")
        time.sleep(0.2)
    raise RuntimeError(f"nonstop did not become ready within {wait:.0f}s; see {log_path}")


def ensure_running(cfg: Config, echo=print, poll: float = 0.2, wait: float | None = None) -> dict:
    h = health(cfg)
    if h is not None and h.get("status") == "draining":
        # Shutting down: it would take the session and then exit. Wait for it to go (it
        # finishes its streams within drain_timeout), then start a fresh one.
        echo("nonstop: the running gateway is shutting down; waiting for it to stop")
        deadline = time.monotonic() + (cfg.drain_timeout + 5 if wait is None else wait)
        while h is not None and h.get("status") == "draining" and time.monotonic() < deadline:
            time.sleep(poll)
            h = health(cfg)
        if h is not None and h.get("status") == "draining":
            raise RuntimeError(f"the gateway at {gateway_url(cfg.host, cfg.port)} is still shutting down; "
                               "try again once it has stopped")
    if h is not None:
        return h
    return start_background(cfg, echo=echo)


def claude_env(cfg: Config, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["ANTHROPIC_BASE_URL"] = gateway_url(cfg.host, cfg.port)
    # Claude Code then says what kind of request each one is (main, subagent, compaction,
    # auxiliary) in x-claude-code-request-class, which nonstop routes by.
    env.setdefault("CLAUDE_CODE_GATEWAY_HINT_HEADERS", "1")
    if cfg.token:
        line = f"x-nonstop-token: {cfg.token}"
        prior = env.get("ANTHROPIC_CUSTOM_HEADERS", "")
        env["ANTHROPIC_CUSTOM_HEADERS"] = f"{prior}\n{line}" if prior else line
    return env


def verdict_lines(cfg: Config, h: dict) -> list[str]:
    """One line per local backend the gateway reports: its last eval score, so the user
    knows what a failover would hand the session to."""
    local = h.get("local")
    names = [str(b["name"]) for b in local if isinstance(b, dict) and b.get("name")] if isinstance(local, list) else []
    if not names:
        return []
    from nonstop.quality.verdict import verdicts

    return [f"nonstop: local {v['line']}" for v in verdicts(db_path(cfg.state_dir), names).values()]


def _offer_statusline(cfg: Config, force: bool) -> None:
    from nonstop.cli import statusline

    marker = cfg.state_dir / "statusline-offered"
    # The status line is a courtesy: a settings file it cannot edit is said, and Claude
    # Code runs all the same.
    try:
        if force:
            path = statusline.install()
            print(f"nonstop: status line added to {path} (backup kept next to it)", file=sys.stderr)
            return
        if marker.exists() or not sys.stdin.isatty() or statusline.is_installed():
            return
        try:
            answer = input("nonstop: show nonstop's status line in Claude Code? It edits only the statusLine key of your settings and keeps a backup. [y/N] ")
        except EOFError:
            answer = ""
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(answer.strip() or "n")
        if answer.strip().lower() in ("y", "yes"):
            path = statusline.install()
            print(f"nonstop: status line added to {path}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"nonstop: the status line was not added: {exc}", file=sys.stderr)


def run_claude(cfg: Config, rest: list[str], args) -> int:
    claude = shutil.which("claude")
    if claude is None:
        print(f"nonstop: the Claude Code CLI (`claude`) is not on PATH. Install it with:\n  {CLAUDE_INSTALL}", file=sys.stderr)
        return 127
    if not is_loopback(cfg.host) and not cfg.token:
        print("nonstop: refusing to expose the gateway without a token", file=sys.stderr)
        return 2
    try:
        h = ensure_running(cfg, echo=lambda m: print(m, file=sys.stderr))
    except RuntimeError as exc:
        print(f"nonstop: {exc}", file=sys.stderr)
        return 1
    for line in verdict_lines(cfg, h):
        print(line, file=sys.stderr)
    _offer_statusline(cfg, bool(getattr(args, "install_statusline", False)))
    env = claude_env(cfg)
    from nonstop.cli.doctor import managed_override  # doctor imports this module

    warning = managed_override(env["ANTHROPIC_BASE_URL"])
    if warning:
        print(warning, file=sys.stderr)
    # Claude Code lets `env` in its settings files override the process environment; a
    # --settings argument wins over those, so nonstop cannot be silently bypassed.
    settings = json.dumps({"env": {"ANTHROPIC_BASE_URL": env["ANTHROPIC_BASE_URL"]}})
    sys.stdout.flush()
    sys.stderr.flush()
    return run_child([claude, "--settings", settings, *rest], env)


def run_child(argv: list[str], env: dict[str, str]) -> int:
    """Run Claude Code in the foreground and give back its exit status. Ctrl-C reaches it
    (the terminal sends it to the whole process group) and is its to handle: nonstop
    ignores it meanwhile, where the default would kill the child outright and leave the
    terminal as it was mid-session. Killed by a signal, the status is 128 + the signal,
    as a shell says it."""
    proc = subprocess.Popen(argv, env=env)  # started with Ctrl-C as it was (not ignored)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGINT, before)
    return 128 - rc if rc < 0 else rc
