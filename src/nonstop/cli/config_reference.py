"""docs/configuration.md: every configuration key, its default and what it does, written
from the same dataclasses and words as the file `nonstop init` writes, so the two agree.

    python -m nonstop.cli.config_reference > docs/configuration.md   (`make docs`)

A unit test (tests/unit/test_config_reference.py) fails when the file is not what this
writes, and when a key has no words.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from typing import Any

from nonstop.cli.init import SECTION_DOCS, TOP_DOCS, toml_value
from nonstop.config import SECTION_TYPES, Config, LocalBackendConfig
from nonstop.config.model import WORKLOAD_CLASSES, ClassRoutingConfig, UserConfig
from nonstop.config.sections import TABLE_KEYS

# The keys of a [routing.<class>] table and of a [[users]] table: not written by
# `nonstop init` key by key (it shows them in an example), so their words are here.
CLASS_DOCS: dict[str, str] = {
    "cloud": "\"first\": the cloud, then local backends when it cannot serve; \"fallback\": "
             "local backends first, the cloud only when none can serve; \"never\": local "
             "backends only.",
    "backends": "The local backends this kind of work may use, by name, in order (\"embedded\" "
                "names the bundled server); empty: every one, in config order (or as [routes] "
                "says).",
    "prefer": "Among the local backends: \"order\" (as listed, passing over a busy one), "
              "\"fastest\" (the one that will start answering first) or \"best\" (the highest "
              "eval score); empty: the class's own, \"order\" for main and subagent, \"fastest\" "
              "for compaction, background and count_tokens.",
}

USER_DOCS: dict[str, str] = {
    "name": "Who the token belongs to: the request log labels their requests with it.",
    "token": "Their access token, sent as x-nonstop-token: at least 12 ASCII characters, "
             "each user's their own.",
}

# Defaults that depend on the machine or on another key, in words.
_DEFAULT_WORDS: dict[str, str] = {
    "state_dir": "`$NONSTOP_STATE_DIR`, else `$XDG_STATE_HOME/nonstop`, else `~/.local/state/nonstop`",
    "token": "`$NONSTOP_TOKEN`, else none",
    "local.max_output_tokens": "a quarter of `context_window`, at most 4096",
    "local.name": "`local1`, `local2`, ... by position",
}


_INTRO = """\
# Configuration reference

<!-- Written by `make docs` (python -m nonstop.cli.config_reference) from the config
dataclasses and the words `nonstop init` writes; tests/unit/test_config_reference.py
fails when it falls behind. Edit those, not this file. -->

nonstop runs without a configuration file: the cloud at `https://api.anthropic.com`,
local servers found on this machine, else its embedded one. A file changes that.

- **Where.** `--config FILE` on any command, else the file `NONSTOP_CONFIG` names, else
  `$XDG_CONFIG_HOME/nonstop/config.toml` (`~/.config/nonstop/config.toml`). A file named by
  `--config` or `NONSTOP_CONFIG` must exist.
- **Writing one.** `nonstop init` writes every key below, set or commented out with its
  default and these words, prefilled with the local servers it finds.
- **Checking one.** `nonstop config check [FILE]` names each problem by its key and says
  the fix. An unknown key is an error, so a typo never falls back to a default silently;
  so is a value of the wrong type, a negative number, or a name that no `[[local]]`
  backend has.
- **Seeing the one in effect.** `nonstop config show [FILE]` prints every key as nonstop
  reads it (the file, the defaults and the environment together), with its secrets
  hidden: what to paste into a bug report.
- **Applying one.** The file is read when nonstop starts: restart `nonstop serve` after
  changing it.

