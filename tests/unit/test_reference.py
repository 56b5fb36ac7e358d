"""docs/reference.md names every command, option, environment variable, endpoint, header and
metric nonstop has: one added without a line there fails here."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from nonstop.cli.commands import build_parser
from nonstop.server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "nonstop"
REFERENCE = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", action
                yield from _commands(sub, f"{prefix}{name} ")
        elif action.option_strings:
            yield prefix.strip(), action


def test_every_command_and_option_is_listed() -> None:
    missing = []
    for where, action in _commands(build_parser()):
        if isinstance(action, argparse._SubParsersAction):
            if f"`nonstop {where}" not in REFERENCE:
                missing.append(f"nonstop {where}")
            continue
        missing += [f"nonstop {where} {o}".replace("  ", " ") for o in action.option_strings
                    if o not in ("-h", "--help") and f"`{o}" not in REFERENCE and f" {o}`" not in REFERENCE]
    assert missing == [], f"not in docs/reference.md: {missing}"


def test_every_environment_variable_is_listed() -> None:
    names = set()
    for path in SRC.rglob("*.py"):
        names |= set(re.findall(r"\bNONSTOP_[A-Z_]+\b", path.read_text(encoding="utf-8")))
    assert names, "the search found nothing: the pattern is wrong"
    assert sorted(n for n in names if f"`{n}`" not in REFERENCE) == []


def test_every_endpoint_is_listed() -> None:
    app = (SRC / "server" / "app.py").read_text(encoding="utf-8")
    dashboard = (SRC / "server" / "dashboard.py").read_text(encoding="utf-8")
    routes = set(re.findall(r'\("(?:GET|POST|HEAD)", "(/[^"]*)"\)', app))
    routes |= set(re.findall(r'path == "(/_nonstop/api/[a-z_]+)"', dashboard))
    assert len(routes) >= 12, routes
    assert sorted(r for r in routes if not re.search(rf" {re.escape(r)}`", REFERENCE)) == []


def test_every_response_header_is_listed() -> None:
    headers = set()
    for path in SRC.rglob("*.py"):
        headers |= set(re.findall(r"x-nonstop-[a-z-]+[a-z]", path.read_text(encoding="utf-8")))
    assert {"x-nonstop-backend", "x-nonstop-route", "x-nonstop-failover", "x-nonstop-token"} <= headers
    assert sorted(h for h in headers if f"`{h}`" not in REFERENCE) == []


@pytest.fixture(scope="module")
def families() -> list[str]:
    text = Metrics().render().decode()
    return re.findall(r"^# TYPE (\S+) ", text, re.M)


def test_every_metric_is_listed(families: list[str]) -> None:
    assert len(families) >= 19
    assert [f for f in families if f"| `{f}` |" not in REFERENCE] == []
    # And nothing is listed that is not there (a metric renamed or gone).
    listed = re.findall(r"^\| `(nonstop_[a-z_]+)` \|", REFERENCE, re.M)
    assert sorted(set(listed) - set(families)) == []
