"""The Lightning step hook hands each batch's loss to the tracker and counts the steps a
window at a time (issue #27): real tiny trainings, through the real outbox, checking that
every step is still counted where it happened, that a NaN stop still acts at its check, and
that the steps before a failure are counted before the failure is reported."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from afs_callbacks import EventType  # noqa: E402
from afs_callbacks.integrations.lightning import AFSNotify  # noqa: E402
from afs_callbacks.tracking import RunTracker  # noqa: E402
from tests.integrations.conftest import delivered, history, of_type, only  # noqa: E402
from tests.integrations.test_lightning import TinyModel, make_trainer  # noqa: E402


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(first step, steps) of every call that counts steps, in order."""
    calls: list[tuple[int, int]] = []
    on_steps = RunTracker.on_steps

    def counted(self: RunTracker, first_step: int, losses: Any) -> bool:
        calls.append((first_step, len(losses)))
        return on_steps(self, first_step, losses)

    monkeypatch.setattr(RunTracker, "on_steps", counted)
    return calls


def counted_steps(counts: list[tuple[int, int]]) -> list[int]:
    """Every step the calls counted, in the order they counted them."""
    return [first + offset for first, size in counts for offset in range(size)]


def test_fast_steps_are_counted_a_window_at_a_time_and_none_is_lost(manager, tmp_path, counts):
    callback = AFSNotify(manager, nan_check_every=20)
    trainer = make_trainer(tmp_path, callback, max_epochs=2, limit_train_batches=60)
    trainer.fit(TinyModel())

    steps = counted_steps(counts)
    assert steps == list(range(1, trainer.global_step + 1))  # each step once, in order
    # A tiny CPU step takes ~1 ms: after the pace is known, windows reach the loss check.
    assert max(size for _, size in counts) == 20
    assert len(counts) < trainer.global_step / 4
    state = callback.tracker.state()
    assert state.step == trainer.global_step


def test_a_stop_on_nan_still_acts_at_the_check_that_reads_it(manager, receiver, tmp_path, counts):
    trainer = make_trainer(
        tmp_path,
        AFSNotify(manager, nan_check_every=10, stop_on_nan=True),
        max_epochs=3,
        limit_train_batches=40,
    )
    trainer.fit(TinyModel(nan_from=23))  # the loss of step 24 (global_step 23 before it) is NaN

    assert trainer.global_step == 30  # the check after it, as when every step was counted
    assert max(size for _, size in counts) > 1
    nan = only(delivered(manager, receiver), EventType.NAN_DETECTED)
    assert nan.context["step"] == 24


def test_a_batch_without_a_loss_is_a_step_without_a_loss(manager, tmp_path, counts):
    """``training_step`` returning None: Lightning skips the backward pass but still steps
    the optimizer (its step count moves), and the batch has no loss."""

    class Skipping(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None if batch_idx % 3 == 0 else super().training_step(batch, batch_idx)

    callback = AFSNotify(manager, nan_check_every=20)
    trainer = make_trainer(tmp_path, callback, max_epochs=1, limit_train_batches=60)
    trainer.fit(Skipping())

    steps = counted_steps(counts)
    assert steps == list(range(1, trainer.global_step + 1)) and trainer.global_step == 60
    assert callback._steps_at_once  # the windows never disagreed with the step count
    assert max(size for _, size in counts) == 20


def test_a_window_that_disagrees_with_the_step_count_ends_the_windows(manager, tmp_path, counts):
    """No module of Lightning 2.6 makes a batch of automatic optimization anything but one
    step; the adapter is shown a step count that moves two a batch from the fifth batch on,
    as a module stepping another way would, to check that it stops counting windows."""
    from lightning.pytorch.callbacks import Callback

    callback = AFSNotify(manager, nan_check_every=20)

    class Doubled(Callback):
        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == 4:
                callback._step_counter = _Doubled(trainer)

    trainer = make_trainer(tmp_path, callback, max_epochs=1, limit_train_batches=60)
    trainer.callbacks.insert(0, Doubled())
    trainer.fit(TinyModel())

    assert not callback._steps_at_once
    assert counts[-1] == (2 * 60 - 4, 1)  # the last batch, counted alone at the step shown
    firsts = [first for first, _ in counts]
    assert firsts == sorted(firsts)


class _Doubled:
    """A step count two a batch past the fourth."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    @property
    def completed(self) -> int:
        return 2 * self.trainer.global_step - 4


def test_manual_optimization_counts_each_batch_as_it_ends(manager, tmp_path, counts):
    """A module that steps when it likes: a window could not tell which batches stepped."""

    class Manual(TinyModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            optimizer = self.optimizers()
            loss = self.step(batch)
            self.manual_backward(loss)
            if batch_idx % 2 == 1:
                optimizer.step()
                optimizer.zero_grad()
            return {"loss": loss}

    callback = AFSNotify(manager, nan_check_every=20)
    trainer = make_trainer(tmp_path, callback, max_epochs=1, limit_train_batches=40)
    trainer.fit(Manual())

    assert trainer.global_step == 20
    assert counts == [(step, 1) for step in range(1, 21)]


def test_the_steps_before_a_failure_are_counted_before_it_is_reported(tmp_path, counts):
    """A NaN among the steps not counted yet when training_step raises: the failure's
    report reads them (the run's end reads its last loss window), so the run is not told as
    a plain crash with its loss fine."""
    from tests.integrations.conftest import make_manager

    manager, _ = make_manager(tmp_path)
    callback = AFSNotify(manager, nan_check_every=50)
    trainer = make_trainer(tmp_path, callback, max_epochs=1, limit_train_batches=80)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(TinyModel(nan_from=33, raise_at=37, error=lambda: RuntimeError("boom")))

    steps = counted_steps(counts)
    assert steps == list(range(1, 38))
    events = history(manager)
    assert of_type(events, EventType.NAN_DETECTED)
    assert of_type(events, EventType.TRAINING_FAILED)
    manager.close()


def test_steps_handed_over_are_progress_to_the_stall_watchdog(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("afs_callbacks.tracking.tracker.time.monotonic", lambda: clock[0])
    tracker = RunTracker()
    clock[0] += 60
    assert tracker.last_progress() == 100.0  # nothing moved for a minute
    tracker.handed.append(None)
    assert tracker.last_progress() == 160.0
    clock[0] += 60
    assert tracker.last_progress() == 160.0  # the same step, seen again, is no progress
    tracker.handed.append(None)
    assert tracker.last_progress() == 220.0


def test_the_window_follows_the_pace_and_stops_at_the_loss_check(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("afs_callbacks.tracking.tracker.time.monotonic", lambda: clock[0])
    tracker = RunTracker()
    tracker.resolve(nan_check_every=50)
    assert tracker.steps_to_count() == 1  # no pace yet
    tracker.on_steps(1, [None] * 10)
    clock[0] += 0.010  # 1 ms a step: 100 steps in a window's time, but the check is at 50
    assert tracker.steps_to_count() == 40
    tracker.on_steps(11, [None] * 40)
    clock[0] += 2.0  # 50 ms a step: two steps fill a window
    assert tracker.steps_to_count() == 2
    tracker.on_steps(51, [None] * 2)
    clock[0] += 2.0  # a second a step: every step counted as it ends
    assert tracker.steps_to_count() == 1
