"""Does the local model's prompt cache keep hitting from turn to turn? Claude Code's
per-request noise normalised away (wire/prompt_cache.py) or left in, measured.

    python benchmarks/prompt_cache.py                     a 4k window (the request is fitted)
    python benchmarks/prompt_cache.py --window 8192       the largest window SmolLM2 takes (trained on 8k)
    python benchmarks/prompt_cache.py --llama-arg=--cache-reuse --llama-arg=256

A five-turn conversation shaped like Claude Code's goes through nonstop to a real
llama-server (the bundled SmolLM2-135M, one slot) while the fake cloud is out
(subscription limit). Turn 1 is Claude Code's real first request, captured from the CLI
(tests/support/capture.py; default system prompt and tools) when it is installed, else
benchmarks/payload.py's synthetic one; each later turn adds the model's answer and a new
user message, as Claude Code does. Every turn's attribution line changes the way the
cloud-bound request's does (a new `cch`, a turn index); then a sixth request opens a
second session (another `cc_version` suffix, another first message).

Each mode gets a fresh llama-server and nonstop: "on" is nonstop as shipped; "off" is
nonstop with the normalisation skipped (benchmarks/switches/sitecustomize.py,
NONSTOP_BENCH_PROMPT_CACHE=off). Per turn: the time to the first text token through
nonstop, and llama-server's own account of the prompt (its log: tokens processed, the
rest reused from its cache). Writes results/<date>-prompt-cache[-label].md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import http.client
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import harness  # noqa: E402
import payload  # noqa: E402
import report  # noqa: E402

from tests.integration.llama import LlamaServer, start_llama_server  # noqa: E402
from tests.support import procs  # noqa: E402
from tests.support.capture import capture_requests, claude_cli  # noqa: E402
from tests.support.config import nonstop_config  # noqa: E402
from tests.support.llama_log import LlamaTask, llama_tasks  # noqa: E402

SWITCHES = HERE / "switches"
MODEL = "claude-sonnet-4-5"
FIRST_PROMPT = "What does util.py do?"
FOLLOW_UPS = [
    "Now look at this part of it:\n\n```python\ndef backoff(failures: int, initial: float = 1.0, cap: float = 30.0) -> float:\n"
    "    return float(min(cap, initial * 2 ** max(0, failures - 1)))\n```\n\nIs the cap applied correctly?",
    "Run the tests for it and tell me what fails.",
    "The test output was:\n\n```\nFAILED tests/test_util.py::test_backoff_cap - assert 32.0 == 30.0\n"
    "1 failed, 11 passed in 0.12s\n```\n\nWhat does that mean?",
    "Fix it, and keep the change small.",
]
SECOND_SESSION_PROMPT = "List the functions in util.py."


def attribution(session: str, turn: int) -> str:
    """The attribution line as the cloud-bound request carries it: a new `cch` on every
    request (docs/wire.md §6)."""
    return (f"x-anthropic-billing-header: cc_version=2.1.332.{session}; cc_entrypoint=cli; "
            f"cch={secrets.token_hex(3)[:5]}; cc_turn_index={turn};")


def with_attribution(req: dict[str, Any], line: str) -> dict[str, Any]:
    out = copy.deepcopy(req)
    system = out.get("system")
    blocks = system if isinstance(system, list) else [{"type": "text", "text": system}] if system else []
    if blocks and str(blocks[0].get("text", "")).startswith("x-anthropic-billing-header:"):
        blocks[0] = {**blocks[0], "text": line}
    else:
        blocks.insert(0, {"type": "text", "text": line})
    out["system"] = blocks
    out["stream"] = True
    return out


def first_request() -> tuple[dict[str, Any], str]:
    if claude_cli() is not None:
        captured = capture_requests([FIRST_PROMPT], model=MODEL)
        return captured[-1], "captured from Claude Code " + _claude_version()
    return payload.claude_code_request(), "synthetic (benchmarks/payload.py; the Claude Code CLI is not installed)"


def _claude_version() -> str:
    cli = claude_cli()
    return subprocess.run([cli or "claude", "--version"], capture_output=True, text=True).stdout.split(" ")[0]


def second_session(first: dict[str, Any]) -> dict[str, Any]:
    """Another session's first request: the same system prompt and tools, another first
    message."""
    out = copy.deepcopy(first)
    last = out["messages"][-1]
    content = last["content"]
    if isinstance(content, str):
        last["content"] = SECOND_SESSION_PROMPT
    else:
        texts = [b for b in content if isinstance(b, dict) and b.get("type") == "text"]
        texts[-1]["text"] = SECOND_SESSION_PROMPT
    return out


def stream(url: str, req: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """POST a streamed request; the time to the first text delta, the total, the text."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {**payload.CLAUDE_CODE_HEADERS, "x-api-key": procs.PLANTED_KEY}
    started = time.perf_counter()
    conn.request("POST", "/v1/messages", body=json.dumps(req).encode(), headers=headers)
    resp = conn.getresponse()
    first: float | None = None
    text: list[str] = []
    event = ""
    errors: list[str] = []
    for raw in resp:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event in ("content_block_delta", "error"):
            doc = json.loads(line[5:])
            if event == "error":
                errors.append(json.dumps(doc)[:300])
            elif doc.get("delta", {}).get("type") == "text_delta":
                first = first or time.perf_counter()
                text.append(doc["delta"]["text"])
    total = time.perf_counter() - started
    conn.close()
    return {"status": resp.status, "first_token_s": None if first is None else first - started, "total_s": total,
            "text": "".join(text), "errors": errors}


