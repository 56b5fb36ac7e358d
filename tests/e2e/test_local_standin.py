"""The real Claude Code CLI, with its default system prompt and tools, answered by a real
small local model through nonstop while the cloud is out (subscription limit).

Claude Code's first request is far larger than these windows (its system prompt and
tools alone are about 9k tokens for the bundled SmolLM2-135M, whose chat template leaves
the tools out, and 21k for a template that renders them), so every request here is
fitted (routing/fit.py). The model writes nonsense: the tests check structure only (every
turn answers, nothing errs, the request log says how each request was fitted), never
wording. One llama-server per window, shared by the module; answers are capped short.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_claude_cli import claude_path, client_env, no_leak, result_of, run
from tests.integration.llama import LlamaServer, require_llama, start_llama_server
from tests.support import procs, rawhttp
from tests.support.config import nonstop_config
from tests.support.llama_log import llama_tasks

pytestmark = pytest.mark.e2e

MODEL = "claude-sonnet-4-5"
# The local answer's cap: answers arrive sooner, and the tests only check that they do.
MAX_OUTPUT = 48
# Each turn of the session quotes a part of this file, so the conversation grows by a
# few hundred tokens a turn (to about 2.5k in six turns: still far below the window).
SESSION_QUESTIONS = [
    "What does this code do?",
    "Which function would you test first?",
    "Is there a bug in this part?",
    "How would you name this better?",
    "What is missing from this part?",
    "Summarise our conversation in one line.",
]
CODE = """\
def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def backoff(failures: int, initial: float = 1.0, cap: float = 30.0) -> float:
    return float(min(cap, initial * 2 ** max(0, failures - 1)))


def chunks(items: list[str], size: int) -> list[list[str]]:
    if size <= 0:
        raise ValueError("size must be positive")
    return [items[i:i + size] for i in range(0, len(items), size)]
"""


class PromptTooLong(AssertionError):
    """A turn died on "prompt is too long" while the conversation alone was far
    shorter than the window."""


def _llama(ctx: int) -> Iterator[LlamaServer]:
    require_llama()
    with start_llama_server(ctx=ctx, parallel=1) as server:
        yield server


@pytest.fixture(scope="module")
def llama_4k() -> Iterator[LlamaServer]:
    yield from _llama(4096)


@pytest.fixture(scope="module")
def llama_8k() -> Iterator[LlamaServer]:
    yield from _llama(8192)


def local_gateway(nonstop_factory, cloud: procs.Proc, llama: LlamaServer, window: int) -> procs.Proc:
    """nonstop with the cloud out and `llama` as its only local backend."""
    procs.set_mode(cloud, "subscription_limit")
    backend = {"name": "llama", "url": llama.url, "context_window": window, "max_output_tokens": MAX_OUTPUT}
    return nonstop_factory(nonstop_config(cloud.url, local=[backend], discovery=None))


def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "CLAUDE.md").write_text("# Project rules\n\n- Keep answers short.\n")
    (folder / "util.py").write_text(CODE)
    return folder


def claude_p(prompt: str, *, resume: bool = False) -> list[str]:
    """`claude -p` with Claude Code's default system prompt and tools."""
    return [claude_path(), "-p", prompt, "--output-format", "json", "--model", MODEL, *(["--continue"] if resume else [])]


def logged(ns_url: str, after: int = 0, timeout: float = 10) -> list[dict[str, Any]]:
    """The /v1/messages rows of nonstop's request log with an id above `after`, oldest
    first. Rows are written a moment after the answer, so wait (briefly) for one."""
    deadline = time.monotonic() + timeout
    while True:
        code, _, body = rawhttp.request("GET", ns_url + "/_nonstop/api/requests?limit=200")
        assert code == 200, body
        rows = [r for r in json.loads(body)["requests"] if r["path"] == "/v1/messages" and r["id"] > after]
        if rows or time.monotonic() > deadline:
            return sorted(rows, key=lambda r: r["id"])
        time.sleep(0.2)


