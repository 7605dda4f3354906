"""One wording per event: the tracker and the manager's old API build their text in
afs_callbacks.messages."""

from __future__ import annotations

from pathlib import Path

from afs_callbacks import NotificationManager, Settings, messages
from afs_callbacks.events import EventType
from afs_callbacks.formatting import format_duration
from afs_callbacks.testing import CapturingHandler
from tests.tracking.support import RecordingSink, tracker


def test_the_old_api_and_the_tracker_word_a_run_alike(tmp_path: Path) -> None:
    capture = CapturingHandler()
    with NotificationManager({"capture": capture}, settings=Settings(state_dir=tmp_path)) as manager:
        manager.notify_training_started("tiny", "run-1", epochs=3)
        manager.notify_training_completed("tiny", "run-1", duration=5.0, metrics={"loss": 0.5})
        manager.notify_training_failed("tiny", "run-1", "ValueError: boom")
        manager.notify_evaluation_completed("tiny", "run-1", {"acc": 0.9})
        manager.flush(10)
    old = {event.event_type: event for event in capture.events}

    sink = RecordingSink()
    run = tracker(sink)
    run.start(epochs=3)
    run.evaluation_completed({"acc": 0.9})
    run.completed({"loss": 0.5})
    new = {event.event_type: event for event in sink.events}

    for kind in (EventType.TRAINING_STARTED, EventType.TRAINING_COMPLETED, EventType.EVALUATION_COMPLETED):
        assert old[kind].title == new[kind].title, kind
    assert old[EventType.TRAINING_FAILED].title == messages.training_failed("tiny", "").title
    assert old[EventType.TRAINING_STARTED].message == "Run run-1 started (3 epochs)."
    assert new[EventType.TRAINING_STARTED].message.startswith(f"Run {run.run_id} started on ")
    assert old[EventType.EVALUATION_COMPLETED].message == new[EventType.EVALUATION_COMPLETED].message


def test_completion_wording_covers_the_summary_parts() -> None:
    summary = messages.Summary(
        duration=65.0,
        final={"val_loss": 0.2},
        monitor="val_loss",
        best=0.1,
        best_epoch=4,
        best_checkpoint="/c/best.ckpt",
        epochs_run=5,
        total_epochs=10,
        steps_per_second=12.5,
        samples_per_second=400.0,
        end_reason="early_stopping",
    )
    text = messages.training_completed("m", "r", summary)
    assert text.title == "Training completed: m"
    assert text.body.splitlines() == [
        f"Run r finished in {format_duration(65.0)} (early_stopping).",
        "Epochs: 5/10",
        "Final: val_loss=0.2",
        "Best val_loss: 0.1 (epoch 4)",
        "Best checkpoint: /c/best.ckpt",
        "Throughput: 12.5 steps/s, 400 samples/s",
    ]
    nan = messages.training_completed("m", "r", messages.Summary(), nan_seen=True)
    assert nan.title == "Training completed with a NaN/Inf loss: m"
