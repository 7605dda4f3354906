"""The tracker's run lifecycle with no ML framework: start, resume, epochs, checkpoints,
complete, fail, out of memory, interrupt; one end per run; 1-based epochs."""

from __future__ import annotations

import pickle
import time
from collections.abc import Sequence

from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.runstate import COMPLETED, FAILED, INTERRUPTED, RUNNING, MetricPoint, RunState
from afs_callbacks.tracking import RunTracker
from tests.tracking.support import RecordingSink, tracker


def run_three_epochs(run: RunTracker) -> None:
    run.start(epochs=3, batch_size=4)
    step = 0
    for epoch, val_loss in enumerate([1.0, 0.5, 0.7]):
        run.epoch_started(epoch)
        for _ in range(4):
            step += 1
            run.on_step(step, loss=1.0 / step)
        run.epoch_end(epoch, {"val_loss": val_loss})
        run.checkpoint_saved(f"/ckpt/epoch{epoch}.ckpt", best=val_loss == 0.5)


def test_a_clean_run_reports_start_epochs_and_a_summary_without_waiting() -> None:
    sink = RecordingSink()
    run = tracker(sink)
    run_three_epochs(run)
    run.completed()

    started = sink.of(EventType.TRAINING_STARTED)[0]
    assert started.title == "Training started: tiny" and started.context["epochs"] == 3
    epochs = sink.of(EventType.EPOCH_COMPLETED)
    assert [e.title for e in epochs] == [f"Epoch {n}/3 completed: tiny" for n in (1, 2, 3)]
    assert [e.context["epoch"] for e in epochs] == [1, 2, 3]
    completed = sink.of(EventType.TRAINING_COMPLETED)[0]
    assert completed.level is NotificationLevel.SUCCESS
    assert completed.context["end_reason"] == "max_epochs"
    assert completed.context["best"] == {"val_loss": 0.5, "epoch": 2}
    assert completed.context["best_checkpoint"] == "/ckpt/epoch1.ckpt"
    assert completed.context["epochs_run"] == 3 and completed.context["steps"] == 12
    assert "Best val_loss: 0.5 (epoch 2)" in completed.message
    assert "Best checkpoint: /ckpt/epoch1.ckpt" in completed.message
    assert "(max_epochs)" in completed.message.splitlines()[0]
    assert sink.flushes == []  # a completed run never waits for delivery
    assert run.finished


def test_the_first_state_is_handed_over_before_the_start_event() -> None:
    """The store writes a run's row no later than its start: a kill right after the start
    was stored must leave a row for the death watcher (issue #23)."""
    order: list[str] = []

    class Ordered(RecordingSink):
        def emit(self, event: NotificationEvent) -> NotificationEvent | None:
            order.append(event.event_type.value)
            return super().emit(event)

        def update_run(self, state: RunState, points: Sequence[MetricPoint]) -> None:
            order.append(f"state:{state.status}")
            super().update_run(state, points)

    tracker(Ordered(), monitors=True).start(epochs=1)
    assert order[:2] == [f"state:{RUNNING}", "training_started"]


def test_the_framework_end_reason_wins_over_the_inferred_one() -> None:
    sink = RecordingSink()
    run = tracker(sink)
    run.start(epochs=10)
    run.epoch_end(0, {"val_loss": 1.0})
    run.completed(end_reason="early_stopping (val_loss, patience 3)", best_checkpoint="/b.ckpt")
    completed = sink.of(EventType.TRAINING_COMPLETED)[0]
    assert completed.context["end_reason"] == "early_stopping (val_loss, patience 3)"
    assert completed.context["best_checkpoint"] == "/b.ckpt"
    assert sink.states[-1].end_reason == "early_stopping (val_loss, patience 3)"


def test_resume_keeps_the_run_id_and_says_resumed() -> None:
    sink = RecordingSink()
    first = tracker(sink)
    first.start(epochs=4)
    first.epoch_end(0, {"val_loss": 0.9})
    saved = first.state_dict()
    first.close()

    second = tracker(sink)
    second.load_state_dict(saved)
    second.start(epochs=4, resumed_from="/ckpt/last.ckpt")
    resumed = sink.of(EventType.TRAINING_RESUMED)[0]
    assert resumed.run_id == first.run_id and resumed.title == "Training resumed: tiny"
    assert sink.of(EventType.CHECKPOINT_LOADING)[0].context["checkpoint"] == "/ckpt/last.ckpt"


