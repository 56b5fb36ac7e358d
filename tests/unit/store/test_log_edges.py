"""The request log and the store at their edges: secrets in odd spellings, a key pasted
as the model's name, one bad row or a locked database in a batch, a follower's paging,
and the failover metric's label."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import nonstop.store.db as db
from nonstop.redact import redact
from nonstop.server.events import EventBus
from nonstop.server.metrics import Metrics
from nonstop.server.relay import stored_body
from nonstop.server.request_log import RequestLog
from nonstop.server.run import _Redact
from nonstop.store.db import OpenFailed, RequestRow, Store
from tests.support.full_disk import FULL, full_disk_connect

API_KEY = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdEfGhIjKlMnOpQrStUvWxYz-XyZ12AA"
NOW = time.time()


# --- redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # A stored request body is raw JSON: a key that starts a line of a pasted file or
        # of a tool's output follows the two characters `\` `n`.
        orjson.dumps({"messages": [{"role": "user", "content": "here is my .env:\n" + API_KEY + "\nthanks"}]}).decode(),
        orjson.dumps({"content": "key\t" + API_KEY}).decode(),
        # URL-encoded, as in an address quoted in an error message: `=` is %3D.
        "GET /v1/models?key%3D" + API_KEY,
    ],
    ids=["json-escaped-newline", "json-escaped-tab", "url-encoded"],
)
def test_api_key_after_an_escape_sequence_is_redacted(text: str) -> None:
    """A key right after an escape (`\\n` in a stored JSON body, `%3D` in a URL) is redacted."""
    out = stored_body(text.encode())
    assert API_KEY not in out
    assert API_KEY[14:40] not in out


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        # A header dump inside a JSON string (a tool result quoting a request), stored as
        # the request body: the quotes are escaped, `\"x-api-key\": \"...\"`.
        (orjson.dumps({"content": orjson.dumps({"x-api-key": "plainsecretvalue123"}).decode()}).decode(),
         "plainsecretvalue123"),
        (orjson.dumps({"content": orjson.dumps({"x-nonstop-token": "localgatewaytoken"}).decode()}).decode(),
         "localgatewaytoken"),
        # Headers as pairs (JSON or a Python repr of ASGI headers): no `:` or `=` after the name.
        ('[["x-api-key", "plainsecretvalue123"]]', "plainsecretvalue123"),
        ("[(b'x-nonstop-token', b'localgatewaytoken')]", "localgatewaytoken"),
        # Basic credentials: the scheme word is 5 letters, under the 6 the pattern wants.
        ("authorization: Basic dXNlcjpodW50ZXIyaHVudGVyMg==", "dXNlcjpodW50ZXIyaHVudGVyMg=="),
    ],
    ids=["escaped-json-x-api-key", "escaped-json-nonstop-token", "json-pairs", "asgi-headers-repr", "basic-auth"],
)
def test_header_values_in_other_spellings_are_redacted(text: str, secret: str) -> None:
    """A credential's value is redacted in every spelling a header takes in text: JSON
    escaped, a JSON pair, an ASGI header tuple, Basic authorization."""
    out = redact(text)
    assert secret not in out


def _console(rl: RequestLog, row: RequestRow) -> list[str]:
    """The console lines `record` writes (when its batch is shown: `flush`), through the
    gateway's own redacting filter."""
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    h = Grab()
    h.addFilter(_Redact())
    logger = logging.getLogger("nonstop")
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    try:
        rl.record(row)
        rl.flush()
    finally:
        logger.removeHandler(h)
        logger.setLevel(old)
    return lines


async def test_key_sent_as_the_model_name_is_not_logged(store: Store) -> None:
    """A key a client sent as the model's name (ANTHROPIC_MODEL and ANTHROPIC_API_KEY swapped)
    reaches neither the log, the console nor the dashboard."""
    bus = EventBus()
    q = bus.subscribe()
    rl = RequestLog(store, Metrics(), bus)
    lines = _console(rl, RequestRow(ts=NOW, request_id="r1", path="/v1/messages", model=API_KEY,
                                    outcome="error", status=404, error=f"model: {API_KEY}"))
    event = q.get_nowait()
    stored = store.recent()
    assert API_KEY not in orjson.dumps(event).decode(), "dashboard feed"
    assert API_KEY not in " ".join(lines), "console line"
    assert API_KEY not in orjson.dumps(stored).decode(), "SQLite request log"


