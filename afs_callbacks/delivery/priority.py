"""Which queued message goes first, which one no longer needs sending, which one is budgeted.

The order of a channel's queue has two levels:

* **A run's messages go in the order they happened** (their ``created`` time): one is sent
  only when nothing earlier of its run is waiting or in flight on the channel, in any
  process sharing the outbox and from any rank of the run. "Started" always comes before
  "NaN", and "NaN" before "stopped".
* **Runs are served most urgent first.** The queue is read in the order of urgency — the
  end of a run, then what needs a human now (NaN, OOM, stall, resource and cost alerts),
  then everything else, run progress last; oldest first within each — and the first due
  message found stands for its run: the run sends its next message (:func:`next_of_run`)
  at that rank. So a run whose end or alert waits goes ahead of other runs' ordinary
  messages and progress, its own earlier messages first, and those never wait for the
  budget either (:attr:`RunQueue.leads_exempt`). A message of no run is a run of one.

The end of a run does not wait behind its own earlier messages: it takes them along. When
a run's end is claimed while earlier messages of the run still wait on the channel, they
are *folded* into it and told as one story (:mod:`afs_callbacks.delivery.story`), unless
the channel's ``tells_stories`` is False (alert channels: there the end waits its turn).
Progress whose run has moved on (a newer message of the same kind is queued) or ended (its
terminal event is stored) is *superseded*: kept in the history, never sent. Ordinary
messages spend the channel's budget; held ones are *folded* into one digest. Both are
delivery states beside ``pending``/``sending``/``delivered``/``dead``. The queries live
with the schema, in :mod:`afs_callbacks.delivery.outbox` (``Outbox.claim``); the rule for
one run is :func:`next_of_run`, here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Queued:
    """One unfinished delivery of a run on a channel, as the order needs to know it."""

    event_id: str
    event_type: EventType
    #: Leased by a sender whose lease still runs (in this process or another).
    flying: bool
    #: May be sent now: pending and its time came (or a flush forces it), or a lease ran out.
    due: bool
    #: When it is due (pending: its next attempt; leased: when the lease ends), epoch seconds.
    due_at: float = 0.0
    #: When it was last attempted (0: never).
    tried: float = 0.0
    #: Leased (in flight, or a lease that ran out).
    sending: bool = False


@dataclass(frozen=True)
class RunQueue:
    """What a run's unfinished deliveries on one channel say about its next message."""

    #: The one that may go next (None: the run waits for one in flight).
    next: Queued | None
    #: An end or an alert of the run waits: its earlier messages never wait for the budget.
    leads_exempt: bool
    #: ``next`` is an end that takes the run's earlier waiting messages (if any) along.
    tells: bool


def next_of_run(rows: Sequence[Queued], *, stories: bool) -> RunQueue:
    """The rule for one run: its unfinished deliveries on one channel, oldest first, and
    which of them may go next.

    With ``stories``, a run with an end waiting sends that end (it takes the rows before it
    along), unless a row before the end is in flight; otherwise the run's oldest row goes,
    unless it is in flight. Either way nothing of the run overtakes what is in flight.
    """
    leads_exempt = any(row.event_type in BUDGET_EXEMPT_TYPES for row in rows)
    by_end = stories and any(row.event_type in TERMINAL_TYPES and not row.flying for row in rows)
    for row in rows:
        if row.flying:
            break  # nothing of the run overtakes a message in flight
        if not by_end or row.event_type in TERMINAL_TYPES:
            return RunQueue(row, leads_exempt, tells=by_end)
    return RunQueue(None, leads_exempt, tells=False)


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