def test_a_failure_is_reported_once_with_its_type_and_delivery_is_flushed() -> None:
    sink = RecordingSink()
    run = tracker(sink, flush_timeout=2.0)
    run.start(epochs=2)
    run.on_step(1, loss=0.5)
    try:
        raise ValueError("bad batch")
    except ValueError as error:
        run.failed(error)
        run.failed(error)
    run.completed()
    assert sink.types().count(EventType.TRAINING_FAILED) == 1
    assert EventType.TRAINING_COMPLETED not in sink.types()
    failed = sink.of(EventType.TRAINING_FAILED)[0]
    assert failed.context["error_type"] == "ValueError" and "bad batch" in failed.context["error"]
    assert sink.flushes == [2.0]
    final = sink.states[-1]
    assert (final.status, final.error_type, final.final) == (FAILED, "ValueError", True)


def test_out_of_memory_and_interruption_are_told_apart() -> None:
    sink = RecordingSink()
    oom = tracker(sink)
    oom.start()
    oom.failed(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB on GPU 0"))
    assert sink.of(EventType.OUT_OF_MEMORY)[0].title == "❌ Out of memory: tiny"

    stopped = tracker(sink)
    stopped.start()
    stopped.on_step(7)
    stopped.failed(KeyboardInterrupt())
    interrupted = sink.of(EventType.TRAINING_INTERRUPTED)[0]
    assert interrupted.context["step"] == 7 and "Ctrl-C" in interrupted.message
    assert sink.states[-1].status == INTERRUPTED


def test_snapshots_follow_the_run_from_start_to_end() -> None:
    sink = RecordingSink()
    run = tracker(sink, nan_check_every=2)
    run_three_epochs(run)
    run.completed()
    statuses = [state.status for state in sink.states]
    assert statuses[0] == RUNNING and statuses[-1] == COMPLETED
    assert RUNNING not in statuses[statuses.index(COMPLETED) :]
    final = sink.states[-1]
    assert (final.epoch, final.total_epochs, final.step) == (3, 3, 12)
    assert final.best == 0.5 and final.best_epoch == 2 and final.last_checkpoint == "/ckpt/epoch2.ckpt"
    assert final.summary is not None and "Best val_loss" in final.summary and final.ended_at is not None
    losses = [p for p in sink.points if p.series == "loss"]
    assert [p.x for p in losses] == [2, 4, 6, 8, 10, 12] and {p.axis for p in losses} == {"step"}
    val = [(p.x, p.y) for p in sink.points if p.series == "val_loss"]
    assert val == [(1, 1.0), (2, 0.5), (3, 0.7)]


def test_a_sink_without_update_run_gets_events_only() -> None:
    class EventsOnly:
        def __init__(self) -> None:
            self.titles: list[str] = []

        def emit(self, event: object) -> None:
            self.titles.append(event.title)  # type: ignore[attr-defined]

    sink = EventsOnly()
    run = RunTracker(sink)  # type: ignore[arg-type]
    run.resolve(model_name="m")
    run.start(epochs=1)
    run.epoch_end(0, {"loss": 1.0})
    run.completed()  # the default config draws a chart: the completion follows on its own thread
    deadline = time.monotonic() + 30
    while not sink.titles[-1].startswith("✅ Training completed") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.titles[0] == "Training started: m" and sink.titles[-1].startswith("✅ Training completed")


def test_a_pickled_tracker_keeps_its_run_and_rebuilds_what_belongs_to_its_process() -> None:
    """ddp_spawn pickles callbacks: the run's facts travel, the sink and threads do not."""
    sink = RecordingSink()
    run = tracker(sink, stall_timeout=60.0)
    run.bind(rank=1, world_size=2)
    run.start(epochs=2)
    run.on_step(1, loss=0.5)
    clone = pickle.loads(pickle.dumps(run))
    run.close()
    assert (clone.run_id, clone.rank, clone.world_size, clone.is_global_zero) == (run.run_id, 1, 2, False)
    assert clone.steps == 1 and clone.started and clone.config == run.config
    assert clone._sink is None and clone._watchdog is None and clone._update_run is None
    clone.on_step(2, loss=0.4)  # a fresh loss window and reader in the new process
    assert clone.steps == 2


def test_the_step_hook_reads_slots_not_an_instance_dict() -> None:
    """Past 30 attributes a dict-backed instance loses CPython's fast attribute reads: the
    tracker keeps its facts in slots (see ``RunTracker.__slots__``)."""
    assert not hasattr(RunTracker(RecordingSink()), "__dict__")