# --- rows lost --------------------------------------------------------------------------------


def test_one_bad_row_does_not_lose_the_rest_of_its_batch(state_dir: Path) -> None:
    """One item SQLite cannot take costs that item only: the other rows of its batch and the
    saved state land."""
    s = Store(state_dir, flush_every=60.0)  # everything below goes in one batch
    s.open()
    try:
        s.log_request(RequestRow(ts=NOW, request_id="good-before", backend="cloud"))
        s.save_state("cloud", {"state": "out"})
        s.log_request(RequestRow(ts=NOW, request_id="odd", backend="llama", output_tokens=2**64 - 1))
        s.log_request(RequestRow(ts=NOW, request_id="good-after", backend="cloud"))
        s.flush(timeout=5)
        ids = [r["request_id"] for r in s.recent()]
        assert "good-before" in ids and "good-after" in ids, f"rows kept: {ids}"
        assert s.load_state("cloud") == {"state": "out"}
    finally:
        s.close()


@pytest.mark.parametrize("before", [1, 129, 300])
def test_a_bad_row_after_full_statements_keeps_each_other_row_once(state_dir: Path, before: int) -> None:
    """Rows already inserted in the batch's transaction (a statement is inserted as soon as
    its rows are made) go back with it when a later item fails, and land once when the
    batch is written item by item; the count of rows written says what is on disk."""
    s = Store(state_dir, flush_every=60.0)  # everything below goes in one batch
    s.open()
    try:
        for i in range(before):
            s.log_request(RequestRow(ts=NOW, request_id=f"b{i}", backend="cloud"))
        s.log_request(RequestRow(ts=NOW, request_id="odd", backend="llama", output_tokens=2**64 - 1))
        s.log_request(RequestRow(ts=NOW, request_id="after", backend="cloud"))
        s.flush(timeout=10)
        ids = [r["request_id"] for r in s.recent(limit=1000)]
        assert sorted(ids) == sorted([f"b{i}" for i in range(before)] + ["after"])
        assert s.written == before + 1
    finally:
        s.close()


