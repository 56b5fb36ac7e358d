"""`nonstop explain`: reading a saved request, headers, and the offline plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nonstop.cli import explain
from nonstop.config import parse_config


def test_reads_a_body_or_a_saved_exchange(tmp_path: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    (tmp_path / "a.json").write_text(json.dumps(body))
    (tmp_path / "b.json").write_text(json.dumps({"headers": {}, "body": body}))
    assert explain.read_request(str(tmp_path / "a.json")) == body
    assert explain.read_request(str(tmp_path / "b.json")) == body
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ValueError):
        explain.read_request(str(tmp_path / "c.json"))


@pytest.mark.parametrize(("name", "content", "says"), [
    ("", None, "cannot read {p}: Is a directory"),
    ("missing.json", None, "cannot read {p}: No such file or directory"),
    ("empty.json", b"", "{p} is not JSON (Expecting value"),
    ("x.bin", b"\xff\xfe{", "{p} is not UTF-8 text"),
])
def test_a_file_that_is_no_request_is_said_in_words(tmp_path: Path, name: str, content: bytes | None, says: str) -> None:
    """What `nonstop explain FILE` prints (after `nonstop explain: `), not an errno or a bare
    JSON decoder's message."""
    path = tmp_path / name if name else tmp_path
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as exc:
        explain.read_request(str(path))
    assert says.format(p=path) in str(exc.value), str(exc.value)


def test_headers_are_name_value() -> None:
    assert explain.parse_headers(["X-Claude-Code-Request-Class: subagent"]) == {"x-claude-code-request-class": "subagent"}
    with pytest.raises(ValueError):
        explain.parse_headers(["no colon"])


def test_offline_plan_uses_the_config_and_the_class(tmp_path: Path) -> None:
    cfg = parse_config({"state_dir": str(tmp_path), "local": [
        {"name": "big", "url": "http://127.0.0.1:9", "context_window": 32768},
        {"name": "small", "url": "http://127.0.0.1:10", "context_window": 4096}],
        "routing": {"background": {"cloud": "fallback"}}})
    req = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "title"}]}
    out = explain.plan_offline(cfg, req, {})
    assert out["offline"] and out["plan"]["class"] == "background"
    assert [s["target"] for s in out["plan"]["steps"]] == ["big", "small", "cloud"]
    text = "\n".join(out["lines"])
    assert "class: background (from model)" in text and "3. cloud — class:" in text


def test_main_prints_one_line_per_decision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config({"listen": "127.0.0.1:9", "state_dir": str(tmp_path),
                        "local": [{"name": "big", "url": "http://127.0.0.1:9"}]})
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"model": "claude-opus-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
    assert explain.main(cfg, str(f), headers=["x-claude-code-request-class: subagent"]) == 0
    out = capsys.readouterr().out
    assert "offline (nothing answers" in out and "class: subagent (from header)" in out
    assert "1. cloud — cloud: the cloud is serving" in out
    assert explain.main(cfg, str(tmp_path / "missing.json"), headers=[]) == 2
