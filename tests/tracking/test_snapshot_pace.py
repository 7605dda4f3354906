"""A fast run hands over a few snapshots, not one per epoch, and loses no point on the way."""

from __future__ import annotations

from afs_callbacks.runstate import COMPLETED
from tests.tracking.support import RecordingSink, tracker


def test_fast_epochs_share_snapshots_and_every_point_arrives() -> None:
    sink = RecordingSink()
    run = tracker(sink)
    run.start(epochs=50)
    step = 0
    for epoch in range(50):  # 50 epochs in well under the 0.5 s between snapshots for news
        for _ in range(3):
            step += 1
            run.on_step(step, loss=1.0)
        run.epoch_end(epoch, {"val_loss": 1.0 / (epoch + 1)})
    run.completed()
    assert len(sink.states) < 10  # the start, a paced few, the end
    final = sink.states[-1]
    assert final.status == COMPLETED and final.epoch == 50
    val = [point for point in sink.points if point.series == "val_loss"]
    assert [point.x for point in val] == [float(epoch) for epoch in range(1, 51)]


def test_a_snapshot_held_back_goes_out_from_the_step_hook() -> None:
    sink = RecordingSink()
    run = tracker(sink)
    run.start(epochs=3)
    run.epoch_end(0, {"val_loss": 0.5})  # right after the start's snapshot: held back
    held = len(sink.states)
    run._next_snapshot -= 1.0  # as if the gap had passed (no sleep in the test)
    run.on_step(1, loss=1.0)
    assert len(sink.states) == held + 1 and sink.states[-1].epoch == 1
