"""The outbox read as a history: events with their deliveries, counts per channel and state,
and what finished between two moments (flush reports)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from afs_callbacks.delivery.outbox_base import PENDING, SENDING, OutboxBase
from afs_callbacks.events import NotificationEvent


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


class HistoryReads(OutboxBase):
    """History and counts (part of :class:`~afs_callbacks.delivery.outbox.Outbox`)."""

    def finished_between(self, start: float, end: float) -> dict[str, dict[str, int]]:
        """Deliveries that ended in ``[start, end)`` per channel: ``{"slack": {"delivered":
        3, "dead": 1, "superseded": 2}}`` (by any process sharing this outbox)."""
        result: dict[str, dict[str, int]] = {}
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT channel, state, COUNT(*) FROM deliveries WHERE"
                    " (state = 'delivered' AND delivered_at >= ? AND delivered_at < ?)"
                    " OR (state IN ('dead', 'superseded', 'folded')"
                    " AND last_attempt >= ? AND last_attempt < ?)"
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
