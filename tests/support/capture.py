"""Claude Code's real requests, captured at test time and never stored: they carry
Claude Code's own prompt text.

    bodies = capture_requests(["List the files here", "And now count them"])

runs the Claude Code CLI in print mode (`claude -p`), once per prompt (the second and
later with `--continue`, so they are consecutive turns of one session), against the
recording stand-in (tests/support/recorder.py), in a fresh project folder whose
CLAUDE.md holds INSTRUCTIONS_MARKER and with a private HOME, and returns the Messages
request bodies it sent, parsed, in order. Claude Code's default system prompt and tools
are used: these are the requests a local model would get.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support import procs, rawhttp

# Where `make test` installs the CLI when it is not on PATH.
CACHED_CLAUDE = Path.home() / ".cache" / "nonstop-dev" / "claude" / "node_modules" / ".bin" / "claude"
INSTRUCTIONS_MARKER = "NONSTOP-CAPTURE-INSTRUCTION-7731"
CLAUDE_MD = f"# Project rules\n\n- {INSTRUCTIONS_MARKER}: indent with tabs.\n"
MODEL = "claude-sonnet-4-5"
RUN_TIMEOUT = 300


def claude_cli() -> str | None:
    """The Claude Code CLI: on PATH, or where `make test` puts it; None if neither."""
    found = shutil.which("claude")
    if found is not None:
        return found
    return str(CACHED_CLAUDE) if CACHED_CLAUDE.exists() else None


def client_env(home: Path, base_url: str) -> dict[str, str]:
    """Claude Code's environment: none of the caller's Anthropic or Claude settings, a
    private HOME, the planted key, no background traffic."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "NONSTOP_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "ANTHROPIC_API_KEY": procs.PLANTED_KEY,
        "ANTHROPIC_BASE_URL": base_url,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "API_TIMEOUT_MS": "120000",
    })
    return env


def capture_requests(prompts: Sequence[str], *, claude: str | None = None, model: str = MODEL,
                     claude_md: str = CLAUDE_MD) -> list[dict[str, Any]]:
    """The Messages request bodies Claude Code sends for `prompts`, one session."""
    cli = claude or claude_cli()
    if cli is None:
        raise RuntimeError("the Claude Code CLI is missing; `make test` installs it")
    folder = Path(tempfile.mkdtemp(prefix="claude-capture-"))
    project = folder / "project"
    project.mkdir()
    (project / "CLAUDE.md").write_text(claude_md)
    try:
        with procs.start_recorder() as recorder:
            env = client_env(folder / "home", recorder.url)
            for i, prompt in enumerate(prompts):
                argv = [cli, "-p", prompt, "--output-format", "json", "--model", model, *(["--continue"] if i else [])]
                proc = subprocess.run(argv, env=env, cwd=project, stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, timeout=RUN_TIMEOUT)
                if proc.returncode != 0:
                    raise RuntimeError(f"claude exited with {proc.returncode}: {proc.stderr[-2000:] or proc.stdout[-2000:]}")
            status, _, body = rawhttp.request("GET", recorder.url + "/_recorded")
            assert status == 200, body
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [json.loads(r["body"]) for r in json.loads(body) if r["method"] == "POST" and r["path"] == "/v1/messages"]
