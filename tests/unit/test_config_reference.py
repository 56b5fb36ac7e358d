"""docs/configuration.md is what nonstop.cli.config_reference writes: every key of every
table, with its default and its words, the same words `nonstop init` writes."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import fields
from pathlib import Path

from nonstop.cli import config_reference as ref
from nonstop.cli.init import SECTION_DOCS, TOP_DOCS
from nonstop.config import SECTION_TYPES, Config, LocalBackendConfig, parse_config
from nonstop.config.model import ClassRoutingConfig, UserConfig
from nonstop.config.sections import TABLE_KEYS

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_file_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == ref.render(), (
        "docs/configuration.md is out of date: run `make docs`")


def test_every_key_has_words_and_nothing_else_does() -> None:
    tables = {"local": LocalBackendConfig, **SECTION_TYPES}
    for name, cls in tables.items():
        keys = {f.name for f in fields(cls)} - ({"classes"} if name == "routing" else set())
        assert set(SECTION_DOCS[name]) == keys, name
    assert set(ref.CLASS_DOCS) == {f.name for f in fields(ClassRoutingConfig)}
    assert set(ref.USER_DOCS) == {f.name for f in fields(UserConfig)}
    assert set(TOP_DOCS) == {f.name for f in fields(Config)} - TABLE_KEYS - {"source"}


def test_every_table_and_top_level_key_is_there_and_loads() -> None:
    text = ref.render()
    headings = set(re.findall(r"^#{2,3} `\[+([a-z_.<>]+)\]+`", text, re.M))
    assert headings == TABLE_KEYS | {"routing.<class>"}
    for key in TOP_DOCS:
        assert f"| `{key}` |" in text
    # The tables the reference shows as examples are valid configuration.
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) == 5
    local = tomllib.loads(
        '[[local]]\nname = "big"\nurl = "http://127.0.0.1:8080"\n[[local]]\nname = "small"\nurl = "http://127.0.0.1:8081"\n')
    for block in blocks:
        data = {**local, **tomllib.loads(block)} if "[[local]]" not in block else tomllib.loads(block)
        parse_config(data)


def test_defaults_are_the_dataclasses() -> None:
    text = ref.render()
    assert "| `connect_timeout` | `10.0` |" in text  # [cloud]
    assert "| `ports` | `[11434, 1234, 8080, 8000]` |" in text
    assert "| `url` | required |" in text
    assert "| `state_dir` | `$NONSTOP_STATE_DIR`" in text  # not this machine's path
    assert str(Path.home()) not in text


def test_the_tables_are_the_config_fields_that_hold_tables() -> None:
    cfg = Config()
    held = {f.name for f in fields(Config)
            if dataclasses.is_dataclass(getattr(cfg, f.name)) or isinstance(getattr(cfg, f.name), tuple)}
    assert held == TABLE_KEYS
