"""Which process speaks for a run: the rank policy.

Run-level events (started, epochs, completion) come from global rank zero only. Events
any rank may be the first to see (a NaN, a crash, a stall) come from every rank with an
id fixed by run, attempt and event type, so several ranks reporting the same failure make
one message: the outbox ignores an id it already holds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from afs_callbacks.events import EventType

_RUN_NAMESPACE = uuid.UUID("6f0d3c1e-8a0b-4d52-9d4e-5f1a2b3c4d5e")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1
    is_global_zero: bool = True

    def speaks(self, rank_any: bool) -> bool:
        """Whether this process sends an event (``rank_any``: any rank may)."""
        return self.is_global_zero or rank_any


def shared_event_id(run_id: str, attempt: int, event_type: EventType) -> str:
    """The id every rank gives the same once-per-attempt event."""
    return uuid.uuid5(_RUN_NAMESPACE, f"{run_id}|{attempt}|{event_type.value}").hex


__all__ = ["Ranks", "shared_event_id"]