def _busy_timeout(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    """The store's connections wait `ms` for another process's lock, not 10 s."""
    real = db.connect

    def quick(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
        conn = real(path, readonly=readonly)
        conn.execute(f"PRAGMA busy_timeout = {ms}")
        return conn

    monkeypatch.setattr(db, "connect", quick)


@contextlib.contextmanager
def _with_another_process(state_dir: Path, monkeypatch: pytest.MonkeyPatch, busy_ms: int) -> Iterator[tuple[Store, sqlite3.Connection]]:
    """An open store (flushing every 0.02 s, waiting `busy_ms` for a lock) and another
    connection to its database, as another process would hold one."""
    _busy_timeout(monkeypatch, busy_ms)
    s = Store(state_dir, flush_every=0.02)
    s.open()
    other = sqlite3.connect(s.path, isolation_level=None)
    try:
        yield s, other
    finally:
        other.close()
        s.close()


def test_a_briefly_locked_database_does_not_lose_rows(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database another process holds past the busy timeout delays a batch, which lands
    once the lock is gone."""
    _busy_timeout(monkeypatch, 200)
    s = Store(state_dir, flush_every=0.02)
    s.open()
    other = sqlite3.connect(s.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # e.g. another nonstop command writing evals
        s.log_request(RequestRow(ts=NOW, request_id="during-lock", backend="cloud"))
        time.sleep(0.6)  # the writer tries, waits its busy timeout, gives up
        other.execute("COMMIT")
        s.log_request(RequestRow(ts=NOW, request_id="after-lock", backend="cloud"))
        s.flush(timeout=5)
        ids = [r["request_id"] for r in s.recent()]
        assert ids == ["during-lock", "after-lock"], f"rows kept: {ids}"
    finally:
        other.close()
        s.close()


def test_a_database_locked_for_good_loses_its_batch_at_once(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A database another process keeps locked past every retry costs the batch, said
    once, at once: not tried item by item (each item would wait out the busy timeout:
    hours for a batch of a thousand rows), and with nothing left counted as pending, so
    reads do not wait for it. The writes after the lock is gone land."""
    monkeypatch.setattr(db, "LOCKED_RETRIES", 1)
    with _with_another_process(state_dir, monkeypatch, 50) as (s, other):
        with caplog.at_level(logging.WARNING, logger="nonstop"):
            other.execute("BEGIN IMMEDIATE")
            t0 = time.monotonic()
            for i in range(300):
                s.log_request(RequestRow(ts=NOW, request_id=f"locked-{i}", backend="cloud"))
            while s._done != s._queued and time.monotonic() - t0 < 10:
                time.sleep(0.01)
            given_up = time.monotonic() - t0
            other.execute("COMMIT")
        assert s._done == s._queued
        assert given_up < 3.0, f"the writer took {given_up:.1f} s to give up (item by item?)"
        said = [r.getMessage() for r in caplog.records if "stayed locked" in r.getMessage()]
        assert len(said) == 1 and "300 writes were lost" in said[0], said
        s.log_request(RequestRow(ts=NOW, request_id="after", backend="cloud"))
        s.flush(timeout=5)
        assert [r["request_id"] for r in s.recent()] == ["after"]


def test_a_writer_far_behind_drops_rows_instead_of_holding_them(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """While MAX_PENDING writes wait (the writer kept from the disk), request rows and
    shadow comparisons are dropped, not held in memory: said once, and counted once the
    writer has caught up. Saved state and flushes are still queued, and the rows queued
    before the limit land."""
    monkeypatch.setattr(db, "MAX_PENDING", 5)
    s = Store(state_dir, flush_every=0.02)  # not opened yet: nothing writes, as with the disk stalled
    try:
        with caplog.at_level(logging.WARNING, logger="nonstop"):
            for i in range(8):
                s.log_request(RequestRow(ts=NOW, request_id=f"r{i}", backend="cloud"))
            s.log_shadow({"request_id": "shadow-dropped"})
            s.save_state("kept", {"n": 1})
            assert len(s._pending) == 6  # five rows, and the saved state
            behind = [r.getMessage() for r in caplog.records if "writes waiting" in r.getMessage()]
            assert len(behind) == 1 and "has 5 writes waiting" in behind[0], behind
            s.open()
            s.flush(timeout=5)
        assert sorted(r["request_id"] for r in s.recent()) == [f"r{i}" for i in range(5)]
        assert s.load_state("kept") == {"n": 1}
        caught = [r.getMessage() for r in caplog.records if "no longer behind" in r.getMessage()]
        assert len(caught) == 1 and "4 request rows and shadow comparisons were dropped" in caught[0], caught
        # No longer behind: rows are queued again.
        s.log_request(RequestRow(ts=NOW, request_id="after", backend="cloud"))
        s.flush(timeout=5)
        assert "after" in [r["request_id"] for r in s.recent()]
    finally:
        s.close()


def test_a_batch_held_by_a_locked_database_counts_against_the_limit(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The writer takes every waiting write into its batch, and puts the batch back while
    another process holds the database: those writes still count. Without that, each
    retry would let another MAX_PENDING rows in (seven times the limit in memory)."""
    monkeypatch.setattr(db, "MAX_PENDING", 20)
    with _with_another_process(state_dir, monkeypatch, 100) as (s, other):
        with caplog.at_level(logging.WARNING, logger="nonstop"):
            other.execute("BEGIN IMMEDIATE")
            for i in range(20):
                s.log_request(RequestRow(ts=NOW, request_id=f"held-{i}", backend="cloud"))
            time.sleep(0.3)  # the writer has them in its batch, waits, puts them back
            assert len(s._pending) <= 20
            for i in range(100):
                s.log_request(RequestRow(ts=NOW, request_id=f"late-{i}", backend="cloud"))
                assert s._queued - s._done <= 20
            other.execute("COMMIT")
            s.flush(timeout=5)
        ids = sorted(r["request_id"] for r in s.recent(limit=500))
        assert ids == sorted(f"held-{i}" for i in range(20)), ids
        said = [r.getMessage() for r in caplog.records if "writes waiting" in r.getMessage()]
        assert len(said) == 1, said
        caught = [r.getMessage() for r in caplog.records if "no longer behind" in r.getMessage()]
        assert len(caught) == 1 and "100 request rows and shadow comparisons" in caught[0], caught


def test_a_lock_met_while_writing_item_by_item_loses_the_rest_at_once(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch written item by item (one of its items SQLite cannot take) that meets a
    lock meanwhile loses the rest of it at once, with the flush in it answered."""
    s = Store(state_dir, flush_every=60.0)
    tries: list[str] = []
    real_write = Store._write

    def write(self: Store, conn: sqlite3.Connection, batch: list, *, requeue: bool = True) -> tuple:
        if len(batch) == 1 and batch[0] is not None and batch[0][0] == "request":
            tries.append(batch[0][1].request_id)
            if batch[0][1].request_id == "first-good":  # the lock comes while the first item is written
                raise db._StillLocked from sqlite3.OperationalError("database is locked")
        return real_write(self, conn, batch, requeue=requeue)

    monkeypatch.setattr(Store, "_write", write)
    s.open()
    try:
        s.log_request(RequestRow(ts=NOW, request_id="first-good", backend="cloud"))
        s.log_request(RequestRow(ts=NOW, request_id="odd", backend="llama", output_tokens=2**64 - 1))
        s.log_request(RequestRow(ts=NOW, request_id="later", backend="cloud"))
        t = time.monotonic()
        s.flush(timeout=5)
        assert time.monotonic() - t < 4.0, "the flush in the batch was not answered"
        assert tries == ["first-good"], tries
        assert s._done == s._queued
        assert [r["request_id"] for r in s.recent()] == []
    finally:
        s.close()


def test_a_full_disk_is_said_once_and_the_writer_goes_on(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Writes the disk refuses (full) cost their rows, and are said once in the console
    log, not once a batch or a row; logging a row never waits for the disk, a flush is
    answered, and once the disk takes writes again the log says so, with what was lost."""
    monkeypatch.setattr(db, "connect", full_disk_connect)
    monkeypatch.setattr(db, "SETTLED", 0.0)  # written again at the first write that lands
    s = Store(state_dir, flush_every=0.005)
    s.open()
    try:
        with caplog.at_level(logging.INFO, logger="nonstop"):
            FULL.set()
            slowest = 0.0
            for i in range(600):
                t = time.perf_counter()
                s.log_request(RequestRow(ts=NOW, request_id=f"lost-{i}", backend="cloud"))
                slowest = max(slowest, time.perf_counter() - t)
                if i % 50 == 0:
                    s.save_state("first_byte", {"n": i})
                    time.sleep(0.02)  # a batch at a time
            t = time.perf_counter()
            s.flush(timeout=10)
            assert time.perf_counter() - t < 2.0, "a flush waited on the full disk"
            assert slowest < 0.05, f"logging a row took {slowest * 1000:.1f} ms"
            FULL.clear()
            s.log_request(RequestRow(ts=NOW, request_id="after", backend="cloud"))
            s.flush(timeout=10)
            assert [r["request_id"] for r in s.recent()] == ["after"]
        said = [r.getMessage() for r in caplog.records if r.name == "nonstop"]
        assert len(said) == 2, said
        assert str(s.path) in said[0] and "database or disk is full" in said[0], said
        assert "written again" in said[1] and "612 " in said[1], said  # 600 rows and 12 saved states
        out, err = capsys.readouterr()
        assert out == "" and err == "", (out, err)
    finally:
        FULL.clear()
        s.close()


def test_close_stops_at_once_when_the_disk_refuses_its_last_writes(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shutdown saves state and closes: with the disk refusing that write (full, read
    only), the stop in the same batch still ends the writer, at once."""
    monkeypatch.setattr(db, "connect", full_disk_connect)
    s = Store(state_dir, flush_every=60.0)  # the state and the stop go in one batch
    s.open()
    try:
        FULL.set()
        s.save_state("first_byte", {"n": 1})
        writer = s._thread
        assert writer is not None
        t = time.perf_counter()
        s.close()
        assert time.perf_counter() - t < 2.0, "close() waited on a writer that missed its stop"
        assert not writer.is_alive()
    finally:
        FULL.clear()


# A request log on a real file system of 512 KB, filled by 3,000 rows of 2 KB; what the
# process says, and how long logging and flushing took.
_FILL = """
import json, sys, time
from pathlib import Path
from nonstop.server.run import setup_logging
from nonstop.store.db import RequestRow, Store
setup_logging()
s = Store(Path(sys.argv[1]) / "state", flush_every=0.01)
s.open()
slowest = 0.0
for i in range(3000):
    t = time.perf_counter()
    s.log_request(RequestRow(ts=time.time(), request_id=f"r{i}", backend="cloud", error="x" * 2000))
    slowest = max(slowest, time.perf_counter() - t)
    if i % 10 == 0:  # a batch at a time: small ones fit while there is room
        time.sleep(0.005)
t = time.perf_counter()
s.flush(timeout=10)
flushed = time.perf_counter() - t
kept = len(s.recent(limit=10000))
s.close()
print(json.dumps({"slowest": slowest, "flush": flushed, "written": kept}))
"""


def test_a_real_full_file_system_is_said_once(tmp_path: Path) -> None:
    """The same on a tmpfs that fills up (mounted in a mount namespace of the process's
    own, so nothing outside it sees the mount): one line in the console log, no
    traceback, rows logged without waiting, the rows that fitted kept."""
    unshare = ["unshare", "-m", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-rm"]
    mount = [*unshare, "sh", "-c", 'mount -t tmpfs -o size=512k tmpfs "$0" && exec "$@"', str(tmp_path)]
    try:
        usable = subprocess.run([*mount, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        usable = False
    if not usable:
        pytest.skip("cannot mount a tmpfs here")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(db.__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*mount, sys.executable, "-c", _FILL, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    said = [line for line in done.stderr.splitlines() if "request log" in line]
    assert len(said) == 1 and "full" in said[0], done.stderr
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < result["written"] < 3000, result
    assert result["slowest"] < 0.05 and result["flush"] < 5, result


def test_a_log_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    """Store.open names the file and the reason: the system's words when the folder cannot
    be written (the fix is another folder), SQLite's when the file itself is bad."""
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OpenFailed) as caught:
        Store(tmp_path / "a-file" / "state").open()
    assert caught.value.unwritable and caught.value.reason == f"{tmp_path / 'a-file'} is a file, not a folder"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "nonstop.db").write_bytes(b"this is not an SQLite database\n" * 200)
    with pytest.raises(OpenFailed) as caught:
        Store(bad).open()
    assert not caught.value.unwritable and "not a database" in caught.value.reason, caught.value.reason


# --- reads at boundaries ----------------------------------------------------------------------


def test_recent_after_id_returns_the_next_rows_not_the_newest(store: Store) -> None:
    """`recent(after_id=N, limit=L)` gives the next L rows after N, so a follower (`nonstop
    status --follow`, the dashboard) never skips a burst."""
    for i in range(5):
        store.log_request(RequestRow(ts=NOW + i, request_id=f"r{i}", backend="cloud"))
    store.flush()
    first = store.recent(limit=1)[0]["id"] - 4  # id of r0
    # A follower polling two rows at a time from r0 on, as follow_rows does.
    seen: list[str] = []
    last = first
    for _ in range(3):
        rows = store.recent(after_id=last, limit=2)
        for r in rows:
            seen.append(r["request_id"])
            last = max(last, r["id"])
    assert seen == ["r1", "r2", "r3", "r4"]


# --- metrics ----------------------------------------------------------------------------------


def test_the_failover_reason_label_is_its_kind_not_the_hour_of_day() -> None:
    """The failover metric's label is the kind of failure, not the hour of day the planner's
    "out until 14:32 UTC (...)" begins with."""
    m = Metrics()
    for reason in ("out until 14:32 UTC (rate_limited)", "out until 15:02 UTC (rate_limited)"):
        m.observe(RequestRow(ts=NOW, backend="llama", outcome="ok", reason=reason))
    lines = [ln for ln in m.render().decode().splitlines() if ln.startswith("nonstop_failovers_total{")]
    assert len(lines) == 1, lines
    assert "until 1" not in lines[0], lines


# --- the file removed or replaced while nonstop runs -----------------------------------------


def _logged(store: Store, *ids: str) -> None:
    for rid in ids:
        store.log_request(RequestRow(ts=time.time(), request_id=rid))
    store.flush()


def _ids_in(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT request_id FROM requests ORDER BY id")]


@pytest.mark.parametrize("how", ["the main file alone", "the file", "the folder"])
def test_a_log_removed_while_serving_is_made_anew(tmp_path: Path, caplog, how: str) -> None:
    """`rm nonstop.db`, `rm nonstop.db*` or `rm -rf` of the state folder: the rows after it
    go to a new database at the same path, which `nonstop logs` and the dashboard read,
    whole and with none of the removed file's rows (its write-ahead log, left at the path
    by `rm nonstop.db`, is not read into the new one)."""
    folder = tmp_path / "state"
    store = Store(folder)
    store.open()
    try:
        _logged(store, *[f"before-{i}" for i in range(50)])
        if how == "the folder":
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        else:
            for suffix in ("",) if how == "the main file alone" else ("", "-wal", "-shm"):
                (Path(str(store.path) + suffix)).unlink(missing_ok=True)
        with caplog.at_level(logging.WARNING, logger="nonstop"):
            _logged(store, "after-1")
            _logged(store, "after-2")
        assert _ids_in(store.path) == ["after-1", "after-2"]
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert sorted(r["request_id"] for r in store.recent()) == ["after-1", "after-2"]  # the readers' connection too
        assert caplog.text.count("was removed or replaced while nonstop ran") == 1
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        for suffix in ("", "-wal", "-shm"):
            assert oct(Path(str(store.path) + suffix).stat().st_mode & 0o777) == "0o600", suffix
    finally:
        store.close()


def test_a_log_that_cannot_be_made_again_loses_rows_until_it_can(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "state"
    store = Store(folder)
    store.open()
    try:
        subprocess.run(["rm", "-rf", str(folder)], check=True)
        folder.write_text("a file where the folder was")  # (root ignores permissions: a file blocks it)
        with caplog.at_level(logging.WARNING, logger="nonstop"):
            _logged(store, "lost-1")
            _logged(store, "lost-2")
            assert store.recent() == []  # read from where the rows went: nowhere
            assert caplog.text.count("cannot be made again") == 1  # said once, not per batch
            folder.unlink()
            _logged(store, "kept")
        assert _ids_in(store.path) == ["kept"]
        assert "the one there now is kept from now on" in caplog.text
    finally:
        store.close()


def test_a_log_moved_aside_keeps_its_rows_and_a_new_one_starts(tmp_path: Path) -> None:
    """`mv nonstop.db* backup/` to start afresh: the moved file keeps what it had, whole,
    and the rows after it go to a new one at the path."""
    store = Store(tmp_path / "state")
    store.open()
    aside = tmp_path / "aside.db"
    try:
        _logged(store, "one", "two")
        for suffix in ("", "-wal", "-shm"):  # a WAL database is its three files
            os.rename(str(store.path) + suffix, str(aside) + suffix)
        _logged(store, "three")
        assert _ids_in(store.path) == ["three"]
    finally:
        store.close()
    assert _ids_in(aside) == ["one", "two"]


def test_instances_sharing_a_folder_both_follow_the_new_log(tmp_path: Path) -> None:
    """Two instances on one state folder: whichever writes first after the removal makes
    the new file, and the other's rows go to that same file, not to the removed one."""
    a, b = Store(tmp_path / "state"), Store(tmp_path / "state")
    a.open()
    b.open()
    try:
        _logged(a, "a0")
        _logged(b, "b0")
        subprocess.run(["rm", "-rf", str(tmp_path / "state")], check=True)
        _logged(b, "b1")  # b makes it
        _logged(a, "a1", "a2")  # a finds another file there, and uses it
        _logged(b, "b2")
        assert _ids_in(a.path) == ["b1", "a1", "a2", "b2"]
        assert sorted(r["request_id"] for r in a.recent()) == ["a1", "a2", "b1", "b2"]
    finally:
        a.close()
        b.close()
