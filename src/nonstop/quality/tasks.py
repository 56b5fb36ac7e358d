"""The eval suite: Claude Code-shaped tasks, each one Messages request and a mechanical
description of a right answer. Pure: data in, data out; the long-context filler is
generated deterministically.

Every task offers Claude Code's core tools (Read, Edit, Write, Bash, Grep, Glob, with
schemas and descriptions shaped like the CLI's) under a short Claude Code-like system
prompt, so that a local model sees what it would see in a session:

    tool_choice   a request that one tool answers ("read src/app.py", "run the tests")
    tool_loop     a conversation ending in a tool_result: the next call, or an answer
                  that repeats what the result said
    stop          a question no tool is needed for: a short answer and end_turn
    format        an exact-format answer: a number, a path, a JSON object, a word
    long_context  a fact placed deep in a prompt that fills most of the window

`suite(quick)` is the list without the long-context task, which `long_context_task()`
builds for a given size once the window is known.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# Bumped when tasks change, so scores from different suites are not compared as equals.
SUITE_VERSION = "1"
CATEGORIES = ("tool_choice", "tool_input", "tool_loop", "stop", "format", "long_context")
CATEGORY_NAMES = {
    "tool_choice": "tool choice", "tool_input": "tool input", "tool_loop": "tool loop",
    "stop": "stop", "format": "format", "long_context": "long context",
}
CLIENT_MODEL = "claude-sonnet-4-5"
MAX_TOKENS = 1024
CWD = "/home/dev/shop"
# Where the long-context fact sits, as a share of the filler.
FACT_DEPTH = 0.6
# The prompt fills this share of the window: most of it, with room left for fitting's
# margins and the answer.
LONG_CONTEXT_SHARE = 0.7

SYSTEM = f"""You are Claude Code, Anthropic's official CLI for Claude.
You are an interactive CLI tool that helps users with software engineering tasks. Use the instructions below and the tools available to you to assist the user.

# Doing tasks
- Use the tools to read files, search the code and run commands; never guess what a file contains.
- Prefer the dedicated tools: Read to read a file, Edit to change one, Write to create one, Grep to search file contents, Glob to find files by name. Use Bash only for commands such as tests, git and builds.
- Keep answers short. When the user asks for a specific format, reply in exactly that format and nothing else.

# Project notes
- Python 3.11 web shop; the code is under src/, the tests under tests/.
- Run the tests with `pytest -q`.

<env>
Working directory: {CWD}
Is directory a git repo: Yes
Platform: linux
</env>"""

# The tool definitions as Claude Code sends them: data, kept in a JSON file beside this module.
TOOLS: list[dict[str, Any]] = json.loads(
    resources.files("nonstop.quality").joinpath("claude_code_tools.json").read_text(encoding="utf-8"))
TOOL_SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}


@dataclass(frozen=True)
class CallSpec:
    """A right tool call: one of `tools`, and for each (argument, needles) pair the
    argument's value contains one of the needles (case-insensitive)."""

    tools: tuple[str, ...]
    args: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class AnswerSpec:
    """A right text answer. kind "exact": the text, stripped, is `value`; "contains":
    the text contains one of `value` (a tuple, case-insensitive); "json": the text is
    a JSON object equal to `value`."""

    kind: str
    value: Any


@dataclass(frozen=True)
class Task:
    id: str
    category: str
    messages: list[dict[str, Any]]
    # What ends a right answer: "tool_use", "end_turn", or "either" (a loop's next step
    # may be a call or the final answer).
    stop: str
    call: CallSpec | None = None
    answer: AnswerSpec | None = None
    quick: bool = False
    max_tokens: int = MAX_TOKENS
    note: str = ""  # for people reading a scorecard: what the task asks
    meta: dict[str, Any] = field(default_factory=dict)

    def request(self, model: str = CLIENT_MODEL) -> dict[str, Any]:
        """The Messages request, as Claude Code would send it."""
        return {
            "model": model, "max_tokens": self.max_tokens, "stream": True,
            "system": [{"type": "text", "text": SYSTEM}],
            "tools": TOOLS, "messages": self.messages,
        }


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _called(tool_id: str, name: str, args: dict[str, Any], text: str = "") -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content.append({"type": "tool_use", "id": tool_id, "name": name, "input": args})
    return {"role": "assistant", "content": content}


def _result(tool_id: str, output: str, *, error: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id, "content": output}
    if error:
        block["is_error"] = True
    return {"role": "user", "content": [block]}


def _p(rel: str) -> str:
    return f"{CWD}/{rel}"