Durations are in seconds and may be fractions (`0.5`); sizes are in bytes or tokens, as
each key says.
"""


def _default(section: str, f: Any) -> str:
    words = _DEFAULT_WORDS.get(f"{section}.{f.name}" if section else f.name)
    if words is not None:
        return words
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return "required"
    text = toml_value(list(value) if isinstance(value, tuple) else value)
    return f"`{text}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(section: str, cls: type, docs: dict[str, str], skip: frozenset[str] = frozenset()) -> list[str]:
    lines = ["| key | default | what it does |", "|---|---|---|"]
    for f in fields(cls):
        if f.name in skip:
            continue
        lines.append(f"| `{f.name}` | {_cell(_default(section, f))} | {_cell(docs[f.name])} |")
    return lines


def render() -> str:
    out = [_INTRO, "## Top level", "",
           "Keys at the top of the file, before any `[table]`.", ""]
    out += _table("", Config, TOP_DOCS, skip=TABLE_KEYS | {"source"})
    out += ["", "## `[cloud]`", "", "The Anthropic API, and how long nonstop waits for it.", ""]
    out += _table("cloud", SECTION_TYPES["cloud"], SECTION_DOCS["cloud"])
    out += ["", "## `[[local]]`", "",
            "One table per local model server, tried in file order when the cloud cannot serve "
            "(unless `[routes]` or `[routing.<class>]` say otherwise). `url` is required. While "
            "any `[[local]]` table is set, discovery does not run and the embedded server does "
            "not start (unless `[embedded] mode = \"always\"`).", "",
            "```toml", "[[local]]", 'name = "ollama"', 'url = "http://127.0.0.1:11434"',
            'model = "qwen3-coder:30b"', "context_window = 32768", "```", ""]
    out += _table("local", LocalBackendConfig, SECTION_DOCS["local"])
    out += ["", "## `[routes]`", "",
            "Which local backends serve which model names: a shell-style glob of the model the "
            "client asks for, and a backend name or a list of them, in order. The first glob "
            "that matches wins; a model no glob matches may use every backend. Each name must "
            "be a `[[local]]` backend's.", "",
            "```toml", "[routes]", '"claude-haiku-*" = "small"', '"*" = ["big", "small"]', "```"]
    out += ["", "## `[routing]`", "",
            "How the planner places each request ([routing.md](routing.md) explains the rules).", ""]
    out += _table("routing", SECTION_TYPES["routing"], SECTION_DOCS["routing"], skip=frozenset({"classes"}))
    out += ["", "### `[routing.<class>]`", "",
            "A table per kind of work: " + ", ".join(f"`{c}`" for c in WORKLOAD_CLASSES)
            + " ([routing.md](routing.md) says how nonstop tells them apart). A class without a table "
            "uses the cloud first, then every local backend (or those `[routes]` names), "
            "preferring as `prefer` says for it.", "",
            "```toml", "[routing.background]", 'cloud = "fallback"', 'backends = ["small"]',
            'prefer = "fastest"', "```", ""]
    out += _table("routing.class", ClassRoutingConfig, CLASS_DOCS)
    for name, title in (("discovery", "Finding local servers when no `[[local]]` table is set."),
                        ("embedded", "nonstop's own llama-server with the bundled SmolLM2-135M model."),
                        ("warmup", "Loading local models before they are needed."),
                        ("log", "The request log (SQLite in `state_dir`)."),
                        ("hooks", "Telling something else when nonstop switches between the cloud and local."),
                        ("recovery", "What happens to a cloud answer that breaks off."),
                        ("eval", "Measuring local models in the background ([quality.md](quality.md))."),
                        ("shadow", "Comparing local models with the cloud on real requests ([quality.md](quality.md))."),
                        ("shared", "Several instances sharing state through Redis ([deploy.md](deploy.md)).")):
        out += ["", f"## `[{name}]`", "", title, ""]
        out += _table(name, SECTION_TYPES[name], SECTION_DOCS[name])
    out += ["", "## `[[users]]`", "",
            "A shared gateway's people: one table each. With `[[users]]`, nonstop may listen "
            "beyond loopback, attributes each request to its user, and shows each user only "
            "their own stored bodies ([deploy.md](deploy.md)).", "",
            "```toml", "[[users]]", 'name = "ann"', 'token = "a-long-random-token-for-ann"', "```", ""]
    out += _table("users", UserConfig, USER_DOCS)
    out += ["", "## `[accounts]`", "",
            "Friendly names for accounts: each credential's quota is its own, and `nonstop "
            "status` shows it by a label made from a salted hash of the credential (never the "
            "credential). Map a label to a name:", "",
            "```toml", "[accounts]", '"key:3f2a9c1e0b7d" = "ann (team key)"', "```", ""]
    return "\n".join(out)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
