"""The real Claude Code CLI through nonstop, in print mode (`claude -p`).

Claude Code runs with HOME in a temporary folder (so no real settings are read or
written), the planted test key as its API key, and the fake cloud behind nonstop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nonstop.cli import claude as launcher
from nonstop.cli.common import gateway_url
from nonstop.config import load_config
from tests.integration.llama import require_llama
from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.e2e

CLOUD_TEXT = "Hello from the cloud."
PROMPT = ["-p", "Say hi", "--output-format", "json", "--tools", "", "--system-prompt", "Be brief.",
          "--model", "claude-sonnet-4-5"]
RUN_TIMEOUT = 300


def claude_path() -> str:
    path = shutil.which("claude")
    if path is None:
        message = "the Claude Code CLI (`claude`) is not on PATH; `make test` installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def client_env(home: Path, base_url: str | None) -> dict[str, str]:
    """A clean environment for Claude Code: none of the caller's Anthropic or Claude
    settings, a private HOME, the planted key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "NONSTOP_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "ANTHROPIC_API_KEY": procs.PLANTED_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "API_TIMEOUT_MS": "120000",
    })
    if base_url is not None:
        env["ANTHROPIC_BASE_URL"] = base_url
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


def result_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output (exit {proc.returncode}); stderr:\n{proc.stderr[-2000:]}"
    data = json.loads(lines[-1])
    assert data.get("type") == "result", data
    return data


def logged_messages(ns_url: str) -> list[dict[str, Any]]:
    """The /v1/messages rows of nonstop's request log. Rows are written a moment after
    the answer, so wait (briefly) for the first one."""
    deadline = time.monotonic() + 10
    while True:
        code, _, body = rawhttp.request("GET", ns_url + "/_nonstop/api/requests?limit=100")
        assert code == 200, body
        rows = [r for r in json.loads(body)["requests"] if r["path"] == "/v1/messages"]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def no_leak(*texts: str) -> None:
    for text in texts:
        assert procs.PLANTED_KEY not in text


# --- (a) a healthy cloud --------------------------------------------------------------------------