_CONFIG_PY = "\n".join(f"{i:>6}\t{line}" for i, line in enumerate([
    "\"\"\"Settings read at start-up.\"\"\"", "", "import os", "",
    "DEFAULT_TIMEOUT = 30", "MAX_RETRIES = 3",
    "DATABASE_URL = os.environ.get(\"DATABASE_URL\", \"sqlite:///shop.db\")", "",
], start=1))


def _choice_tasks() -> list[Task]:
    def choice(tid: str, text: str, call: CallSpec, *, quick: bool = False, before: list[dict[str, Any]] | None = None) -> Task:
        return Task(tid, "tool_choice", [*(before or []), _user(text)], "tool_use", call=call, quick=quick, note=text)

    read_first = [
        _user("Open src/config.py."),
        _called("toolu_01EvalRdCfg0000000000001", "Read", {"file_path": _p("src/config.py")}),
        _result("toolu_01EvalRdCfg0000000000001", _CONFIG_PY),
        {"role": "assistant", "content": [{"type": "text", "text": "That is src/config.py: a few settings read at start-up."}]},
    ]
    return [
        choice("choice.read", "Read src/app.py and tell me what it does.",
               CallSpec(("Read",), (("file_path", ("src/app.py",)),)), quick=True),
        choice("choice.bash_tests", "Run the tests.",
               CallSpec(("Bash",), (("command", ("pytest",)),)), quick=True),
        choice("choice.grep", "Find where the function parse_invoice is defined.",
               CallSpec(("Grep",), (("pattern", ("parse_invoice",)),)), quick=True),
        choice("choice.glob", "List all the YAML files under config/.",
               CallSpec(("Glob",), (("pattern", (".yaml", ".yml", "yaml", "yml")),))),
        choice("choice.edit", "In src/config.py, change DEFAULT_TIMEOUT from 30 to 60.",
               CallSpec(("Edit",), (("file_path", ("src/config.py",)), ("old_string", ("DEFAULT_TIMEOUT",)),
                                    ("new_string", ("60",)))), before=read_first),
        choice("choice.write", "Create a new file notes/todo.md that contains the single line: - ship v2",
               CallSpec(("Write",), (("file_path", ("notes/todo.md",)), ("content", ("ship v2",))))),
        choice("choice.git", "Which git branch am I on?",
               CallSpec(("Bash",), (("command", ("git",)),))),
        choice("choice.read_range", "Show me lines 40 to 60 of src/server.py.",
               CallSpec(("Read",), (("file_path", ("src/server.py",)),))),
    ]


def _loop_tasks() -> list[Task]:
    def loop(tid: str, ask: str, name: str, args: dict[str, Any], output: str, *, call: CallSpec | None = None,
             answer: AnswerSpec | None = None, quick: bool = False, error: bool = False) -> Task:
        tool_id = f"toolu_01EvalLoop{tid.split('.')[-1].title().replace('_', '')}".ljust(30, "0")[:30]
        messages = [_user(ask), _called(tool_id, name, args), _result(tool_id, output, error=error)]
        return Task(tid, "tool_loop", messages, "either", call=call, answer=answer, quick=quick, note=ask)

    return [
        loop("loop.version", "Which version of requests does requirements.txt pin?", "Read",
             {"file_path": _p("requirements.txt")},
             "     1\tflask==3.0.2\n     2\trequests==2.31.7\n     3\tgunicorn==22.0.0\n",
             answer=AnswerSpec("contains", ("2.31.7",)), quick=True),
        loop("loop.failures", "Run the tests and tell me how many failed.", "Bash", {"command": "pytest -q"},
             "........F....F...\n===== short test summary info =====\nFAILED tests/test_cart.py::test_total\n"
             "FAILED tests/test_cart.py::test_discount\n===== 17 failed, 230 passed in 4.21s =====",
             answer=AnswerSpec("contains", ("17",)), quick=True),
        loop("loop.next_read", "Find where parse_invoice is defined and show me its signature.", "Grep",
             {"pattern": "def parse_invoice", "output_mode": "files_with_matches"},
             "Found 1 file\n" + _p("src/billing/invoice.py"),
             call=CallSpec(("Read", "Grep", "Bash"), (("*", ("billing/invoice.py", "parse_invoice")),)),
             answer=AnswerSpec("contains", ("billing/invoice.py",))),
        loop("loop.port", "What is the default PORT in .env.example?", "Read", {"file_path": _p(".env.example")},
             "     1\t# copy to .env\n     2\tPORT=8437\n     3\tDEBUG=false\n",
             answer=AnswerSpec("contains", ("8437",))),
    ]


