"""The outbox's part of the sender's policies: stale progress superseded, a flood folded
into one digest, and what a flush still waits for (see :mod:`afs_callbacks.delivery.priority`
and :mod:`afs_callbacks.delivery.budget`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from afs_callbacks.delivery.limits import HeldMessage
from afs_callbacks.delivery.outbox_base import PENDING, OutboxBase
from afs_callbacks.delivery.priority import BUDGET_EXEMPT_TYPES, FOLDED, SUPERSEDED, sql_list
from afs_callbacks.events import PROGRESS_TYPES, TERMINAL_TYPES, NotificationEvent, NotificationLevel


class PriorityQueries(OutboxBase):
    """Superseding, folding and flush bookkeeping (part of
    :class:`~afs_callbacks.delivery.outbox.Outbox`)."""

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
                    # last_attempt: when it ended, for the flush report (it was not attempted).
                    "UPDATE deliveries SET state = ?, lease_until = NULL, lease_owner = NULL,"
                    " last_error = ?, last_attempt = ?"
                    f" WHERE channel = ? AND state = 'pending' AND event_id IN ({stale})",
                    (SUPERSEDED, reason, time.time(), channel, channel),
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
                "UPDATE deliveries SET state = ?, last_error = ?, last_attempt = ?, lease_until = NULL,"
                " lease_owner = NULL WHERE event_id = ? AND channel = ? AND state IN ('pending', 'sending')",
                [
                    (FOLDED, f"folded into digest {digest.id}", now, message.event_id, channel)
                    for message in held
                ],
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

    def _ensure_run_index(self) -> None:
        # The schema creates this index; a file made by an older version gets it here, once.
        if getattr(self, "_run_index_ready", False):
            return
        with self._lock:
            self._connection().execute(
                "CREATE INDEX IF NOT EXISTS events_run ON events (run_id, event_type, created)"
            )
        self._run_index_ready = True
