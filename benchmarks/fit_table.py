"""How Claude Code's requests fit 4k to 128k local windows, tier by tier.

For (a) Claude Code's real first request (default system prompt and tools, a CLAUDE.md)
and (b) a 10-turn session built on it (reads of this repository's files, searches,
edits and test runs, each a tool_use and its tool_result), fitted into each window with
`nonstop.routing.fit.fit_request` (output room: OUTPUT_ROOM tokens), prints and writes
results/<date>-fit.md: the tokens after each tier that ran, whether the request fits
with and without dropping old turns, the floor, the smallest window, and how long
fitting takes.

The requests are captured live from the Claude Code CLI (tests/support/capture.py) and
never written down. Tokens are counted by a real llama-server (/v1/messages/count_tokens,
the bundled SmolLM2 tokenizer) when the local model stack is installed, else by
nonstop's estimate; the results say which. The bundled model's own chat template leaves
tools out of the prompt, so the server runs with TOOLS_TEMPLATE, a ChatML template that
renders tools as JSON in the system turn the way Qwen2.5's does, as tool-calling models
do. Run: `python benchmarks/fit_table.py` (or `--estimate` to skip the server).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from nonstop.routing.fit import TIERS, deferred_tool_names, fit_floor, fit_request  # noqa: E402
from nonstop.wire.anthropic import estimate_tokens, to_local_request  # noqa: E402
from nonstop.wire.prompt_cache import normalize_for_prompt_cache  # noqa: E402
from tests.support import rawhttp  # noqa: E402
from tests.support.capture import capture_requests, claude_cli  # noqa: E402

WINDOWS = (4096, 8192, 16384, 32768, 65536, 131072)
OUTPUT_ROOM = 1024
Count = Callable[[dict[str, Any]], int]

TOOLS_TEMPLATE = """\
{%- if tools %}{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- elif messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == "assistant" %}{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}{{- '<|im_end|>\\n' }}
{%- elif message.role == "tool" %}
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

# --- the requests ---------------------------------------------------------------------------------


def _numbered(path: str, first: int, last: int) -> str:
    """A file as Claude Code's Read tool returns it: numbered lines."""
    try:
        lines = (ROOT / path).read_text().splitlines()[first - 1:last]
    except OSError:
        lines = [f"# {path} line {i}" for i in range(first, last + 1)]
    return "\n".join(f"{first + i:>6}\t{line}" for i, line in enumerate(lines))


def _grep(needle: str, folder: str = "src") -> str:
    hits = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if needle in line:
                hits.append(f"{path.relative_to(ROOT)}:{n}:{line}")
    return "\n".join(hits[:60])


def _pytest(failed: bool) -> str:
    lines = ["============================= test session starts ==============================",
             "platform linux -- Python 3.11.7, pytest-8.3.3, pluggy-1.5.0",
             "rootdir: /work/proj", "configfile: pyproject.toml", "collected 412 items", ""]
    lines += [f"tests/unit/routing/test_{name}.py " + "." * 40 + f" [{pct:>3}%]"
              for name, pct in (("classify", 10), ("facts", 25), ("fit", 50), ("forecast", 60), ("plan", 90), ("quota", 100))]
    if failed:
        lines += ["", "=================================== FAILURES ===================================",
                  "___________________ test_context_windows[size2-expected2-fit2] ___________________", "",
                  "    def test_context_windows(size, expected, fit):", "        p = plan(facts_of(size), view(), POLICY)",
                  ">       assert [s.target for s in p.steps] == expected",
                  "E       AssertionError: assert ['small', 'big'] == ['big', 'small']", "",
                  "tests/unit/routing/test_plan.py:217: AssertionError",
                  "=========================== short test summary info ============================",
                  "FAILED tests/unit/routing/test_plan.py::test_context_windows[size2-expected2-fit2]",
                  "========================= 1 failed, 411 passed in 9.81s ========================="]
    else:
        lines += ["", "============================= 412 passed in 9.64s =============================="]
    return "\n".join(lines)


