"""SQLite request log and persisted state, written off the event loop.

WAL mode, append-only named migrations. All writes go through one writer thread, so the
request path never waits on the disk, and they go in batches: a write is appended to a
list (no lock, no thread woken), and the writer thread wakes every FLUSH_EVERY seconds,
or as soon as BATCH_ROWS are waiting, and writes everything it finds in one transaction.

What a crash can lose: writes made in the last FLUSH_EVERY seconds (plus the time the
transaction itself takes): half a second. While the writer cannot keep up (the database
locked by another process, a stalled disk), at most MAX_PENDING writes wait in memory;
request rows past them are dropped, said once, and counted when it is no longer behind.
A clean stop (`close()`) and `flush()` write everything first, and a read waits for what
was written before it (`_reading`).
A disk that refuses writes (full, read-only, failing) costs the writes made meanwhile,
and no one waits for it: the console log says so once (see Store._refused).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import operator
import os
import sqlite3
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from nonstop.store import db_path, state_dir_check

log = logging.getLogger("nonstop")
# How often the writer thread looks for writes, and how many waiting wake it at once.
# Few large batches, not many small ones: the writer holds the GIL to bind each batch's
# values, and each time it takes it back from SQLite it can make the event loop's thread
# wait for it, in the middle of a request; and a commit writes its pages whether it holds
# 100 rows or 800. At concurrency 1, batches of 0.1 s or 256 rows put 0.09 to 0.27 ms more
# on the TTFB p99 than these (docs/performance.md, "The request log's batches").
FLUSH_EVERY = 0.5
BATCH_ROWS = 1024
# Writes waiting (queued and not yet written or given up, the batch in the writer's hands
# included) past which request rows and shadow comparisons are dropped, not held: a
# writer kept from the disk (another process holding the database locked through every
# retry, about 70 s; a disk taking seconds a batch) would otherwise pile them up in
# memory, about 1 KB a row. 20,000 rows is over three minutes at 100 requests a second.
# Saved state, flushes and the stop are always queued.
MAX_PENDING = 20_000

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_requests",
        """
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            request_id TEXT NOT NULL DEFAULT '',
            path TEXT NOT NULL DEFAULT '',
            client TEXT NOT NULL DEFAULT '',
            session_id TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            stream INTEGER NOT NULL DEFAULT 0,
            backend TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            outcome TEXT NOT NULL DEFAULT '',
            status INTEGER NOT NULL DEFAULT 0,
            stop_reason TEXT NOT NULL DEFAULT '',
            ttfb_ms REAL,
            total_ms REAL,
            overhead_ms REAL,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX requests_ts ON requests (ts);
        """,
    ),
    (
        "0002_state",
        "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);",
    ),
    (
        "0003_bodies",
        "CREATE TABLE bodies (request_id INTEGER PRIMARY KEY, request TEXT, response TEXT);",
    ),
    (
        "0004_route",
        """
        ALTER TABLE requests ADD COLUMN workload TEXT NOT NULL DEFAULT '';
        ALTER TABLE requests ADD COLUMN route TEXT NOT NULL DEFAULT '';
        """,
    ),
    (
        "0005_notes",
        "ALTER TABLE requests ADD COLUMN notes TEXT NOT NULL DEFAULT '';",
    ),
    (
        "0006_user",
        "ALTER TABLE requests ADD COLUMN user TEXT NOT NULL DEFAULT '';",
    ),
    (
        "0007_evals",
        """
        CREATE TABLE evals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            backend TEXT NOT NULL,
            model_key TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            suite TEXT NOT NULL DEFAULT '',
            overall REAL,
            scores TEXT NOT NULL DEFAULT '',
            tasks TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX evals_backend ON evals (backend, ts);
        """,
    ),
    (
        "0008_shadows",
        """
        CREATE TABLE shadows (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            request_id TEXT NOT NULL DEFAULT '',
            workload TEXT NOT NULL DEFAULT '',
            backend TEXT NOT NULL DEFAULT '',
            cloud_tool TEXT NOT NULL DEFAULT '',
            local_tool TEXT NOT NULL DEFAULT '',
            same_tool INTEGER NOT NULL DEFAULT 0,
            valid_input INTEGER NOT NULL DEFAULT 0,
            cloud_stop TEXT NOT NULL DEFAULT '',
            local_stop TEXT NOT NULL DEFAULT '',
            same_stop INTEGER NOT NULL DEFAULT 0,
            length_ratio REAL,
            cloud_ms REAL,
            local_ms REAL,
            agreed INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX shadows_ts ON shadows (ts);
        """,
    ),
]


@dataclass
class RequestRow:
    ts: float
    request_id: str = ""
    path: str = ""
    client: str = ""
    session_id: str = ""
    model: str = ""
    stream: bool = False
    backend: str = ""
    reason: str = ""
    outcome: str = ""
    status: int = 0
    stop_reason: str = ""
    ttfb_ms: float | None = None
    total_ms: float | None = None
    overhead_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""
    # The workload class and the plan that routed it (steps and skipped, each with its rule).
    workload: str = ""
    route: dict[str, Any] | None = None
    # What nonstop changed on the way, for a local model: {"fit": [...], "repairs": [...]}.
    notes: dict[str, Any] | None = None
    # The [[users]] entry whose token the request carried ("" without per-user tokens).
    user: str = ""
    request_body: str | None = field(default=None, repr=False)
    response_body: str | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        # asdict() deep-copies and is ~20x slower; this runs for every request (its
        # fields read by one attrgetter, in C).
        return dict(zip(_PUBLIC_FIELDS, _public_values(self), strict=True))


_PUBLIC_FIELDS = [f.name for f in fields(RequestRow) if f.name not in ("request_body", "response_body")]
_public_values = operator.attrgetter(*_PUBLIC_FIELDS)
_COLUMNS = [
    "ts", "request_id", "path", "client", "session_id", "model", "stream", "backend", "reason",
    "outcome", "status", "stop_reason", "ttfb_ms", "total_ms", "overhead_ms", "input_tokens",
    "output_tokens", "error", "workload", "route", "notes", "user",
]
_ROW = f"({', '.join('?' * len(_COLUMNS))})"
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES {_ROW}"
# The most rows per INSERT statement (see Store._insert_rows): a power of two.
ROWS_PER_INSERT = 128


@functools.cache
def _insert_many(rows: int) -> str:
    return f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES " + ", ".join([_ROW] * rows)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        # The path inside a URI: a `#`, `?` or `%` in a folder's name is quoted, not read as
        # the URI's own (which would open another file, or none).
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, timeout=5,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=10, check_same_thread=False)
        _use_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    return conn


def _use_wal(conn: sqlite3.Connection, wait: float = 10.0) -> None:
    """Put the database in WAL mode. Two processes making a new database at once can find
    it locked while the other one switches the mode, and SQLite does not wait on its busy
    timeout for that: this waits, as the connection would for any other lock."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the migrations this database lacks; the names of those applied here.

    Two processes can open a new database at once (the server, and `nonstop eval` or
    `status` beside it; two instances sharing a state folder). Each migration takes the
    write lock first (BEGIN IMMEDIATE, waiting up to the connection's timeout) and
    records its name before its changes: a process that finds the name already there
    rolls back and moves on, where it would have failed on a table that exists."""
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)")
    done = {r[0] for r in conn.execute("SELECT name FROM migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        try:
            conn.executescript(f"BEGIN IMMEDIATE;INSERT INTO migrations VALUES ('{name}', {time.time()});{sql}COMMIT;")
        except sqlite3.IntegrityError:  # another process applied it meanwhile
            conn.rollback()
            continue
        except BaseException:
            conn.rollback()
            raise
        applied.append(name)
    return applied


def _try_a_write(conn: sqlite3.Connection) -> None:
    """Write, and take it back: SQLite opens a file it may not write read-only, without a
    word, and a database already in WAL mode and up to date needs no write to open. A
    database another process is writing to is one this one can write to as well."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            return
        raise
    try:
        conn.execute("CREATE TABLE write_check (x)")
    finally:
        conn.rollback()


def _words(exc: BaseException) -> str:
    """What went wrong, in the system's or SQLite's words (an OSError without its errno)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


class OpenFailed(Exception):
    """The request log cannot be opened: its file, and why. `unwritable`: nonstop may not
    write there (the folder's or the file's permissions, a read-only or full disk);
    otherwise the file itself is bad (not a database). `full`: the disk is full."""

    def __init__(self, path: Path, reason: str, *, unwritable: bool, full: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.unwritable = unwritable or full
        self.full = full


def ensure_private_dir(path: Path) -> None:
    """The folder, made if need be, and closed to everyone but its owner. The owner's own
    bits are kept as they are: a folder its user made read-only stays read-only (the
    request log then says it cannot write there), never opened up behind their back."""
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, mode & 0o700)


def private_file(path: Path) -> None:
    """The database file, made empty (a valid SQLite database) and private if it is not
    there: SQLite makes its -wal and -shm with the database file's mode, so they are
    private too. (Not by setting the umask, which is the whole process's: other threads
    make files meanwhile.)"""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


class Store:
    """The request log and key/value state. Reads are synchronous (call them off the
    loop with asyncio.to_thread); writes are handed to the writer thread in batches."""

    def __init__(self, state_dir: Path, *, retention_days: float = 30.0, flush_every: float = FLUSH_EVERY):
        self._locked = 0  # batches put back in a row because another process held the database
        self.state_dir = state_dir
        self.path = db_path(state_dir)
        self.retention_days = retention_days
        self.flush_every = flush_every
        # Writes waiting for the writer thread (deque appends and pops are atomic, so the
        # event loop and the writer share it without a lock); None asks it to stop.
        self._pending: deque[tuple[str, Any] | None] = deque()
        # Items ever queued, and items the writer has finished with. A read waits for the
        # writer while they differ: the queue alone is empty while a batch is being written.
        self._queued = 0
        self._done = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._read: sqlite3.Connection | None = None
        # One reader at a time on the read connection: a statement started while another
        # thread's is still running would share its older snapshot and miss newer rows.
        self._read_lock = threading.Lock()
        self._listeners: list[Any] = []
        self.written = 0
        # While the disk refuses writes: when it last did (0.0: it takes them), and the writes lost.
        self._refused_at = 0.0
        self._lost = 0
        # Rows dropped while MAX_PENDING writes waited (counted by the event loop's thread),
        # and those the writer has said were (by its own): apart, so neither thread writes
        # what the other does.
        self._dropped = 0
        self._dropped_said = 0
        # The file the connections have open (st_dev, st_ino): one removed or replaced while
        # nonstop runs is made anew at its path (see _same_file).
        self._file: tuple[int, int] | None = None
        self._gone = False  # it was removed, and no new one could be made yet: rows go to memory
        self._reopen_failed = False

    def open(self) -> None:
        """Open (or make) the database and start the writer; OpenFailed names the reason
        when the log cannot be opened or written."""
        conn, self._read = self._connect()
        self._prune(conn)
        self._thread = threading.Thread(target=self._writer, args=(conn,), name="nonstop-store", daemon=True)
        self._thread.start()

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """The writer's connection and the readers', to the database made (or migrated) at
        the path; OpenFailed when it cannot be."""
        conns: list[sqlite3.Connection] = []
        try:
            ensure_private_dir(self.state_dir)
            private_file(self.path)
            conns.append(connect(self.path))
            conn = conns[0]
            migrate(conn)
            _try_a_write(conn)
            conns.append(connect(self.path))
        except (sqlite3.Error, OSError) as exc:
            for c in conns:
                c.close()  # before the folder is looked at: see state_dir_problem
            problem, full = state_dir_check(self.state_dir)
            raise OpenFailed(self.path, problem or _words(exc), unwritable=problem is not None or _refused(exc),
                             full=full or _full(exc)) from exc
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(str(self.path) + suffix, 0o600)
        self._file = _file_id(self.path)
        return conn, conns[1]

    def _same_file(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """The writer's connection, to the file at the path. One removed while nonstop runs
        (the state folder cleared, the file deleted, or moved aside to start afresh) would
        take every row into a file no one reads any more: the connections let go of it and
        the database at the path is used, made anew if need be (another instance sharing
        the folder may have made it first). While it cannot be (the folder cannot be made
        again), rows go to a database in memory and are lost, said once, and it is tried
        again before each batch. (SQLite knows a file that is no longer at its path:
        closing it neither checkpoints into nor deletes the write-ahead log now there.)"""
        if not self._gone and _file_id(self.path, self._file) == self._file:
            return conn
        if not self._gone:
            self._gone = True
            conn.close()
            conn = _in_memory()
            self._swap_read(_in_memory())
        try:
            new, read = self._connect()
        except OpenFailed as exc:
            if not self._reopen_failed:
                log.warning("the request log %s was removed, and cannot be made again (%s): requests are served as "
                            "before, but their rows are lost until it can be", self.path, exc.reason)
                self._reopen_failed = True
            return conn
        log.warning("the request log %s was removed or replaced while nonstop ran: the one there now is kept from "
                    "now on", self.path)
        self._gone = self._reopen_failed = False
        conn.close()
        self._swap_read(read)
        return new

    def _swap_read(self, read: sqlite3.Connection) -> None:
        with self._read_lock:
            old, self._read = self._read, read
        if old is not None:
            old.close()

    def close(self) -> None:
        if self._thread is not None:
            self._queue(None)
            self._wake.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self._read is not None:
            self._read.close()
            self._read = None

    # --- writes (batched) --------------------------------------------------------------

    def _queue(self, item: tuple[str, Any] | None) -> None:
        self._queued += 1  # counted before it is seen, so a read never misses it
        self._pending.append(item)

    def log_request(self, row: RequestRow) -> None:
        if self._queued - self._done >= MAX_PENDING:  # (the batch being written, or put back, counts)
            self._drop()
            return
        self._queue(("request", row))
        if len(self._pending) >= BATCH_ROWS:
            self._wake.set()

    def log_shadow(self, comparison: dict[str, Any]) -> None:
        """One shadow comparison (server/shadow.py), batched like a request row."""
        if self._queued - self._done >= MAX_PENDING:
            self._drop()
            return
        self._queue(("shadow", comparison))

    def _drop(self) -> None:
        """A row not queued: MAX_PENDING writes wait already (queued and not yet written
        or given up, the batch in the writer's hands included). Said once until the writer
        is no longer behind (see _caught_up)."""
        if self._dropped == self._dropped_said:
            log.warning("the request log %s has %d writes waiting (the database locked by another process, or the "
                        "disk slow): request rows and shadow comparisons are dropped, not held in memory, until it "
                        "has caught up", self.path, MAX_PENDING)
        self._dropped += 1

    def _caught_up(self) -> None:
        """After a batch: rows dropped meanwhile are said, with their number, once the
        writes waiting are back under half the limit (written, or lost and said so)."""
        dropped = self._dropped - self._dropped_said
        if dropped and self._queued - self._done < MAX_PENDING // 2:
            self._dropped_said += dropped
            log.warning("the request log %s is no longer behind; %d request rows and shadow comparisons were "
                        "dropped while it was", self.path, dropped)

    def save_state(self, key: str, value: Any) -> None:
        self._queue(("state", (key, orjson.dumps(value).decode(), time.time())))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything written so far is on disk."""
        done = threading.Event()
        self._queue(("flush", done))
        self._wake.set()
        done.wait(timeout)

    def _writer(self, conn: sqlite3.Connection) -> None:
        last_prune = time.time()
        pending = self._pending
        while True:
            self._wake.wait(self.flush_every)
            self._wake.clear()
            batch = []
            with contextlib.suppress(IndexError):
                while True:
                    batch.append(pending.popleft())
            if not batch:
                continue
            try:
                conn = self._same_file(conn)
            except Exception:  # the writer must not die: the batch goes where it went before
                log.exception("checking the request log's file failed")
            stop, events = self._write(conn, batch)
            if events is _AGAIN:
                continue
            self._done += len(batch)
            self._caught_up()  # (before the flushes are answered: a flush sees it said)
            for ev in events:
                ev.set()
            if time.time() - last_prune > 3600:
                self._prune(conn)
                last_prune = time.time()
            if stop:
                conn.close()
                return

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[str, Any] | None], *,
               requeue: bool = True) -> tuple[bool, list[threading.Event]]:
        """One transaction for the batch; (a stop was asked, the flushes to answer).
        `requeue`: a database locked by another process puts the batch back in the queue
        (up to LOCKED_RETRIES times in a row); without it, _StillLocked is raised."""
        stop = False
        events = []
        rows: list[tuple[Any, ...]] = []  # request rows without bodies, inserted together
        written = 0  # request rows in the transaction: counted once it commits
        try:
            with conn:
                for it in batch:
                    if it is None:
                        stop = True
                        continue
                    kind, payload = it
                    if kind == "request" and payload.request_body is None and payload.response_body is None:
                        rows.append(_values(payload))
                        written += 1
                        if len(rows) >= ROWS_PER_INSERT:  # a statement at a time: the GIL goes back to
                            self._insert_rows(conn, rows)  # SQLite between them (see _insert_rows)
                        continue
                    if rows:
                        self._insert_rows(conn, rows)
                    if kind == "request":
                        cur = conn.execute(_INSERT, _values(payload))
                        conn.execute("INSERT INTO bodies VALUES (?, ?, ?)",
                                     (cur.lastrowid, payload.request_body, payload.response_body))
                        written += 1
                    elif kind == "state":
                        conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", payload)
                    elif kind == "shadow":
                        conn.execute(_SHADOW_INSERT, [payload.get(c) for c in _SHADOW_COLUMNS])
                    elif kind == "flush":
                        events.append(payload)
                if rows:
                    self._insert_rows(conn, rows)
            self.written += written
        except (sqlite3.Error, OverflowError, ValueError, TypeError) as exc:  # the log must never take the gateway down
            busy = _busy(exc)
            if busy and not requeue:
                raise _StillLocked from exc
            if busy and self._locked < LOCKED_RETRIES:
                # Another process holds the database past the busy timeout (a long read):
                # the batch goes back to the front of the queue, for the next round.
                self._locked += 1
                self._pending.extendleft(reversed(batch))
                return False, _AGAIN
            refused = _refused(exc)
            if len(batch) > 1 and not refused and not busy:  # one item SQLite cannot take (a count over 2**63) costs that item only
                rows.clear()
                stop, events = False, []
                for k, it in enumerate(batch):
                    try:
                        s, e = self._write(conn, [it], requeue=False)
                    except _StillLocked as locked:  # locked meanwhile: each item would wait out the busy timeout
                        s, e = self._lose(batch[k:], locked.__cause__ or exc, busy=True)
                        return stop or s, events + e
                    stop, events = stop or s, events + e
                return stop, events
            # Still locked after LOCKED_RETRIES rounds: the batch is lost whole, not tried
            # item by item (each would wait out the busy timeout: hours for a large batch).
            return self._lose(batch, exc, refused=refused, busy=busy)
        self._locked = 0
        if self._refused_at and time.monotonic() - self._refused_at >= SETTLED \
                and any(it is not None and it[0] != "flush" for it in batch):
            log.info("the request log %s is written again; %d writes (request rows, saved state) were lost",
                     self.path, self._lost)
            self._refused_at, self._lost = 0.0, 0
        return stop, events

    def _lose(self, batch: list[tuple[str, Any] | None], exc: BaseException, *, refused: bool = False,
              busy: bool = False) -> tuple[bool, list[threading.Event]]:
        """The batch's writes are lost: said in the console log, its flushes answered all
        the same (nothing more will come of them), and a stop in it kept, wherever the
        failure came before it (close() waits on it)."""
        lost = sum(1 for it in batch if it is not None and it[0] != "flush")
        if refused:
            self._refused(exc, lost)
        elif busy and lost:
            log.warning("the request log %s stayed locked by another process through %d tries (%s); %d writes "
                        "were lost, the writes after them are kept", self.path, LOCKED_RETRIES + 1, exc, lost)
        elif lost:
            log.warning("the request log could not write a %s (%s: %s); the writes beside it are kept",
                        "row" if batch[0] and batch[0][0] == "request" else "record", type(exc).__name__, exc)
        self._locked = 0
        return any(it is None for it in batch), [it[1] for it in batch if it is not None and it[0] == "flush"]

    def _refused(self, exc: BaseException, lost: int) -> None:
        """Writes the disk refuses (full, read-only, failing) are said once, when the first
        is lost, and once more when the log has been written again for SETTLED seconds:
        not once a batch, nor once a batch that happened to fit on a nearly full disk."""
        if not self._refused_at:
            fix = "free space on its disk" if "full" in str(exc) else "check that nonstop can write its folder (state_dir)"
            log.warning("the request log %s cannot be written (%s): requests are served as before, but their rows "
                        "are lost until it can be (said again when it is); %s", self.path, exc, fix)
        self._refused_at = time.monotonic()
        self._lost += lost

    def _insert_rows(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        # Many rows to a statement: sqlite3 lets go of the GIL around every statement it
        # runs, and each time the writer takes it back it makes the event loop's thread
        # wait for it (executemany: once per row). And no more than a statement's rows at
        # once (_write calls this as soon as it has made ROWS_PER_INSERT rows' values): the
        # loop's thread waits for at most one statement's values and binding. As many rows
        # as the SQLite build's variable limit allows (999 before SQLite 3.32), in
        # statements of a power of two rows: sqlite3 keeps every statement it prepared (128
        # of them), and one of 100 rows is some 200 KB; one per batch size came to 17 MB,
        # these 8 to 0.5 MB.
        most = max(1, min(ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(_COLUMNS)))
        at = 0
        while at < len(rows):
            n = 1 << (min(most, len(rows) - at).bit_length() - 1)  # the largest power of two that fits
            conn.execute(_insert_many(n), [v for row in rows[at:at + n] for v in row])
            at += n
        rows.clear()

    def _prune(self, conn: sqlite3.Connection) -> None:
        if self.retention_days <= 0:
            return
        cutoff = time.time() - self.retention_days * 86400
        with contextlib.suppress(sqlite3.Error), conn:
            conn.execute("DELETE FROM bodies WHERE request_id IN (SELECT id FROM requests WHERE ts < ?)", (cutoff,))
            conn.execute("DELETE FROM requests WHERE ts < ?", (cutoff,))

    # --- reads -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The read connection, for one reader, once every write made before the read is
        on disk (reads run off the event loop, so waiting for the writer blocks no one)."""
        if self._thread is not None and self._done != self._queued:
            self.flush()
        with self._read_lock:
            assert self._read is not None
            yield self._read

    def load_state(self, key: str) -> Any:
        with self._reading() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def bodies(self, request_id: int) -> tuple[str, str | None, str | None] | None:
        """(the user who sent it, request body, response body) of one logged request, or
        None when it was logged without bodies."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT r.user, b.request, b.response FROM requests r JOIN bodies b ON b.request_id = r.id WHERE r.id = ?",
                (request_id,),
            ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def recent(self, **filters: Any) -> list[dict[str, Any]]:
        with self._reading() as conn:
            return recent(conn, **filters)

    def totals_since(self, since: float) -> dict[str, dict[str, int]]:
        with self._reading() as conn:
            return totals_since(conn, since)

    def shadow_agreement(self, since: float) -> dict[str, dict[str, Any]]:
        with self._reading() as conn:
            return shadow_agreement(conn, since)


# Seconds the log must take writes after refusing some before it is said to be written
# again (near a full disk, a small batch fits between large ones that do not).
SETTLED = 60.0
# Batches put back at most this many times in a row while another process holds the
# database past its busy timeout (10 s each); then the batch is given up, said on stderr.
LOCKED_RETRIES = 6
# _write's answer for a batch put back in the queue.
_AGAIN: list[threading.Event] = []


class _StillLocked(Exception):
    """_write without requeue met a database another process holds locked."""


# SQLite's primary result codes for writes the file system refuses: SQLITE_PERM,
# SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN.
_REFUSED = {3, 8, 10, 13, 14}
SQLITE_FULL = 13
_REFUSED_WORDS = ("disk is full", "readonly database", "disk I/O error", "unable to open")


def _primary_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of an error (its extended code's low byte); None
    where the error does not carry one, and only its words say what it was."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _refused(exc: BaseException) -> bool:
    """Whether a write failed for the disk (full, read-only, failing), not for its row."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = _primary_code(exc)
    return code in _REFUSED if code is not None else any(w in str(exc) for w in _REFUSED_WORDS)


def _full(exc: BaseException) -> bool:
    """Whether a write failed for want of space on the disk."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(exc, sqlite3.Error):
        return False
    code = _primary_code(exc)
    return code == SQLITE_FULL if code is not None else "disk is full" in str(exc)


def _in_memory() -> sqlite3.Connection:
    """A database with the log's tables that keeps nothing: where rows go while the file
    cannot be made."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.row_factory = sqlite3.Row
    migrate(conn)
    return conn


def _file_id(path: Path, known: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """The file at `path` (device and inode), None when there is none; `known` when it
    cannot be told (the folder not readable a moment, a network file system's hiccup):
    a working connection is not given up on a doubt."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return known
    return st.st_dev, st.st_ino


def _busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and any(w in str(exc) for w in ("locked", "busy"))


def _values(row: RequestRow) -> tuple[Any, ...]:
    return (
        row.ts, row.request_id, row.path, row.client, row.session_id, row.model, int(row.stream),
        row.backend, row.reason, row.outcome, row.status, row.stop_reason, row.ttfb_ms, row.total_ms,
        row.overhead_ms, row.input_tokens, row.output_tokens, row.error, row.workload,
        orjson.dumps(row.route).decode() if row.route else "",
        orjson.dumps(row.notes).decode() if row.notes else "", row.user,
    )


def recent(
    conn: sqlite3.Connection,
    *,
    limit: int = 50,
    after_id: int = 0,
    backend: str = "",
    outcome: str = "",
    model: str = "",
    since: float = 0.0,
) -> list[dict[str, Any]]:
    sql = "SELECT * FROM requests WHERE id > ?"
    args: list[Any] = [after_id]
    if backend:
        if backend == "local":
            sql += " AND backend != 'cloud' AND backend != ''"
        else:
            sql += " AND backend = ?"
            args.append(backend)
    if outcome:
        sql += " AND outcome = ?"
        args.append(outcome)
    if model:
        sql += " AND model LIKE ?"
        args.append(model.replace("*", "%"))
    if since:
        sql += " AND ts >= ?"
        args.append(since)
    # After an id: the next rows (a follower must not skip a burst); else the newest.
    sql += " ORDER BY id ASC LIMIT ?" if after_id > 0 else " ORDER BY id DESC LIMIT ?"
    args.append(max(1, min(int(limit), 10000)))
    rows = [_row(r) for r in conn.execute(sql, args)]
    if after_id <= 0:
        rows.reverse()
    return rows


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    for key in ("route", "notes"):
        value = d.get(key)
        if isinstance(value, str):
            try:
                d[key] = orjson.loads(value) if value else None
            except orjson.JSONDecodeError:
                d[key] = None
    return d


_SHADOW_COLUMNS = ["ts", "request_id", "workload", "backend", "cloud_tool", "local_tool", "same_tool", "valid_input",
                   "cloud_stop", "local_stop", "same_stop", "length_ratio", "cloud_ms", "local_ms", "agreed"]
_SHADOW_INSERT = f"INSERT INTO shadows ({', '.join(_SHADOW_COLUMNS)}) VALUES ({', '.join('?' * len(_SHADOW_COLUMNS))})"


def shadow_agreement(conn: sqlite3.Connection, since: float) -> dict[str, dict[str, Any]]:
    """Per workload class since `since`: how many comparisons, how often the local model
    agreed (same tool with a valid input, same stop reason), and the median length ratio."""
    out: dict[str, dict[str, Any]] = {}
    rows = conn.execute("SELECT workload, agreed, same_tool, same_stop, length_ratio FROM shadows WHERE ts >= ?", (since,))
    for workload, agreed, same_tool, same_stop, ratio in rows:
        c = out.setdefault(workload or "main", {"n": 0, "agreed": 0, "same_tool": 0, "same_stop": 0, "ratios": []})
        c["n"] += 1
        c["agreed"] += int(agreed)
        c["same_tool"] += int(same_tool)
        c["same_stop"] += int(same_stop)
        if ratio is not None:
            c["ratios"].append(ratio)
    for c in out.values():
        ratios = sorted(c.pop("ratios"))
        c["rate"] = c["agreed"] / c["n"]
        c["length_ratio"] = ratios[len(ratios) // 2] if ratios else None
    return out


def totals_since(conn: sqlite3.Connection, since: float) -> dict[str, dict[str, int]]:
    out = {k: {"requests": 0, "input_tokens": 0, "output_tokens": 0} for k in ("cloud", "local")}
    q = (
        "SELECT CASE WHEN backend = 'cloud' THEN 'cloud' ELSE 'local' END AS side, COUNT(*), "
        "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM requests "
        "WHERE ts >= ? AND backend != '' GROUP BY side"
    )
    for side, n, i, o in conn.execute(q, (since,)):
        out[side] = {"requests": n, "input_tokens": i, "output_tokens": o}
    return out


# --- eval results (nonstop.quality reads and writes these) ----------------------------------


@dataclass
class EvalRow:
    """One evaluation of one backend's model: when, which model (its identity as a dict,
    and the key that changes with it), which suite, and the scores."""

    ts: float
    backend: str
    model_key: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    suite: str = ""
    overall: float | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    id: int = 0


def save_eval(conn: sqlite3.Connection, row: EvalRow) -> int:
    with conn:
        cur = conn.execute(
            "INSERT INTO evals (ts, backend, model_key, model, suite, overall, scores, tasks) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.ts, row.backend, row.model_key, orjson.dumps(row.model).decode(), row.suite, row.overall,
             orjson.dumps(row.scores).decode(), orjson.dumps(row.tasks).decode()),
        )
    return int(cur.lastrowid or 0)


def eval_history(conn: sqlite3.Connection, backend: str = "", limit: int = 200) -> list[EvalRow]:
    """Evaluations, newest first; of one backend when `backend` is given."""
    sql = "SELECT * FROM evals" + (" WHERE backend = ?" if backend else "") + " ORDER BY ts DESC, id DESC LIMIT ?"
    args: list[Any] = [backend] if backend else []
    return [_eval_row(r) for r in conn.execute(sql, [*args, max(1, int(limit))])]


def latest_evals(conn: sqlite3.Connection) -> dict[str, EvalRow]:
    """The newest evaluation of each backend."""
    sql = ("SELECT * FROM evals e WHERE id = (SELECT id FROM evals f WHERE f.backend = e.backend "
           "ORDER BY ts DESC, id DESC LIMIT 1)")
    return {row.backend: row for row in map(_eval_row, conn.execute(sql))}


def _eval_row(r: sqlite3.Row) -> EvalRow:
    def load(text: str, empty: Any) -> Any:
        try:
            return orjson.loads(text) if text else empty
        except orjson.JSONDecodeError:
            return empty

    return EvalRow(ts=r["ts"], backend=r["backend"], model_key=r["model_key"], model=load(r["model"], {}),
                   suite=r["suite"], overall=r["overall"], scores=load(r["scores"], {}), tasks=load(r["tasks"], []),
                   id=r["id"])


def last_request_at(conn: sqlite3.Connection, backend: str, since: float) -> float | None:
    """When `backend` last served a request logged at or after `since` (None: none)."""
    row = conn.execute("SELECT MAX(ts) FROM requests WHERE ts >= ? AND backend = ?", (since, backend)).fetchone()
    return float(row[0]) if row and row[0] is not None else None
