"""The durable outbox: every accepted event and its delivery state per channel, in SQLite.

The same table is the notification history. Rows move ``pending -> sending -> delivered``
or back to ``pending`` with a later ``next_attempt``, or end ``dead``; the sender may end
stale progress ``superseded`` and fold a flood into a digest (``folded``). A sender claims
rows with a lease (``lease_until`` + ``lease_owner``) inside ``BEGIN IMMEDIATE``, so two
processes never send the same row at once and a crashed sender's rows are claimed again.

:class:`Outbox` is the writing and claiming here plus the mixins of ``outbox_reads``
(history), ``outbox_priority`` (superseding, folding, flush bookkeeping) and
``outbox_runs`` (runs, points, cards), all over one connection (``outbox_base``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.delivery.outbox_base import (
    DEAD,
    DELIVERED,
    PENDING,
    SENDING,
    STATES,
    OutboxBase,
    lease_owner,
)
from afs_callbacks.delivery.outbox_priority import PriorityQueries
from afs_callbacks.delivery.outbox_reads import Delivery, HistoryEntry, HistoryReads
from afs_callbacks.delivery.outbox_runs import MAX_POINTS_PER_SERIES, RunTables
from afs_callbacks.delivery.priority import FOLDED, SUPERSEDED, priority_sql
from afs_callbacks.events import NotificationEvent
from afs_callbacks.redaction import redact

__all__ = [
    "DEAD",
    "DELIVERED",
    "FOLDED",
    "MAX_POINTS_PER_SERIES",
    "PENDING",
    "SENDING",
    "STATES",
    "SUPERSEDED",
    "Claim",
    "Delivery",
    "HistoryEntry",
    "Outbox",
    "OutboxBase",
    "event_row",
    "lease_owner",
]

log = get_logger(__name__)


@dataclass(frozen=True)
class Claim:
    """One delivery claimed for sending: the event and how many attempts it has had."""

    event: NotificationEvent
    channel: str
    attempts: int


class Outbox(PriorityQueries, RunTables, HistoryReads):
    """SQLite-backed outbox and history at ``path`` (``":memory:"`` for a volatile one).

    Thread-safe within a process; safe across processes through SQLite's locking.
    """

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
