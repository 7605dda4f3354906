"""The outbox's SQLite file: schema, delivery states, one connection per process.

SQLite connections must not cross ``fork()`` (DataLoader workers fork), so each process
opens its own connection lazily; an inherited one is left alone, never closed or used.
The outbox's queries live in mixins over :class:`OutboxBase` (``outbox``,
``outbox_priority``, ``outbox_runs``, ``outbox_reads``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from afs_callbacks.delivery.priority import FOLDED, SUPERSEDED

PENDING = "pending"
SENDING = "sending"
DELIVERED = "delivered"
DEAD = "dead"
#: Every delivery state: superseded (stale progress, not sent) and folded (held back by the
#: channel's budget, named in a digest) are finished states like delivered and dead.
STATES = (PENDING, SENDING, DELIVERED, DEAD, SUPERSEDED, FOLDED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    event_type TEXT NOT NULL,
    level TEXT NOT NULL,
    run_id TEXT,
    title TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_created ON events (created);
-- Superseding looks events up by run and type.
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, event_type, created);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_attempt REAL,
    lease_until REAL,
    lease_owner TEXT,
    last_error TEXT,
    delivered_at REAL,
    PRIMARY KEY (event_id, channel)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (channel, state, next_attempt);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    model TEXT,
    host TEXT,
    pid INTEGER,
    status TEXT NOT NULL,
    started_at REAL,
    updated_at REAL,
    ended_at REAL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
CREATE TABLE IF NOT EXISTS points (
    run_id TEXT NOT NULL,
    series TEXT NOT NULL,
    axis TEXT NOT NULL,
    x REAL NOT NULL,
    y REAL,
    PRIMARY KEY (run_id, series, x)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cards (
    run_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    message_id TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (run_id, channel)
);
"""

# Connections inherited across fork(): kept referenced so they are never closed (closing
# one in the child could checkpoint or delete the parent's WAL).
_inherited: list[sqlite3.Connection] = []
_instances: weakref.WeakSet[OutboxBase] = weakref.WeakSet()


def lease_owner() -> str:
    """Who holds a lease: host and PID, so a dead local owner can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}"


class OutboxBase:
    """The SQLite file at ``path`` (``":memory:"`` for a volatile one) and its connection.

    Thread-safe within a process; safe across processes through SQLite's locking.
    """

    #: Seconds a statement waits for another process's write lock before failing.
    busy_timeout: float = 10.0

    def __init__(self, path: str | os.PathLike[str], *, connect: bool = True) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        _instances.add(self)
        if connect:
            self._connection()  # fail early (bad path, read-only disk) in the constructor

    def _make_parent(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

    # Connection handling -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._after_fork()
        if self._conn is None:
            with self._lock:  # two threads opening at once would race on the schema and WAL
                return self._open_connection()
        return self._conn

    def _open_connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._make_parent()
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL survives a killed process (not a power cut) without an fsync
            # per event, which keeps notify() in the tens of microseconds.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def _after_fork(self) -> None:
        if self._conn is not None:
            _inherited.append(self._conn)
        self._conn = None
        self._lock = threading.RLock()
        self._pid = os.getpid()

    @contextlib.contextmanager
    def _transaction(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close this process's connection (an inherited one is left alone)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def _finish(self, sql: str, params: Sequence[Any]) -> None:
        with self._transaction() as conn:
            conn.execute(sql, params)

    def data_version(self) -> int:
        """A number that changes when another connection (process) commits to the file: an
        idle sender reads it instead of the tables to learn whether anything arrived."""
        with self._lock:
            return int(self._connection().execute("PRAGMA data_version").fetchone()[0])


def _reset_after_fork() -> None:
    for outbox in list(_instances):
        outbox._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
