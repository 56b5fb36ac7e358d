"""How long the out-of-box command takes to answer from the bundled model, cold.

    python benchmarks/first_answer.py                      3 cold runs of the defaults
    python benchmarks/first_answer.py --runs 3 \\
        --variant "8k window: context_window=8192 max_output_tokens=1024" --variant defaults

Each run is what a new user sees the first time the cloud is out: nothing running, a
fresh state directory, no configuration of the local side, and

    nonstop claude -p "Reply with the word pong."

so nonstop starts in the background, starts its embedded llama-server with the bundled
SmolLM2-135M, and Claude Code (its default model, system prompt and tools) sends its
request, which the fake cloud (tests/support/fake_cloud.py, subscription-limit mode)
refuses. The only configuration is what points nonstop away from the real world: its
listen port, the fake cloud's address, and a discovery port where nothing listens, so
that no other local server on this machine is used.

A variant is a name, then `KEY=VALUE` items added to [embedded] (numbers, strings,
`true`/`false`, JSON lists of strings). Without `--variant`, the defaults alone. Runs go
round by round through the variants, so that the rest of the machine's load falls on
all of them alike.

Claude Code runs with `--output-format stream-json --verbose --include-partial-messages`
so the time of its first text delta can be read; everything is timed from the moment
the command starts. The request log and the embedded server's log give the prompt and
answer sizes and llama-server's own speeds. Writes results/<date>-first-answer[-label].md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import harness  # noqa: E402
import report  # noqa: E402

from tests.support import procs, rawhttp  # noqa: E402
from tests.support.capture import claude_cli  # noqa: E402
from tests.support.config import nonstop_config  # noqa: E402
from tests.support.llama_log import llama_tasks  # noqa: E402

PROMPT = "Reply with the word pong."
RUN_TIMEOUT = 600.0


@dataclass
class Variant:
    name: str
    embedded: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, _, rest = spec.partition(":")
        variant = cls(name.strip())
        for item in rest.split():
            key, _, value = item.partition("=")
            variant.embedded[key] = _value(value)
        return variant

    def describe(self) -> str:
        parts = [f"`{k} = {json.dumps(v)}`" for k, v in self.embedded.items()]
        return ", ".join(parts) or "the defaults"


def _value(text: str) -> Any:
    """A value as TOML would read it: numbers, booleans, lists of strings, else a string."""
    if text in ("true", "false"):
        return text == "true"
    with contextlib.suppress(ValueError):
        return int(text)
    with contextlib.suppress(ValueError):
        return float(text)
    if text.startswith("["):
        return json.loads(text)
    return text


def one_run(cloud_url: str, variant: Variant, cli: str) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="nonstop-first-answer-"))
    state, home, project = folder / "state", folder / "home", folder / "project"
    project.mkdir(parents=True)
    port = procs.free_port()
    text = nonstop_config(cloud_url, listen=f"127.0.0.1:{port}", state_dir=state, embedded=None,
                          discovery={"ports": [procs.free_port()]})
    if variant.embedded:  # JSON's numbers, strings, booleans and lists of strings are TOML too
        text += "[embedded]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in variant.embedded.items())
    config = procs.write_config(folder, text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "NONSTOP_"))}
    home.mkdir()
    env.update({
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "ANTHROPIC_API_KEY": procs.PLANTED_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "API_TIMEOUT_MS": "600000",
        "PATH": f"{Path(cli).parent}{os.pathsep}{env.get('PATH', '')}", "NONSTOP_STATE_DIR": str(state),
    })
    argv = [sys.executable, "-m", "nonstop", "claude", "--config", str(config), "-p", PROMPT,
            "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
    out: dict[str, Any] = {"ready_s": None, "first_token_s": None, "result": None}
    busy0 = harness.machine_busy_seconds()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if out["ready_s"] is None and "ready at" in line:
                out["ready_s"] = time.monotonic() - t0

    errs = threading.Thread(target=read_err, daemon=True)
    errs.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            inner = event.get("event") if event.get("type") == "stream_event" else None
            if (out["first_token_s"] is None and isinstance(inner, dict) and inner.get("type") == "content_block_delta"
                    and inner.get("delta", {}).get("type") == "text_delta"):
                out["first_token_s"] = time.monotonic() - t0
            if event.get("type") == "result":
                out["result"] = event
    proc.wait(RUN_TIMEOUT)
    out["total_s"] = time.monotonic() - t0
    out["busy_cores"] = (harness.machine_busy_seconds() - busy0) / out["total_s"]
    out["exit"] = proc.returncode
    errs.join(5)
    url = f"http://127.0.0.1:{port}"
    out["rows"] = []
    with contextlib.suppress(OSError, ValueError, KeyError):
        status, _, body = rawhttp.request("GET", url + "/_nonstop/api/requests?limit=50")
        rows = json.loads(body)["requests"] if status == 200 else []
        out["rows"] = [r for r in rows if r.get("path") == "/v1/messages"]
        stop(int(json.loads(rawhttp.request("GET", url + "/health")[2])["pid"]))
    log = state / "embedded-llama.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    out["llama_argv"] = next((line.split(" ", 3)[3] for line in text.splitlines() if line.startswith("--- ")), "")
    out["tasks"] = llama_tasks(text)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def stop(pid: int) -> None:
    """End the background nonstop (its llama-server goes with it)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while procs.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if procs.pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """One run's row: times, the main request's sizes, llama-server's own speeds."""
    result = run.get("result") or {}
    local = [r for r in run["rows"] if r.get("backend") == "embedded"]
    fit = (local[0].get("notes") or {}).get("fit") if local else None
    tasks = run["tasks"]
    prompt_ms = sum(t.prompt_ms for t in tasks)
    eval_ms = sum(t.eval_ms for t in tasks)
    answered = run["exit"] == 0 and result.get("is_error") is False
    return {
        "ready_s": run["ready_s"], "first_token_s": run["first_token_s"], "total_s": run["total_s"],
        "answered": answered, "requests": len(run["rows"]), "local_requests": len(local),
        "prompt_tokens": sum(t.prompt_tokens for t in tasks), "output_tokens": sum(t.output_tokens for t in tasks),
        "prompt_tps": sum(t.prompt_tokens for t in tasks) / prompt_ms * 1000 if prompt_ms else None,
        "output_tps": sum(t.output_tokens for t in tasks) / eval_ms * 1000 if eval_ms else None,
        "fitted": " → ".join(t["tier"] for t in fit) if fit else "",
        "stop_reason": local[0].get("stop_reason", "") if local else "", "busy_cores": run["busy_cores"],
        # Not the answer itself: a small model often repeats its prompt, Claude Code's own text.
        "answer": f"{len(str(result.get('result', '')))} characters" if answered
        else str(result.get("result") or run["rows"][:1])[:160],
        "llama_argv": run["llama_argv"],
    }


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r["answered"] and r[key] is not None]
    return harness.median(values) if values else None


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    variants = results["variants"]
    label = f" ({results['label']})" if results["label"] else ""
    lines = [f"# First answer out of the box, {results['date']}{label}", "",
             f"{report.machine_line(m)}. Claude Code {results['claude_version']}. "
             f"Run {results['started']} to {results['finished']}.", "",
             f"`nonstop claude -p \"{PROMPT}\"`, cold, {results['runs']} times per variant, the variants taking turns: "
             "nothing running, a fresh state directory, the fake cloud refusing (subscription limit), so the embedded "
             "llama-server with the bundled model answers. Times are from the moment the command starts. "
             "`python benchmarks/first_answer.py` (see its docstring).", ""]
    rows = [[f"**{v['name']}**", v["describe"], f"{sum(r['answered'] for r in v['runs'])} / {len(v['runs'])}",
             _f(_median(v["runs"], "first_token_s")), _f(_median(v["runs"], "total_s")),
             _f(_median(v["runs"], "prompt_tokens"), 0)] for v in variants]
    lines += report._table(["variant", "settings", "answered", "first token, median (s)", "total, median (s)",
                            "prompt tokens"], rows)
    for v in variants:
        lines += ["", f"## {v['name']}", "", f"llama-server ran as: `{v['runs'][0]['llama_argv'] or '(not started)'}`", ""]
        rows = []
        for i, s in enumerate(v["runs"], start=1):
            rows.append([str(i), _f(s["ready_s"]), _f(s["first_token_s"]), _f(s["total_s"]),
                         "yes" if s["answered"] else "**no**", f"{s['local_requests']} / {s['requests']}",
                         f"{s['prompt_tokens']:,}", _f(s["prompt_tps"], 0), f"{s['output_tokens']:,}",
                         _f(s["output_tps"], 0), s["stop_reason"] or "—", s["fitted"] or "—", _f(s["busy_cores"], 2)])
        lines += report._table(["run", "gateway ready (s)", "first token (s)", "total (s)", "answered",
                                "local / all requests", "prompt tokens", "prompt tokens/s", "output tokens",
                                "output tokens/s", "stop", "fitting tiers", "cores busy"], rows)
        lines += ["", "Answers: " + "; ".join(s["answer"] for s in v["runs"])]
    lines += ["", "*gateway ready*: `nonstop claude` saw the background gateway (and its llama-server) answer; "
                  "*prompt tokens*, *output tokens*: what llama-server processed and wrote, from its log, for all "
                  "requests of the run; *cores busy*: the whole machine's busy CPU time over the run's wall time "
                  "(2 would be every core, this run's work included).", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="runs per variant")
    p.add_argument("--variant", action="append", default=[], metavar="'NAME: KEY=VALUE ...'",
                   help="a set of settings to run (repeatable); see the docstring")
    p.add_argument("--label", default="", help="added to the results file's name")
    p.add_argument("--out-dir", help="where to write the results (default benchmarks/results)")
    args = p.parse_args()
    cli = claude_cli()
    if cli is None:
        print("the Claude Code CLI is missing; `make test-deps` installs it", file=sys.stderr)
        return 1
    variants = [Variant.parse(spec) for spec in args.variant] or [Variant("defaults")]
    version = subprocess.run([cli, "--version"], capture_output=True, text=True).stdout.split(" ")[0]
    started = dt.datetime.now()
    machine = harness.machine()
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    with procs.start_fake_cloud() as cloud:
        procs.set_mode(cloud, "subscription_limit", reset_in=3600)
        for n in range(args.runs):
            for v in variants:
                s = summary(one_run(cloud.url, v, cli))
                runs[v.name].append(s)
                print(f"round {n + 1}, {v.name}: ready {_f(s['ready_s'])} s, first token {_f(s['first_token_s'])} s, "
                      f"total {_f(s['total_s'])} s, prompt {s['prompt_tokens']} tokens, output {s['output_tokens']} "
                      f"tokens, answered: {s['answered']}", flush=True)
    results = {"date": started.date().isoformat(), "label": args.label, "machine": machine, "claude_version": version,
               "runs": args.runs, "variants": [{"name": v.name, "describe": v.describe(), "runs": runs[v.name]}
                                               for v in variants],
               "started": started.strftime("%H:%M"), "finished": dt.datetime.now().strftime("%H:%M")}
    report.write_results(args.out_dir, "first-answer", results, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
