"""NaN/Inf, plateaus and improvements, stalls, ranks and the facts API, driven with floats."""

from __future__ import annotations

import gc
import math
import threading
import time
import weakref

import pytest

from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.runstate import STALLED
from afs_callbacks.tracking import tracker as tracker_module
from afs_callbacks.tracking.points import MAX_POINTS, Curves
from tests.tracking.support import RecordingSink, tracker


def test_a_nan_float_loss_is_reported_once_and_stops_when_asked() -> None:
    sink = RecordingSink()
    run = tracker(sink, stop_on_nan=True)
    run.start(epochs=2)
    run.epoch_started(1)
    assert run.on_step(1, loss=0.5) is False
    assert run.on_step(2, loss=math.nan) is True
    run.on_step(3, loss=math.inf)
    nans = sink.of(EventType.NAN_DETECTED)
    assert len(nans) == 1 and nans[0].context["step"] == 2 and nans[0].context["epoch"] == 2
    assert "Training will stop" in nans[0].message
    run.completed()
    completed = sink.of(EventType.TRAINING_COMPLETED)[0]
    assert completed.title == "🛑 Training stopped on a problem (NaN loss at step 2): tiny"
    assert completed.context["outcome"] == "stopped_on_problem"
    assert completed.level is NotificationLevel.ERROR and completed.context["end_reason"] == "stop_on_nan"
    assert run.state().status == "stopped_on_problem"


def test_a_run_that_goes_on_after_a_nan_completes_with_a_warning() -> None:
    sink = RecordingSink()
    run = tracker(sink)
    run.start(epochs=1)
    assert run.on_step(1, loss=math.nan) is False
    run.on_step(2, grad_norm=math.inf)
    run.epoch_end(0, {"loss": 1.0})
    run.completed()
    assert len(sink.of(EventType.NAN_DETECTED)) == 1
    completed = sink.of(EventType.TRAINING_COMPLETED)[0]
    assert completed.title == "⚠️ Training completed with warnings (NaN loss at step 1): tiny"
    assert completed.context["outcome"] == "completed_with_warnings"
    assert completed.level is NotificationLevel.WARNING and completed.context["end_reason"] == "max_epochs"


def test_a_nan_metric_at_an_epoch_end_is_reported() -> None:
    sink = RecordingSink()
    run = tracker(sink)
    run.start(epochs=3)
    run.epoch_end(0, {"val_loss": math.nan})
    assert sink.of(EventType.NAN_DETECTED)[0].context["metric"] == "val_loss"


def test_improvement_then_plateau_are_reported_once_each() -> None:
    sink = RecordingSink()
    run = tracker(sink, patience=3)
    run.start(epochs=6)
    for epoch, value in enumerate([1.0, 0.5, 0.6, 0.7, 0.8, 0.9]):
        run.epoch_end(epoch, {"val_loss": value})
    improved = sink.of(EventType.LOSS_IMPROVED)
    assert [e.message for e in improved] == ["val_loss 1 → 0.5"] and improved[0].context["epoch"] == 2
    degraded = sink.of(EventType.LOSS_DEGRADED)
    assert len(degraded) == 1 and degraded[0].context["epoch"] == 5
    assert degraded[0].title == "val_loss not improving: tiny"


def test_mode_max_follows_a_metric_going_up() -> None:
    sink = RecordingSink()
    run = tracker(sink, monitor="acc", mode="max")
    run.start()
    run.epoch_end(0, {"acc": 0.5})
    run.epoch_end(1, {"acc": 0.7})
    assert sink.of(EventType.LOSS_IMPROVED)[0].context["metrics"] == {"acc": 0.7}


def _watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "afs-stall-watchdog" and t.is_alive()]


