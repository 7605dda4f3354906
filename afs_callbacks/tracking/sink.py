"""What the tracker hands its events and run snapshots to: the sink protocol.

The tracker knows nothing of channels, outboxes or threads; it talks to a sink. The
:class:`~afs_callbacks.manager.NotificationManager` is the sink in production; tests pass
a recorder. ``update_run`` is optional: a sink without it gets events only. So is
``post(event)``: where a sink has it, the tracker hands events over with it instead of
``emit`` (the manager's ``post`` admits them off the training thread). And
``emit_end(event, hold=seconds)``: the run's completion, stored before it returns, its
deliveries held for the chart, which the returned handle's ``attach(attachments)`` adds
(see :meth:`~afs_callbacks.manager.NotificationManager.emit_end`); a sink without it
gets the completion through ``emit``, without a chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from afs_callbacks.events import NotificationEvent
from afs_callbacks.runstate import MetricPoint, RunState


@runtime_checkable
class EventSink(Protocol):
    """Accepts events. Must not raise and must not wait on a network."""

    def emit(self, event: NotificationEvent) -> NotificationEvent | None:
        """Accept ``event``; return the stored event, or None when it was not kept."""
        ...


@runtime_checkable
class RunSink(EventSink, Protocol):
    """Accepts events and run snapshots (live cards, history, dashboard)."""

    def update_run(self, state: RunState, points: Sequence[MetricPoint]) -> None:
        """Queue ``state`` (latest wins per run) and the ``points`` gathered since the
        previous snapshot. Non-blocking: persisted off the training thread."""
        ...


__all__ = ["EventSink", "RunSink"]
