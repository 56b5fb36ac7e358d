"""Stored results and the verdict lines: what `status`, `doctor`, the dashboard and the
planner read back, stale once the model changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nonstop.quality.identity import ModelIdentity
from nonstop.quality.results import history, latest_scores, save_result, scores_by_model
from nonstop.quality.score import Scorecard
from nonstop.quality.verdict import NOT_EVALUATED, ago, verdict_line, verdicts
from nonstop.store.db import connect, migrate

NOW = 1_800_000_000.0
QWEN = ModelIdentity("llama", server="llamacpp", name="/m/qwen3-coder-30b-Q4_K_M.gguf", quantisation="Q4_K_M",
                     digest="file-sha256:aaaa", server_context=32768)
QWEN_NEW = ModelIdentity("llama", server="llamacpp", name="/m/qwen3-coder-30b-Q4_K_M.gguf", quantisation="Q4_K_M",
                         digest="file-sha256:bbbb", server_context=32768)


def card(tools: float, loop: float, tps: float | None = 38.0) -> Scorecard:
    cats = {"tool_choice": tools, "tool_input": tools, "tool_loop": loop, "stop": 1.0, "format": 1.0,
            "long_context": None}
    measured = [v for v in cats.values() if v is not None]
    return Scorecard(cats, sum(measured) / len(measured), tokens_per_s=tps)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nonstop.db"


def test_nothing_stored_reads_as_no_scores(db: Path) -> None:
    assert latest_scores(db) == {} and history(db) == []
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE requests (id INTEGER)")  # a log from before evals
    conn.commit()
    assert latest_scores(db) == {}


def test_the_newest_run_of_each_backend_is_its_score(db: Path) -> None:
    save_result(db, QWEN, card(0.5, 0.5), quick=True, now=NOW - 86400 * 3)
    save_result(db, QWEN, card(0.92, 0.85), quick=False, now=NOW - 86400 * 2)
    save_result(db, ModelIdentity("ollama", name="qwen3:8b", digest="sha256:b"), card(0.6, 0.4), quick=True, now=NOW)
    scores = latest_scores(db)
    assert set(scores) == {"llama", "ollama"}
    s = scores["llama"]
    assert (s.tools, s.categories["tool_loop"], s.quick, s.stale) == (0.92, 0.85, False, False)
    assert s.for_routing == s.overall and s.model == QWEN
    assert [h.tools for h in history(db, "llama")] == [0.92, 0.5]
    assert db.stat().st_mode & 0o077 == 0  # private, as the gateway's own database is


def test_a_changed_model_makes_the_score_stale_and_keeps_it_from_routing(db: Path) -> None:
    save_result(db, QWEN, card(0.92, 0.85), quick=False, now=NOW)
    assert latest_scores(db, {"llama": QWEN})["llama"].stale is False
    stale = latest_scores(db, {"llama": QWEN_NEW})["llama"]
    assert stale.stale and stale.for_routing is None and "the model changed" in stale.stale_why
    gone = ModelIdentity("llama", reachable=False)
    assert latest_scores(db, {"llama": gone})["llama"].stale is False  # a server that is down changed nothing


def test_the_verdict_line(db: Path) -> None:
    save_result(db, QWEN, card(0.92, 0.85), quick=False, now=NOW - 2 * 86400)
    s = latest_scores(db)["llama"]
    assert verdict_line("llama", s, NOW) == "llama (qwen3-coder-30b q4_k_m, 32k): tools 92% · loop 85% · 38 tok/s · eval 2 days ago"
    assert verdict_line("ollama", None, NOW) == f"ollama: {NOT_EVALUATED}" == "ollama: not evaluated — run `nonstop eval`"
    stale = latest_scores(db, {"llama": QWEN_NEW})["llama"]
    assert verdict_line("llama", stale, NOW).endswith("; run `nonstop eval --backend llama`")


def test_verdicts_for_the_status_document(db: Path) -> None:
    save_result(db, QWEN, card(0.92, 0.85, tps=None), quick=True, now=NOW - 3 * 3600)
    found = verdicts(db, ["llama", "other"], now=NOW)
    assert found["other"] == {"evaluated": False, "line": f"other: {NOT_EVALUATED}", "text": NOT_EVALUATED}
    v = found["llama"]
    assert v["evaluated"] and not v["stale"] and v["quick"] and v["tools"] == 0.92
    assert v["text"] == "qwen3-coder-30b q4_k_m, 32k: tools 92% · loop 85% · eval 3 hours ago"
    # The gateway reports another model's name: stale even without reading the server.
    renamed = verdicts(db, ["llama"], models={"llama": "/m/gemma-3-27b-Q4_K_M.gguf"}, now=NOW)["llama"]
    assert renamed["stale"] and "now gemma-3-27b-Q4_K_M" in renamed["stale_why"]
    same = verdicts(db, ["llama"], models={"llama": QWEN.name}, now=NOW)["llama"]
    assert not same["stale"]


def test_scores_by_model_finds_a_model_by_digest_and_by_name(db: Path) -> None:
    save_result(db, ModelIdentity("ollama:qwen3:8b", name="qwen3:8b", digest="sha256:b"), card(0.9, 0.9), quick=True, now=NOW)
    found = scores_by_model(db)
    assert found["sha256:b"].tools == found["qwen3:8b"].tools == 0.9


def test_the_migration_applies_to_an_existing_log(tmp_path: Path) -> None:
    conn = connect(tmp_path / "nonstop.db")
    assert "0007_evals" in migrate(conn)
    assert conn.execute("SELECT COUNT(*) FROM evals").fetchone()[0] == 0


@pytest.mark.parametrize(("seconds", "text"), [
    (10, "just now"), (600, "10 minutes ago"), (3600, "1 hour ago"), (5 * 3600, "5 hours ago"),
    (86400 * 2 + 5000, "2 days ago"),
])
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text
