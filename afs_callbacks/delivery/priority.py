"""Which queued message goes first, which one no longer needs sending, which one is budgeted.

A channel's queue is sent in priority order, then oldest first: the end of a run (completed,
failed, interrupted), then what needs a human now (NaN, OOM, stall, resource and cost
alerts), then everything else, and run progress (epochs, improvements, checkpoints) last.
Progress whose run has moved on (a newer message of the same kind is queued) or ended (its
terminal event is stored) is *superseded*: kept in the history, never sent. Ordinary
messages spend the channel's budget; held ones are *folded* into one digest. Both are
delivery states beside ``pending``/``sending``/``delivered``/``dead``.
"""

from __future__ import annotations

from afs_callbacks.events import (
    PROGRESS_TYPES,
    TERMINAL_TYPES,
    URGENT_TYPES,
    EventType,
    NotificationEvent,
)

#: Delivery state of stale progress that was not sent (its run moved on or ended).
SUPERSEDED = "superseded"
#: Delivery state of a message held back by the channel's budget and named in a digest.
FOLDED = "folded"

TERMINAL = 0
URGENT = 1
NORMAL = 2
PROGRESS = 3

#: Types that never wait for the channel's budget: the end of a run and alerts. Digests do
#: not either (a digest is already the budget's answer to a flood).
BUDGET_EXEMPT_TYPES: frozenset[EventType] = TERMINAL_TYPES | URGENT_TYPES | {EventType.DIGEST}


def priority(event_type: EventType) -> int:
    """Sending rank of an event type, lower first (:data:`TERMINAL` ... :data:`PROGRESS`)."""
    if event_type in TERMINAL_TYPES:
        return TERMINAL
    if event_type in URGENT_TYPES:
        return URGENT
    if event_type in PROGRESS_TYPES:
        return PROGRESS
    return NORMAL


def is_budgeted(event: NotificationEvent) -> bool:
    """Whether sending ``event`` waits for (and spends) the channel's budget."""
    return event.event_type not in BUDGET_EXEMPT_TYPES and not event.digest_count


def sql_list(types: frozenset[EventType]) -> str:
    """``'a','b'`` for an SQL ``IN (...)``: enum values only, never user text."""
    return ",".join(f"'{kind.value}'" for kind in sorted(types, key=lambda kind: kind.value))


def priority_sql(column: str) -> str:
    """An SQL expression ranking ``column`` (an event_type column) like :func:`priority`."""
    return (
        f"CASE WHEN {column} IN ({sql_list(TERMINAL_TYPES)}) THEN {TERMINAL}"
        f" WHEN {column} IN ({sql_list(URGENT_TYPES)}) THEN {URGENT}"
        f" WHEN {column} IN ({sql_list(PROGRESS_TYPES)}) THEN {PROGRESS} ELSE {NORMAL} END"
    )
