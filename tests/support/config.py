"""nonstop's config file for a test, written from Python values so that the test shows at
a glance what it runs:

    nonstop_config(
        cloud.url, cloud={"first_byte_timeout": 3.0},
        local=[{"name": "llama", "url": llama.url, "model": "smollm2"}],
        recovery={"continue_locally": True}, ping_interval=1.0,
    )

Each keyword becomes TOML as it stands: a dict is a table (`[recovery]`), a list of dicts
an array of tables (`[[local]]`), anything else a top-level key. Unless a test says
otherwise the gateway starts no embedded llama-server (`embedded="never"`) and looks for
no local servers (`discovery=False`), so it runs only the backends the test names; pass
None to leave either table out, as a user's file would, or a dict for the whole
`[embedded]` table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def nonstop_config(
    cloud_url: str | None = None,
    *,
    cloud: Mapping[str, Any] | None = None,
    local: Sequence[Mapping[str, Any]] = (),
    embedded: str | Mapping[str, Any] | None = "never",
    discovery: Mapping[str, Any] | Literal[False] | None = False,
    **settings: Any,
) -> str:
    """The TOML text of a config file (see the module's docstring)."""
    tables: dict[str, Any] = {}
    if cloud_url is not None or cloud:
        tables["cloud"] = {**({"url": cloud_url} if cloud_url is not None else {}), **(cloud or {})}
    if local:
        tables["local"] = list(local)
    top = {k: v for k, v in settings.items() if not _is_table(v)}
    tables.update({k: v for k, v in settings.items() if _is_table(v)})
    if embedded is not None:
        tables["embedded"] = dict(embedded) if isinstance(embedded, Mapping) else {"mode": embedded}
    if discovery is not None:
        tables["discovery"] = {"enabled": False} if discovery is False else discovery
    parts = [_body(top)] if top else []
    for name, value in tables.items():
        for table in value if isinstance(value, list) else [value]:
            header = f"[[{_key(name)}]]" if isinstance(value, list) else f"[{_key(name)}]"
            parts.append(f"{header}\n{_body(table)}")
    return "\n".join(parts)


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value))


def _body(table: Mapping[str, Any]) -> str:
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in table.items())


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _value(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")