def _turns() -> list[tuple[str, str, dict[str, Any], str]]:
    """(what the assistant says, tool, input, result) for ten realistic steps."""
    plan, facts = "src/nonstop/routing/plan.py", "src/nonstop/routing/facts.py"
    return [
        ("Let me look at the repository first.", "Bash", {"command": "git status && git log --oneline -5", "description": "Show status"},
         "On branch main\nnothing to commit, working tree clean\n" + "\n".join(f"{i:07x} A change to the planner, part {i}" for i in range(5))),
        ("I'll read the planner.", "Read", {"file_path": f"/work/proj/{plan}"}, _numbered(plan, 1, 250)),
        ("Where is the context rule used?", "Bash", {"command": "grep -rn context_rule src", "description": "Find uses"}, _grep("context_rule")),
        ("Now the request facts.", "Read", {"file_path": f"/work/proj/{facts}"}, _numbered(facts, 1, 200)),
        ("And the planner's tests.", "Read", {"file_path": "/work/proj/tests/unit/routing/test_plan.py"},
         _numbered("tests/unit/routing/test_plan.py", 190, 330)),
        ("I'll make the window check use the fitted size.", "Edit",
         {"file_path": f"/work/proj/{plan}", "old_string": "if size.floor <= usable:", "new_string": "if size.floor <= usable and size.known:"},
         f"The file /work/proj/{plan} has been updated successfully."),
        ("Running the tests.", "Bash", {"command": "pytest -q tests/unit/routing", "description": "Run routing tests"}, _pytest(True)),
        ("The order changed; let me check the backend's size check.", "Read", {"file_path": "/work/proj/src/nonstop/backends/local.py"},
         _numbered("src/nonstop/backends/local.py", 95, 260)),
        ("Fixing the ordering.", "Edit",
         {"file_path": f"/work/proj/{plan}", "old_string": "return (down, self.fit, self.b.busy, self.index)",
          "new_string": "return (down, self.fit, self.index, self.b.busy)"},
         f"The file /work/proj/{plan} has been updated successfully."),
        ("Running the tests again.", "Bash", {"command": "pytest -q tests/unit/routing", "description": "Run routing tests"}, _pytest(False)),
    ]


