"""The durable outbox: every accepted event and its delivery state per channel, in SQLite.

The same table is the notification history. Rows move ``pending -> sending -> delivered``
or back to ``pending`` with a later ``next_attempt``, or end ``dead``. A sender claims rows
with a lease (``lease_until`` + ``lease_owner``) inside ``BEGIN IMMEDIATE``, so two processes
never send the same row at once and a crashed sender's rows are claimed again.

SQLite connections must not cross ``fork()`` (DataLoader workers fork), so each process
opens its own connection lazily; an inherited one is left alone, never closed or used.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.delivery.budget import HeldMessage
from afs_callbacks.delivery.priority import (
    BUDGET_EXEMPT_TYPES,
    FOLDED,
    SUPERSEDED,
    priority_sql,
    sql_list,
)
from afs_callbacks.events import PROGRESS_TYPES, TERMINAL_TYPES, NotificationEvent, NotificationLevel
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import MetricPoint, RunState

log = get_logger(__name__)

PENDING = "pending"
SENDING = "sending"
DELIVERED = "delivered"
DEAD = "dead"
STATES = (PENDING, SENDING, DELIVERED, DEAD)

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

#: At most this many points are kept per (run, series); beyond it every other one goes.
MAX_POINTS_PER_SERIES = 2000

# Connections inherited across fork(): kept referenced so they are never closed (closing
# one in the child could checkpoint or delete the parent's WAL).
_inherited: list[sqlite3.Connection] = []
_instances: weakref.WeakSet[Outbox] = weakref.WeakSet()


@dataclass(frozen=True)
class Claim:
    """One delivery claimed for sending: the event and how many attempts it has had."""

    event: NotificationEvent
    channel: str
    attempts: int


@dataclass(frozen=True)
class Delivery:
    """The state of one event on one channel, as the history shows it."""

    channel: str
    state: str
    attempts: int
    next_attempt: float | None
    last_error: str | None
    delivered_at: float | None


@dataclass(frozen=True)
class HistoryEntry:
    """One event and its deliveries."""

    event: NotificationEvent
    deliveries: tuple[Delivery, ...] = field(default_factory=tuple)


def lease_owner() -> str:
    """Who holds a lease: host and PID, so a dead local owner can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Outbox:
    """SQLite-backed outbox and history at ``path`` (``":memory:"`` for a volatile one).

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

    # Writing ------------------------------------------------------------------------

    def enqueue(self, event: NotificationEvent, channels: Iterable[str]) -> None:
        """Store ``event`` and one pending delivery per channel, in one transaction."""
        self.enqueue_many([(event, list(channels))])

    def enqueue_many(
        self,
        items: Sequence[tuple[NotificationEvent, Sequence[str]]],
        *,
        pause: Callable[[], None] | None = None,
    ) -> None:
        """Store several events and their pending deliveries in one transaction (the writer
        thread batches: one commit for many events is what keeps up under contention).

        ``pause`` is called after each event is serialised (the writer yields the GIL there,
        so a training thread never waits long for it).
        """
        now = time.time()
        events = []
        for event, _ in items:
            events.append(event_row(event))
            if pause is not None:
                pause()
        rows = [(event.id, channel, PENDING, now) for event, channels in items for channel in channels]
        with self._transaction(immediate=True) as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO events (id, created, event_type, level, run_id, title, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                events,
            )
            conn.executemany(
                "INSERT OR IGNORE INTO deliveries (event_id, channel, state, next_attempt)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )

    def claim(
        self,
        channel: str,
        *,
        lease_seconds: float,
        limit: int = 10,
        forced_since: float | None = None,
        owner: str | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` due deliveries of ``channel``, oldest first.

        Due means pending with ``next_attempt`` passed, or leased by someone whose lease
        expired. With ``forced_since`` (a flush), pending rows not attempted since that
        time are due regardless of their backoff, so each is tried once per flush.
        """
        now = time.time()
        forced = -1.0 if forced_since is None else forced_since
        with self._transaction(immediate=True) as conn:
            rows = conn.execute(
                "SELECT d.event_id, d.attempts, e.payload FROM deliveries d"
                " JOIN events e ON e.id = d.event_id"
                # The IN term lets SQLite use the (channel, state) index instead of scanning
                # the channel's whole delivered history on every claim.
                " WHERE d.channel = ? AND d.state IN ('pending', 'sending') AND ("
                "   (d.state = 'pending' AND (d.next_attempt <= ?"
                "       OR COALESCE(d.last_attempt, 0) < ?))"
                "   OR (d.state = 'sending' AND d.lease_until < ?))"
                f" ORDER BY {priority_sql('e.event_type')}, e.created LIMIT ?",
                (channel, now, forced, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE deliveries SET state = 'sending', lease_until = ?, lease_owner = ?"
                " WHERE event_id = ? AND channel = ?",
                [(now + lease_seconds, owner or lease_owner(), row[0], channel) for row in rows],
            )
        claims = []
        for event_id, attempts, payload in rows:
            try:
                event = NotificationEvent.from_json(payload)
            except (ValueError, KeyError) as error:
                self.mark_dead(event_id, channel, f"unreadable event in outbox: {error}")
                continue
            claims.append(Claim(event, channel, attempts))
        return claims

    def mark_delivered(self, event_id: str, channel: str) -> None:
        """Record a successful delivery."""
        now = time.time()
        self._finish(
            "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1,"
            " last_attempt = ?, delivered_at = ?, lease_until = NULL, lease_owner = NULL,"
            " last_error = NULL WHERE event_id = ? AND channel = ?",
            (now, now, event_id, channel),
        )

    def mark_retry(self, event_id: str, channel: str, next_attempt: float, error: str) -> None:
        """Record a failed attempt to be retried at ``next_attempt`` (epoch seconds).

        Like :meth:`mark_dead`, it leaves a delivered row alone: a sender whose lease ran
        out reports late, after another sender already delivered the message.
        """
        self._finish(
            "UPDATE deliveries SET state = 'pending', attempts = attempts + 1,"
            " last_attempt = ?, next_attempt = ?, lease_until = NULL, lease_owner = NULL,"
            " last_error = ? WHERE event_id = ? AND channel = ? AND state IN ('pending', 'sending')",
            (time.time(), next_attempt, redact(error), event_id, channel),
        )

    def mark_dead(self, event_id: str, channel: str, error: str, *, attempted: bool = True) -> None:
        """Record a delivery that will not be tried again (the dead-letter state)."""
        self._finish(
            "UPDATE deliveries SET state = 'dead', attempts = attempts + ?,"
            " last_attempt = ?, lease_until = NULL, lease_owner = NULL,"
            " last_error = ? WHERE event_id = ? AND channel = ? AND state IN ('pending', 'sending')",
            (1 if attempted else 0, time.time(), redact(error), event_id, channel),
        )

    def release(self, event_id: str, channel: str) -> None:
        """Give a claimed delivery back untouched (the sender is stopping)."""
        self._finish(
            "UPDATE deliveries SET state = 'pending', lease_until = NULL, lease_owner = NULL"
            " WHERE event_id = ? AND channel = ? AND state = 'sending'",
            (event_id, channel),
        )

    def requeue_dead(self, channels: Iterable[str] | None = None) -> int:
        """Make dead deliveries (of ``channels``, or all) pending again with a fresh attempt
        budget, for after the cause is fixed; returns how many. The last error is kept."""
        sql = "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt = ? WHERE state = 'dead'"
        params: list[Any] = [time.time()]
        wanted = None if channels is None else list(channels)
        if wanted is not None:
            sql += f" AND channel IN ({','.join('?' * len(wanted))})"
            params += wanted
        with self._transaction(immediate=True) as conn:
            return int(conn.execute(sql, params).rowcount)

    def _finish(self, sql: str, params: Sequence[Any]) -> None:
        with self._transaction() as conn:
            conn.execute(sql, params)

    def reclaim_orphans(self) -> int:
        """Free rows leased by processes on this host that no longer exist.

        A SIGKILLed sender's lease would otherwise hold its rows until it expires.
        """
        host = socket.gethostname()
        with self._transaction(immediate=True) as conn:
            owners = [
                row[0]
                for row in conn.execute("SELECT DISTINCT lease_owner FROM deliveries WHERE state = 'sending'")
                if row[0]
            ]
            dead = [owner for owner in owners if _is_dead_local_owner(owner, host)]
            for owner in dead:
                conn.execute(
                    "UPDATE deliveries SET state = 'pending', lease_until = NULL,"
                    " lease_owner = NULL WHERE state = 'sending' AND lease_owner = ?",
                    (owner,),
                )
        return len(dead)

    def prune(self, *, max_age_seconds: float, max_events: int) -> int:
        """Drop old history: events past ``max_age_seconds`` or beyond the newest
        ``max_events``, but only those with nothing left to deliver."""
        cutoff = time.time() - max_age_seconds
        finished = (
            "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id"
            " AND d.state IN ('pending', 'sending'))"
        )
        with self._transaction(immediate=True) as conn:
            removed = conn.execute(f"DELETE FROM events WHERE created < ? AND {finished}", (cutoff,)).rowcount
            removed += conn.execute(
                f"DELETE FROM events WHERE {finished} AND id NOT IN"
                " (SELECT id FROM events ORDER BY created DESC LIMIT ?)",
                (max_events,),
            ).rowcount
        return removed

    # Runs, points and cards ---------------------------------------------------------

    def save_run(self, state: RunState, points: Sequence[MetricPoint] = ()) -> None:
        """Store the latest state of a run and append its new metric points.

        A series over :data:`MAX_POINTS_PER_SERIES` keeps every other point: the curve's
        shape survives, the table stays bounded.
        """
        payload = json.dumps(state.to_dict(), separators=(",", ":"), allow_nan=False)
        with self._transaction(immediate=True) as conn:
            conn.execute(
                "INSERT INTO runs (run_id, model, host, pid, status, started_at, updated_at, ended_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
                " model = excluded.model, host = excluded.host, pid = excluded.pid,"
                " status = excluded.status, started_at = COALESCE(runs.started_at, excluded.started_at),"
                " updated_at = excluded.updated_at, ended_at = excluded.ended_at, state = excluded.state",
                (
                    state.run_id,
                    state.model,
                    state.host,
                    state.pid,
                    state.status,
                    state.started_at,
                    state.updated_at,
                    state.ended_at,
                    payload,
                ),
            )
            if not points:
                return
            conn.executemany(
                "INSERT OR REPLACE INTO points (run_id, series, axis, x, y) VALUES (?, ?, ?, ?, ?)",
                [
                    (state.run_id, p.series, p.axis, float(p.x), p.y if math.isfinite(p.y) else None)
                    for p in points
                ],
            )
            for (series,) in {(p.series,) for p in points}:
                count = conn.execute(
                    "SELECT COUNT(*) FROM points WHERE run_id = ? AND series = ?", (state.run_id, series)
                ).fetchone()[0]
                if count > MAX_POINTS_PER_SERIES:
                    conn.execute(
                        "DELETE FROM points WHERE run_id = ? AND series = ? AND x IN (SELECT x FROM"
                        " (SELECT x, ROW_NUMBER() OVER (ORDER BY x) AS n FROM points"
                        "  WHERE run_id = ? AND series = ?) WHERE n % 2 = 0)",
                        (state.run_id, series, state.run_id, series),
                    )

    def run(self, run_id: str) -> RunState | None:
        """The stored state of one run."""
        with self._lock:
            row = self._connection().execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else RunState.from_dict(json.loads(row[0]))

    def runs(self, *, limit: int = 100, status: str | None = None) -> list[RunState]:
        """Runs, newest first (optionally of one status)."""
        sql = "SELECT state FROM runs"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY started_at DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._connection().execute(sql, params).fetchall()
        return [RunState.from_dict(json.loads(row[0])) for row in rows]

    def points(self, run_id: str) -> dict[str, list[tuple[float, float | None]]]:
        """A run's curves: series name -> [(x, y)] in x order (y None where it was NaN/Inf)."""
        result: dict[str, list[tuple[float, float | None]]] = {}
        with self._lock:
            rows = self._connection().execute(
                "SELECT series, x, y FROM points WHERE run_id = ? ORDER BY series, x", (run_id,)
            )
            for series, x, y in rows:
                result.setdefault(series, []).append((x, y))
        return result

    def card_id(self, run_id: str, channel: str) -> str | None:
        """The message id of a run's live card on ``channel``, if one was posted."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT message_id FROM cards WHERE run_id = ? AND channel = ?", (run_id, channel))
                .fetchone()
            )
        return None if row is None else str(row[0])

    def save_card_id(self, run_id: str, channel: str, message_id: str) -> None:
        """Remember the message a run's card lives in (a resumed run edits the same one)."""
        self._finish(
            "INSERT OR REPLACE INTO cards (run_id, channel, message_id, updated_at) VALUES (?, ?, ?, ?)",
            (run_id, channel, message_id, time.time()),
        )

    def forget_card(self, run_id: str, channel: str) -> None:
        """Drop a card's message id (someone deleted the message: the next edit posts anew)."""
        self._finish("DELETE FROM cards WHERE run_id = ? AND channel = ?", (run_id, channel))

    # Reading ------------------------------------------------------------------------

    def finished_between(self, start: float, end: float) -> dict[str, dict[str, int]]:
        """Deliveries that ended in ``[start, end)`` per channel: ``{"slack": {"delivered":
        3, "dead": 1}}`` (by any process sharing this outbox)."""
        result: dict[str, dict[str, int]] = {}
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT channel, state, COUNT(*) FROM deliveries WHERE"
                    " (state = 'delivered' AND delivered_at >= ? AND delivered_at < ?)"
                    " OR (state = 'dead' AND last_attempt >= ? AND last_attempt < ?)"
                    " GROUP BY channel, state",
                    (start, end, start, end),
                )
                .fetchall()
            )
        for channel, state, count in rows:
            result.setdefault(channel, {})[state] = count
        return result

    def counts(self, channels: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Deliveries per channel per state: ``{"slack": {"pending": 2, "dead": 1}}``."""
        sql = "SELECT channel, state, COUNT(*) FROM deliveries"
        params: list[Any] = []
        wanted = None if channels is None else list(channels)
        if wanted is not None:
            sql += f" WHERE channel IN ({','.join('?' * len(wanted))})"
            params = wanted
        sql += " GROUP BY channel, state"
        result: dict[str, dict[str, int]] = {}
        with self._lock:
            for channel, state, count in self._connection().execute(sql, params):
                result.setdefault(channel, {})[state] = count
        return result

    def outstanding(self, channels: Iterable[str] | None = None) -> int:
        """How many deliveries are pending or being sent (for ``channels``, or all)."""
        return sum(
            states.get(PENDING, 0) + states.get(SENDING, 0) for states in self.counts(channels).values()
        )

    def untried_since(self, channels: Sequence[str], since: float) -> int:
        """Deliveries of ``channels`` being sent, or pending and not attempted since ``since``."""
        if not channels:
            return 0
        marks = ",".join("?" * len(channels))
        with self._lock:
            row = (
                self._connection()
                .execute(
                    f"SELECT COUNT(*) FROM deliveries WHERE channel IN ({marks})"
                    " AND state IN ('pending', 'sending') AND (state = 'sending'"
                    " OR (state = 'pending' AND COALESCE(last_attempt, 0) < ?))",
                    (*channels, since),
                )
                .fetchone()
            )
        return int(row[0])

    def next_due(self, channel: str) -> float | None:
        """When the next pending delivery of ``channel`` is due (epoch seconds), if any."""
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT MIN(CASE WHEN state = 'pending' THEN next_attempt ELSE lease_until END)"
                    " FROM deliveries WHERE channel = ? AND state IN ('pending', 'sending')",
                    (channel,),
                )
                .fetchone()
            )
        return None if row is None or row[0] is None else float(row[0])

    def history(
        self,
        *,
        limit: int = 50,
        run_id: str | None = None,
        event_type: str | None = None,
        level: str | None = None,
        state: str | None = None,
        channel: str | None = None,
        event_id: str | None = None,
    ) -> list[HistoryEntry]:
        """Recent events, newest first, with their deliveries; every filter optional."""
        where: list[str] = []
        params: list[Any] = []
        filters = (("id", event_id), ("run_id", run_id), ("event_type", event_type), ("level", level))
        for column, value in filters:
            if value is not None:
                where.append(f"e.{column} = ?")
                params.append(value)
        if state is not None or channel is not None:
            sub = "SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
            if state is not None:
                sub += " AND d.state = ?"
                params.append(state)
            if channel is not None:
                sub += " AND d.channel = ?"
                params.append(channel)
            where.append(f"EXISTS ({sub})")
        sql = "SELECT e.id, e.payload FROM events e"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY e.created DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            conn = self._connection()
            events = conn.execute(sql, params).fetchall()
            entries = []
            for event_id, payload in events:
                deliveries = tuple(
                    Delivery(*row)
                    for row in conn.execute(
                        "SELECT channel, state, attempts,"
                        " CASE WHEN state = 'pending' THEN next_attempt END,"
                        " last_error, delivered_at FROM deliveries WHERE event_id = ?"
                        " ORDER BY channel",
                        (event_id,),
                    )
                )
                entries.append(HistoryEntry(NotificationEvent.from_json(payload), deliveries))
        return entries

    # Priority and superseding (the sender's part; see delivery/priority.py) ---------------

    def supersede_stale(self, channel: str) -> int:
        """Mark ``channel``'s stale progress superseded instead of sending it; return how many.

        Stale: a pending progress delivery whose run has a terminal event stored at or after
        it, or a newer event of the same type on this channel. Its event stays in the history.
        """
        self._ensure_run_index()
        stale = (
            "SELECT e.id FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE d.channel = ? AND d.state = 'pending' AND e.run_id IS NOT NULL"
            f" AND e.event_type IN ({sql_list(PROGRESS_TYPES)}) AND ("
            "  EXISTS (SELECT 1 FROM events t WHERE t.run_id = e.run_id"
            f"   AND t.event_type IN ({sql_list(TERMINAL_TYPES)}) AND t.created >= e.created)"
            "  OR EXISTS (SELECT 1 FROM events n JOIN deliveries nd ON nd.event_id = n.id"
            "   AND nd.channel = d.channel WHERE n.run_id = e.run_id"
            "   AND n.event_type = e.event_type AND n.created > e.created))"
        )
        # Looked for outside a write transaction first: usually there is nothing stale, and
        # a reader never holds up the processes that are writing events.
        with self._lock:
            if self._connection().execute(stale + " LIMIT 1", (channel,)).fetchone() is None:
                return 0
        reason = "superseded: its run moved on or ended before it was sent"
        with self._transaction(immediate=True) as conn:
            return int(
                conn.execute(
                    "UPDATE deliveries SET state = ?, lease_until = NULL, lease_owner = NULL, last_error = ?"
                    f" WHERE channel = ? AND state = 'pending' AND event_id IN ({stale})",
                    (SUPERSEDED, reason, channel, channel),
                ).rowcount
            )

    def fold_due(
        self,
        channel: str,
        make_digest: Callable[[Sequence[HeldMessage]], NotificationEvent],
        *,
        forced_since: float | None = None,
        claimed: str | None = None,
        minimum: int = 2,
    ) -> NotificationEvent | None:
        """Fold ``channel``'s due budgeted deliveries into one digest, in one transaction.

        When at least ``minimum`` are due (as :meth:`claim` counts due; ``claimed`` is the
        id of one the caller holds a claim on), they become ``folded`` (kept in the
        history, naming the digest) and the digest from ``make_digest`` is stored with one
        pending delivery on ``channel``; returns it.
        """
        now = time.time()
        forced = -1.0 if forced_since is None else forced_since
        with self._transaction(immediate=True) as conn:
            rows = conn.execute(
                "SELECT e.id, e.title, e.level, e.run_id FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE d.channel = ? AND ((d.state = 'pending'"
                " AND (d.next_attempt <= ? OR COALESCE(d.last_attempt, 0) < ?))"
                " OR (d.state = 'sending' AND d.event_id = ?))"
                f" AND e.event_type NOT IN ({sql_list(BUDGET_EXEMPT_TYPES)})"
                # A storm guard's digest is exempt too (see priority.is_budgeted).
                " AND COALESCE(json_extract(e.payload, '$.control.digest_count'), 0) = 0"
                " ORDER BY e.created",
                (channel, now, forced, claimed),
            ).fetchall()
            if len(rows) < max(minimum, 1):
                return None
            held = [HeldMessage(row[0], row[1], NotificationLevel.parse(row[2]), row[3]) for row in rows]
            digest = make_digest(held)
            conn.execute(
                "INSERT INTO events (id, created, event_type, level, run_id, title, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    digest.id,
                    digest.timestamp.timestamp(),
                    digest.event_type.value,
                    digest.level.value,
                    digest.run_id,
                    digest.title,
                    digest.to_json(),
                ),
            )
            conn.execute(
                "INSERT INTO deliveries (event_id, channel, state, next_attempt) VALUES (?, ?, ?, ?)",
                (digest.id, channel, PENDING, now),
            )
            conn.executemany(
                "UPDATE deliveries SET state = ?, last_error = ?, lease_until = NULL, lease_owner = NULL"
                " WHERE event_id = ? AND channel = ? AND state IN ('pending', 'sending')",
                [(FOLDED, f"folded into digest {digest.id}", message.event_id, channel) for message in held],
            )
        return digest

    def flush_due(self, channel: str, forced_since: float) -> tuple[int, float | None]:
        """What a flush started at ``forced_since`` still waits for on ``channel``: how many
        deliveries are in flight or not yet tried since then, and when the earliest retry of
        one tried since then is due (epoch seconds; None when there is none)."""
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT SUM(CASE WHEN state = 'sending' OR COALESCE(last_attempt, 0) < ?"
                    " THEN 1 ELSE 0 END),"
                    " MIN(CASE WHEN state = 'pending' AND COALESCE(last_attempt, 0) >= ?"
                    " THEN next_attempt END)"
                    " FROM deliveries WHERE channel = ? AND state IN ('pending', 'sending')",
                    (forced_since, forced_since, channel),
                )
                .fetchone()
            )
        untried = 0 if row is None or row[0] is None else int(row[0])
        return untried, None if row is None or row[1] is None else float(row[1])

    def data_version(self) -> int:
        """A number that changes when another connection (process) commits to the file: an
        idle sender reads it instead of the tables to learn whether anything arrived."""
        with self._lock:
            return int(self._connection().execute("PRAGMA data_version").fetchone()[0])

    def _ensure_run_index(self) -> None:
        # Superseding looks events up by run; without this index each check scans them all.
        if getattr(self, "_run_index_ready", False):
            return
        with self._lock:
            self._connection().execute(
                "CREATE INDEX IF NOT EXISTS events_run ON events (run_id, event_type, created)"
            )
        self._run_index_ready = True


def event_row(event: NotificationEvent) -> tuple[str, float, str, str, str | None, str, str]:
    """The ``events`` table row of ``event``."""
    return (
        event.id,
        event.timestamp.timestamp(),
        event.event_type.value,
        event.level.value,
        event.run_id,
        event.title,
        event.to_json(),
    )


def _is_dead_local_owner(owner: str, host: str) -> bool:
    owner_host, _, pid_text = owner.rpartition(":")
    if owner_host != host or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _reset_after_fork() -> None:
    for outbox in list(_instances):
        outbox._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
