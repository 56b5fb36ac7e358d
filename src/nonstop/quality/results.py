"""Eval results in the state directory's SQLite file, and the scores read back from it.

    scores = latest_scores(store)              # {backend name: Score}, for routing and status
    save_result(path, identity, card, ...)     # after a run
    history(path, backend)                     # every run, newest first

`latest_scores` takes what the caller has: the running gateway's `Store`, an open
sqlite3 connection, or the state directory's database path. It is synchronous (call it
with asyncio.to_thread from the event loop) and never raises for a missing or older
database: no table yet means no scores.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from nonstop.quality.identity import ModelIdentity
from nonstop.quality.score import Scorecard
from nonstop.quality.tasks import SUITE_VERSION
from nonstop.store.db import (
    EvalRow,
    connect,
    ensure_private_dir,
    eval_history,
    latest_evals,
    migrate,
    private_file,
    save_eval,
)


class _HasPath(Protocol):
    path: Path


Source = sqlite3.Connection | Path | str | _HasPath


@dataclass(frozen=True)
class Score:
    """A backend's last evaluation. `overall` and each category are 0..1; `stale` when
    the backend's model is no longer the one evaluated (`stale_why` says how)."""

    backend: str
    overall: float | None
    categories: Mapping[str, float | None]
    tools: float | None
    tokens_per_s: float | None
    first_token_s: float | None
    first_token_tokens: int
    ts: float
    model: ModelIdentity
    suite: str = ""
    quick: bool = False
    stale: bool = False
    stale_why: str = ""
    tasks: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @property
    def for_routing(self) -> float | None:
        """The score the planner should use: none for a model that is no longer there."""
        return None if self.stale else self.overall

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "overall": self.overall, "categories": dict(self.categories), "tools": self.tools,
            "tokens_per_s": self.tokens_per_s, "first_token_s": self.first_token_s,
            "first_token_tokens": self.first_token_tokens, "ts": self.ts, "model": self.model.to_dict(),
            "suite": self.suite, "quick": self.quick, "stale": self.stale, "stale_why": self.stale_why,
        }


def score_from_row(row: EvalRow) -> Score:
    s = row.scores if isinstance(row.scores, dict) else {}
    given = s.get("categories")
    cats = {str(k): _num(v) for k, v in given.items()} if isinstance(given, dict) else {}
    suite, _, mode = row.suite.partition(":")
    return Score(
        backend=row.backend, overall=row.overall, categories=cats, tools=_num(s.get("tools")),
        tokens_per_s=_num(s.get("tokens_per_s")), first_token_s=_num(s.get("first_token_s")),
        first_token_tokens=int(_num(s.get("first_token_tokens")) or 0), ts=row.ts,
        model=ModelIdentity.from_dict(row.model, row.backend), suite=suite, quick=mode == "quick",
        tasks=tuple(t for t in row.tasks if isinstance(t, dict)) if isinstance(row.tasks, list) else (),
    )


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def judge(score: Score, current: ModelIdentity | None = None, model_name: str = "") -> Score:
    """`score`, marked stale when the backend's model changed since it was evaluated:
    `current` is what the server runs now (when it answered), `model_name` what the
    gateway reports (when no identity was read)."""
    was = score.model
    if current is not None and current.reachable and _changed(was, current):
        return replace(score, stale=True, stale_why=f"the model changed since the eval (was {was.label()}, now {current.label()})")
    # A name the gateway reports says which model where the server serves by name, or
    # where it is the file the server said it loaded: llama-server serves the file it was
    # started with, whatever name the config gives it (a name it reports while down).
    by_file = was.server in ("llamacpp", "file")
    if (current is None and model_name and was.name and model_name != was.name
            and (not by_file or "/" in model_name or "\\" in model_name or model_name.endswith(".gguf"))):
        now = ModelIdentity(score.backend, name=model_name).short_name
        return replace(score, stale=True, stale_why=f"the model changed since the eval (was {was.short_name}, now {now})")
    return score


def _changed(was: ModelIdentity, now: ModelIdentity) -> bool:
    """Whether two readings name different models. Digests are compared with digests: a
    reading that missed the digest (a slow /api/tags) is compared by name, quantisation
    and size, each where both readings have it."""
    if was.digest and now.digest:
        return was.digest != now.digest
    pairs = ((was.name, now.name), (was.quantisation.lower(), now.quantisation.lower()), (was.size_bytes, now.size_bytes))
    return any(a and b and a != b for a, b in pairs)


# --- reading -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reading(source: Source) -> Iterator[sqlite3.Connection | None]:
    if isinstance(source, sqlite3.Connection):
        yield source
        return
    path = Path(source) if isinstance(source, str | Path) else Path(source.path)
    if not path.exists():
        yield None
        return
    try:
        conn = connect(path, readonly=True)
    except sqlite3.Error:
        yield None
        return
    try:
        yield conn
    finally:
        conn.close()


def latest_scores(source: Source, current: Mapping[str, ModelIdentity] | None = None) -> dict[str, Score]:
    """{backend name: its last Score}, stale where `current` (identities read now) says
    the model changed. {} when nothing was ever evaluated."""
    with _reading(source) as conn:
        if conn is None:
            return {}
        try:
            rows = latest_evals(conn)
        except sqlite3.Error:  # a database from before evals (opened read-only: not migrated)
            return {}
    current = current or {}
    return {name: judge(score_from_row(row), current.get(name)) for name, row in rows.items()}


def history(source: Source, backend: str = "", limit: int = 200) -> list[Score]:
    """Every evaluation (of one backend, with `backend`), newest first."""
    with _reading(source) as conn:
        if conn is None:
            return []
        try:
            return [score_from_row(r) for r in eval_history(conn, backend, limit)]
        except sqlite3.Error:
            return []


def scores_by_model(source: Source) -> dict[str, Score]:
    """The newest score of every model ever evaluated, by model key and by name: what
    `doctor` compares other available models with."""
    out: dict[str, Score] = {}
    for s in reversed(history(source, limit=10_000)):
        for k in (s.model.key, s.model.name):
            if k:
                out[k] = s
    return out


# --- writing --------------------------------------------------------------------------------------


def save_result(db: Path, identity: ModelIdentity, card: Scorecard, *, quick: bool, now: float | None = None) -> int:
    """Store one run (the database is created and migrated if need be)."""
    ensure_private_dir(db.parent)
    private_file(db)  # a database created here is private, as the gateway's is
    conn = connect(db)
    try:
        migrate(conn)
        row = EvalRow(
            ts=time.time() if now is None else now, backend=identity.backend, model_key=identity.key,
            model=identity.to_dict(), suite=f"{SUITE_VERSION}:{'quick' if quick else 'full'}", overall=card.overall,
            scores=card.to_dict(), tasks=[t.to_dict() for t in card.tasks],
        )
        return save_eval(conn, row)
    finally:
        conn.close()
