"""The SQLite store in a temporary directory."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nonstop.store.db import (
    _COLUMNS,
    BATCH_ROWS,
    FLUSH_EVERY,
    MIGRATIONS,
    RequestRow,
    Store,
    _values,
    connect,
    ensure_private_dir,
    migrate,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def row(ts: float, **kw: object) -> RequestRow:
    return RequestRow(ts=ts, **kw)  # type: ignore[arg-type]


def raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    return conn


# --- migrations ---------------------------------------------------------------------------


def test_migrations_applied_once(state_dir: Path) -> None:
    s = Store(state_dir)
    s.open()
    s.close()
    with raw(state_dir / "nonstop.db") as conn:
        first = [tuple(r) for r in conn.execute("SELECT name, applied FROM migrations ORDER BY name")]
    assert [name for name, _ in first] == [name for name, _ in MIGRATIONS]

    s = Store(state_dir)
    s.open()
    s.close()
    with raw(state_dir / "nonstop.db") as conn:
        again = [tuple(r) for r in conn.execute("SELECT name, applied FROM migrations ORDER BY name")]
    assert again == first


@pytest.mark.parametrize("trial", range(10))
def test_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path: Path, trial: int) -> None:
    """The server and `nonstop eval` (or two instances sharing a state folder) starting
    together: each migration is applied by one of them, and none fails on a table the
    other has just made."""
    barrier = threading.Barrier(4, timeout=20)
    applied: list[list[str]] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            barrier.wait()  # then connect and migrate at once: WAL is switched on in the race too
            conn = connect(tmp_path / "n.db")
        except BaseException as exc:
            errors.append(exc)
            return
        try:
            applied.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=open_it, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(n for names in applied for n in names) == sorted(name for name, _ in MIGRATIONS)
    conn = connect(tmp_path / "n.db")
    try:
        assert [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY name")] == sorted(n for n, _ in MIGRATIONS)
        assert migrate(conn) == []
    finally:
        conn.close()


def test_a_migration_that_fails_is_rolled_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nonstop.store.db as db

    monkeypatch.setattr(db, "MIGRATIONS", [*MIGRATIONS, ("9999_broken", "CREATE TABLE half (a);CREATE TABLE half (b);")])
    conn = connect(tmp_path / "x.db")
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn)
        assert not conn.in_transaction
        assert conn.execute("SELECT count(*) FROM migrations WHERE name = '9999_broken'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0
    finally:
        conn.close()


def test_migrate_returns_only_new_migrations(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    try:
        assert migrate(conn) == [name for name, _ in MIGRATIONS]
        assert migrate(conn) == []
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"requests", "state", "bodies", "migrations"} <= tables
    finally:
        conn.close()


def test_reopen_keeps_data(state_dir: Path) -> None:
    s = Store(state_dir)
    s.open()
    s.log_request(row(time.time(), request_id="r1"))
    s.save_state("k", {"v": 1})
    s.flush()
    s.close()
    s = Store(state_dir)
    s.open()
    try:
        assert [r["request_id"] for r in s.recent()] == ["r1"]
        assert s.load_state("k") == {"v": 1}
    finally:
        s.close()


# --- files ----------------------------------------------------------------------------------


def test_wal_mode(store: Store) -> None:
    assert store._read is not None
    assert store._read.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with raw(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_private_files_and_dir(store: Store, state_dir: Path) -> None:
    store.log_request(row(time.time()))
    store.flush()
    assert mode(state_dir) == 0o700
    assert mode(store.path) == 0o600
    for suffix in ("-wal", "-shm"):
        p = Path(str(store.path) + suffix)
        assert p.exists(), suffix  # WAL files live while the store is open
        assert mode(p) == 0o600, suffix


def test_existing_open_dir_is_made_private(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    state_dir.chmod(0o755)
    s = Store(state_dir)
    s.open()
    s.close()
    assert mode(state_dir) == 0o700


def test_a_folder_its_user_made_read_only_stays_read_only(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    state_dir.chmod(0o555)
    try:
        ensure_private_dir(state_dir)
        assert mode(state_dir) == 0o500  # closed to others, and still not writable
    finally:
        state_dir.chmod(0o700)


# --- the request log ------------------------------------------------------------------------


NOW = time.time()

ROWS = [
    row(NOW - 50, request_id="a", model="claude-sonnet-4-5", backend="cloud", outcome="ok", input_tokens=100, output_tokens=10),
    row(NOW - 40, request_id="b", model="claude-3-5-haiku-20241022", backend="llama", outcome="ok", input_tokens=20, output_tokens=2),
    row(NOW - 30, request_id="c", model="claude-opus-5-5", backend="cloud", outcome="failover", status=429),
    row(NOW - 20, request_id="d", model="claude-haiku-4-5", backend="embedded", outcome="ok", input_tokens=30, output_tokens=3),
    row(NOW - 10, request_id="e", model="claude-sonnet-4-5", backend="", outcome="error", status=503, error="no backend"),
    row(NOW - 5, request_id="f", model="claude-sonnet-4-5", backend="cloud", outcome="ok", stream=True, input_tokens=7, output_tokens=1),
]


@pytest.fixture
def filled(store: Store) -> Store:
    for r in ROWS:
        store.log_request(r)
    store.flush()
    return store


def ids(rows: list[dict]) -> list[str]:
    return [r["request_id"] for r in rows]


def test_log_request_and_recent(filled: Store) -> None:
    rows = filled.recent()
    assert ids(rows) == ["a", "b", "c", "d", "e", "f"]
    f = rows[-1]
    assert f["model"] == "claude-sonnet-4-5"
    assert f["backend"] == "cloud"
    assert f["stream"] == 1
    assert f["input_tokens"] == 7
    assert f["ts"] == pytest.approx(NOW - 5)
    assert rows[2]["status"] == 429
    assert rows[4]["error"] == "no backend"
    assert filled.written == len(ROWS)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"backend": "cloud"}, ["a", "c", "f"]),
        ({"backend": "local"}, ["b", "d"]),
        ({"backend": "llama"}, ["b"]),
        ({"outcome": "ok"}, ["a", "b", "d", "f"]),
        ({"outcome": "failover"}, ["c"]),
        ({"model": "claude-*haiku*"}, ["b", "d"]),
        ({"model": "claude-sonnet-4-5"}, ["a", "e", "f"]),
        ({"model": "*opus*"}, ["c"]),
        ({"backend": "cloud", "outcome": "ok"}, ["a", "f"]),
        ({"backend": "local", "model": "*haiku-4*"}, ["d"]),
        ({"limit": 2}, ["e", "f"]),
        ({"since": NOW - 25}, ["d", "e", "f"]),
    ],
    ids=[
        "cloud", "local", "one-backend", "ok", "failover", "model-glob", "model-exact", "opus",
        "cloud-ok", "local-haiku", "limit", "since",
    ],
)
def test_recent_filters(filled: Store, filters: dict, expected: list[str]) -> None:
    assert ids(filled.recent(**filters)) == expected


def test_recent_after_id(filled: Store) -> None:
    rows = filled.recent()
    third = rows[2]["id"]
    assert ids(filled.recent(after_id=third)) == ["d", "e", "f"]


def test_totals_since(filled: Store) -> None:
    assert filled.totals_since(NOW - 100) == {
        "cloud": {"requests": 3, "input_tokens": 107, "output_tokens": 11},
        "local": {"requests": 2, "input_tokens": 50, "output_tokens": 5},
    }
    assert filled.totals_since(NOW - 25) == {
        "cloud": {"requests": 1, "input_tokens": 7, "output_tokens": 1},
        "local": {"requests": 1, "input_tokens": 30, "output_tokens": 3},
    }


def test_totals_when_empty(store: Store) -> None:
    assert store.totals_since(0) == {
        "cloud": {"requests": 0, "input_tokens": 0, "output_tokens": 0},
        "local": {"requests": 0, "input_tokens": 0, "output_tokens": 0},
    }


def test_bodies_stored_separately(store: Store) -> None:
    store.log_request(RequestRow(ts=time.time(), request_id="x", request_body='{"a":1}', response_body="ok"))
    store.log_request(RequestRow(ts=time.time(), request_id="y"))
    store.flush()
    rows = store.recent()
    assert "request_body" not in rows[0]
    with raw(store.path) as conn:
        bodies = [tuple(r) for r in conn.execute("SELECT request_id, request, response FROM bodies")]
    assert bodies == [(rows[0]["id"], '{"a":1}', "ok")]


def test_public_row_hides_bodies() -> None:
    d = RequestRow(ts=1.0, request_body="secret", response_body="secret").public()
    assert "request_body" not in d and "response_body" not in d
    assert d["ts"] == 1.0


def test_many_writes_are_batched_and_all_land(store: Store) -> None:
    for i in range(2000):
        store.log_request(row(NOW, request_id=str(i)))
    store.flush()
    assert store.written == 2000
    assert len(store.recent(limit=10000)) == 2000


@pytest.mark.parametrize("variable_limit", [250_000, 999, 30])
@pytest.mark.parametrize("count", [1, 127, 128, 129, 300])
def test_rows_inserted_many_to_a_statement_land_in_order(tmp_path: Path, variable_limit: int, count: int) -> None:
    # Full statements, a shorter last one, and an SQLite built with a low variable limit
    # (999 before 3.32; 30 allows one row per statement).
    conn = connect(tmp_path / "db.sqlite")
    migrate(conn)
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variable_limit)
    s = Store(tmp_path)
    rows = [_values(row(NOW + i, request_id=f"r{i}", route={"to": i} if i % 2 else None)) for i in range(count)]
    with conn:
        s._insert_rows(conn, list(rows))
    got = [tuple(r) for r in conn.execute("SELECT " + ", ".join(_COLUMNS) + " FROM requests ORDER BY id")]
    assert got == rows


def test_batches_of_every_size_prepare_a_few_statements_not_one_per_size(tmp_path: Path) -> None:
    """sqlite3 keeps each statement it prepared (up to 128), and a statement of many rows
    is large: batches of every size from 1 to 300 rows use statements of a power of two
    rows (8 of them), not one statement per size (a growth of tens of MB over a day)."""
    conn = connect(tmp_path / "db.sqlite")
    migrate(conn)
    s = Store(tmp_path)
    statements: set[str] = set()

    class Seen:  # the connection, and the statements run on it
        def getlimit(self, category: int) -> int:
            return conn.getlimit(category)

        def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
            statements.add(sql)
            return conn.execute(sql, params)

    total = 0
    with conn:
        for count in range(1, 301):
            s._insert_rows(Seen(), [_values(row(NOW, request_id=f"r{count}-{i}")) for i in range(count)])  # type: ignore[arg-type]
            total += count
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == total
    assert len(statements) <= 8, sorted(statements)


def _on_disk(state_dir: Path, rows: int, within: float) -> int:
    """Rows a reader outside the store sees (no flush asked first), once `rows` or after
    `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        conn = raw(state_dir / "nonstop.db")
        try:
            seen = int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
        finally:
            conn.close()
        if seen >= rows or time.monotonic() > deadline:
            return seen
        time.sleep(0.02)


def test_the_default_loss_window_is_what_the_docs_say(store: Store, state_dir: Path) -> None:
    # What a kill -9 can lose is the last FLUSH_EVERY seconds (docs/reliability.md; the
    # durability test allows one second): a row logged and never read is on disk by then.
    assert FLUSH_EVERY <= 0.5
    store.log_request(row(NOW, request_id="unread"))
    assert _on_disk(state_dir, 1, within=FLUSH_EVERY + 1.5) == 1


def test_a_full_batch_wakes_the_writer_before_its_time(state_dir: Path) -> None:
    # BATCH_ROWS waiting are written at once, whatever the interval: a burst is not held
    # in memory for the whole of it.
    s = Store(state_dir, flush_every=60.0)
    s.open()
    try:
        for i in range(BATCH_ROWS):
            s.log_request(row(NOW, request_id=f"r{i}"))
        assert _on_disk(state_dir, BATCH_ROWS, within=5.0) == BATCH_ROWS
    finally:
        s.close()


def test_reads_see_writes_still_queued(state_dir: Path) -> None:
    # The writer thread waits a long time between batches here: a read must not.
    s = Store(state_dir, flush_every=60.0)
    s.open()
    try:
        s.log_request(row(NOW, request_id="queued", request_body="b", response_body="r"))
        s.save_state("k", {"v": 1})
        t0 = time.monotonic()
        assert [r["request_id"] for r in s.recent()] == ["queued"]
        assert s.totals_since(NOW - 1)
        assert s.load_state("k") == {"v": 1}
        assert time.monotonic() - t0 < 5.0
    finally:
        s.close()


def test_reads_see_a_batch_the_writer_is_still_writing(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The writer has taken the row off the queue but not committed it: the queue is empty,
    # and a read that only looked at the queue would answer without the row.
    taken, release = threading.Event(), threading.Event()
    write = Store._write

    def slow_write(self: Store, conn: sqlite3.Connection, batch: list) -> tuple:
        if any(it is not None and it[0] == "request" for it in batch):
            taken.set()
            release.wait(5)
        return write(self, conn, batch)

    monkeypatch.setattr(Store, "_write", slow_write)
    s = Store(state_dir, flush_every=0.01)
    s.open()
    try:
        s.log_request(row(NOW, request_id="in-flight"))
        assert taken.wait(5)
        threading.Timer(0.2, release.set).start()
        assert [r["request_id"] for r in s.recent()] == ["in-flight"]
    finally:
        release.set()
        s.close()


def test_concurrent_reads_each_see_the_latest_rows(store: Store) -> None:
    # Reads from many threads at once, each right after its own write: none misses its row.
    misses: list[str] = []

    def one(i: int) -> None:
        store.log_request(row(NOW + i, request_id=f"r{i}"))
        if f"r{i}" not in {r["request_id"] for r in store.recent(limit=500)}:
            misses.append(f"r{i}")
        store.totals_since(NOW - 1)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert misses == []


def test_a_row_sqlite_cannot_hold_does_not_stop_the_request_log(store: Store) -> None:
    """A row SQLite cannot hold (a count above 2**63-1, such as a local server's unsigned
    -1) is not written, and the log goes on: later rows land, and reads answer at once,
    so the dashboard, the status line and `nonstop status` keep working."""
    store.log_request(row(time.time(), request_id="odd", backend="llama", output_tokens=2**64 - 1))
    store.flush(timeout=1)
    store.log_request(row(time.time(), request_id="next", backend="cloud", output_tokens=5))
    t0 = time.monotonic()
    rows = store.recent(limit=10)
    took = time.monotonic() - t0
    assert [r["request_id"] for r in rows if r["request_id"] == "next"] == ["next"], "later rows are no longer logged"
    assert took < 1.0, f"a read of the log waited {took:.1f} s"


def test_a_row_whose_values_cannot_be_made_is_dropped_alone(store: Store) -> None:
    """A row the writer cannot make into its column values (a route that is not JSON) is
    dropped, and the rows around it are written."""
    store.log_request(row(time.time(), request_id="before"))
    store.log_request(row(time.time(), request_id="odd", route={"steps": [object()]}))
    store.log_request(row(time.time(), request_id="after"))
    store.flush(timeout=5)
    assert sorted(r["request_id"] for r in store.recent(limit=10)) == ["after", "before"]


# --- state ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"state": "out", "until": 1750000000.5, "reason": "subscription_limit", "utilization": {"5h": 1.02, "7d": None}},
        [1, "two", 3.0, None, True],
        "text",
        42,
        None,
    ],
    ids=["quota-snapshot", "list", "string", "int", "null"],
)
def test_save_load_state_round_trip(store: Store, value: object) -> None:
    store.save_state("quota", value)
    store.flush()
    assert store.load_state("quota") == value


def test_state_overwrites_and_missing_key(store: Store) -> None:
    assert store.load_state("nope") is None
    store.save_state("k", {"n": 1})
    store.save_state("k", {"n": 2})
    store.flush()
    assert store.load_state("k") == {"n": 2}


# --- retention ------------------------------------------------------------------------------


def test_retention_prunes_old_rows_on_open(state_dir: Path) -> None:
    s = Store(state_dir, retention_days=1)
    s.open()
    now = time.time()
    s.log_request(RequestRow(ts=now - 3 * 86400, request_id="old", request_body="old body"))
    s.log_request(RequestRow(ts=now - 2 * 86400, request_id="older-than-a-day"))
    s.log_request(RequestRow(ts=now - 3600, request_id="new", request_body="new body"))
    s.flush()
    assert ids(s.recent()) == ["old", "older-than-a-day", "new"]
    s.close()

    s = Store(state_dir, retention_days=1)
    s.open()
    try:
        assert ids(s.recent()) == ["new"]
        with raw(s.path) as conn:
            assert [r[0] for r in conn.execute("SELECT request FROM bodies")] == ["new body"]
    finally:
        s.close()


def test_retention_zero_keeps_everything(state_dir: Path) -> None:
    s = Store(state_dir, retention_days=0)
    s.open()
    s.log_request(row(1.0, request_id="ancient"))
    s.flush()
    s.close()
    s = Store(state_dir, retention_days=0)
    s.open()
    try:
        assert ids(s.recent()) == ["ancient"]
    finally:
        s.close()


def test_close_is_idempotent(state_dir: Path) -> None:
    s = Store(state_dir)
    s.open()
    s.close()
    s.close()


@pytest.mark.parametrize("folder", ["state#1", "what?", "100%", "with space"])
def test_a_read_only_connection_opens_the_log_whatever_its_folder_is_called(tmp_path: Path, folder: str) -> None:
    """Readers (status, the eval's scores) open the log read-only through a URI: a `#`, `?`
    or `%` in a folder's name is part of the path, not of the URI."""
    s = Store(tmp_path / folder)
    s.open()
    s.log_request(RequestRow(ts=time.time(), request_id="req_1", path="/v1/messages"))
    s.close()
    conn = connect(s.path, readonly=True)
    try:
        assert [r[0] for r in conn.execute("SELECT request_id FROM requests")] == ["req_1"]
    finally:
        conn.close()
