"""The in-memory part of the store: events the file could not take, and their deliveries.

It mirrors the outbox's rows (``pending -> sending -> delivered|dead``, retries with a
next attempt time) so the senders can deliver from it exactly as from the file, and the
store can write it back, states included, when the file is writable again. Bounded: past
``limit`` events, finished ones go first, then the oldest progress, then the oldest.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.delivery.outbox import (
    DEAD,
    DELIVERED,
    PENDING,
    SENDING,
    Claim,
    Delivery,
    HistoryEntry,
    event_row,
)
from afs_callbacks.events import PROGRESS_TYPES, TERMINAL_TYPES, URGENT_TYPES, NotificationEvent

log = get_logger(__name__)

_FINISHED = (DELIVERED, DEAD)


@dataclass
class Slot:
    """One event's delivery state on one channel (the columns of the deliveries table)."""

    state: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    lease_until: float | None = None
    last_error: str | None = None
    delivered_at: float | None = None


@dataclass
class Entry:
    """An event kept in memory, with its deliveries by channel."""

    event: NotificationEvent
    created: float
    slots: dict[str, Slot] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether every delivery is over (kept only for the history)."""
        return all(slot.state in _FINISHED for slot in self.slots.values())


def priority(event: NotificationEvent) -> int:
    """Sending order: the end of a run first, then what needs a human, progress last."""
    kind = event.event_type
    if kind in TERMINAL_TYPES:
        return 0
    if kind in URGENT_TYPES:
        return 1
    return 3 if kind in PROGRESS_TYPES else 2


class MemoryTable:
    """Thread-safe, bounded table of events and deliveries (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.RLock()
        self.dropped = 0
        self._entries: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add_many(self, items: Sequence[tuple[NotificationEvent, Sequence[str]]]) -> None:
        """Keep events and one pending delivery per channel."""
        now = time.time()
        with self.lock:
            for event, channels in items:
                if event.id not in self._entries:
                    slots = {channel: Slot(next_attempt=now) for channel in channels}
                    self._entries[event.id] = Entry(event, event.timestamp.timestamp(), slots)
            while len(self._entries) > self.limit:
                self._evict()

    def _evict(self) -> None:
        entries = list(self._entries.values())
        victim = next((e for e in entries if e.finished), None)
        victim = victim or next((e for e in entries if e.event.event_type in PROGRESS_TYPES), None)
        victim = victim or entries[0]
        del self._entries[victim.event.id]
        if not victim.finished:
            self.dropped += 1
            if self.dropped == 1:
                log.error(
                    "afs-callbacks: more than %d messages are waiting for a writable history; the"
                    " oldest progress messages are being dropped",
                    self.limit,
                )

    def claim(
        self, channel: str, *, lease_seconds: float, limit: int, forced_since: float | None
    ) -> list[Claim]:
        """Lease up to ``limit`` due deliveries of ``channel``, most urgent first."""
        now = time.time()
        forced = -1.0 if forced_since is None else forced_since
        with self.lock:
            due = [
                entry
                for entry in self._entries.values()
                if channel in entry.slots and _is_due(entry.slots[channel], now, forced)
            ]
            due.sort(key=lambda entry: (priority(entry.event), entry.created))
            claims = []
            for entry in due[:limit]:
                slot = entry.slots[channel]
                slot.state, slot.lease_until = SENDING, now + lease_seconds
                claims.append(Claim(entry.event, channel, slot.attempts))
            return claims

    def apply(
        self, name: str, event_id: str, channel: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        """Record an outcome (``mark_delivered``, ``mark_retry``, ``mark_dead``, ``release``)
        for a kept event; False when the event is not kept here."""
        with self.lock:
            entry = self._entries.get(event_id)
            slot = None if entry is None else entry.slots.get(channel)
            if slot is None:
                return False
            if slot.state in _FINISHED:
                return True  # like the table's UPDATE ... WHERE state IN (pending, sending)
            now = time.time()
            if name == "release":
                slot.state, slot.lease_until = PENDING, None
                return True
            slot.attempts += 0 if name == "mark_dead" and not kwargs.get("attempted", True) else 1
            slot.last_attempt, slot.lease_until = now, None
            if name == "mark_delivered":
                slot.state, slot.delivered_at, slot.last_error = DELIVERED, now, None
            elif name == "mark_retry":
                slot.state, slot.next_attempt, slot.last_error = PENDING, float(args[0]), str(args[1])
            else:
                slot.state, slot.last_error = DEAD, str(args[0])
            return True

    def next_due(self, channel: str) -> float | None:
        """When the next kept delivery of ``channel`` is due."""
        with self.lock:
            times = [
                slot.next_attempt if slot.state == PENDING else (slot.lease_until or 0.0)
                for entry in self._entries.values()
                for name, slot in entry.slots.items()
                if name == channel and slot.state in (PENDING, SENDING)
            ]
        return min(times) if times else None

    def untried_since(self, channels: Sequence[str], since: float) -> int:
        """Kept deliveries being sent, or pending and not attempted since ``since``."""
        with self.lock:
            return sum(
                1
                for entry in self._entries.values()
                for name, slot in entry.slots.items()
                if name in channels
                and (slot.state == SENDING or (slot.state == PENDING and (slot.last_attempt or 0.0) < since))
            )

    def retry_due(self, channel: str, since: float) -> float | None:
        """When the earliest kept delivery of ``channel`` tried since ``since`` is due again."""
        with self.lock:
            times = [
                entry.slots[channel].next_attempt
                for entry in self._entries.values()
                if channel in entry.slots
                and entry.slots[channel].state == PENDING
                and (entry.slots[channel].last_attempt or 0.0) >= since
            ]
        return min(times) if times else None

    def counts(self, channels: Iterable[str] | None) -> dict[str, dict[str, int]]:
        """Kept deliveries per channel per state."""
        wanted = None if channels is None else set(channels)
        result: dict[str, dict[str, int]] = {}
        with self.lock:
            for entry in self._entries.values():
                for name, slot in entry.slots.items():
                    if wanted is None or name in wanted:
                        states = result.setdefault(name, {})
                        states[slot.state] = states.get(slot.state, 0) + 1
        return result

    def finished_between(self, start: float, end: float) -> dict[str, dict[str, int]]:
        """Kept deliveries that ended in ``[start, end)``."""
        result: dict[str, dict[str, int]] = {}
        with self.lock:
            for entry in self._entries.values():
                for name, slot in entry.slots.items():
                    when = slot.delivered_at if slot.state == DELIVERED else slot.last_attempt
                    if slot.state in _FINISHED and when is not None and start <= when < end:
                        states = result.setdefault(name, {})
                        states[slot.state] = states.get(slot.state, 0) + 1
        return result

    def history(self, limit: int, **filters: str | None) -> list[HistoryEntry]:
        """Kept events as history entries, newest first, filtered like the outbox's."""
        with self.lock:
            entries = [e for e in self._entries.values() if _matches(e, filters)]
            entries.sort(key=lambda e: e.created, reverse=True)
            return [
                HistoryEntry(
                    e.event,
                    tuple(
                        Delivery(
                            name,
                            slot.state,
                            slot.attempts,
                            slot.next_attempt if slot.state == PENDING else None,
                            slot.last_error,
                            slot.delivered_at,
                        )
                        for name, slot in sorted(e.slots.items())
                    ),
                )
                for e in entries[:limit]
            ]

    def snapshot(self) -> list[Entry]:
        """The kept entries (call under :attr:`lock` to write them back consistently)."""
        with self.lock:
            return list(self._entries.values())

    def forget(self, event_ids: Iterable[str]) -> None:
        """Drop entries that reached the file."""
        with self.lock:
            for event_id in event_ids:
                self._entries.pop(event_id, None)

    def reset_after_fork(self) -> None:
        """A forked child keeps nothing: the parent delivers what it kept."""
        self.lock = threading.RLock()
        self._entries = {}


def _is_due(slot: Slot, now: float, forced: float) -> bool:
    if slot.state == SENDING:
        return (slot.lease_until or 0.0) < now
    return slot.state == PENDING and (slot.next_attempt <= now or (slot.last_attempt or 0.0) < forced)


def write_entries(conn: sqlite3.Connection, entries: Sequence[Entry], owner: str) -> None:
    """Insert kept entries into the outbox tables, each delivery in its current state (a
    delivery being sent stays leased by ``owner``, this process)."""
    conn.executemany(
        "INSERT OR IGNORE INTO events (id, created, event_type, level, run_id, title, payload)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [_row(e) for e in entries],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO deliveries (event_id, channel, state, attempts, next_attempt,"
        " last_attempt, lease_until, lease_owner, last_error, delivered_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                e.event.id,
                channel,
                slot.state,
                slot.attempts,
                slot.next_attempt,
                slot.last_attempt,
                slot.lease_until,
                owner if slot.state == SENDING else None,
                slot.last_error,
                slot.delivered_at,
            )
            for e in entries
            for channel, slot in e.slots.items()
        ],
    )


def _row(entry: Entry) -> tuple[Any, ...]:
    row = event_row(entry.event)
    return (row[0], entry.created, *row[2:])


def _matches(entry: Entry, filters: dict[str, str | None]) -> bool:
    event = entry.event
    fields = {
        "event_id": event.id,
        "run_id": event.run_id,
        "event_type": event.event_type.value,
        "level": event.level.value,
    }
    for name, value in fields.items():
        wanted = filters.get(name)
        if wanted is not None and wanted != value:
            return False
    state, channel = filters.get("state"), filters.get("channel")
    if state is None and channel is None:
        return True
    return any(
        (state is None or slot.state == state) and (channel is None or name == channel)
        for name, slot in entry.slots.items()
    )
