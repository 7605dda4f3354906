"""Which channels an event is pushed to: each channel's route, the verbosity policy, and
whether a registered handler can be used at all.

By default (``AFS_VERBOSITY=normal``) a run pushes its start, its end and what needs a
human; its progress (epochs, metric improvements, checkpoints) is kept in the history, the
completion summary and the live card, not pushed. ``verbose`` pushes everything, ``quiet``
only the end of a run and what needs a human. A channel's own ``<CHANNEL>_EVENTS`` list
(or ``register_handler(events=...)``) wins over the verbosity.

A sweep's trial (an event whose context names its ``sweep`` and ``trial``) pushes only what needs a
human below ``verbose``: its start and a clean end (completed, stopped early, pruned; any
end below warning level) go to the history and the card, where the sweep's summary
(:mod:`afs_callbacks.sweeps`) gathers them. A crash, a NaN or a warning end is pushed.
"""

from __future__ import annotations

from dataclasses import dataclass

from afs_callbacks.channels.base import ChannelStatus, NotificationHandler, routed_level
from afs_callbacks.events import (
    PROGRESS_TYPES,
    EventType,
    NotificationEvent,
    NotificationLevel,
)
from afs_callbacks.redaction import redact

#: What ``quiet`` leaves out beyond progress: announcements of a start.
QUIET_SKIPS: frozenset[EventType] = frozenset(
    {
        EventType.TRAINING_STARTED,
        EventType.TRAINING_RESUMED,
        EventType.TRAINING_PAUSED,
        EventType.EVALUATION_STARTED,
    }
)


#: A trial's events that stay in the history below ``verbose``.
TRIAL_ROUTINE: frozenset[EventType] = frozenset(
    {EventType.TRAINING_STARTED, EventType.TRAINING_RESUMED, EventType.TRAINING_COMPLETED}
)


def routine_trial_event(event: NotificationEvent) -> bool:
    """Whether ``event`` is a sweep trial's start or clean end (see the module docstring)."""
    return (
        event.event_type in TRIAL_ROUTINE
        and bool(event.context.get("sweep"))
        and event.context.get("trial") is not None
        and event.level < NotificationLevel.WARNING
    )


def pushed_at(verbosity: str, event_type: EventType) -> bool:
    """Whether ``event_type`` is pushed to a channel with no event list of its own."""
    if verbosity == "verbose":
        return True
    if event_type in PROGRESS_TYPES:
        return False
    return not (verbosity == "quiet" and event_type in QUIET_SKIPS)


@dataclass(frozen=True)
class Route:
    """Which events a channel gets: a minimum level and, optionally, only some types.

    Without ``events`` the manager's verbosity decides which types are pushed.
    """

    min_level: NotificationLevel = NotificationLevel.INFO
    events: frozenset[EventType] | None = None

    def accepts(self, event: NotificationEvent, verbosity: str = "verbose") -> bool:
        """Whether ``event`` goes to the channel (``verbosity`` applies without ``events``).
        The end of a run is judged by its outcome's level (``routed_level``)."""
        if routed_level(event) < self.min_level:
            return False
        if self.events is not None:
            return event.event_type in self.events
        if verbosity != "verbose" and routine_trial_event(event):
            return False
        return pushed_at(verbosity, event.event_type)


def channel_status(name: str, handler: NotificationHandler) -> ChannelStatus:
    """The handler's status; an old handler's ``is_configured()`` returning False counts."""
    try:
        status = handler.status()
        overridden = type(handler).is_configured is not NotificationHandler.is_configured
        if status.configured and overridden and not handler.is_configured():
            return ChannelStatus(name, False, "not configured (its is_configured() returned False)")
        return status
    except Exception as error:
        return ChannelStatus(name, False, f"status check failed: {redact(error)}")