def session(first: dict[str, Any]) -> dict[str, Any]:
    """The captured first request followed by ten tool calls and their results."""
    messages = list(first["messages"])
    for i, (say, tool, args, result) in enumerate(_turns()):
        tid = f"toolu_bench{i:02d}"
        messages.append({"role": "assistant", "content": [{"type": "text", "text": say},
                                                          {"type": "tool_use", "id": tid, "name": tool, "input": args}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": result}]})
    return {**first, "messages": messages}


# --- counting ---------------------------------------------------------------------------------------


@contextmanager
def counter(use_server: bool) -> Iterator[tuple[Count, str]]:
    """A token counter and a sentence saying what it is."""
    if use_server:
        from tests.integration.llama import llama_available, start_llama_server

        if llama_available():
            folder = Path(tempfile.mkdtemp(prefix="fit-table-"))
            template = folder / "tools.jinja"
            template.write_text(TOOLS_TEMPLATE)
            with start_llama_server(ctx=2048, parallel=1, log_dir=folder,
                                    extra_args=["--chat-template-file", str(template)]) as server:

                def count(req: dict[str, Any]) -> int:
                    body = {k: v for k, v in req.items() if k not in ("stream", "max_tokens")}
                    status, _, raw = rawhttp.request("POST", server.url + "/v1/messages/count_tokens", body, timeout=60)
                    if status != 200:
                        raise RuntimeError(f"count_tokens answered {status}: {raw[:300]!r}")
                    return int(orjson.loads(raw)["input_tokens"])

                yield count, ("a real llama-server's /v1/messages/count_tokens (the bundled SmolLM2-135M's tokenizer; "
                              "tools rendered as JSON in the system turn by a Qwen2.5-style ChatML template)")
                return
    yield estimate_tokens, "nonstop's estimate (`wire.anthropic.estimate_tokens`): llama-server was not used"


# --- the table ----------------------------------------------------------------------------------


def fit_rows(name: str, req: dict[str, Any], deferred: frozenset[str], count: Count) -> tuple[list[list[str]], dict[str, Any]]:
    size = count(req)
    rows = []
    smallest: dict[bool, int | None] = {False: None, True: None}
    for window in WINDOWS:
        budget = window - OUTPUT_ROOM
        kept = None
        for drop in (False, True):
            f = fit_request(req, budget, count, drop_turns=drop, deferred=deferred)
            if f.fits and smallest[drop] is None:
                smallest[drop] = window
            if drop and kept is not None and orjson.dumps(f.request) == orjson.dumps(kept):
                continue  # no turn was dropped: the same as the row above
            kept = f.request
            after = {t.tier: t.after for t in f.tiers}
            rows.append([name, _k(window), "yes" if drop else "no", f"{size:,}",
                         *(f"{after[t]:,}" if t in after else "—" for t in TIERS),
                         f"{f.tokens:,}", "**yes**" if f.fits else "no", f"{len(f.request.get('tools') or [])}"])
    floors = {drop: fit_floor(req, count, drop_turns=drop, deferred=deferred) for drop in (False, True)}
    return rows, {"name": name, "size": size, "smallest": smallest, "floors": floors}


def timing(req: dict[str, Any], deferred: frozenset[str]) -> tuple[float, float]:
    """Median ms of fit_floor, and of fit_request into an 8k window, with the estimate."""

    def median_ms(fn: Callable[[], object], runs: int = 15) -> float:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    return (median_ms(lambda: fit_floor(req, estimate_tokens, drop_turns=True, deferred=deferred)),
            median_ms(lambda: fit_request(req, 8192 - OUTPUT_ROOM, estimate_tokens, drop_turns=True, deferred=deferred)))


def _k(tokens: int) -> str:
    return f"{tokens // 1024}k"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def render(rows: list[list[str]], summaries: list[dict[str, Any]], times: dict[str, tuple[float, float]],
           how: str, version: str) -> str:
    lines = [f"# Fitting Claude Code's requests into local windows, {time.strftime('%Y-%m-%d')}", "",
             f"Claude Code {version}, default system prompt and tools, a short CLAUDE.md. Tokens counted with {how}. "
             f"Each window keeps {OUTPUT_ROOM} tokens for the answer. Machine: {platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}.", "",
             "## Tokens after each tier", "",
             "A dash: the tier was not needed (fitting stops at the first tier that fits). *drop turns*: whether "
             "old turns may go (nonstop allows it only after the client was told \"prompt is too long\" and came back "
             "still too long); the row is left out when it would repeat the one above. *minimum*: every tier again at "
             "its strongest.", ""]
    lines += _table(["request", "window", "drop turns", "as sent", *TIERS, "fitted", "fits", "tools left"], rows)
    lines += ["## Smallest window", ""]
    lines += _table(["request", "as sent", "floor", "floor, turns dropped", "smallest window", "smallest, turns dropped"], [
        [s["name"], f"{s['size']:,}", f"{s['floors'][False]:,}", f"{s['floors'][True]:,}",
         _k(s["smallest"][False]) if s["smallest"][False] else "none", _k(s["smallest"][True]) if s["smallest"][True] else "none"]
        for s in summaries
    ])
    lines += ["## Time to fit (nonstop's estimate as the counter, median of 15)", ""]
    lines += _table(["request", "fit_floor", "fit_request into 8k, turns dropped"],
                    [[name, f"{a:.1f} ms", f"{b:.1f} ms"] for name, (a, b) in times.items()])
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--estimate", action="store_true", help="count with nonstop's estimate, not llama-server")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args()
    cli = claude_cli()
    if cli is None:
        sys.exit("the Claude Code CLI is missing: `make test-deps` installs it")
    import subprocess

    version = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=60).stdout.split(" ")[0].strip()
    bodies = [b for b in capture_requests(["List the files here"]) if b.get("tools")]
    first = bodies[0]
    deferred = deferred_tool_names(first)
    requests = {"first request": first, "10-turn session": session(first)}
    local = {name: normalize_for_prompt_cache(to_local_request(r, model="local", max_tokens=OUTPUT_ROOM)) for name, r in requests.items()}
    rows: list[list[str]] = []
    summaries = []
    with counter(not args.estimate) as (count, how):
        for name, req in local.items():
            r, s = fit_rows(name, req, deferred, count)
            rows += r
            summaries.append(s)
    times = {name: timing(req, deferred) for name, req in local.items()}
    md = render(rows, summaries, times, how, version)
    print(md)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y-%m-%d')}-fit.md"
    path.write_text(md + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