@contextlib.contextmanager
def stack(mode: str, window: int, max_output: int, cloud: procs.Proc,
          llama_args: list[str]) -> Iterator[tuple[procs.Proc, LlamaServer]]:
    env = {"PYTHONPATH": str(SWITCHES), "NONSTOP_BENCH_PROMPT_CACHE": mode}
    with start_llama_server(ctx=window, parallel=1, extra_args=llama_args) as llama:
        backend = {"name": "llama", "url": llama.url, "context_window": window, "max_output_tokens": max_output}
        ns = procs.start_nonstop(nonstop_config(cloud.url, local=[backend]), env=env)
        try:
            yield ns, llama
        finally:
            ns.stop()


def run_mode(mode: str, first: dict[str, Any], window: int, max_output: int, cloud: procs.Proc,
             llama_args: list[str]) -> list[dict[str, Any]]:
    session = secrets.token_hex(2)[:3]
    rows: list[dict[str, Any]] = []
    with stack(mode, window, max_output, cloud, llama_args) as (ns, llama):
        messages = copy.deepcopy(first["messages"])
        for turn in range(1, len(FOLLOW_UPS) + 2):
            req = with_attribution({**first, "messages": messages}, attribution(session, turn))
            rows.append(measure(ns, llama, req, f"turn {turn}"))
            if turn <= len(FOLLOW_UPS):
                messages = messages + [
                    {"role": "assistant", "content": [{"type": "text", "text": rows[-1]["text"] or "OK."}]},
                    {"role": "user", "content": [{"type": "text", "text": FOLLOW_UPS[turn - 1]}]},
                ]
        other = secrets.token_hex(2)[:3]
        rows.append(measure(ns, llama, with_attribution(second_session(first), attribution(other, 1)),
                            "a second session, turn 1"))
    return rows


