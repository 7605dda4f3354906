"""What the fidelity tests share: a manager whose one channel records what reached it,
and readers for what the run kept in its history without pushing it.

The channel is :class:`~afs_callbacks.testing.CapturingHandler` behind the real manager,
outbox and sender, so routing (``AFS_VERBOSITY``), priority and pacing all apply.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from afs_callbacks import EventType, NotificationEvent, NotificationManager, Settings
from afs_callbacks.testing import CapturingHandler


class PacedHandler(CapturingHandler):
    """A capturing channel paced like Slack: at most one request a second."""

    name: ClassVar[str] = "paced"
    min_interval: ClassVar[float] = 1.0


def make_manager(
    tmp_path: Path, *, paced: bool = False, **settings: Any
) -> tuple[NotificationManager, CapturingHandler]:
    """A manager with one capturing channel (default verbosity unless ``settings`` say)."""
    handler: CapturingHandler = PacedHandler() if paced else CapturingHandler()
    config = Settings(state_dir=tmp_path / "state", **settings)
    return NotificationManager({"capture": handler}, settings=config), handler


def settle(manager: NotificationManager) -> None:
    """Deliver what is pending, so that what the channel did not get was never sent."""
    report = manager.flush(30)
    assert report.pending == 0 and report.dead == 0, report


def in_order(events: Iterable[NotificationEvent]) -> list[NotificationEvent]:
    """Events in the order the run produced them (delivery sends the urgent first)."""
    return sorted(events, key=lambda event: event.timestamp)


def kinds(events: Iterable[NotificationEvent]) -> list[EventType]:
    """The event types, in order."""
    return [event.event_type for event in events]


def of_type(events: Iterable[NotificationEvent], kind: EventType) -> list[NotificationEvent]:
    """The events of one type, in order."""
    return [event for event in events if event.event_type is kind]


def only(events: Iterable[NotificationEvent], kind: EventType) -> NotificationEvent:
    """The one event of ``kind`` (fails when there are none or several)."""
    found = of_type(events, kind)
    assert len(found) == 1, [(event.event_type, event.title) for event in events]
    return found[0]


def history(manager: NotificationManager) -> list[NotificationEvent]:
    """Everything the run reported, pushed or only kept, oldest first."""
    manager.flush(10)  # the writer stores what is queued
    entries = manager.outbox.history(limit=10_000)
    return sorted((entry.event for entry in entries), key=lambda event: event.timestamp)


__all__ = ["PacedHandler", "history", "in_order", "kinds", "make_manager", "of_type", "only", "settle"]
