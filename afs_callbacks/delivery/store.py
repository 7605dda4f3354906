"""The manager's store: the SQLite outbox, kept usable through storage faults.

A disk that fills, a state directory that turns read-only, a corrupted file or another
process holding the write lock must not cost a notification. :class:`Store` is an
:class:`~afs_callbacks.delivery.outbox.Outbox` that, when a write fails, keeps the events
(and what happened to them) in a bounded in-memory table, hands them to the senders from
there, says once what went wrong and with which file, and writes everything back once the
file is writable again. A corrupted file is moved aside (``outbox.sqlite3.corrupt-<time>``)
and a fresh one started. Nothing here raises into its caller.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.delivery._store_faults import RETRY_SECONDS as RETRY_SECONDS  # re-exported
from afs_callbacks.delivery._store_faults import FaultTolerantOutbox
from afs_callbacks.delivery.faults import describe_fault, is_corruption
from afs_callbacks.delivery.memory import Entry, write_entries
from afs_callbacks.delivery.outbox import (
    DEAD,
    DELIVERED,
    PENDING,
    SENDING,
    Claim,
    HistoryEntry,
    Outbox,
    lease_owner,
)
from afs_callbacks.events import NotificationEvent
from afs_callbacks.runstate import MetricPoint, RunState

log = get_logger(__name__)


def _yield_gil() -> None:
    # sleep(0) releases the GIL: a training thread waiting for it takes it now instead of
    # after the interpreter's 5 ms switch interval.
    time.sleep(0)


class Store(FaultTolerantOutbox):
    """An outbox that survives storage faults (see the module docstring).

    Args:
        path: the SQLite file.
        memory_limit: most events kept in memory while the file cannot be written.
        busy_timeout: seconds a write waits for another process's lock before the events
            are kept in memory instead (the senders deliver them meanwhile).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, memory_limit: int = 10_000, busy_timeout: float = 2.0
    ) -> None:
        super().__init__(path, memory_limit=memory_limit, busy_timeout=busy_timeout)
        self._marks: dict[tuple[str, str], tuple[str, tuple[Any, ...], dict[str, Any]]] = {}

    # Health: open, healthy, due_for_retry and fault handling are FaultTolerantOutbox's.

    def close(self) -> None:
        """Write what memory still holds (one last try), then close the connection."""
        if (len(self.memory) or self._marks) and not self.recover(now=True):
            log.error(
                "afs-callbacks: %d message(s) delivered or pending in memory could not be written"
                " to the notification history %s before closing",
                len(self.memory),
                self.path,
            )
        super().close()

    # Writing ------------------------------------------------------------------------

    def write(self, items: Sequence[tuple[NotificationEvent, Sequence[str]]]) -> bool:
        """Persist events (the writer thread's batch); on a fault keep them in memory.

        Returns whether they reached the file.
        """
        if self.fault is not None and not self.recover():
            self.memory.add_many(items)
            return False
        try:
            self.enqueue_many(items, pause=_yield_gil)
            self._opened = True
            return True
        except (sqlite3.Error, OSError) as error:
            self._on_fault("write", error)
            self.memory.add_many(items)
            if self.fault is None:  # corruption: a fresh file was started, try it at once
                return self.recover()
            return False

    def recover(self, *, now: bool = False) -> bool:
        """Write what memory holds back to the file; True when the store is healthy again.

        Between faults it waits :data:`RETRY_SECONDS`; ``now`` tries at once (at close).
        """
        if self.fault is not None and time.monotonic() < self._next_try and not now:
            return False
        moved = 0
        try:
            with self.memory.lock:
                snapshot = self.memory.snapshot()
                if snapshot:
                    self.persist_deliveries(snapshot)
                self.memory.forget([entry.event.id for entry in snapshot])
                moved = len(snapshot)
            self._replay_marks()
        except (sqlite3.Error, OSError) as error:
            self._on_fault("write", error)
            return False
        self._opened = True
        with self._fault_lock:
            was, self.fault = self.fault, None
        if was is not None:
            log.warning(
                "afs-callbacks: the notification history %s is writable again; %d kept message(s) written",
                self.path,
                moved,
            )
        return True

    def persist_deliveries(self, entries: Sequence[Entry]) -> None:
        """Write kept events with their delivery states, as they are now, in one transaction."""
        with self._transaction(immediate=True) as conn:
            write_entries(conn, entries, lease_owner())

    def _replay_marks(self) -> None:
        with self.memory.lock:
            pending = list(self._marks.items())
        for key, mark in pending:
            name, args, kwargs = mark
            getattr(Outbox, name)(self, *key, *args, **kwargs)
            with self.memory.lock:
                if self._marks.get(key) is mark:  # a newer outcome stays for the next pass
                    del self._marks[key]

    # Sender side: memory first, then the file -----------------------------------------

    def claim(
        self,
        channel: str,
        *,
        lease_seconds: float,
        limit: int = 10,
        forced_since: float | None = None,
        owner: str | None = None,
    ) -> list[Claim]:
        """Due deliveries of ``channel``: kept-in-memory ones first, then the file's."""
        claims = self.memory.claim(
            channel, lease_seconds=lease_seconds, limit=limit, forced_since=forced_since
        )
        if len(claims) >= limit:
            return claims
        none: list[Claim] = []
        rest = self._safely(
            "write",
            lambda: super(Store, self).claim(
                channel,
                lease_seconds=lease_seconds,
                limit=limit - len(claims),
                forced_since=forced_since,
                owner=owner,
            ),
            none,
        )
        return claims + rest

    def mark_delivered(self, event_id: str, channel: str) -> None:
        """Record a delivery (in memory when the event is kept there or the file fails)."""
        self._mark("mark_delivered", event_id, channel, ())

    def mark_retry(self, event_id: str, channel: str, next_attempt: float, error: str) -> None:
        """Record a failed attempt to be retried at ``next_attempt``."""
        self._mark("mark_retry", event_id, channel, (next_attempt, error))

    def mark_dead(self, event_id: str, channel: str, error: str, *, attempted: bool = True) -> None:
        """Record a delivery that will not be tried again."""
        self._mark("mark_dead", event_id, channel, (error,), attempted=attempted)

    def release(self, event_id: str, channel: str) -> None:
        """Give a claimed delivery back untouched."""
        self._mark("release", event_id, channel, ())

    def _mark(self, name: str, event_id: str, channel: str, args: tuple[Any, ...], **kwargs: Any) -> None:
        if self.memory.apply(name, event_id, channel, args, kwargs):
            return
        try:
            if self._resting():
                raise sqlite3.OperationalError("the history is not writable now")
            getattr(Outbox, name)(self, event_id, channel, *args, **kwargs)
        except (sqlite3.Error, OSError) as error:
            if not self._resting():
                self._on_fault("write", error)
            # Replayed on recovery; meanwhile the row's lease keeps other senders off it.
            with self.memory.lock:
                self._marks[(event_id, channel)] = (name, args, kwargs)

    # Reading: the file's rows plus memory's -------------------------------------------

    def next_due(self, channel: str) -> float | None:
        """When the next delivery of ``channel`` is due, in memory or in the file."""
        dues = [
            self.memory.next_due(channel),
            self._safely("read", lambda: super(Store, self).next_due(channel), None),
        ]
        known = [due for due in dues if due is not None]
        return min(known) if known else None

    def untried_since(self, channels: Sequence[str], since: float) -> int:
        """Deliveries still to try in this flush, in memory and in the file."""
        stored = self._safely("read", lambda: super(Store, self).untried_since(channels, since), 0)
        return stored + self.memory.untried_since(channels, since)

    def flush_due(self, channel: str, forced_since: float) -> tuple[int, float | None]:
        """See :meth:`Outbox.flush_due`, memory included."""
        nothing: tuple[int, float | None] = (0, None)
        untried, due = self._safely(
            "read", lambda: super(Store, self).flush_due(channel, forced_since), nothing
        )
        untried += self.memory.untried_since([channel], forced_since)
        kept = self.memory.retry_due(channel, forced_since)
        dues = [when for when in (due, kept) if when is not None]
        return untried, (min(dues) if dues else None)

    # The senders' own outbox steps (priority, budget): passed through, never raising. They
    # take whatever arguments the outbox defines, so both sides can evolve independently.

    def supersede_stale(self, *args: Any, **kwargs: Any) -> int:
        """See :meth:`Outbox.supersede_stale`; 0 when the file fails."""
        return self._safely("write", lambda: super(Store, self).supersede_stale(*args, **kwargs), 0)

    def fold_due(self, *args: Any, **kwargs: Any) -> NotificationEvent | None:
        """See :meth:`Outbox.fold_due`; None (nothing folded) when the file fails."""
        return self._safely("write", lambda: super(Store, self).fold_due(*args, **kwargs), None)

    def counts(self, channels: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Deliveries per channel per state, memory included."""
        wanted = None if channels is None else list(channels)
        empty: dict[str, dict[str, int]] = {}
        result = self._safely("read", lambda: super(Store, self).counts(wanted), empty)
        for channel, states in self.memory.counts(wanted).items():
            for state, count in states.items():
                result.setdefault(channel, {})[state] = result.get(channel, {}).get(state, 0) + count
        return result

    def finished_between(self, start: float, end: float) -> dict[str, dict[str, int]]:
        """Deliveries that ended in ``[start, end)`` per channel, memory included."""
        empty: dict[str, dict[str, int]] = {}
        result = self._safely("read", lambda: super(Store, self).finished_between(start, end), empty)
        for channel, states in self.memory.finished_between(start, end).items():
            for state, count in states.items():
                result.setdefault(channel, {})[state] = result.get(channel, {}).get(state, 0) + count
        return result

    def data_version(self) -> int:
        """See :meth:`Outbox.data_version`; -1 when the file cannot be read."""
        return self._safely("read", lambda: super(Store, self).data_version(), -1)

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
        """See :meth:`Outbox.history`: kept-in-memory events first, then the file's (those
        alone when the file cannot be read, the fault logged once)."""
        filters = {
            "run_id": run_id,
            "event_type": event_type,
            "level": level,
            "state": state,
            "channel": channel,
            "event_id": event_id,
        }
        kept = self.memory.history(limit, **filters)
        empty: list[HistoryEntry] = []
        stored = self._safely("read", lambda: super(Store, self).history(limit=limit, **filters), empty)
        return (kept + stored)[:limit]

    # Housekeeping, runs and cards never raise ------------------------------------------

    def reclaim_orphans(self) -> int:
        """See :meth:`Outbox.reclaim_orphans`; 0 when the file fails."""
        return self._safely("write", lambda: super(Store, self).reclaim_orphans(), 0)

    def prune(self, *, max_age_seconds: float, max_events: int) -> int:
        """See :meth:`Outbox.prune`; 0 when the file fails."""
        return self._safely(
            "write",
            lambda: super(Store, self).prune(max_age_seconds=max_age_seconds, max_events=max_events),
            0,
        )

    def save_run(self, state: RunState, points: Sequence[MetricPoint] = ()) -> None:
        """See :meth:`Outbox.save_run`; a fault is noted, not raised (the next state wins)."""
        self._safely("write", lambda: super(Store, self).save_run(state, points), None)

    def card_id(self, run_id: str, channel: str) -> str | None:
        """See :meth:`Outbox.card_id`; None when the file cannot be read."""
        return self._safely("read", lambda: super(Store, self).card_id(run_id, channel), None)

    def save_card_id(self, run_id: str, channel: str, message_id: str) -> None:
        """See :meth:`Outbox.save_card_id`."""
        self._safely("write", lambda: super(Store, self).save_card_id(run_id, channel, message_id), None)

    def forget_card(self, run_id: str, channel: str) -> None:
        """See :meth:`Outbox.forget_card`."""
        self._safely("write", lambda: super(Store, self).forget_card(run_id, channel), None)

    def _after_fork(self) -> None:
        super()._after_fork()  # memory and the fault lock start over too
        self._marks = {}


__all__ = ["DEAD", "DELIVERED", "PENDING", "SENDING", "Store", "describe_fault", "is_corruption"]