def measure(ns: procs.Proc, llama: LlamaServer, req: dict[str, Any], what: str) -> dict[str, Any]:
    before = len(llama_tasks(llama.log_path.read_text(errors="replace")))
    out = stream(ns.url, req)
    tasks: list[LlamaTask] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tasks = llama_tasks(llama.log_path.read_text(errors="replace"))[before:]
        if tasks and tasks[-1].context_tokens is not None:
            break
        time.sleep(0.1)
    task = tasks[-1] if tasks else None
    out.update(what=what, prompt=task.prompt_size if task else None, processed=task.prompt_tokens if task else None,
               prompt_ms=task.prompt_ms if task else None, output=task.output_tokens if task else None)
    print(f"  {what}: first token {_f(out['first_token_s'])} s, prompt {out['prompt']}, processed {out['processed']}"
          + (f", errors {out['errors']}" if out["errors"] else ""), flush=True)
    return out


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    label = f" ({results['label']})" if results["label"] else ""
    lines = [f"# Prompt cache: Claude Code's per-request noise normalised or not, {results['date']}{label}", "",
             f"{report.machine_line(m)}. Run {results['started']} to {results['finished']}.", "",
             f"Turn 1: {results['source']}, model {MODEL}. llama-server with the bundled SmolLM2-135M, one slot, "
             f"a {results['window']:,}-token window (nonstop's `context_window` the same), answers capped at "
             f"{results['max_output']} tokens{', extra llama-server arguments `' + ' '.join(results['llama_args']) + '`' if results['llama_args'] else ''}. Every turn's attribution line carries a new `cch` and turn index, as "
             "the cloud-bound request's does; the last row is a second session's first request. "
             "`python benchmarks/prompt_cache.py` (see its docstring).", ""]
    on, off = results["modes"]["on"], results["modes"]["off"]
    rows = []
    for a, b in zip(on, off, strict=True):
        rows.append([a["what"], f"{_num(a['prompt'])} / {_num(b['prompt'])}", f"{_num(a['processed'])} / {_num(b['processed'])}",
                     f"{_num(_reused(a))} / {_num(_reused(b))}", f"{_f(a['first_token_s'])} / {_f(b['first_token_s'])}",
                     f"{_f(a['total_s'])} / {_f(b['total_s'])}"])
    lines += report._table(["request", "prompt (tokens), on / off", "processed, on / off", "reused from the cache, on / off",
                            "first token (s), on / off", "total (s), on / off"], rows)
    later = [(a, b) for a, b in zip(on[1:len(FOLLOW_UPS) + 1], off[1:len(FOLLOW_UPS) + 1], strict=True)]
    ttft_on = [a["first_token_s"] for a, _ in later if a["first_token_s"] is not None]
    ttft_off = [b["first_token_s"] for _, b in later if b["first_token_s"] is not None]
    if ttft_on and ttft_off:
        lines += ["", f"Turns 2-{len(FOLLOW_UPS) + 1}, median time to the first token: {_f(harness.median(ttft_on))} s "
                      f"with the normalisation, {_f(harness.median(ttft_off))} s without."]
    lines += ["", "*prompt*: the whole prompt llama-server held for the request; *processed*: the tokens it computed "
                  "(its log's `prompt eval`); *reused*: the difference, taken from its prompt cache. *on*: nonstop as "
                  "shipped; *off*: the same nonstop with wire/prompt_cache.py skipped.", ""]
    return "\n".join(lines)


def _reused(row: dict[str, Any]) -> int | None:
    return None if row["prompt"] is None or row["processed"] is None else row["prompt"] - row["processed"]


def _num(v: int | None) -> str:
    return "—" if v is None else f"{v:,}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", type=int, default=4096, help="llama-server's window and nonstop's context_window")
    p.add_argument("--max-output", type=int, default=32, help="the [[local]] entry's max_output_tokens")
    p.add_argument("--llama-arg", action="append", default=[], help="an extra llama-server argument (repeatable)")
    p.add_argument("--label", default="", help="added to the results file's name")
    p.add_argument("--out-dir", help="where to write the results (default benchmarks/results)")
    args = p.parse_args()
    started = dt.datetime.now()
    first, source = first_request()
    modes: dict[str, list[dict[str, Any]]] = {}
    with procs.start_fake_cloud() as cloud:
        procs.set_mode(cloud, "subscription_limit", reset_in=3600)
        for mode in ("on", "off"):
            print(f"normalisation {mode}:", flush=True)
            modes[mode] = run_mode(mode, first, args.window, args.max_output, cloud, args.llama_arg)
    results = {"date": started.date().isoformat(), "label": args.label, "machine": harness.machine(), "source": source,
               "window": args.window, "max_output": args.max_output, "llama_args": args.llama_arg, "modes": modes,
               "started": started.strftime("%H:%M"), "finished": dt.datetime.now().strftime("%H:%M")}
    report.write_results(args.out_dir, "prompt-cache", results, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
