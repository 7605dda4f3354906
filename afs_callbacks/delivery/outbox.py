"""The outbox: every accepted event and its delivery state per channel, in one SQLite file.

The same tables are the notification history, each run's latest state and metric points,
and the ids of live run cards; this module is the only one that knows them. Rows of
``deliveries`` move ``pending -> sending -> delivered`` or back to ``pending`` with a later
``next_attempt``, or end ``dead``; the sender may end stale progress ``superseded`` and fold
a flood into a digest (``folded``). A sender claims rows with a lease (``lease_until`` +
``lease_owner``) inside ``BEGIN IMMEDIATE``, so two processes never send the same row at
once and a crashed sender's rows are claimed again; the senders read the queue on a
connection of their own, outside that transaction, so that the writer thread's commits
never wait for a read of a long queue.

One :class:`Outbox` per file and process; three ways to open it:

* ``Outbox(path)`` reads and writes, and raises what SQLite raises (tests, ``afs-notify
  retry``, the death watcher).
* ``Outbox(path, tolerant=True)`` is the manager's: a disk that fills, a folder that turns
  read-only, another process holding the write lock or a corrupted file must not cost a
  notification. When a write fails, the events (and what happens to them) and run states are kept in the
  same tables on an in-memory SQLite connection, bounded, and the senders deliver them from
  there; the cause is logged once, with the file's name; everything is written back once
  the file is writable again. A write lock that other processes hold is a queue, not a
  fault: the events wait in memory the same way, the file is tried again every
  :data:`BUSY_RETRY_SECONDS`, and only a lock still busy after :data:`LOCK_PATIENCE` is
  logged (dozens of processes starting together queue for seconds; none falls back to
  memory for good). A corrupted file is moved aside (``outbox.sqlite3.corrupt-<time>``)
  and a fresh one started. Nothing raises into the caller.
* ``Outbox(path, read_only=True)`` for readers (the dashboard, the CLI's check): never
  creates or changes the file; a missing or unreadable one raises :class:`OutboxUnavailable`;
  a table an older file lacks reads as empty.

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
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

from afs_callbacks._files import private_dir, private_file, tighten_file
from afs_callbacks._log import get_logger
from afs_callbacks._pids import pid_exists
from afs_callbacks.delivery.faults import describe_fault, is_busy, is_corruption, move_aside, still_corrupt
from afs_callbacks.delivery.limits import HeldMessage
from afs_callbacks.delivery.priority import (
    BUDGET_EXEMPT_TYPES,
    FOLDED,
    SUPERSEDED,
    Queued,
    RunQueue,
    next_of_run,
    priority_sql,
    sql_list,
)
from afs_callbacks.events import (
    PROGRESS_TYPES,
    TERMINAL_TYPES,
    EventType,
    NotificationEvent,
    NotificationLevel,
)
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import MetricPoint, RunState

log = get_logger(__name__)

_T = TypeVar("_T")
#: A claim's lease: (now, lease seconds, forced since or -1, owner or None for this process).
_Lease = tuple[float, float, float, "str | None"]
#: Times a claim reads the queue outside the write lock and finds its pick taken meanwhile
#: before it reads and leases inside one transaction.
_CLAIM_TRIES = 3

#: The outbox's file name inside the state directory (``AFS_STATE_DIR``).
OUTBOX_FILE = "outbox.sqlite3"

PENDING = "pending"
SENDING = "sending"
DELIVERED = "delivered"
DEAD = "dead"
#: Every delivery state: superseded (stale progress, not sent) and folded (held back by the
#: channel's budget, named in a digest) are finished states like delivered and dead.
STATES = (PENDING, SENDING, DELIVERED, DEAD, SUPERSEDED, FOLDED)

#: At most this many points are kept per (run, series); beyond it every other one goes.
MAX_POINTS_PER_SERIES = 2000
#: Seconds between two attempts to write to a file that failed (a tolerant outbox).
RETRY_SECONDS = 1.0
#: Seconds between two attempts while other processes hold the file's write lock.
BUSY_RETRY_SECONDS = 0.2
#: How long a tolerant outbox's file may stay locked by other processes, attempt after
#: attempt, before that is a fault and said so. Dozens of processes starting (or writing)
#: together on one state directory queue for the lock for seconds: each gets it, just not
#: at once. A lock held this long is something else (a stuck process, a ``sqlite3`` shell
#: left inside a transaction).
LOCK_PATIENCE = 30.0

# ``commands``: what was asked of runs (afs_callbacks.control: stop, checkpoint, status),
# every one, accepted or refused, with who asked, from where and when. (Comments inside the
# script stay out of the way of _TABLES, which splits it on semicolons and parentheses.)
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
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    action TEXT NOT NULL,
    source TEXT NOT NULL,
    actor TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '',
    reply TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS commands_run ON commands (run_id, updated);
CREATE INDEX IF NOT EXISTS commands_updated ON commands (updated);
"""

# The parts of a delivery row the sender's steps share.
_CLEAR_LEASE = "lease_until = NULL, lease_owner = NULL"

# A channel's queue as the sender reads it (the rule: priority.py). Parameters: :channel,
# :now, :forced (a flush's start, or -1). Each read walks the channel's unfinished rows in
# one order (urgency for a claim, due time for an idle sender) and looks at a row's run
# (its unfinished rows on the channel, through the events_run index) only when the walk
# reaches it, once per run: usually the first row decides, so a read costs about what the
# plain priority order did before, a backlog of thousands included.
_FLYING = "(d.state = 'sending' AND d.lease_until >= :now)"
_DUE = (
    "((d.state = 'pending' AND (d.next_attempt <= :now OR COALESCE(d.last_attempt, 0) < :forced))"
    " OR (d.state = 'sending' AND d.lease_until < :now))"
)
_DUE_AT = "CASE WHEN d.state = 'pending' THEN d.next_attempt ELSE d.lease_until END"
_QUEUED = (
    f"SELECT d.event_id, e.run_id, e.event_type, {_FLYING}, {_DUE}, {_DUE_AT},"
    " COALESCE(d.last_attempt, 0), d.state = 'sending' FROM deliveries d JOIN events e ON e.id = d.event_id"
)
# The IN term lets SQLite use the (channel, state) index instead of scanning the channel's
# whole delivered history.
_CHANNEL_QUEUE = _QUEUED + " WHERE d.channel = :channel AND d.state IN ('pending', 'sending')"
_RUN_COLUMNS = (
    f"d.event_id, e.run_id, e.event_type, {_FLYING}, {_DUE}, {_DUE_AT},"
    " COALESCE(d.last_attempt, 0), d.state = 'sending', e.created, e.id"
)
_RUN_ROWS = (
    f"SELECT {_RUN_COLUMNS}"
    # CROSS JOIN keeps events (through the events_run index) the outer loop: the planner
    # would otherwise walk the channel's whole queue to find one run's rows.
    " FROM events e CROSS JOIN deliveries d ON d.event_id = e.id AND d.channel = :channel"
    " WHERE e.run_id = :run AND d.state IN ('pending', 'sending')"
)
# A run's unfinished rows on the channel that decide priority.next_of_run, oldest first: its
# oldest row, its rows leased (found through the channel's few leased rows), its ends, and
# one of its budget-exempt rows if any. The rule reads nothing else (the oldest row, unless
# an end waits: then the first end, unless a row in flight comes before it; whether any
# row is exempt), and a run with thousands of messages waiting costs one pass of SQLite
# over the run's rows instead of thousands of rows read into Python.
_RUN_QUEUE = (
    f"SELECT * FROM ({_RUN_ROWS} ORDER BY e.created, e.id LIMIT 1)"
    f" UNION SELECT {_RUN_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id"
    " WHERE d.channel = :channel AND d.state = 'sending' AND e.run_id = :run"
    f" UNION SELECT * FROM ({_RUN_ROWS} AND e.event_type IN ({sql_list(TERMINAL_TYPES)}))"
    f" UNION SELECT * FROM ({_RUN_ROWS} AND e.event_type IN ({sql_list(BUDGET_EXEMPT_TYPES)}) LIMIT 1)"
    " ORDER BY 9, 10"
)
_BY_URGENCY = f" ORDER BY {priority_sql('e.event_type')}, e.created, d.event_id"
_UNFINISHED = "state IN ('pending', 'sending')"

# Connections inherited across fork(): kept referenced so they are never closed (closing
# one in the child could checkpoint or delete the parent's WAL).
_inherited: list[sqlite3.Connection] = []
_instances: weakref.WeakSet[Outbox] = weakref.WeakSet()


@dataclass(frozen=True)
class Claim:
    """One delivery claimed for sending: the event and how many attempts it has had.

    ``told``: for the end of a run, its earlier messages that had not gone out on this
    channel, oldest first (they are ``folded`` into it: the sender tells them as one story,
    :mod:`afs_callbacks.delivery.story`). ``leads_exempt``: an end or alert of the same run
    waits behind this message, so the channel's budget must not hold it back.
    """

    event: NotificationEvent
    channel: str
    attempts: int
    told: tuple[NotificationEvent, ...] = ()
    leads_exempt: bool = False


