"""A recording sink for driving the tracker with no ML framework and no manager."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from afs_callbacks.events import EventType, NotificationEvent
from afs_callbacks.runstate import MetricPoint, RunState
from afs_callbacks.tracking import RunTracker, TrackerConfig


class RecordingSink:
    """Implements the sink protocol (``emit`` and ``update_run``) by keeping everything."""

    def __init__(self) -> None:
        self.events: list[NotificationEvent] = []
        self.states: list[RunState] = []
        self.points: list[MetricPoint] = []
        self.flushes: list[float | None] = []
        self._changed = threading.Condition()

    def emit(self, event: NotificationEvent) -> NotificationEvent | None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        return event

    def update_run(self, state: RunState, points: Sequence[MetricPoint]) -> None:
        with self._changed:
            self.states.append(state)
            self.points.extend(points)
            self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        self.flushes.append(timeout)

    def of(self, kind: EventType) -> list[NotificationEvent]:
        """The events of one type, in order."""
        return [event for event in self.events if event.event_type is kind]

    def types(self) -> list[EventType]:
        """Every event type, in order."""
        return [event.event_type for event in self.events]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds (checked whenever something arrives)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; events: {self.types()}"
                self._changed.wait(min(left, 0.1))


def quiet_config(**overrides: object) -> TrackerConfig:
    """No monitors, chart or watchdog unless a test asks for them."""
    options: dict[str, object] = {
        "monitors": False,
        "chart": False,
        "stall_timeout": None,
        "model_name": "tiny",
    }
    options.update(overrides)
    return TrackerConfig(**options)  # type: ignore[arg-type]


def tracker(sink: RecordingSink, **overrides: object) -> RunTracker:
    """A tracker reporting to ``sink``."""
    return RunTracker(sink, quiet_config(**overrides))