def fitted_size(row: dict[str, Any]) -> int:
    """The size the request was fitted to, as nonstop counted it."""
    return int(row["notes"]["fit"][-1]["after"])


def check_served(rows: list[dict[str, Any]], window: int, what: str) -> list[dict[str, Any]]:
    """The turn's inference rows: there is one, every row was answered by the local model,
    and each was fitted into the window."""
    too_long = [r for r in rows if "too long" in (r.get("error") or "")]
    if too_long:
        raise PromptTooLong(f"{what}: {too_long[0]['error']}; route: {json.dumps(too_long[0].get('route'))}")
    inference = [r for r in rows if r["model"] == MODEL]
    assert inference, f"{what}: no request reached nonstop: {rows}"
    assert all(r["backend"] == "llama" and r["outcome"] == "ok" for r in inference), f"{what}: {rows}"
    assert all(r["outcome"] in ("ok", "client_gone") for r in rows), f"{what}: {rows}"
    for r in inference:
        assert (r.get("notes") or {}).get("fit"), f"{what}: the request was not fitted: {r}"
        assert fitted_size(r) <= window, f"{what}: fitted to {fitted_size(r)} tokens, window {window}: {r}"
    return inference


# --- a 4k window: Claude Code's first request, fitted ---------------------------------------------


def test_claude_code_with_its_default_prompt_is_answered_in_a_4k_window(cloud, llama_4k, nonstop_factory,
                                                                        tmp_path: Path) -> None:
    ns = local_gateway(nonstop_factory, cloud, llama_4k, 4096)
    proc = run(claude_p("Reply with one word."), client_env(tmp_path / "home", ns.url), project(tmp_path))
    data = result_of(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert data["is_error"] is False, data
    no_leak(proc.stdout, proc.stderr)
    inference = check_served(logged(ns.url), 4096, "the first request")
    # The system prompt had to go down to its essentials: tools were cut first.
    tiers = [t["tier"] for t in inference[0]["notes"]["fit"]]
    assert tiers[:2] == ["descriptions", "tools"], inference[0]["notes"]


# --- an 8k window: a session of several turns ---------------------------------------------------


def test_a_six_turn_claude_code_session_in_an_8k_window(cloud, llama_8k, nonstop_factory, tmp_path: Path,
                                                        record_property) -> None:
    ns = local_gateway(nonstop_factory, cloud, llama_8k, 8192)
    env = client_env(tmp_path / "home", ns.url)
    folder = project(tmp_path)
    lines = CODE.splitlines()
    step = -(-len(lines) // len(SESSION_QUESTIONS))
    last_row = 0
    report: list[dict[str, Any]] = []
    for turn, question in enumerate(SESSION_QUESTIONS, start=1):
        part = "\n".join(lines[(turn - 1) * step:turn * step]) or CODE
        prompt = f"{question}\n\n```python\n{part}\n```"
        started = time.monotonic()
        proc = run(claude_p(prompt, resume=turn > 1), env, folder)
        seconds = time.monotonic() - started
        data = result_of(proc)
        rows = logged(ns.url, last_row)
        last_row = max([last_row, *(r["id"] for r in rows)])
        what = f"turn {turn}"
        inference = check_served(rows, 8192, what)
        assert proc.returncode == 0, f"{what}: {proc.stderr[-2000:]}"
        assert data["is_error"] is False, f"{what}: {data}"
        no_leak(proc.stdout, proc.stderr)
        tasks = llama_tasks(llama_8k.log_path.read_text(errors="replace"))
        served = tasks[-1] if tasks else None
        report.append({
            "turn": turn, "seconds": round(seconds, 1), "requests": len(inference),
            "tiers": [t["tier"] for t in inference[-1]["notes"]["fit"]], "fitted": fitted_size(inference[-1]),
            "prompt": served.prompt_size if served else None, "processed": served.prompt_tokens if served else None,
        })
    record_property("turns", json.dumps(report))
    print("\n".join(json.dumps(r) for r in report))
    assert len(report) == len(SESSION_QUESTIONS)