@dataclass(frozen=True)
class Delivery:
    """The state of one event on one channel, as the history shows it."""

    channel: str
    state: str
    attempts: int
    next_attempt: float | None
    last_error: str | None
    delivered_at: float | None
    last_attempt: float | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One event and its deliveries."""

    event: NotificationEvent
    deliveries: tuple[Delivery, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ChannelHealth:
    """How one channel's deliveries stand: what a fleet's monitoring alerts on.

    Times are epoch seconds; None when there is no such delivery.

    Args:
        channel: the channel's name.
        states: deliveries per state (``pending``, ``delivered``, ``dead``...).
        retrying: deliveries waiting for another attempt after a failed one.
        failing_since: when the oldest of those messages was accepted.
        last_delivered: the latest delivery.
        last_dead: the latest delivery given up on.
    """

    channel: str
    states: dict[str, int] = field(default_factory=dict)
    retrying: int = 0
    failing_since: float | None = None
    last_delivered: float | None = None
    last_dead: float | None = None


#: A command's states (see afs_callbacks.control): waiting for a confirmation tap, waiting
#: for the run to act, taken by the run, carried out, refused, too old when the run saw it,
#: or cancelled by the person who asked.
UNCONFIRMED = "unconfirmed"
QUEUED = "pending"
ACCEPTED = "accepted"
DONE = "done"
REFUSED = "refused"
EXPIRED = "expired"
CANCELLED = "cancelled"
COMMAND_STATES = (UNCONFIRMED, QUEUED, ACCEPTED, DONE, REFUSED, EXPIRED, CANCELLED)
#: The states after which a command does not change any more.
COMMAND_FINISHED = frozenset({DONE, REFUSED, EXPIRED, CANCELLED})


@dataclass(frozen=True)
class Command:
    """One command asked of a run, as the ``commands`` table keeps it.

    Attributes:
        id: the command's id.
        run_id: the run it is asked of.
        action: ``stop``, ``checkpoint`` or ``status``.
        source: the surface it came through (``cli``, ``dashboard``, ``telegram``,
            ``slack``, ``rule``).
        actor: who asked, in words (``alice@gpu-7``, ``telegram user 42 (@alice)``).
        created / updated: epoch seconds it was asked and last changed.
        state: one of :data:`COMMAND_STATES`.
        detail: why it was refused, or what was done (a checkpoint's path).
        host: the host of the run, the only one that acts on it.
        reply: where a chat surface answers (chat and message ids); JSON-safe.
    """

    id: str
    run_id: str
    action: str
    source: str
    actor: str
    created: float
    updated: float
    state: str = QUEUED
    detail: str = ""
    host: str = ""
    reply: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def finished(self) -> bool:
        """Whether the command reached a state it does not leave."""
        return self.state in COMMAND_FINISHED


class OutboxUnavailable(Exception):
    """A read-only outbox cannot be read: ``reason`` is ``missing`` or ``unreadable``.

    The message names the file; ``error`` is SQLite's own error, when there is one.
    """

    def __init__(self, path: str, reason: str, detail: str, error: BaseException | None = None) -> None:
        super().__init__(f"{detail}: {path}")
        self.path = path
        self.reason = reason
        self.detail = detail
        self.error = error


def lease_owner() -> str:
    """Who holds a lease: host and PID, so a dead local owner can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Outbox:
    """The outbox and history in the SQLite file at ``path`` (see the module docstring).

    Thread-safe within a process; safe across processes through SQLite's locking.

    Args:
        path: the SQLite file (``":memory:"`` for a volatile one).
        tolerant: keep working through storage faults instead of raising (the manager's
            outbox). It opens the file on :meth:`open` or its first use; a plain one opens
            it now, so that a bad path fails in the constructor.
        read_only: open an existing file for reading only.
        memory_limit: a tolerant outbox keeps at most this many events in memory while its
            file cannot be written.
        busy_timeout: seconds a statement waits for another process's write lock; default
            2 for a tolerant outbox, 5 for a read-only one, 10 otherwise. A tolerant outbox
            then keeps the events in memory (still delivered) and tries again every
            :data:`BUSY_RETRY_SECONDS`, silently: a lock that is busy is not a fault.
        lock_patience: how long a tolerant outbox's file may stay locked, attempt after
            attempt, before it reports the lock as a fault (:data:`LOCK_PATIENCE`).

    Raises:
        ValueError: both ``tolerant`` and ``read_only`` (a reader has nothing to keep).
        OutboxUnavailable: ``read_only`` and the file is missing or cannot be read.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tolerant: bool = False,
        read_only: bool = False,
        memory_limit: int = 10_000,
        busy_timeout: float | None = None,
        lock_patience: float | None = None,
    ) -> None:
        if tolerant and read_only:
            raise ValueError(
                "Outbox(tolerant=True, read_only=True): a read-only outbox writes nothing it could keep"
            )
        self.path = str(path)
        self.tolerant = tolerant
        self.read_only = read_only
        self.memory_limit = memory_limit
        if busy_timeout is None:
            busy_timeout = 2.0 if self.tolerant else 5.0 if read_only else 10.0
        self.busy_timeout = busy_timeout
        self.lock_patience = LOCK_PATIENCE if lock_patience is None else lock_patience
        #: A tolerant outbox's storage fault, in words; None while the file is healthy. A
        #: busy lock counts too (events wait in memory), but is reported only once it has
        #: lasted ``lock_patience``.
        self.fault: str | None = None
        self._lock = threading.RLock()  # the file's connection
        self._conn: sqlite3.Connection | None = None
        # The senders' reads of the queue have a connection of their own: a read of a long
        # queue (tens of milliseconds) under the main connection's lock would hold up the
        # writer thread's commits, and with them the storing of accepted events.
        self._reader_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._pid = os.getpid()
        # What a tolerant outbox keeps while its file fails: the same tables in memory, and
        # outcomes of the file's own rows to replay there.
        self._kept_lock = threading.RLock()
        self._kept: sqlite3.Connection | None = None
        self._marks: dict[tuple[str, str], tuple[str, tuple[Any, ...]]] = {}
        self._dropped = 0
        self._fault_lock = threading.Lock()
        self._next_try = 0.0
        self._busy_since: float | None = None  # when the lock was first found busy, this fault
        self._reported: str | None = None  # the fault's cause as logged (None: not logged)
        self._opened = False  # once it opened, a failure is "cannot use", before "cannot open"
        self._run_index_ready = False
        _instances.add(self)
        if not self.tolerant:
            self._connection()  # fail early (bad path, read-only disk, no file) in the constructor

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Health (a tolerant outbox) -----------------------------------------------------------

    def open(self) -> bool:
        """Open (or reopen) the file; False, with the fault noted, when that fails."""
        self._opened = self._file("open", lambda: self._connection() is not None, False) or self._opened
        return self._opened

    @property
    def healthy(self) -> bool:
        """Whether the file is being written (no fault since the last successful write)."""
        return self.fault is None

    def due_for_retry(self) -> bool:
        """Whether a faulted outbox should try its file again now."""
        return self.fault is not None and time.monotonic() >= self._next_try

    def retry_in(self) -> float | None:
        """Seconds until a faulted outbox tries its file again; None while it is healthy."""
        if self.fault is None:
            return None
        return max(0.0, self._next_try - time.monotonic())

    def close(self) -> None:
        """Write what memory still holds, then close this process's connection (an
        inherited one is left alone). While other processes hold the write lock it waits
        for its turn, until the lock has been busy for ``lock_patience``."""
        if (self._kept is not None or self._marks) and not self._write_back_before_closing():
            log.error(
                "afs-callbacks: %d message(s) delivered or pending in memory could not be written"
                " to the notification history %s before closing",
                self._kept_count(),
                self.path,
            )
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
        self._drop_reader()

    def _write_back_before_closing(self) -> bool:
        while not self.recover(now=True):
            since = self._busy_since
            if since is None or time.monotonic() - since >= self.lock_patience:
                return False
            time.sleep(BUSY_RETRY_SECONDS)
        return True

    # Writing -------------------------------------------------------------------------------

    def enqueue(self, event: NotificationEvent, channels: Iterable[str]) -> None:
        """Store ``event`` and one pending delivery per channel, in one transaction."""
        self.write([(event, list(channels))])

    def write(
        self,
        items: Sequence[tuple[NotificationEvent, Sequence[str]]],
        runs: Sequence[tuple[RunState, Sequence[MetricPoint]]] = (),
        *,
        held: Mapping[str, float] | None = None,
    ) -> bool:
        """Store events with their pending deliveries, and run states with their new metric
        points, in one transaction (the writer thread batches: one commit for many events
        is what keeps up under contention).

        ``held``: event id -> epoch seconds its deliveries become due (default: now); a
        run's end is held so for its chart (:meth:`attach` releases it sooner).

        Returns whether they reached the file; a tolerant outbox keeps them in memory when
        they did not, and writes them back with the rest.
        """
        held = held or {}
        if not self.tolerant:
            self._write_file(items, runs, held)
            return True
        if self.fault is not None and not self.recover():
            self._keep(items, runs, held)
            return False
        try:
            self._write_file(items, runs, held)
            self._opened = True
            return True
        except (sqlite3.Error, OSError) as error:
            self._on_fault("write", error)
            self._keep(items, runs, held)
            if self.fault is None:  # corruption: a fresh file was started, try it at once
                return self.recover()
            return False

    def recover(self, *, now: bool = False) -> bool:
        """Write what memory holds back to the file; True when the outbox is healthy again.

        Between attempts it waits :data:`RETRY_SECONDS` (:data:`BUSY_RETRY_SECONDS` while the
        lock is busy); ``now`` tries at once (at close).
        """
        if self.fault is not None and time.monotonic() < self._next_try and not now:
            return False
        moved = 0
        try:
            with self._kept_lock:
                kept = self._kept
                if kept is not None:
                    moved = self._write_back(kept)
                    self._kept = None
                    kept.close()
            self._replay_marks()
        except (sqlite3.Error, OSError) as error:
            self._on_fault("write", error)
            return False
        self._opened = True
        with self._fault_lock:
            reported, self._reported = self._reported, None
            self.fault = self._busy_since = None
        if reported is not None:  # a lock that was only busy for a moment was never a fault
            log.warning(
                "afs-callbacks: the notification history %s is writable again; %d kept message(s) written",
                self.path,
                moved,
            )
        return True

    # Sending -------------------------------------------------------------------------------

    def claim(
        self,
        channel: str,
        *,
        lease_seconds: float,
        limit: int = 10,
        forced_since: float | None = None,
        owner: str | None = None,
        stories: bool = True,
    ) -> list[Claim]:
        """Lease up to ``limit`` due deliveries of ``channel``, in the order the sender
        sends them (:mod:`afs_callbacks.delivery.priority`): a run's messages in the order
        they happened, runs served most urgent first (a run whose end or alert waits goes
        at that rank), then oldest first.

        Due means pending with ``next_attempt`` passed, or leased by someone whose lease
        expired. With ``forced_since`` (a flush), pending rows not attempted since that
        time are due regardless of their backoff, so each is tried once per flush. With
        ``stories``, a run's end takes along its earlier messages still waiting on the
        channel: they become ``folded`` and come back in the claim's ``told``. Events kept
        in memory come before the file's.
        """
        lease: _Lease = (time.time(), lease_seconds, -1.0 if forced_since is None else forced_since, owner)
        none: list[Claim] = []
        claims = self._in_memory(lambda kept: _claim(kept, channel, limit, lease, stories), none)
        if len(claims) >= limit:
            return claims
        no_rows: list[_Claimed] = []
        unreadable = True
        while unreadable and len(claims) < limit:  # a dead row may have held its run's next
            unreadable = False
            rows = self._file(
                "write", lambda: self._claim_file(channel, limit - len(claims), lease, stories), no_rows
            )
            for row in rows:
                try:
                    event = NotificationEvent.from_json(row.payload)
                except (ValueError, KeyError) as error:
                    self.mark_dead(row.event_id, channel, f"unreadable event in outbox: {error}")
                    unreadable = True
                    continue
                claims.append(_claim_of(row, event, channel))
        return claims

    def mark_delivered(self, event_id: str, channel: str, note: str | None = None) -> None:
        """Record a successful delivery; ``note`` says how it differed from the event
        (sent without its attachment) and shows where a failure's reason would."""
        self._mark("mark_delivered", event_id, channel, (redact(note) if note else None,))

    def mark_retry(self, event_id: str, channel: str, next_attempt: float, error: str) -> None:
        """Record a failed attempt to be retried at ``next_attempt`` (epoch seconds).

        Like :meth:`mark_dead`, it leaves a delivered row alone: a sender whose lease ran
        out reports late, after another sender already delivered the message.
        """
        self._mark("mark_retry", event_id, channel, (next_attempt, redact(error)))

    def mark_dead(self, event_id: str, channel: str, error: str, *, attempted: bool = True) -> None:
        """Record a delivery that will not be tried again (the dead-letter state)."""
        self._mark("mark_dead", event_id, channel, (1 if attempted else 0, redact(error)))

    def attach(self, event: NotificationEvent) -> int:
        """Replace the stored ``event`` (same id: a run's end, now with its chart) and make
        its held deliveries that were not tried yet due now; returns how many. One already
        tried or sent goes on as it is (it left without the chart); the history shows the
        new one either way."""
        payload = event.to_json()

        def apply(conn: sqlite3.Connection) -> int:
            with _atomic(conn):
                conn.execute("UPDATE events SET payload = ? WHERE id = ?", (payload, event.id))
                return int(
                    conn.execute(
                        "UPDATE deliveries SET next_attempt = MIN(next_attempt, ?)"
                        " WHERE event_id = ? AND state = 'pending' AND attempts = 0",
                        (time.time(), event.id),
                    ).rowcount
                )

        return sum(self._everywhere("write", apply, 0))

    def release(self, event_id: str, channel: str) -> None:
        """Give a claimed delivery back untouched (the sender is stopping)."""
        self._mark("release", event_id, channel, ())

    def supersede_stale(self, channel: str) -> int:
        """Mark ``channel``'s stale progress superseded instead of sending it; return how many.

        Stale: a pending progress delivery whose run has a terminal event stored at or after
        it, or a newer event of the same type on this channel. Its event stays in the history.
        """
        return self._file("write", lambda: self._supersede_stale(channel), 0)

    def release_leases_of(self, host: str, pid: int) -> int:
        """Give back to the queue the deliveries process ``pid`` on ``host`` had leased, once
        it is known to be gone (the death watcher saw it go; its zombie still answers
        ``kill(pid, 0)``, so :meth:`reclaim_orphans` cannot tell). A run's later messages,
        its death notice included, wait for a message in flight: without this they would
        wait for the lease to run out. Returns how many."""
        sql = (
            f"UPDATE deliveries SET state = 'pending', {_CLEAR_LEASE}"
            " WHERE state = 'sending' AND lease_owner = ?"
        )
        params = (f"{host}:{pid}",)
        return self._file("write", lambda: self._change(sql, params), 0)

    def unfold_story(self, event_id: str, channel: str, reason: str) -> int:
        """Give the messages folded into the end ``event_id`` on ``channel`` back to the
        queue (the service refused the story for good: each goes out on its own); returns
        how many."""
        sql = (
            f"UPDATE deliveries SET state = 'pending', next_attempt = ?, {_CLEAR_LEASE}, last_error = ?"
            " WHERE channel = ? AND state = ? AND last_error = ?"
        )
        params = (time.time(), redact(reason), channel, FOLDED, _told_in(event_id))
        found = self._in_memory(lambda kept: _change_on(kept, sql, params), 0)
        return found + self._file("write", lambda: self._change(sql, params), 0)

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
        pending delivery on ``channel``; returns it (None: nothing folded).
        """
        forced = -1.0 if forced_since is None else forced_since
        return self._file(
            "write", lambda: self._fold_due(channel, make_digest, forced, claimed, minimum), None
        )

    def flush_due(
        self, channel: str, forced_since: float, *, stories: bool = True
    ) -> tuple[int, float | None]:
        """What a flush started at ``forced_since`` still waits for on ``channel``: how many
        deliveries are in flight or not yet tried since then, and when the earliest retry of
        one tried since then is due (epoch seconds; None when there is none). A message held
        behind an earlier one of its run counts once that one is done (``stories``: as
        :meth:`claim`)."""
        nothing: tuple[int, float | None] = (0, None)
        found = self._everywhere(
            "read", lambda conn: _flush_due(conn, channel, forced_since, stories), nothing, queue=True
        )
        dues = [due for _, due in found if due is not None]
        return sum(untried for untried, _ in found), (min(dues) if dues else None)

    def next_due(self, channel: str, *, stories: bool = True) -> float | None:
        """When the next pending delivery of ``channel`` is due (epoch seconds), if any; one
        held behind an earlier message of its run is not (``stories``: as :meth:`claim`)."""
        found = self._everywhere("read", lambda conn: _next_due(conn, channel, stories), None, queue=True)
        dues = [due for due in found if due]
        return min(dues) if dues else None

    def untried_since(self, channels: Sequence[str], since: float) -> int:
        """Deliveries of ``channels`` being sent, or pending and not attempted since ``since``."""
        if not channels:
            return 0
        return sum(self._everywhere("read", lambda conn: _untried_since(conn, channels, since), 0))

    def data_version(self) -> int:
        """A number that changes when another connection (process) commits to the file: an
        idle sender reads it instead of the tables to learn whether anything arrived (-1
        when a tolerant outbox cannot read its file)."""
        return self._file("read", lambda: int(self._query("PRAGMA data_version")[0][0]), -1)

    # Housekeeping ------------------------------------------------------------------------------

    def requeue_dead(self, channels: Iterable[str] | None = None, *, event_id: str | None = None) -> int:
        """Make dead deliveries pending again with a fresh attempt budget, for after the
        cause is fixed; returns how many. Only ``channels`` (None: every channel) and only
        ``event_id`` (None: every message). The last error is kept, so the history still
        says what went wrong before."""
        sql = "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt = ? WHERE state = 'dead'"
        params: list[Any] = [time.time()]
        wanted = None if channels is None else list(channels)
        if wanted is not None:
            sql += f" AND channel IN ({_marks(wanted)})"
            params += wanted
        if event_id is not None:
            sql += " AND event_id = ?"
            params.append(event_id)
        return self._file("write", lambda: self._change(sql, params), 0)

    def reclaim_orphans(self) -> int:
        """Free rows leased by processes on this host that no longer exist.

        A SIGKILLed sender's lease would otherwise hold its rows until it expires.
        """
        return self._file("write", self._reclaim_orphans, 0)

    def prune(self, *, max_age_seconds: float, max_events: int) -> int:
        """Drop old history: events past ``max_age_seconds`` or beyond the newest
        ``max_events``, but only those with nothing left to deliver."""
        return self._file("write", lambda: self._prune(max_age_seconds, max_events), 0)

    # The history ----------------------------------------------------------------------------

    def history(
        self,
        *,
        limit: int = 50,
        run_id: str | None = None,
        event_type: str | Collection[str] | None = None,
        level: str | None = None,
        state: str | Collection[str] | None = None,
        channel: str | None = None,
        event_id: str | None = None,
    ) -> list[HistoryEntry]:
        """Recent events, newest first, with their deliveries; every filter optional.

        ``event_type`` and ``state`` take one value or several. Events kept in memory come
        first. An event whose stored form cannot be read is left out.
        """
        where = _HistoryFilter(run_id, event_type, level, state, channel, event_id)
        none: list[HistoryEntry] = []
        found = self._everywhere("read", lambda conn: _history(conn, where, limit), none)
        return [entry for entries in found for entry in entries][:limit]

    def counts(self, channels: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Deliveries per channel per state: ``{"slack": {"pending": 2, "dead": 1}}``."""
        wanted = None if channels is None else list(channels)
        return _summed(self._everywhere("read", lambda conn: _counts(conn, wanted), {}))

    def channel_health(self) -> list[ChannelHealth]:
        """Every channel's counts, retries and latest deliveries, by channel name (one
        scan of the deliveries; the in-memory rows of a faulted file included)."""
        merged: dict[str, ChannelHealth] = {}
        none: list[ChannelHealth] = []
        for part in self._everywhere("read", _channel_health, none):
            for health in part:
                merged[health.channel] = _merge_health(merged.get(health.channel), health)
        return [merged[name] for name in sorted(merged)]

    def outstanding(self, channels: Iterable[str] | None = None) -> int:
        """How many deliveries are pending or being sent (for ``channels``, or all)."""
        return sum(
            states.get(PENDING, 0) + states.get(SENDING, 0) for states in self.counts(channels).values()
        )

    def finished_between(self, start: float, end: float) -> dict[str, dict[str, int]]:
        """Deliveries that ended in ``[start, end)`` per channel: ``{"slack": {"delivered":
        3, "dead": 1, "superseded": 2}}`` (by any process sharing this outbox)."""
        return _summed(self._everywhere("read", lambda conn: _finished_between(conn, start, end), {}))

    def route_like_run(self, event_id: str, run_id: str) -> int:
        """Queue the stored event ``event_id`` also for every channel that carried the other
        messages of run ``run_id``; returns how many deliveries were added (none when the
        event is not stored)."""
        sql = (
            "INSERT OR IGNORE INTO deliveries (event_id, channel, state, next_attempt)"
            " SELECT ?, channel, 'pending', ? FROM (SELECT DISTINCT d.channel AS channel FROM deliveries d"
            " JOIN events e ON e.id = d.event_id WHERE e.run_id = ? AND e.id != ?)"
            " WHERE EXISTS (SELECT 1 FROM events WHERE id = ?)"
        )
        params = (event_id, time.time(), run_id, event_id, event_id)
        return self._file("write", lambda: max(0, self._change(sql, params)), 0)

    # Runs, their points and their cards ---------------------------------------------------------

    def save_run(self, state: RunState, points: Sequence[MetricPoint] = ()) -> None:
        """Store the latest state of a run and append its new metric points.

        A series over :data:`MAX_POINTS_PER_SERIES` keeps every other point: the curve's
        shape survives, the table stays bounded. A tolerant outbox keeps what its file
        cannot take in memory, like events (a run's end must not be lost to a busy lock).
        """
        self.write((), [(state, points)])

    def claim_run_end(self, state: RunState, *, pid: int | None) -> bool:
        """Store ``state`` (an ended run) only if the run's row still says running, written
        by process ``pid``; True when this call changed it (whoever does reports the end)."""
        sql = (
            "UPDATE runs SET status = ?, ended_at = ?, state = ?"
            " WHERE run_id = ? AND status = 'running' AND pid IS ?"
        )
        params = (state.status, state.ended_at, _run_json(state), state.run_id, pid)
        return bool(self._file("write", lambda: self._change(sql, params), 0) == 1)

    def run(self, run_id: str) -> RunState | None:
        """The stored state of one run."""
        states = _states(self._read("SELECT state FROM runs WHERE run_id = ?", (run_id,)))
        return states[0] if states else None

    def runs(
        self,
        *,
        limit: int | None = 100,
        status: str | None = None,
        model: str | None = None,
        host: str | None = None,
        run_id_contains: str | None = None,
        ended_since: float | None = None,
    ) -> list[RunState]:
        """Runs, newest first, narrowed by any of the filters (``limit`` None: all);
        ``ended_since``: only runs still going or ended at that time or later.

        A row whose stored state cannot be read is left out.
        """
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("status", status), ("model", model), ("host", host)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if run_id_contains:
            clauses.append("run_id LIKE ? ESCAPE '\\'")
            params.append("%" + _like_escape(run_id_contains) + "%")
        if ended_since is not None:
            clauses.append("(ended_at IS NULL OR ended_at >= ?)")
            params.append(ended_since)
        sql = "SELECT state FROM runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
        params.append(-1 if limit is None else limit)
        return _states(self._read(sql, params))

    def unsent_ends(self, host: str, since: float) -> list[tuple[str, int | None, float | None]]:
        """Runs' ends of ``host`` stored since ``since`` (epoch seconds) with a delivery
        pending and due: (event id, the run's pid, when its row was last written). The
        death watcher sends those whose process is gone (it ended right after storing)."""
        sql = (
            "SELECT DISTINCT e.id, r.pid, r.updated_at FROM events e"
            " JOIN deliveries d ON d.event_id = e.id JOIN runs r ON r.run_id = e.run_id"
            f" WHERE e.created >= ? AND e.event_type IN ({sql_list(TERMINAL_TYPES)})"
            " AND d.state = 'pending' AND d.next_attempt <= ? AND r.host = ?"
        )
        return [(row[0], row[1], row[2]) for row in self._read(sql, (since, time.time(), host))]

    def run_counts(self) -> dict[str, int]:
        """How many runs there are per status."""
        rows = self._read("SELECT status, COUNT(*) FROM runs GROUP BY status")
        return {str(status): int(count) for status, count in rows}

    def models(self) -> list[str]:
        """The model names the runs have, in order."""
        sql = "SELECT DISTINCT model FROM runs WHERE model IS NOT NULL ORDER BY model"
        return [str(row[0]) for row in self._read(sql)]

    def points(self, run_id: str) -> dict[str, list[tuple[float, float | None]]]:
        """A run's curves: series name -> [(x, y)] in x order (y None where it was NaN/Inf)."""
        sql = "SELECT series, x, y FROM points WHERE run_id = ? ORDER BY series, x"
        result: dict[str, list[tuple[float, float | None]]] = {}
        for series, x, y in self._read(sql, (run_id,)):
            result.setdefault(series, []).append((x, y))
        return result

    def series_axes(self, run_id: str) -> dict[str, str]:
        """What each of a run's series is plotted over: ``{"loss": "step", "val_loss": "epoch"}``."""
        sql = "SELECT DISTINCT series, axis FROM points WHERE run_id = ? ORDER BY series"
        return {str(s): str(a) for s, a in self._read(sql, (run_id,))}

    def card_id(self, run_id: str, channel: str) -> str | None:
        """The message id of a run's live card on ``channel``, if one was posted."""
        sql = "SELECT message_id FROM cards WHERE run_id = ? AND channel = ?"
        rows = self._read(sql, (run_id, channel))
        return str(rows[0][0]) if rows else None

    def save_card_id(self, run_id: str, channel: str, message_id: str) -> None:
        """Remember the message a run's card lives in (a resumed run edits the same one)."""
        sql = "INSERT OR REPLACE INTO cards (run_id, channel, message_id, updated_at) VALUES (?, ?, ?, ?)"
        self._file("write", lambda: self._change(sql, (run_id, channel, message_id, time.time())), None)

    def forget_card(self, run_id: str, channel: str) -> None:
        """Drop a card's message id (someone deleted the message: the next edit posts anew)."""
        sql = "DELETE FROM cards WHERE run_id = ? AND channel = ?"
        self._file("write", lambda: self._change(sql, (run_id, channel)), None)

    # Commands on runs (afs_callbacks.control) ---------------------------------------------------

    def add_command(self, command: Command) -> bool:
        """Store ``command``; False when a tolerant outbox could not write it (nothing is
        kept in memory: a command nobody can read is no command)."""
        row = (
            command.id,
            command.run_id,
            command.action,
            command.source,
            redact(command.actor)[:200],
            command.created,
            command.updated,
            command.state,
            redact(command.detail)[:500],
            command.host,
            json.dumps(dict(command.reply), separators=(",", ":")),
        )
        sql = f"INSERT OR IGNORE INTO commands ({_COMMAND_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        return bool(self._file("write", lambda: self._change(sql, row), 0))

    def command(self, command_id: str) -> Command | None:
        """One stored command by id."""
        found = _commands(self._read(f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE id = ?", (command_id,)))
        return found[0] if found else None

    def commands(
        self,
        *,
        run_ids: Collection[str] | None = None,
        states: Collection[str] | None = None,
        updated_since: float | None = None,
        limit: int | None = 50,
    ) -> list[Command]:
        """Commands, most recently changed first, narrowed by runs, states and change time."""
        clauses: list[str] = []
        params: list[Any] = []
        if run_ids is not None:
            ids = list(run_ids)
            if not ids:
                return []
            clauses.append(f"run_id IN ({_marks(ids)})")
            params += ids
        if states is not None:
            wanted = list(states)
            clauses.append(f"state IN ({_marks(wanted)})")
            params += wanted
        if updated_since is not None:
            clauses.append("updated >= ?")
            params.append(updated_since)
        sql = f"SELECT {_COMMAND_COLUMNS} FROM commands"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY updated DESC, rowid DESC LIMIT ?"
        params.append(-1 if limit is None else limit)
        return _commands(self._read(sql, params))

    def update_command(
        self,
        command_id: str,
        state: str,
        detail: str | None = None,
        *,
        expect: Collection[str] | None = None,
    ) -> bool:
        """Move a command to ``state`` (with ``detail`` when given), only from one of the
        ``expect`` states when given; True when this call changed it (two processes racing
        for one command: one wins)."""
        sql = "UPDATE commands SET state = ?, updated = ?"
        params: list[Any] = [state, time.time()]
        if detail is not None:
            sql += ", detail = ?"
            params.append(redact(detail)[:500])
        sql += " WHERE id = ?"
        params.append(command_id)
        if expect is not None:
            wanted = list(expect)
            sql += f" AND state IN ({_marks(wanted)})"
            params += wanted
        return bool(self._file("write", lambda: self._change(sql, params), 0) == 1)

    # The file's connection ----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._after_fork()
        if self._conn is None:
            with self._lock:  # two threads opening at once would race on the schema and WAL
                if self._conn is None:
                    self._conn = self._open_read_only() if self.read_only else self._open_file()
        return self._conn

    def _open_file(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            # Private to the user (see afs_callbacks._files): SQLite gives the WAL and the
            # shared memory the database file's permissions; older ones are tightened.
            private_dir(Path(self.path).parent)
            private_file(self.path)
            for suffix in ("-wal", "-shm"):
                tighten_file(self.path + suffix)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL survives a killed process (not a power cut) without an fsync
            # per event, which keeps notify() in the tens of microseconds.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()  # a damaged file is moved aside: hold no handle on it
            raise
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        if not os.path.isfile(self.path):
            raise OutboxUnavailable(self.path, "missing", "no history database yet")
        try:
            conn = sqlite3.connect(
                f"file:{quote(self.path)}?mode=ro",
                uri=True,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise OutboxUnavailable(
                self.path, "unreadable", f"cannot open the history database ({error})", error
            ) from None
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            # A table an older file lacks reads as empty: an empty one in the connection's
            # own temporary schema stands in for it (the file is never written).
            for table, sql in _TABLES.items():
                if table not in tables:
                    conn.execute(sql.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE", 1))
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as error:
            conn.close()
            raise OutboxUnavailable(
                self.path, "unreadable", f"the history database cannot be read ({error})", error
            ) from None
        return conn

    def _after_fork(self) -> None:
        if self._conn is not None:
            _inherited.append(self._conn)
        if self._kept is not None:
            _inherited.append(self._kept)
        if self._reader is not None:
            _inherited.append(self._reader)
        # The parent delivers what it kept in memory; a child sending it too would duplicate.
        self._conn = self._kept = self._reader = None
        self._marks = {}
        self._lock = threading.RLock()
        self._reader_lock = threading.Lock()
        self._kept_lock = threading.RLock()
        self._fault_lock = threading.Lock()
        self._pid = os.getpid()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _atomic(self._connection()) as conn:
            yield conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The senders' connection for reading the queue, held for the ``with`` block (see
        ``_reader`` in ``__init__``): one read transaction, so that every statement of the
        block sees the file as it was at one moment (a sender's commit on the main
        connection in between would otherwise show a row pending to one statement and in
        flight to the next). A writer thread committing meanwhile does not wait for it. The
        main connection opens first (the schema, the WAL); a database in memory or a
        read-only outbox has only that one."""
        main = self._connection()
        if self.read_only or self.path == ":memory:":
            with self._lock:
                yield main
            return
        with self._reader_lock:
            if self._reader is None:
                reader = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
                )
                reader.execute("PRAGMA query_only = ON")
                self._reader = reader
            reader = self._reader
            reader.execute("BEGIN")
            try:
                yield reader
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    reader.execute("ROLLBACK")
                raise
            reader.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of a query on the file (none when a tolerant outbox cannot read it)."""
        none: list[Any] = []
        return self._file("read", lambda: self._query(sql, params), none)

    def _change(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._transaction() as conn:
            return int(conn.execute(sql, params).rowcount)

    # The file's statements ----------------------------------------------------------------------

    def _write_file(
        self,
        items: Sequence[tuple[NotificationEvent, Sequence[str]]],
        runs: Sequence[tuple[RunState, Sequence[MetricPoint]]],
        held: Mapping[str, float],
    ) -> None:
        events = [_event_row(event) for event, _ in items]  # before the lock: it costs the GIL
        with self._transaction() as conn:
            _insert(conn, events, items, time.time(), held)
            for state, points in runs:
                _save_run(conn, state, points)

    def _claim_file(self, channel: str, limit: int, lease: _Lease, stories: bool) -> list[_Claimed]:
        # The queue is read outside the write lock (a long queue takes tens of milliseconds
        # to order, and the writer thread would wait that long to store what it was handed):
        # the rows picked are leased in a short transaction that checks again what may have
        # changed in between (_lease_picked). A queue that keeps changing under the read is
        # read and leased in one transaction.
        for _ in range(_CLAIM_TRIES):
            with self._reading() as reader:
                picked = _pick(reader, channel, limit, lease, stories)
            if not picked:
                return []
            with self._transaction() as conn:
                claimed = _lease_picked(conn, channel, picked, lease)
            if claimed:
                return claimed
        with self._transaction() as conn:
            return _claim_rows(conn, channel, limit, lease, stories)

    def _supersede_stale(self, channel: str) -> int:
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
        with self._reading() as conn:
            if not conn.execute(stale + " LIMIT 1", (channel,)).fetchall():
                return 0
        reason = "superseded: its run moved on or ended before it was sent"
        return self._change(
            # last_attempt: when it ended, for the flush report (it was not attempted).
            f"UPDATE deliveries SET state = ?, {_CLEAR_LEASE}, last_error = ?, last_attempt = ?"
            f" WHERE channel = ? AND state = 'pending' AND event_id IN ({stale})",
            (SUPERSEDED, reason, time.time(), channel, channel),
        )

    def _ensure_run_index(self) -> None:
        # The schema creates this index; a file made by an older version gets it here, once.
        if not self._run_index_ready:
            self._query("CREATE INDEX IF NOT EXISTS events_run ON events (run_id, event_type, created)")
            self._run_index_ready = True

    def _fold_due(
        self,
        channel: str,
        make_digest: Callable[[Sequence[HeldMessage]], NotificationEvent],
        forced: float,
        claimed: str | None,
        minimum: int,
    ) -> NotificationEvent | None:
        now = time.time()
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT e.id, e.title, e.level, e.run_id"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE d.channel = :channel AND ((d.state = 'pending'"
                " AND (d.next_attempt <= :now OR COALESCE(d.last_attempt, 0) < :forced))"
                " OR (d.state = 'sending' AND d.event_id = :claimed))"
                f" AND e.event_type NOT IN ({sql_list(BUDGET_EXEMPT_TYPES)})"
                # A run with an end or an alert waiting sends its messages before them (or
                # tells them in the end's story): never in a digest (see priority.py).
                " AND (e.run_id IS NULL OR e.run_id NOT IN (SELECT x.run_id FROM deliveries w"
                "  JOIN events x ON x.id = w.event_id WHERE w.channel = :channel"
                "  AND w.state IN ('pending', 'sending') AND x.run_id IS NOT NULL"
                f"  AND x.event_type IN ({sql_list(BUDGET_EXEMPT_TYPES)})))"
                # A storm guard's digest is exempt too (see priority.is_budgeted).
                " AND COALESCE(json_extract(e.payload, '$.control.digest_count'), 0) = 0"
                " ORDER BY e.created",
                {"channel": channel, "now": now, "forced": forced, "stories": 1, "claimed": claimed},
            ).fetchall()
            if len(rows) < max(minimum, 1):
                return None
            held = [HeldMessage(row[0], row[1], NotificationLevel.parse(row[2]), row[3]) for row in rows]
            digest = make_digest(held)
            _insert(conn, [_event_row(digest)], [(digest, [channel])], now, {})
            conn.executemany(
                f"UPDATE deliveries SET state = ?, last_error = ?, last_attempt = ?, {_CLEAR_LEASE}"
                f" WHERE event_id = ? AND channel = ? AND {_UNFINISHED}",
                [
                    (FOLDED, f"folded into digest {digest.id}", now, message.event_id, channel)
                    for message in held
                ],
            )
        return digest

    def _reclaim_orphans(self) -> int:
        # Looked for with a read first: every process does this when it opens the file, and
        # dozens starting together must not queue on the write lock to find nothing.
        host = socket.gethostname()
        owners = self._query("SELECT DISTINCT lease_owner FROM deliveries WHERE state = 'sending'")
        dead = [owner for (owner,) in owners if owner and _is_dead_local_owner(owner, host)]
        if not dead:
            return 0
        with self._transaction() as conn:
            for owner in dead:
                conn.execute(
                    f"UPDATE deliveries SET state = 'pending', {_CLEAR_LEASE}"
                    " WHERE state = 'sending' AND lease_owner = ?",
                    (owner,),
                )
        return len(dead)

    def _prune(self, max_age_seconds: float, max_events: int) -> int:
        cutoff = time.time() - max_age_seconds
        # A read first, as in _reclaim_orphans: usually there is nothing to prune.
        [(old, total)] = self._query(
            "SELECT EXISTS (SELECT 1 FROM events WHERE created < ?), (SELECT COUNT(*) FROM events)",
            (cutoff,),
        )
        if not old and total <= max_events:
            return 0
        finished = f"NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.{_UNFINISHED})"
        with self._transaction() as conn:
            removed = conn.execute(f"DELETE FROM events WHERE created < ? AND {finished}", (cutoff,)).rowcount
            removed += conn.execute(
                f"DELETE FROM events WHERE {finished} AND id NOT IN"
                " (SELECT id FROM events ORDER BY created DESC LIMIT ?)",
                (max_events,),
            ).rowcount
            conn.execute("DELETE FROM commands WHERE updated < ?", (cutoff,))
        return int(removed)

    # Storage faults (a tolerant outbox) -------------------------------------------------------------

    def _file(self, doing: str, action: Callable[[], _T], fallback: _T) -> _T:
        """``action()`` on the file; a tolerant outbox notes a storage error and returns
        ``fallback`` (and, while its file fails, does not even try a write)."""
        if not self.tolerant:
            return action()
        if doing == "write" and self._resting():
            return fallback
        try:
            return action()
        except (sqlite3.Error, OSError) as error:
            self._on_fault(doing, error)
            return fallback

    def _resting(self) -> bool:
        # While the file fails, writes wait for the writer thread's next retry instead of
        # each sender waiting out a lock or failing on a full disk again and again.
        return self.fault is not None and time.monotonic() < self._next_try

    def _on_fault(self, doing: str, error: BaseException) -> None:
        if is_corruption(error):
            self._move_aside(error)
            return
        cause = describe_fault(error)
        now = time.monotonic()
        busy = is_busy(error)
        self._next_try = now + (BUSY_RETRY_SECONDS if busy else RETRY_SECONDS)
        self._drop_connection()  # reopened on the next try: a read-only one stays read-only
        with self._fault_lock:
            self.fault = cause
            if busy:
                self._busy_since = now if self._busy_since is None else self._busy_since
                if now - self._busy_since < self.lock_patience:
                    return  # other processes take their turns: a queue for the lock, not a fault
                cause = f"{cause} (for {self.lock_patience:g} s now)"
            else:
                self._busy_since = None
            if self._reported == cause:
                return
            self._reported = cause
        # One line per new cause, never a traceback per event.
        log.error(
            "afs-callbacks: cannot %s the notification history %s: %s. Messages are kept in memory"
            " (up to %d) and still delivered; writing resumes when the file is writable again.",
            "use" if self._opened else "open",
            self.path,
            cause,
            self.memory_limit,
        )

    def _drop_connection(self) -> None:
        with self._lock:
            self._close_own(self._conn)
            self._conn = None
        self._drop_reader()

    def _drop_reader(self) -> None:
        with self._reader_lock:
            self._close_own(self._reader)
            self._reader = None

    def _close_own(self, conn: sqlite3.Connection | None) -> None:
        """Close ``conn`` unless it came through a fork: the parent's connection is only
        forgotten in the child, never closed under the parent's feet."""
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _move_aside(self, error: BaseException) -> None:
        with self._lock:
            self._drop_connection()
            # Another thread may have moved the damaged file aside already: never move a
            # fresh one. A check of the file as it is now decides.
            if still_corrupt(self.path, self.busy_timeout):
                target = move_aside(self.path)
                log.error(
                    "afs-callbacks: the notification history %s is corrupted (%s); it was moved to %s"
                    " and a fresh one started. Messages not yet delivered are kept in memory and"
                    " still sent.",
                    self.path,
                    redact(error),
                    target,
                )

    def _mark(self, name: str, event_id: str, channel: str, args: tuple[Any, ...]) -> None:
        """Record a sender's outcome: in memory when the event is kept there, else in the
        file; one the file cannot take now is replayed there on recovery (meanwhile the
        row's lease keeps other senders off it)."""
        if self._in_memory(
            lambda kept: _apply_mark(kept, name, event_id, channel, args, only_kept=True), False
        ):
            return
        if not self.tolerant:
            self._mark_file(name, event_id, channel, args)
            return
        try:
            if self._resting():
                raise sqlite3.OperationalError("the history is not writable now")
            self._mark_file(name, event_id, channel, args)
        except (sqlite3.Error, OSError) as error:
            if not self._resting():
                self._on_fault("write", error)
            with self._kept_lock:
                self._marks[(event_id, channel)] = (name, args)

    def _mark_file(self, name: str, event_id: str, channel: str, args: tuple[Any, ...]) -> None:
        with self._transaction() as conn:
            _apply_mark(conn, name, event_id, channel, args, only_kept=False)

    def _replay_marks(self) -> None:
        with self._kept_lock:
            pending = list(self._marks.items())
        for (event_id, channel), mark in pending:
            self._mark_file(mark[0], event_id, channel, mark[1])
            with self._kept_lock:
                if self._marks.get((event_id, channel)) is mark:  # a newer outcome waits its turn
                    del self._marks[(event_id, channel)]

    def _keep(
        self,
        items: Sequence[tuple[NotificationEvent, Sequence[str]]],
        runs: Sequence[tuple[RunState, Sequence[MetricPoint]]] = (),
        held: Mapping[str, float] | None = None,
    ) -> None:
        """Keep what the file could not take in memory: run states (the latest per run),
        and events, bounded: past the limit, finished ones go first, then the oldest
        progress, then the oldest."""
        rows = [_event_row(event) for event, _ in items]
        with self._kept_lock:
            if self._kept is None:
                self._kept = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                self._kept.execute("PRAGMA foreign_keys=ON")
                self._kept.executescript(_SCHEMA)
            with _atomic(self._kept) as kept:
                _insert(kept, rows, items, time.time(), held or {})
                for state, points in runs:
                    _save_run(kept, state, points)
                excess = kept.execute("SELECT COUNT(*) FROM events").fetchone()[0] - self.memory_limit
                if excess <= 0:
                    return
                victims = kept.execute(
                    "SELECT id, NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
                    f" AND d.{_UNFINISHED}) AS finished FROM events e ORDER BY finished DESC,"
                    f" e.event_type IN ({sql_list(PROGRESS_TYPES)}) DESC, e.rowid LIMIT ?",
                    (excess,),
                ).fetchall()
                kept.executemany("DELETE FROM events WHERE id = ?", [(row[0],) for row in victims])
            dropped = sum(1 for _, finished in victims if not finished)
            if dropped and not self._dropped:
                log.error(
                    "afs-callbacks: more than %d messages are waiting for a writable history; the"
                    " oldest progress messages are being dropped",
                    self.memory_limit,
                )
            self._dropped += dropped

    def _write_back(self, kept: sqlite3.Connection) -> int:
        """Write the kept events with their delivery states as they are now, and the kept
        run states and points, to the file in one transaction; returns how many events."""
        events = kept.execute(
            "SELECT id, created, event_type, level, run_id, title, payload FROM events"
        ).fetchall()
        deliveries = kept.execute(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries").fetchall()
        runs = _states(kept.execute("SELECT state FROM runs"))
        points = kept.execute("SELECT run_id, series, axis, x, y FROM points").fetchall()
        if events or runs:
            with self._transaction() as conn:
                if events:
                    conn.execute(_INSERT_EVENTS, (_rows_json(events),))
                if deliveries:
                    conn.execute(_COPY_DELIVERIES, (_rows_json(deliveries),))
                for state in runs:
                    _save_run(conn, state, ())
                _insert_points(conn, points)
        return len(events)

    def _in_memory(self, action: Callable[[sqlite3.Connection], _T], nothing: _T) -> _T:
        """``action`` on the kept events' connection, or ``nothing`` when none are kept (the
        common case: one attribute read, no lock)."""
        if self._kept is None:
            return nothing
        with self._kept_lock:
            kept = self._kept
            return nothing if kept is None else action(kept)

    def _kept_count(self) -> int:
        return self._in_memory(lambda kept: int(kept.execute("SELECT COUNT(*) FROM events").fetchone()[0]), 0)

    def _everywhere(
        self,
        doing: str,
        query: Callable[[sqlite3.Connection], _T],
        fallback: _T,
        *,
        queue: bool = False,
    ) -> list[_T]:
        """``query`` on the kept events, then on the file (``fallback`` for a file that fails);
        ``queue``: a sender's read of the queue, on the readers' connection."""
        found = [] if self._kept is None else [self._in_memory(query, fallback)]

        def on_file() -> _T:
            if queue:
                with self._reading() as conn:
                    return query(conn)
            with self._lock:
                return query(self._connection())

        found.append(self._file(doing, on_file, fallback))
        return found


#: The longest a fork waits for one outbox lock (see ``_still_before_fork``): a thread inside
#: SQLite leaves it in microseconds; one waiting out a busy file must not hold a fork long.
_FORK_WAIT_SECONDS = 1.0
_held_for_fork: list[threading.Lock | threading.RLock] = []


def _still_before_fork() -> None:
    """No thread of ours is inside SQLite when the process forks. SQLite's process-wide
    mutexes, held by a thread that does not survive the fork, would block the child's first
    connection for ever: a DataLoader worker that hangs (the outbox's fork test hung about
    one time in 50 without this). An outbox's SQLite calls run under these three
    locks (its file's connection, the senders' reading one, the events kept in memory)."""
    for outbox in list(_instances):
        for lock in (outbox._lock, outbox._reader_lock, outbox._kept_lock):
            if lock.acquire(timeout=_FORK_WAIT_SECONDS):
                _held_for_fork.append(lock)


def _release_after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


def _reset_after_fork() -> None:
    _held_for_fork.clear()  # the child's outboxes get new locks
    for outbox in list(_instances):
        outbox._after_fork()


os.register_at_fork(
    before=_still_before_fork, after_in_parent=_release_after_fork_in_parent, after_in_child=_reset_after_fork
)


# Statements shared by the file and the kept events --------------------------------------------------

_TABLES = {
    statement.split("(", 1)[0].split()[-1]: statement.strip()
    for statement in _SCHEMA.split(";")
    if "CREATE TABLE" in statement
}


@contextlib.contextmanager
def _atomic(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE: a writer takes the write lock up front, so two processes never deadlock
    # upgrading their read locks.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# Many rows, one statement: the rows travel as one JSON array that SQLite takes apart itself.
# The sqlite3 module releases the GIL around every step of a statement, and executemany()
# steps once per row; while the training thread is busy in Python, each release costs the
# writer up to the interpreter's switch interval (5 ms) to get the GIL back, so 500 rows
# took seconds. One statement is one step (and one release) whatever the number of rows.
_INSERT_EVENTS = (
    "INSERT OR IGNORE INTO events (id, created, event_type, level, run_id, title, payload)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),"
    " json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),"
    " json_extract(value, '$[6]') FROM json_each(?)"
)
_INSERT_DELIVERIES = (
    "INSERT OR IGNORE INTO deliveries (event_id, channel, state, next_attempt)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), 'pending',"
    " json_extract(value, '$[2]') FROM json_each(?)"
)


_DELIVERY_COLUMNS = (
    "event_id, channel, state, attempts, next_attempt, last_attempt, lease_until, lease_owner,"
    " last_error, delivered_at"
)
# Kept deliveries back to the file as they are now (a kept one may be delivered already).
_COPY_DELIVERIES = (
    f"INSERT OR REPLACE INTO deliveries ({_DELIVERY_COLUMNS}) SELECT "
    + ", ".join(f"json_extract(value, '$[{index}]')" for index in range(10))
    + " FROM json_each(?)"
)


def _rows_json(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as the JSON array a ``json_each(?)`` statement reads (text kept exactly)."""
    return json.dumps(list(rows), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _insert(
    conn: sqlite3.Connection,
    events: Sequence[tuple[Any, ...]],
    items: Sequence[tuple[NotificationEvent, Sequence[str]]],
    now: float,
    held: Mapping[str, float],
) -> None:
    if events:
        conn.execute(_INSERT_EVENTS, (_rows_json(events),))
    deliveries = [
        (event.id, channel, held.get(event.id, now)) for event, channels in items for channel in channels
    ]
    if deliveries:
        conn.execute(_INSERT_DELIVERIES, (_rows_json(deliveries),))


_UPSERT_RUN = (
    "INSERT INTO runs (run_id, model, host, pid, status, started_at, updated_at, ended_at, state)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
    " model = excluded.model, host = excluded.host, pid = excluded.pid,"
    " status = excluded.status, started_at = COALESCE(runs.started_at, excluded.started_at),"
    " updated_at = excluded.updated_at, ended_at = excluded.ended_at, state = excluded.state"
)
_INSERT_POINTS = (
    "INSERT OR REPLACE INTO points (run_id, series, axis, x, y) SELECT json_extract(value, '$[0]'),"
    " json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'),"
    " json_extract(value, '$[4]') FROM json_each(?)"
)


def _save_run(conn: sqlite3.Connection, state: RunState, points: Sequence[MetricPoint]) -> None:
    """Upsert a run's state and add its points (inside the caller's transaction)."""
    conn.execute(
        _UPSERT_RUN,
        (
            state.run_id,
            state.model,
            state.host,
            state.pid,
            state.status,
            state.started_at,
            state.updated_at,
            state.ended_at,
            _run_json(state),
        ),
    )
    rows = [(state.run_id, p.series, p.axis, float(p.x), p.y if math.isfinite(p.y) else None) for p in points]
    _insert_points(conn, rows)


def _insert_points(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Add points ``(run_id, series, axis, x, y)``; a series over the limit is thinned."""
    if not rows:
        return
    conn.execute(_INSERT_POINTS, (_rows_json(rows),))
    for run_id, series in {(row[0], row[1]) for row in rows}:
        count = conn.execute(
            "SELECT COUNT(*) FROM points WHERE run_id = ? AND series = ?", (run_id, series)
        ).fetchone()[0]
        if count > MAX_POINTS_PER_SERIES:
            conn.execute(
                "DELETE FROM points WHERE run_id = ? AND series = ? AND x IN (SELECT x FROM"
                " (SELECT x, ROW_NUMBER() OVER (ORDER BY x) AS n FROM points"
                "  WHERE run_id = ? AND series = ?) WHERE n % 2 = 0)",
                (run_id, series, run_id, series),
            )


class _Claimed(NamedTuple):
    """A row :func:`_claim_rows` leased: the event, and what its run's end tells with it."""

    event_id: str
    attempts: int
    payload: str
    leads_exempt: bool
    told: tuple[str, ...]  # payloads


def _told_in(end_id: str) -> str:
    """The reason a message folded into a run's end carries (and how the end finds it)."""
    return f"folded into the story of the run's end {end_id}"


#: A row picked, its run and its run's queue (None, None: a message of no run).
_Picked = tuple[Queued, "str | None", "RunQueue | None"]


def _claim_rows(
    conn: sqlite3.Connection, channel: str, limit: int, lease: _Lease, stories: bool
) -> list[_Claimed]:
    """Pick and lease the rows to send next, inside the caller's transaction."""
    return _lease_picked(conn, channel, _pick(conn, channel, limit, lease, stories), lease)


def _pick(conn: sqlite3.Connection, channel: str, limit: int, lease: _Lease, stories: bool) -> list[_Picked]:
    """The rows to send next: the queue walked by urgency, each due row standing for its
    run, whose next message is taken (see priority.py)."""
    now, _, forced, _ = lease
    order = _Order(conn, channel, now, forced, stories)
    picked: list[_Picked] = []
    runs: set[str] = set()
    with contextlib.closing(order.walk(f" AND {_DUE}", _BY_URGENCY, {})) as walk:
        for row, run_id in walk:
            if run_id is None:
                picked.append((row, None, None))
            elif run_id not in runs:
                runs.add(run_id)
                of_run = order.run(run_id)
                if of_run.next is not None and of_run.next.due:
                    picked.append((of_run.next, run_id, of_run))
            if len(picked) >= limit:
                break
    return picked


# Leases a picked row if it is still due and nothing of its run has gone in flight since it
# was picked (a pick read outside the lease's transaction may be overtaken by another
# process's sender). The rest such a pick may have missed is what a claim a moment earlier
# would have missed too: rows stored since (they wait for the next claim), an end or an
# alert of the run arriving (it takes the run's next turn).
_LEASE_CHECKED = (
    "UPDATE deliveries SET state = 'sending', lease_until = :until, lease_owner = :owner"
    " WHERE event_id = :id AND channel = :channel AND ((state = 'pending' AND (next_attempt <= :now"
    " OR COALESCE(last_attempt, 0) < :forced)) OR (state = 'sending' AND lease_until < :now))"
    " AND (:run IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries f JOIN events x ON x.id = f.event_id"
    "  WHERE f.channel = :channel AND f.state = 'sending' AND f.lease_until >= :now"
    "  AND x.run_id = :run AND f.event_id != :id))"
)


def _lease_picked(
    conn: sqlite3.Connection, channel: str, picked: Sequence[_Picked], lease: _Lease
) -> list[_Claimed]:
    """Lease those of ``picked`` still free to go (inside the caller's transaction; picked
    outside it, some may not be); an end takes along (folds) its run's earlier rows still
    waiting, unless the channel tells no stories."""
    now, lease_seconds, forced, owner = lease
    params = {
        "until": now + lease_seconds,
        "owner": owner or lease_owner(),
        "channel": channel,
        "now": now,
        "forced": forced,
    }
    leased = [
        (row, run_id, queue)
        for row, run_id, queue in picked
        if conn.execute(_LEASE_CHECKED, {**params, "id": row.event_id, "run": run_id}).rowcount
    ]
    claimed = []
    for row, run_id, queue in leased:
        found = conn.execute(
            "SELECT d.attempts, e.payload, e.created FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE d.event_id = ? AND d.channel = ?",
            (row.event_id, channel),
        ).fetchone()
        if found is None:  # pragma: no cover - deleted under our lease (prune keeps unfinished rows)
            continue
        attempts, payload, created = found
        told: tuple[str, ...] = ()
        if queue is not None and queue.tells and run_id is not None:
            told = _fold_into_end(conn, channel, row.event_id, run_id, created, now)
        claimed.append(
            _Claimed(row.event_id, attempts, payload, queue is not None and queue.leads_exempt, told)
        )
    return claimed


def _fold_into_end(
    conn: sqlite3.Connection, channel: str, end_id: str, run_id: str, created: float, now: float
) -> tuple[str, ...]:
    """Fold the run's messages from before its end that still wait on ``channel`` (none is
    in flight: the claim saw to that) into the end; return the payloads of all folded into
    it so far, oldest first (a retried end tells the same story again)."""
    reason = _told_in(end_id)
    conn.execute(
        f"UPDATE deliveries SET state = ?, last_error = ?, last_attempt = ?, {_CLEAR_LEASE}"
        " WHERE channel = ? AND state IN ('pending', 'sending') AND event_id != ?"
        " AND NOT (state = 'sending' AND lease_until >= ?) AND event_id IN (SELECT id FROM events"
        "  WHERE run_id = ? AND (created < ? OR (created = ? AND id < ?)))",
        (FOLDED, reason, now, channel, end_id, now, run_id, created, created, end_id),
    )
    rows = conn.execute(
        "SELECT e.payload FROM events e JOIN deliveries d ON d.event_id = e.id AND d.channel = ?"
        " WHERE e.run_id = ? AND d.state = ? AND d.last_error = ? ORDER BY e.created, e.id",
        (channel, run_id, FOLDED, reason),
    ).fetchall()
    return tuple(row[0] for row in rows)


def _readable(payloads: Sequence[str]) -> tuple[NotificationEvent, ...]:
    """The events of ``payloads`` that can be read (one that cannot is left out of a story)."""
    events = []
    for payload in payloads:
        with contextlib.suppress(ValueError, KeyError):
            events.append(NotificationEvent.from_json(payload))
    return tuple(events)


def _claim(kept: sqlite3.Connection, channel: str, limit: int, lease: _Lease, stories: bool) -> list[Claim]:
    with _atomic(kept):
        rows = _claim_rows(kept, channel, limit, lease, stories)
    return [_claim_of(row, NotificationEvent.from_json(row.payload), channel) for row in rows]


def _claim_of(row: _Claimed, event: NotificationEvent, channel: str) -> Claim:
    return Claim(event, channel, row.attempts, _readable(row.told), row.leads_exempt)


def _change_on(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    with _atomic(conn):
        return int(conn.execute(sql, params).rowcount)


def _apply_mark(
    conn: sqlite3.Connection,
    name: str,
    event_id: str,
    channel: str,
    args: tuple[Any, ...],
    *,
    only_kept: bool,
) -> bool:
    """Apply one sender outcome to the row ``(event_id, channel)``; with ``only_kept``,
    False (nothing done) when ``conn`` does not hold that row."""
    key = (event_id, channel)
    if (
        only_kept
        and conn.execute("SELECT 1 FROM deliveries WHERE event_id = ? AND channel = ?", key).fetchone()
        is None
    ):
        return False
    now = time.time()
    if name == "mark_delivered":
        sql = (
            "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_attempt = ?,"
            f" delivered_at = ?, {_CLEAR_LEASE}, last_error = ? WHERE event_id = ? AND channel = ?"
        )
        note = args[0] if args else None  # a mark kept from before notes existed has none
        params: tuple[Any, ...] = (now, now, note, *key)
    elif name == "mark_retry":
        next_attempt, error = args
        sql = (
            "UPDATE deliveries SET state = 'pending', attempts = attempts + 1, last_attempt = ?,"
            f" next_attempt = ?, {_CLEAR_LEASE}, last_error = ? WHERE event_id = ? AND channel = ?"
            f" AND {_UNFINISHED}"
        )
        params = (now, next_attempt, error, *key)
    elif name == "mark_dead":
        attempted, error = args
        sql = (
            "UPDATE deliveries SET state = 'dead', attempts = attempts + ?, last_attempt = ?,"
            f" {_CLEAR_LEASE}, last_error = ? WHERE event_id = ? AND channel = ? AND {_UNFINISHED}"
        )
        params = (attempted, now, error, *key)
    else:  # release
        sql = (
            f"UPDATE deliveries SET state = 'pending', {_CLEAR_LEASE}"
            " WHERE event_id = ? AND channel = ? AND state = 'sending'"
        )
        params = key
    conn.execute(sql, params)
    return True


def _flush_due(
    conn: sqlite3.Connection, channel: str, since: float, stories: bool
) -> tuple[int, float | None]:
    # Only rows that can go when their time comes count: one held behind an earlier message
    # of its run waits for that one (which counts itself).
    order = _Order(conn, channel, time.time(), since, stories)
    untried = order.first(
        " AND (d.state = 'sending' OR COALESCE(d.last_attempt, 0) < :since)", "", {"since": since}
    )
    retried = order.first(
        " AND d.state = 'pending' AND COALESCE(d.last_attempt, 0) >= :since",
        " ORDER BY d.next_attempt",
        {"since": since},
    )
    return (0 if untried is None else 1), None if retried is None else retried.due_at


def _next_due(conn: sqlite3.Connection, channel: str, stories: bool) -> float | None:
    # A row held behind an earlier message of its run is not due before that one is done;
    # one in flight is due again when its lease ends.
    # Leased rows (a few) and pending ones (walked in the deliveries_due index's order, so
    # the usual answer, the first row, costs no sort of a long queue) are read apart.
    order = _Order(conn, channel, time.time(), -1.0, stories)
    leased = order.first(" AND d.state = 'sending'", " ORDER BY d.lease_until", {})
    pending = order.first(" AND d.state = 'pending'", " ORDER BY d.next_attempt", {})
    dues = [row.due_at for row in (leased, pending) if row is not None]
    return min(dues) if dues else None


class _Order:
    """One read of a channel's queue: rows walked in some order, each run looked at once."""

    def __init__(
        self, conn: sqlite3.Connection, channel: str, now: float, forced: float, stories: bool
    ) -> None:
        self.conn = conn
        self.stories = stories
        self.params: dict[str, Any] = {"channel": channel, "now": now, "forced": forced}
        self._runs: dict[str, RunQueue] = {}

    def walk(self, where: str, order: str, extra: Mapping[str, Any]) -> Generator[tuple[Queued, str | None]]:
        """The channel's unfinished rows that match ``where``, in ``order``, with their run."""
        cursor = self.conn.execute(_CHANNEL_QUEUE + where + order, {**self.params, **extra})
        try:
            for row in cursor:
                yield _queued(row), row[1]
        finally:
            cursor.close()

    def run(self, run_id: str) -> RunQueue:
        """What the run's unfinished rows on the channel say (priority.next_of_run)."""
        found = self._runs.get(run_id)
        if found is None:
            rows = [_queued(row) for row in self.conn.execute(_RUN_QUEUE, {**self.params, "run": run_id})]
            found = self._runs[run_id] = next_of_run(rows, stories=self.stories)
        return found

    def counts(self, row: Queued, run_id: str | None) -> bool:
        """Whether ``row`` is something the sender waits for: in flight, or its run's next."""
        return row.flying or run_id is None or self.run(run_id).next == row

    def first(self, where: str, order: str, extra: Mapping[str, Any]) -> Queued | None:
        """The first row of the walk that the sender waits for."""
        with contextlib.closing(self.walk(where, order, extra)) as walk:
            for row, run_id in walk:
                if self.counts(row, run_id):
                    return row
        return None


def _queued(row: Sequence[Any]) -> Queued:
    try:
        kind = EventType(row[2])
    except ValueError:  # a type a newer version wrote: an ordinary message
        kind = EventType.CUSTOM
    return Queued(
        str(row[0]), kind, bool(row[3]), bool(row[4]), float(row[5] or 0.0), float(row[6]), bool(row[7])
    )


def _untried_since(conn: sqlite3.Connection, channels: Sequence[str], since: float) -> int:
    row = conn.execute(
        f"SELECT COUNT(*) FROM deliveries WHERE channel IN ({_marks(channels)}) AND {_UNFINISHED}"
        " AND (state = 'sending' OR COALESCE(last_attempt, 0) < ?)",
        (*channels, since),
    ).fetchone()
    return int(row[0])


def _counts(conn: sqlite3.Connection, channels: Sequence[str] | None) -> dict[str, dict[str, int]]:
    sql = "SELECT channel, state, COUNT(*) FROM deliveries"
    if channels is not None:
        sql += f" WHERE channel IN ({_marks(channels)})"
    result: dict[str, dict[str, int]] = {}
    for channel, state, count in conn.execute(sql + " GROUP BY channel, state", channels or ()):
        result.setdefault(channel, {})[state] = count
    return result


def _channel_health(conn: sqlite3.Connection) -> list[ChannelHealth]:
    retrying = "d.state IN ('pending', 'sending') AND d.attempts > 0 AND d.last_error IS NOT NULL"
    rows = conn.execute(
        "SELECT d.channel, d.state, COUNT(*),"
        f" SUM(CASE WHEN {retrying} THEN 1 ELSE 0 END),"
        f" MIN(CASE WHEN {retrying} THEN e.created END),"
        " MAX(d.delivered_at), MAX(d.last_attempt)"
        " FROM deliveries d JOIN events e ON e.id = d.event_id GROUP BY d.channel, d.state"
    ).fetchall()
    found: dict[str, ChannelHealth] = {}
    for channel, state, count, failing, failing_since, delivered_at, last_attempt in rows:
        part = ChannelHealth(
            channel,
            {state: int(count)},
            retrying=int(failing or 0),
            failing_since=failing_since,
            last_delivered=delivered_at if state == DELIVERED else None,
            last_dead=last_attempt if state == DEAD else None,
        )
        found[channel] = _merge_health(found.get(channel), part)
    return list(found.values())


def _merge_health(first: ChannelHealth | None, second: ChannelHealth) -> ChannelHealth:
    """Two counts of one channel (per state, or the file's and memory's) as one."""
    if first is None:
        return second
    states = dict(first.states)
    for state, count in second.states.items():
        states[state] = states.get(state, 0) + count

    def pick(choose: Callable[[float, float], float], a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else choose(a, b)

    return ChannelHealth(
        first.channel,
        states,
        retrying=first.retrying + second.retrying,
        failing_since=pick(min, first.failing_since, second.failing_since),
        last_delivered=pick(max, first.last_delivered, second.last_delivered),
        last_dead=pick(max, first.last_dead, second.last_dead),
    )


def _finished_between(conn: sqlite3.Connection, start: float, end: float) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for channel, state, count in conn.execute(
        "SELECT channel, state, COUNT(*) FROM deliveries WHERE"
        " (state = 'delivered' AND delivered_at >= ? AND delivered_at < ?)"
        " OR (state IN ('dead', 'superseded', 'folded') AND last_attempt >= ? AND last_attempt < ?)"
        " GROUP BY channel, state",
        (start, end, start, end),
    ):
        result.setdefault(channel, {})[state] = count
    return result


@dataclass(frozen=True)
class _HistoryFilter:
    run_id: str | None
    event_type: str | Collection[str] | None
    level: str | None
    state: str | Collection[str] | None
    channel: str | None
    event_id: str | None


def _history(conn: sqlite3.Connection, where: _HistoryFilter, limit: int) -> list[HistoryEntry]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("id", where.event_id), ("run_id", where.run_id), ("level", where.level)):
        if value is not None:
            clauses.append(f"e.{column} = ?")
            params.append(value)
    if where.event_type is not None:
        types = _values(where.event_type)
        clauses.append(f"e.event_type IN ({_marks(types)})")
        params += types
    if where.state is not None or where.channel is not None:
        sub = "SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
        if where.state is not None:
            states = _values(where.state)
            sub += f" AND d.state IN ({_marks(states)})"
            params += states
        if where.channel is not None:
            sub += " AND d.channel = ?"
            params.append(where.channel)
        clauses.append(f"EXISTS ({sub})")
    sql = "SELECT e.id, e.payload FROM events e"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    rows = conn.execute(sql + " ORDER BY e.created DESC LIMIT ?", (*params, limit)).fetchall()
    deliveries: dict[str, list[Delivery]] = {}
    for start in range(0, len(rows), 500):  # SQLite's bound-parameter limit
        ids = [row[0] for row in rows[start : start + 500]]
        for event_id, *columns in conn.execute(
            "SELECT event_id, channel, state, attempts, CASE WHEN state = 'pending' THEN next_attempt END,"
            f" last_error, delivered_at, last_attempt FROM deliveries WHERE event_id IN ({_marks(ids)})"
            " ORDER BY channel",
            ids,
        ):
            deliveries.setdefault(event_id, []).append(Delivery(*columns))
    entries = []
    for event_id, payload in rows:
        try:
            event = NotificationEvent.from_json(payload)
        except (ValueError, KeyError):
            continue
        entries.append(HistoryEntry(event, tuple(deliveries.get(event_id, ()))))
    return entries


def _event_row(event: NotificationEvent) -> tuple[str, float, str, str, str | None, str, str]:
    return (
        event.id,
        event.timestamp.timestamp(),
        event.event_type.value,
        event.level.value,
        event.run_id,
        event.title,
        event.to_json(),
    )


_COMMAND_COLUMNS = "id, run_id, action, source, actor, created, updated, state, detail, host, reply"


def _commands(rows: Iterable[Sequence[Any]]) -> list[Command]:
    found = []
    for row in rows:
        try:
            reply = json.loads(row[10] or "{}")
        except ValueError:
            reply = {}
        found.append(
            Command(
                id=str(row[0]),
                run_id=str(row[1]),
                action=str(row[2]),
                source=str(row[3]),
                actor=str(row[4]),
                created=float(row[5]),
                updated=float(row[6]),
                state=str(row[7]),
                detail=str(row[8] or ""),
                host=str(row[9] or ""),
                reply=reply if isinstance(reply, dict) else {},
            )
        )
    return found


def _run_json(state: RunState) -> str:
    return json.dumps(state.to_dict(), separators=(",", ":"), allow_nan=False)


def _states(rows: Iterable[Sequence[Any]]) -> list[RunState]:
    states = []
    for (payload,) in rows:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            states.append(RunState.from_dict(json.loads(payload)))
    return states


def _summed(parts: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for part in parts:
        for channel, states in part.items():
            into = result.setdefault(channel, {})
            for state, count in states.items():
                into[state] = into.get(state, 0) + count
    return result


def _values(value: str | Collection[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _is_dead_local_owner(owner: str, host: str) -> bool:
    owner_host, _, pid_text = owner.rpartition(":")
    if owner_host != host or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return pid != os.getpid() and not pid_exists(pid)


__all__ = [
    "ACCEPTED",
    "CANCELLED",
    "COMMAND_FINISHED",
    "COMMAND_STATES",
    "DEAD",
    "DELIVERED",
    "DONE",
    "EXPIRED",
    "FOLDED",
    "MAX_POINTS_PER_SERIES",
    "OUTBOX_FILE",
    "PENDING",
    "QUEUED",
    "REFUSED",
    "RETRY_SECONDS",
    "SENDING",
    "STATES",
    "SUPERSEDED",
    "UNCONFIRMED",
    "ChannelHealth",
    "Claim",
    "Command",
    "Delivery",
    "HistoryEntry",
    "Outbox",
    "OutboxUnavailable",
    "lease_owner",
]
