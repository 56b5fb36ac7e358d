"""`nonstop config show`: the configuration nonstop runs with, every key, after the file,
the defaults and the environment: what to paste into a bug report, or read when a
setting does not seem to take.

Secrets never show: a token, a local server's api_key, a user's token, the fleet's
account salt and a password or query in a URL read `<hidden>`; in any other text (the
hook's command, an argument of `[embedded] extra_args`) what has a key's shape is
redacted, and an argument after a secret's flag (`--hf-token T`) is hidden. Everything
else is TOML that loads back as the same configuration.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from typing import Any

import orjson

from nonstop.cli.init import toml_string, toml_value
from nonstop.config import SECTION_TYPES, Config
from nonstop.config.sections import TABLE_KEYS
from nonstop.redact import HIDDEN, hidden_url, redact

# Keys whose value is a secret wherever it is set: (table, key).
_SECRETS = {("", "token"), ("local", "api_key"), ("users", "token"), ("shared", "account_salt")}
# URLs that may carry a password (redis://:pw@host) or a token in their query.
_URLS = {("shared", "redis_url"), ("hooks", "webhook"), ("local", "url"), ("cloud", "url")}


def _shown(table: str, key: str, value: Any) -> Any:
    if (table, key) in _SECRETS:
        return HIDDEN if value else value
    if (table, key) in _URLS and isinstance(value, str) and value:
        return hidden_url(value)
    if isinstance(value, str) and value:  # a command line, a model's name: any may carry a key
        return redact(value)
    if isinstance(value, tuple | list):
        return _shown_args(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# A command-line flag whose next argument is a secret (`--api-key K`, `--hf-token T`).
_SECRET_FLAG = re.compile(r"-{1,2}[\w-]*(?:key|token|secret|password)", re.I)


def _shown_args(values: tuple[Any, ...] | list[Any]) -> list[Any]:
    """A list, as arguments: each string redacted, and the one after a secret's flag hidden."""
    out: list[Any] = []
    for i, v in enumerate(values):
        after_flag = i > 0 and isinstance(values[i - 1], str) and _SECRET_FLAG.fullmatch(values[i - 1]) is not None
        out.append(HIDDEN if after_flag and v else redact(v) if isinstance(v, str) and v else v)
    return out


def _table(table: str, obj: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {f.name: _shown(table, f.name, getattr(obj, f.name)) for f in fields(obj) if f.name not in skip}


def document(cfg: Config) -> dict[str, Any]:
    """The configuration as a TOML-shaped document, secrets hidden."""
    doc: dict[str, Any] = {f.name: _shown("", f.name, getattr(cfg, f.name))
                           for f in fields(cfg) if f.name not in TABLE_KEYS and f.name != "source"}
    for name in SECTION_TYPES:
        section = getattr(cfg, name)
        doc[name] = _table(name, section, frozenset({"classes"}) if name == "routing" else frozenset())
        if name == "routing":
            for cls, rule in cfg.routing.classes:
                doc[name][cls] = _table("routing", rule)
    doc["local"] = [_table("local", b) for b in cfg.local]
    doc["routes"] = {r.match: list(r.backends) for r in cfg.routes}
    doc["users"] = [_table("users", u) for u in cfg.users]
    doc["accounts"] = dict(cfg.accounts)
    return doc


def _pairs(table: dict[str, Any]) -> list[str]:
    """A table's `key = value` lines (keys quoted where TOML needs it)."""
    return [f"{k if k.replace('_', '').isalnum() and k.isascii() else toml_string(k)} = {toml_value(v)}"
            for k, v in table.items()]


def render(cfg: Config, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    doc = document(cfg)
    lines = [f"# nonstop's configuration: {cfg.source or 'no config file, the defaults'}"]
    if env.get("NONSTOP_TOKEN") and cfg.token == env["NONSTOP_TOKEN"]:
        lines.append("# token: from NONSTOP_TOKEN")
    if env.get("NONSTOP_STATE_DIR") and os.fspath(cfg.state_dir) == env["NONSTOP_STATE_DIR"]:
        lines.append("# state_dir: from NONSTOP_STATE_DIR")
    lines.append("")
    lines += _pairs({k: v for k, v in doc.items() if not isinstance(v, dict | list)})
    for name in SECTION_TYPES:
        keys = {k: v for k, v in doc[name].items() if not isinstance(v, dict)}
        lines += ["", f"[{name}]", *_pairs(keys)]
        for k, v in doc[name].items():
            if isinstance(v, dict):  # [routing.<class>]
                lines += ["", f"[{name}.{k}]", *_pairs(v)]
    for b in doc["local"]:
        lines += ["", "[[local]]", *_pairs(b)]
    if not doc["local"]:
        lines += ["", "# No [[local]] backend: at start, nonstop looks for local servers ([discovery]),",
                  "# else starts its embedded one ([embedded]); `nonstop status` shows what runs."]
    if doc["routes"]:
        lines += ["", "[routes]", *_pairs(doc["routes"])]
    for u in doc["users"]:
        lines += ["", "[[users]]", *_pairs(u)]
    if doc["accounts"]:
        lines += ["", "[accounts]", *_pairs(doc["accounts"])]
    return "\n".join(lines) + "\n"


def as_json(cfg: Config) -> bytes:
    return orjson.dumps({"source": cfg.source, "config": document(cfg)}, option=orjson.OPT_INDENT_2)
