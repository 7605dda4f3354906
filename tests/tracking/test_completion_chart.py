"""A run's end is stored before completed() returns; the loss chart is drawn off the
training thread and follows (the stored end waits a few seconds for it); a flush after the
run includes it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from afs_callbacks.events import EventType
from afs_callbacks.testing import CapturingHandler
from afs_callbacks.tracking import RunTracker
from tests.tracking.support import RecordingSink, quiet_config, tracker

pytest.importorskip("matplotlib")


def _train(run: RunTracker) -> None:
    run.start(epochs=2)
    for step in range(1, 41):
        run.on_step(step, loss=1.0 / step)
    run.epoch_end(0, {"loss": 0.5})
    run.epoch_end(1, {"loss": 0.4})


def test_the_end_is_stored_at_once_and_the_chart_follows_on_its_own_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """completed() returns with the end stored (its delivery held for the chart); the chart
    is drawn on its own thread, then attached, and the held delivery goes with it."""
    from afs_callbacks import NotificationManager, Settings

    capture = CapturingHandler()
    manager = NotificationManager({"capture": capture}, settings=Settings(state_dir=tmp_path, burst=0))
    run = RunTracker(manager, quiet_config(chart=True, nan_check_every=5))
    drawn_on: list[str] = []
    release = threading.Event()
    real_chart = RunTracker._chart

    def slow_chart(self: RunTracker):  # type: ignore[no-untyped-def]
        drawn_on.append(threading.current_thread().name)
        release.wait(10)  # the drawing is still going on when completed() returns
        return real_chart(self)

    monkeypatch.setattr(RunTracker, "_chart", slow_chart)
    _train(run)
    run.completed()
    # Stored before completed() returned, and held for the chart: nothing was sent yet.
    ends = manager.outbox.history(run_id=run.run_id, event_type=["training_completed"])
    assert len(ends) == 1 and not ends[0].event.attachments
    (delivery,) = ends[0].deliveries
    assert delivery.state == "pending" and delivery.attempts == 0
    assert not [e for e in capture.events if e.event_type is EventType.TRAINING_COMPLETED]
    release.set()
    capture.wait_for(lambda e: e.event_type is EventType.TRAINING_COMPLETED)
    completed = next(e for e in capture.events if e.event_type is EventType.TRAINING_COMPLETED)
    assert drawn_on == ["afs-completion-chart"]
    assert [a.content_type for a in completed.attachments] == ["image/png"]
    # The history holds the one end, now with its chart.
    (stored,) = manager.outbox.history(run_id=run.run_id, event_type=["training_completed"])
    assert stored.event.attachments[0].data.startswith(b"\x89PNG")
    manager.close()


def test_a_sink_without_emit_end_gets_the_end_at_once_without_a_chart() -> None:
    sink = RecordingSink()
    run = tracker(sink, chart=True, nan_check_every=5)
    _train(run)
    run.completed()
    (completed,) = sink.of(EventType.TRAINING_COMPLETED)
    assert completed.attachments == ()


def test_a_flush_right_after_the_run_delivers_the_completion_with_its_chart(tmp_path: Path) -> None:
    """A manager's flush() waits for the chart being drawn: "flush after fit" keeps working."""
    from afs_callbacks import NotificationManager, Settings

    capture = CapturingHandler()
    manager = NotificationManager({"capture": capture}, settings=Settings(state_dir=tmp_path, burst=0))
    run = RunTracker(manager, quiet_config(chart=True, nan_check_every=5))
    _train(run)
    run.completed()
    report = manager.flush(30)
    manager.close()
    kinds = [event.event_type for event in capture.events]
    assert EventType.TRAINING_COMPLETED in kinds, (kinds, report)
    completed = next(e for e in capture.events if e.event_type is EventType.TRAINING_COMPLETED)
    assert completed.attachments and completed.attachments[0].data.startswith(b"\x89PNG")
