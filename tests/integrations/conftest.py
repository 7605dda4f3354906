"""What the adapter tests share: managers with one real channel, and readers for what a run
reported.

* :func:`manager` (a fixture): the real manager, outbox and sender with one webhook channel
  pointed at the loopback ``receiver``, every event pushed (:func:`verbose_settings`);
  :func:`delivered` reads back what the run reported once nothing is pending. The webhook's
  URL holds :data:`SECRET_TOKEN`, which no message, log or checkpoint may show.
* :func:`make_manager` (the fidelity tests): one :class:`~afs_callbacks.testing.CapturingHandler`
  behind the real manager, outbox and sender, so routing (``AFS_VERBOSITY``), priority and
  pacing all apply; :func:`history` also returns what was kept without being pushed.

Test modules import the plain helpers by name (``from tests.integrations.conftest import
delivered``); pytest hands them the fixture.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationManager, Settings
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.outcome import Outcome
from afs_callbacks.testing import CapturingHandler, LoopbackReceiver
from afs_callbacks.tracking.ending import reason_words

#: In the webhook's URL (a channel secret): tests check that it leaks nowhere.
SECRET_TOKEN = "T0k3n-integrations-s3cr3t"


@pytest.fixture
def manager(receiver: LoopbackReceiver, tmp_path: Path) -> Iterator[NotificationManager]:
    """A manager with one real webhook channel pointed at the loopback receiver."""
    channel = WebhookNotifier(receiver.url(f"/hooks/{SECRET_TOKEN}"))
    with NotificationManager({"webhook": channel}, settings=verbose_settings(tmp_path)) as built:
        yield built


def verbose_settings(tmp_path: Path) -> Settings:
    """Every event pushed (``AFS_VERBOSITY=verbose``): these tests check what the run
    reports, not which of it the default pushes."""
    return Settings(state_dir=tmp_path / "state", verbosity="verbose")


def delivered(manager: NotificationManager, receiver: LoopbackReceiver) -> list[NotificationEvent]:
    """Every event the run reported, in the order it reported them, once the outbox has
    nothing pending; each one reached the receiver or was superseded (stale progress of a
    run that ended before it was sent is kept in the history, never sent late). A message
    told in its run's end (``context["story"]``, delivery/story.py) reached it with the end."""
    report = manager.flush(10)
    assert report.pending == 0 and report.dead == 0, report
    received = set()
    for request in receiver.requests:
        sent = NotificationEvent.from_dict(request.json())
        received |= {sent.id, *(str(told["id"]) for told in sent.context.get("story", ()))}
    events = []
    for entry in manager.outbox.history(limit=10_000):
        states = {delivery.state for delivery in entry.deliveries}
        assert entry.event.id in received or states == {"superseded"}, (entry.event.title, states)
        events.append(entry.event)
    return sorted(events, key=lambda event: event.timestamp)


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


def history(manager: NotificationManager) -> list[NotificationEvent]:
    """Everything the run reported, pushed or only kept, oldest first."""
    manager.flush(10)  # the writer stores what is queued
    entries = manager.outbox.history(limit=10_000)
    return sorted((entry.event for entry in entries), key=lambda event: event.timestamp)


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


#: The outcome each way a run ends means (afs_callbacks/tracking/ending.py).
OUTCOME_OF_CASE = {
    "max_epochs": Outcome.COMPLETED,
    "max_steps": Outcome.COMPLETED,
    "max_time": Outcome.STOPPED_EARLY,
    "early_stopping": Outcome.STOPPED_EARLY,
    "should_stop": Outcome.STOPPED_EARLY,
    "stop_on_nan": Outcome.STOPPED_ON_PROBLEM,
    "terminate_on_nan": Outcome.STOPPED_ON_PROBLEM,
}


def assert_ended_as(completed: NotificationEvent, case: str, end_reason: str) -> None:
    """The completion of a run that ended by ``case`` carries its outcome, is titled and
    levelled by it, and says why in words (``EarlyStopping on val_loss, patience 2``)."""
    outcome = OUTCOME_OF_CASE[case]
    assert completed.context["outcome"] == outcome.value, completed.title
    assert completed.title.startswith(f"{outcome.icon} Training {outcome.label}"), completed.title
    assert completed.level >= outcome.level
    said = reason_words(end_reason) or f"({end_reason})"
    assert said in completed.message, completed.message