def _stop_tasks() -> list[Task]:
    text = "In one sentence, what does HTTP status 404 mean? No need to look at any files."
    return [Task("stop.no_tool", "stop", [_user(text)], "end_turn",
                 answer=AnswerSpec("contains", ("not found", "not be found", "doesn't exist", "does not exist")),
                 quick=True, note=text)]


def _format_tasks() -> list[Task]:
    def fmt(tid: str, text: str, answer: AnswerSpec, *, quick: bool = False) -> Task:
        return Task(tid, "format", [_user(text)], "end_turn", answer=answer, quick=quick, max_tokens=256, note=text)

    listing = "src/shop/__init__.py\nsrc/shop/cart.py\nsrc/web/app.py  (creates the Flask app)\nsrc/web/views.py\ntests/test_cart.py"
    return [
        fmt("format.number", "What is 17 + 25? Reply with the number only, nothing else.",
            AnswerSpec("exact", "42"), quick=True),
        fmt("format.path", f"These are the project's files:\n{listing}\n\nWhich file creates the Flask app? "
                           "Reply with its path only, exactly as listed, nothing else.",
            AnswerSpec("exact", "src/web/app.py")),
        fmt("format.json", "Reply with a JSON object only (no code fence, no other text) with the keys \"name\" "
                           "(a string) and \"port\" (an integer) for this service: the web service listens on port 8080, "
                           "its name is web.",
            AnswerSpec("json", {"name": "web", "port": 8080}), quick=True),
        fmt("format.word", "Reply with exactly the word READY and nothing else.", AnswerSpec("exact", "READY")),
    ]


def suite(quick: bool = False) -> list[Task]:
    """The tasks, without the long-context one; `quick` keeps the few marked quick."""
    tasks = [*_choice_tasks(), *_loop_tasks(), *_stop_tasks(), *_format_tasks()]
    return [t for t in tasks if t.quick] if quick else tasks


# --- the long-context task -----------------------------------------------------------------------

_FACT_KEY = "RELEASE_CODENAME"
_WORDS = ("order", "cart", "price", "total", "user", "item", "stock", "tax", "discount", "invoice", "payment",
          "refund", "session", "token", "address", "shipping", "coupon", "catalog", "review", "rating")


def _filler_file(rng: random.Random, n: int) -> str:
    """One made-up module of the shop: a few small functions."""
    a, b = rng.choice(_WORDS), rng.choice(_WORDS)
    lines = [f"# src/shop/{a}_{b}_{n}.py", f"\"\"\"Helpers for {a} and {b} handling.\"\"\"", ""]
    for k in range(rng.randint(2, 4)):
        x, y = rng.choice(_WORDS), rng.choice(_WORDS)
        limit = rng.randint(2, 500)
        lines += [
            f"def {x}_{y}_{k}({x}: dict, {y}: int = {limit}) -> int:",
            f"    \"\"\"Return the {y} for a {x}, at most {limit}.\"\"\"",
            f"    value = {x}.get(\"{y}\", 0) * {rng.randint(2, 9)}",
            f"    return min(value, {y})",
            "",
        ]
    return "\n".join(lines) + "\n"


def _fact_file(value: str) -> str:
    return (f"# src/settings/release.py\n\"\"\"Release settings.\"\"\"\n\n{_FACT_KEY} = \"{value}\"\n"
            "RELEASE_CHANNEL = \"stable\"\n\n")


def long_context_task(files: int, *, seed: int = 7) -> Task:
    """A prompt of `files` made-up source files (a few hundred characters each), with
    one setting planted FACT_DEPTH of the way in, and a question about it at the end.
    The runner picks `files` so that the prompt fills most of the window."""
    rng = random.Random(seed)
    value = f"{rng.choice(('kestrel', 'osprey', 'merlin', 'harrier'))}-{rng.randint(1000, 9999)}"
    made = [_filler_file(rng, n) for n in range(max(0, files))]
    at = int(len(made) * FACT_DEPTH)
    text = ("Here is the source of the shop, file by file. Read it, then answer the question at the end.\n\n"
            + "".join(made[:at]) + _fact_file(value) + "".join(made[at:])
            + f"\n\nIn the files above, what is the value of {_FACT_KEY} in src/settings/release.py? "
              "Reply with the value only.")
    return Task("long.fact", "long_context", [_user(text)], "end_turn", answer=AnswerSpec("contains", (value,)),
                max_tokens=256, note=f"find {_FACT_KEY} deep in a long prompt", meta={"value": value, "files": files})
