"""One wording per event: the tracker and the manager's old API build their text in
afs_callbacks.messages."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from afs_callbacks import NotificationManager, Settings, messages
from afs_callbacks.events import EventType
from afs_callbacks.formatting import format_duration
from afs_callbacks.outcome import Outcome
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
        end_reason="early_stopping (val_loss, patience 3, best 0.1)",
        reason_text="EarlyStopping on val_loss, patience 3",
    )
    text = messages.training_completed("m", "r", summary, outcome=Outcome.STOPPED_EARLY)
    assert text.title == "⏹️ Training stopped early (EarlyStopping on val_loss, patience 3): m"
    # The run id, the duration and the final metrics are the event's fields: not repeated.
    assert text.body.splitlines() == [
        "Stopped early by EarlyStopping on val_loss, patience 3 after 5 of 10 epochs.",
        "Best val_loss: 0.1 (epoch 4)",
        "Best checkpoint: /c/best.ckpt",
        "Throughput: 12.5 steps/s, 400 samples/s",
    ]
    assert format_duration(65.0) not in text.body and "val_loss=0.2" not in text.body


@pytest.mark.parametrize(
    ("outcome", "title", "first_line"),
    [
        (Outcome.COMPLETED, "✅ Training completed: m", "Finished (max_epochs) after 1 of 1 epoch."),
        (
            Outcome.COMPLETED_WITH_WARNINGS,
            "⚠️ Training completed with warnings (Inf loss at step 3): m",
            "Finished (max_epochs) after 1 of 1 epoch, "
            "but loss became Inf at step 3 (epoch 1), seen at step 8.",
        ),
        (
            Outcome.STOPPED_ON_PROBLEM,
            "🛑 Training stopped on a problem (Inf loss at step 3): m",
            "Stopped at the first NaN/Inf (stop_on_nan), after 1 of 1 epoch:"
            " loss became Inf at step 3 (epoch 1), seen at step 8.",
        ),
    ],
)
def test_the_end_is_titled_by_its_outcome(outcome: Outcome, title: str, first_line: str) -> None:
    reason = "stop_on_nan" if outcome is Outcome.STOPPED_ON_PROBLEM else "max_epochs"
    summary = messages.Summary(
        epochs_run=1,
        total_epochs=1,
        end_reason=reason,
        reason_text="stop_on_nan" if reason != "max_epochs" else "",
    )
    found = messages.NonFinite("loss", math.inf, step=3, epoch=1, seen_step=8)
    text = messages.training_completed(
        "m", "r", summary, outcome=outcome, non_finite=None if outcome is Outcome.COMPLETED else found
    )
    assert (text.title, text.body.splitlines()[0]) == (title, first_line)


@pytest.mark.parametrize(
    ("found", "title", "body"),
    [
        (
            messages.NonFinite("loss", math.inf, step=3, epoch=1, seen_step=8),
            "Inf loss at step 3: m",
            "loss became Inf at step 3 (epoch 1), seen at step 8. Training will stop.",
        ),
        (
            messages.NonFinite("val_loss", math.nan, step=16, epoch=2, at_epoch_end=True),
            "NaN val_loss at epoch 2: m",
            "val_loss became NaN at the end of epoch 2 (step 16). Training will stop.",
        ),
        (
            messages.NonFinite("grad_norm", -math.inf, step=5, seen_step=5),
            "-Inf grad_norm at step 5: m",
            "grad_norm became -Inf at step 5. Training will stop.",
        ),
        (
            messages.NonFinite("loss", None, step=1_200),
            "NaN/Inf loss at step 1,200: m",
            "loss became NaN or Inf at step 1,200. Training will stop.",
        ),
    ],
)
def test_the_nan_message_names_the_first_bad_value(found: messages.NonFinite, title: str, body: str) -> None:
    text = messages.nan_detected("m", found, will_stop=True)
    assert (text.title, text.body) == (title, body)


def test_counts_are_singular_and_plural() -> None:
    assert messages.plan(epochs=1, max_steps=1) == "1 epoch, 1 step"
    assert messages.plan(epochs=3, max_steps=1200) == "3 epochs, 1,200 steps"
