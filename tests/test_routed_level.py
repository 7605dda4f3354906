"""How a surface reads an end event's outcome: ``context["outcome"]``, else what the
event's type meant before outcomes were stored; and the level an end is routed by."""

from __future__ import annotations

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.channels.base import routed_level
from afs_callbacks.delivery.routing import Route
from afs_callbacks.outcome import Outcome


def event(kind: EventType, level: str = "info", **context: object) -> NotificationEvent:
    return NotificationEvent(kind, level, "t", context=context)


@pytest.mark.parametrize(
    ("kind", "context", "expected"),
    [
        (EventType.TRAINING_COMPLETED, {"outcome": "stopped_on_problem"}, Outcome.STOPPED_ON_PROBLEM),
        (
            EventType.TRAINING_COMPLETED,
            {"outcome": "Completed with warnings"},
            Outcome.COMPLETED_WITH_WARNINGS,
        ),
        (EventType.TRAINING_FAILED, {"outcome": "killed"}, Outcome.KILLED),
        # Stored before outcomes existed (or a value this version does not know): the type.
        (EventType.TRAINING_COMPLETED, {}, Outcome.COMPLETED),
        (EventType.TRAINING_FAILED, {}, Outcome.FAILED),
        (EventType.OUT_OF_MEMORY, {}, Outcome.FAILED),
        (EventType.TRAINING_INTERRUPTED, {}, Outcome.INTERRUPTED),
        (EventType.TRAINING_COMPLETED, {"outcome": "exploded"}, Outcome.COMPLETED),
        # Not an end: no outcome.
        (EventType.NAN_DETECTED, {}, None),
        (EventType.EPOCH_COMPLETED, {"outcome": 3}, None),
    ],
)
def test_outcome_of_an_event(kind: EventType, context: dict[str, object], expected: Outcome | None) -> None:
    assert Outcome.of_event(event(kind, **context)) is expected


def test_an_end_is_routed_by_its_outcomes_level_never_below_its_own() -> None:
    nan_stop = event(EventType.TRAINING_COMPLETED, "warning", outcome="stopped_on_problem")
    assert routed_level(nan_stop) is NotificationLevel.ERROR
    assert Route(min_level=NotificationLevel.ERROR).accepts(nan_stop)
    oom = event(EventType.OUT_OF_MEMORY, "critical")  # failed is an error; the event says more
    assert routed_level(oom) is NotificationLevel.CRITICAL
    warned = event(EventType.TRAINING_COMPLETED, "warning", outcome="completed_with_warnings")
    assert not Route(min_level=NotificationLevel.ERROR).accepts(warned)
    assert routed_level(event(EventType.NAN_DETECTED, "error")) is NotificationLevel.ERROR