def test_a_stall_is_reported_and_never_after_the_end() -> None:
    before = len(_watchdogs())
    sink = RecordingSink()
    run = tracker(sink, stall_timeout=0.2)
    run.start()
    # The watchdog's thread hands over the event, then the stalled state: wait for both.
    sink.wait_for(
        lambda: bool(sink.of(EventType.TRAINING_STALLED)) and any(s.status == STALLED for s in sink.states),
        timeout=5,
    )
    watchdog = run._watchdog
    assert watchdog is not None and watchdog._thread is not None
    run.completed()
    # Gone when the end returns, not at its next wake-up: a sweep that counts the threads
    # its trials leave must find none of theirs.
    assert not watchdog._thread.is_alive()
    assert len(_watchdogs()) == before  # stopped at the end: nothing left to fire
    run._stalled(60.0)  # a wake-up racing with the end sends nothing
    assert len(sink.of(EventType.TRAINING_STALLED)) == 1


def test_a_run_nobody_holds_is_collected_and_its_watchdog_stops() -> None:
    """A started run whose end never came (its trainer dropped it) does not stay alive on
    its watchdog's thread: ``watch()`` and the excepthook would take it for this process's
    active run, and report a later crash to its sink."""
    run = tracker(RecordingSink(), stall_timeout=60.0)
    run.start()
    watchdog, forgotten = run._watchdog, weakref.ref(run)
    assert watchdog is not None and not watchdog.stopped
    del run
    gc.collect()
    assert forgotten() is None and watchdog.stopped


def test_only_global_zero_speaks_for_the_run_but_any_rank_reports_a_failure() -> None:
    sink = RecordingSink()
    run = tracker(sink)
    run.bind(rank=1, world_size=2)
    assert (run.rank, run.world_size, run.is_global_zero) == (1, 2, False)
    run.start(epochs=1)
    run.epoch_end(0, {"loss": 1.0})
    run.failed(ValueError("boom"))
    assert sink.types() == [EventType.TRAINING_FAILED]
    assert sink.events[0].context["rank"] == 1
    other = tracker(sink)
    other.resolve(run_id=run.run_id)
    other.start()
    other.failed(ValueError("boom"))
    assert sink.events[-1].id == sink.events[0].id  # one message for the run, whichever rank


def test_resolve_settles_names_and_cadence_and_rejects_bad_values() -> None:
    sink = RecordingSink()
    run = tracker(sink, model_name=None)
    run.resolve(model_name="ResNet", nan_check_every=7, monitor="val_acc", mode="max")
    assert run.model_name == "ResNet" and run.run_id.startswith("ResNet-")
    assert run.config.nan_check_every == 7 and run.config.monitor == "val_acc"
    with pytest.raises(ValueError, match=r"mode='best'"):
        run.resolve(mode="best")
    with pytest.raises(AttributeError):
        run.run_id = "x"  # type: ignore[misc]
    shared = tracker(sink, model_name=None)
    shared.resolve(run_id="job-42")  # rank zero's id, shared before the name is known
    shared.resolve(model_name="ResNet")
    assert shared.run_id == "job-42" and shared.model_name == "ResNet"


def test_step_snapshots_are_throttled_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = RecordingSink()
    run = tracker(sink)
    run.start(max_steps=10_000)
    for step in range(1, 5001):
        run.on_step(step, loss=0.1)
    assert len(sink.states) <= 3  # the start, and at most one per interval

    monkeypatch.setattr(tracker_module, "SNAPSHOT_INTERVAL", 0.0)
    eager = RecordingSink()
    run = tracker(eager)
    run.start(max_steps=10_000)
    time.sleep(0.01)  # some time for a throughput (the snapshot is read, not waited for)
    run.on_step(1)
    run.on_step(2)
    latest = eager.states[-1]
    assert len(eager.states) == 3 and latest.step == 2 and latest.total_steps == 10_000
    assert latest.eta_seconds is not None and latest.steps_per_second is not None


def test_curves_keep_and_send_at_most_max_points_per_series() -> None:
    curves = Curves()
    sent = 0
    for step in range(20_000):
        curves.add_loss(step, 1.0)
        sent += len(curves.take_pending())
    assert len(curves.losses) <= MAX_POINTS and 0 < sent <= MAX_POINTS
    assert curves.losses[-1][0] > 19_000  # the recent end is kept