def test_claude_through_nonstop_with_a_healthy_cloud(cloud, nonstop_factory, tmp_path: Path) -> None:
    claude = claude_path()
    ns = nonstop_factory(nonstop_config(cloud.url))
    proc = run([claude, *PROMPT], client_env(tmp_path / "home", ns.url), tmp_path)
    data = result_of(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert data["is_error"] is False and data["result"] == CLOUD_TEXT, data
    no_leak(proc.stdout, proc.stderr)

    # The cloud got Claude Code's request as sent: path and query kept, its own key and
    # beta flags passed through.
    sent = [r for r in procs.cloud_requests(cloud) if r["path"] == "/v1/messages"]
    assert sent, procs.cloud_requests(cloud)
    first = sent[0]
    headers = {k.lower(): v for k, v in first["headers"]}
    assert first["query"] == "beta=true"
    assert headers["x-api-key"] == procs.PLANTED_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "claude-code-20250219" in headers["anthropic-beta"]
    assert headers["user-agent"].startswith("claude-cli/")
    body = json.loads(first["body"])
    assert body["model"] == "claude-sonnet-4-5" and body["stream"] is True
    rows = logged_messages(ns.url)
    assert rows and all(r["backend"] == "cloud" and r["outcome"] == "ok" for r in rows), rows


# --- (b) the cloud's subscription limit: a real local model answers ------------------------------------


def test_claude_is_served_locally_when_the_subscription_limit_hits(cloud, llama, nonstop_factory, tmp_path: Path) -> None:
    claude = claude_path()
    procs.set_mode(cloud, "subscription_limit")
    llama_backend = {"name": "llama", "url": llama.url, "context_window": 8192, "max_output_tokens": 64}
    ns = nonstop_factory(nonstop_config(cloud.url, local=[llama_backend], discovery=None))
    proc = run([claude, *PROMPT], client_env(tmp_path / "home", ns.url), tmp_path)
    data = result_of(proc)
    # A small model often runs into the 64-token cap. nonstop set that cap, not Claude
    # Code (it asked for 32000): if the cut reaches Claude Code as stop_reason
    # "max_tokens", it asks the model to resume three times and then fails the turn.
    assert data.get("api_error") != "max_output_tokens", (
        "nonstop's local output cap reached Claude Code as stop_reason max_tokens: " + json.dumps(data)[:1500]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert data["is_error"] is False, data
    assert data["result"] != CLOUD_TEXT
    no_leak(proc.stdout, proc.stderr)

    rows = logged_messages(ns.url)
    inference = [r for r in rows if r["model"] == "claude-sonnet-4-5"]
    assert inference, rows
    assert all(r["backend"] == "llama" and r["outcome"] == "ok" for r in inference), rows
    # Whatever else Claude Code sent (background calls on other models) did not fail.
    assert all(r["outcome"] in ("ok", "client_gone") for r in rows), rows


# --- (c) `nonstop claude` with nonstop already running ------------------------------------------------------


def nonstop_claude(config: Path, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "nonstop", "claude", "--config", str(config), *args], env, cwd)


def test_nonstop_claude_passes_the_exit_code_through(cloud, nonstop_factory, tmp_path: Path) -> None:
    claude = claude_path()
    ns = nonstop_factory(nonstop_config(cloud.url))
    env = client_env(tmp_path / "home", None)

    proc = nonstop_claude(ns.extra["config"], PROMPT, env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = result_of(proc)
    assert data["is_error"] is False and data["result"] == CLOUD_TEXT, data
    assert "starting the gateway" not in proc.stderr  # it used the one already running
    no_leak(proc.stdout, proc.stderr)

    bad = ["-p", "Say hi", "--definitely-not-a-flag"]
    direct = run([claude, *bad], client_env(tmp_path / "home", ns.url), tmp_path)
    assert direct.returncode != 0, direct
    through = nonstop_claude(ns.extra["config"], bad, env, tmp_path)
    assert through.returncode == direct.returncode, (through.stdout, through.stderr)


# --- (d) `nonstop claude` with nothing running: it starts nonstop (which starts its own model) ------------


def test_nonstop_claude_starts_nonstop_in_the_background(cloud, tmp_path: Path) -> None:
    claude_path()
    require_llama()  # no local server is configured or found: the background nonstop runs its own
    port = procs.free_port()
    state = tmp_path / "state"
    config = procs.write_config(tmp_path, nonstop_config(
        cloud.url, listen=f"127.0.0.1:{port}", state_dir=state, discovery={"ports": [procs.free_port()]}, embedded=None,
    ))
    cfg = load_config(config)
    assert launcher.health(cfg) is None
    env = client_env(tmp_path / "home", None)
    started_pid: int | None = None
    children: list[int] = []
    try:
        proc = nonstop_claude(config, PROMPT, env, tmp_path)
        health = launcher.health(cfg)
        assert health is not None, f"no nonstop on {cfg.listen} after the run:\n{proc.stderr[-2000:]}"
        started_pid = int(health["pid"])
        children = procs.child_pids(started_pid)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "starting the gateway in the background" in proc.stderr
        data = result_of(proc)
        assert data["is_error"] is False and data["result"] == CLOUD_TEXT, data
        rows = logged_messages(gateway_url(cfg.host, cfg.port))
        assert rows and all(r["backend"] == "cloud" and r["outcome"] == "ok" for r in rows), rows
        status = json.loads(rawhttp.request("GET", gateway_url(cfg.host, cfg.port) + "/_nonstop/api/status")[2])
        assert [b["name"] for b in status["local"]] == ["embedded"], status["local"]
        assert children, "the background nonstop runs no embedded llama-server"
        no_leak(proc.stdout, proc.stderr, (state / "nonstop.log").read_text(errors="replace"))
    finally:
        stopped = None
        if started_pid is not None:  # as the user stops it: `nonstop stop` (SIGTERM, then the drain)
            stopped = run([sys.executable, "-m", "nonstop", "stop", "--config", str(config)], env, tmp_path)
            deadline = time.monotonic() + 30
            while procs.pid_alive(started_pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if procs.pid_alive(started_pid):
                os.kill(started_pid, signal.SIGKILL)
    assert stopped is not None and stopped.returncode == 0, (stopped.stdout, stopped.stderr) if stopped else None
    assert f"(pid {started_pid})" in stopped.stdout and stopped.stdout.rstrip().endswith("stopped"), stopped.stdout
    assert not procs.pid_alive(started_pid), "the background nonstop did not stop on `nonstop stop`"
    deadline = time.monotonic() + 10
    while any(procs.pid_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [c for c in children if procs.pid_alive(c)], "a child of nonstop outlived it"
    assert launcher.health(cfg) is None
    log = (state / "nonstop.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


# --- (e) the cloud out, a local server that speaks only OpenAI Chat Completions ------------------


def test_claude_through_an_openai_backend_with_the_cloud_out(cloud, llama, nonstop_factory, tmp_path: Path) -> None:
    claude = claude_path()
    procs.set_mode(cloud, "subscription_limit")
    oai = {"name": "oai", "url": llama.url, "api": "openai", "model": "smollm2", "context_window": 8192,
           "max_output_tokens": 64}
    ns = nonstop_factory(nonstop_config(cloud.url, local=[oai], discovery=None))
    proc = run([claude, *PROMPT], client_env(tmp_path / "home", ns.url), tmp_path)
    data = result_of(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert data["is_error"] is False, data
    assert data["result"] != CLOUD_TEXT
    rows = [r for r in logged_messages(ns.url) if r["model"] == "claude-sonnet-4-5"]
    assert rows and all(r["backend"] == "oai" and r["outcome"] == "ok" for r in rows), rows
    no_leak(proc.stdout, proc.stderr)


# --- (f) the cloud's stream fails after its start, before any content -----------------------------


@pytest.mark.parametrize("mode", ["overloaded_after_block_start", "overloaded_after_thinking_start"])
def test_claude_gets_one_answer_when_the_cloud_stream_fails_before_content(cloud, llama, nonstop_factory,
                                                                           tmp_path: Path, mode: str) -> None:
    # The cloud starts its message and an empty text (or thinking) block, then overloads:
    # a local model goes on with the same message, and Claude Code takes it as its answer
    # (no retry of the overload, no error), the thinking block ended with the local signature.
    claude = claude_path()
    procs.set_mode(cloud, mode)
    llama_backend = {"name": "llama", "url": llama.url, "context_window": 8192, "max_output_tokens": 64}
    ns = nonstop_factory(nonstop_config(cloud.url, local=[llama_backend], discovery=None))
    proc = run([claude, *PROMPT], client_env(tmp_path / "home", ns.url), tmp_path)
    data = result_of(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert data["is_error"] is False and data["result"] != CLOUD_TEXT, data
    no_leak(proc.stdout, proc.stderr)
    rows = [r for r in logged_messages(ns.url) if r["model"] == "claude-sonnet-4-5"]
    assert rows and all(r["backend"] == "llama" and r["outcome"] == "ok" for r in rows), rows
    assert all("the cloud failed after its stream began" in r["error"] and r["reason"] for r in rows), rows
    # One request per turn: Claude Code did not send it again.
    assert len([r for r in procs.cloud_requests(cloud) if r["path"] == "/v1/messages"
                and json.loads(r["body"]).get("model") == "claude-sonnet-4-5"]) == len(rows)
