"""Loss windows of device tensors are read by the reader thread, never on the training
thread, unless the last verdict is needed (the run's end, ``stop_on_nan``); windows of CPU
tensors have no device to wait for and are read at the check. Real tensors: CPU, and meta
for a device (it has no values, so its read fails, on the reader thread)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from afs_callbacks.events import EventType  # noqa: E402
from afs_callbacks.tracking import nan  # noqa: E402
from afs_callbacks.tracking.nan import LossAccumulator  # noqa: E402
from tests.tracking.support import RecordingSink, tracker  # noqa: E402


@pytest.fixture
def reading_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that read windows of tensors."""
    names: list[str] = []
    real = nan._values

    def recorded(tensors: list[torch.Tensor]) -> list[float]:
        names.append(threading.current_thread().name)
        return real(tensors)

    monkeypatch.setattr(nan, "_values", recorded)
    return names


def test_device_windows_are_read_off_the_training_thread(reading_threads: list[str]) -> None:
    run = tracker(RecordingSink(), nan_check_every=2)
    run.start(epochs=1)
    for step in range(1, 7):
        run.on_step(step, loss=torch.empty((), device="meta"))
    run.completed()
    assert len(reading_threads) == 3 and all(name == "afs-loss-reader" for name in reading_threads)


def test_cpu_windows_are_read_at_the_check_on_the_training_thread(reading_threads: list[str]) -> None:
    sink = RecordingSink()
    run = tracker(sink, nan_check_every=4)
    run.start(epochs=1)
    verdicts = []
    for step in range(1, 13):
        loss = torch.tensor(float(step))
        run.on_step(step, loss=loss * math.nan if step == 6 else loss)
        verdicts.append(len(sink.of(EventType.NAN_DETECTED)))
    run.completed()
    assert reading_threads == [threading.current_thread().name] * 3
    assert verdicts[6] == 0 and verdicts[7] == 1  # known at the check of step 8, not later
    nans = sink.of(EventType.NAN_DETECTED)
    # Found in the window of steps 5-8, named at its first bad step.
    assert len(nans) == 1 and nans[0].context["step"] == 6 and nans[0].context["seen_step"] >= 8
    assert nans[0].context["value"] == "NaN" and nans[0].message.startswith("loss became NaN at step 6")
    # The windows around it still give their mean loss to the curve, and its own part
    # before the NaN too.
    assert (4, 2.5) in run._curves.losses and (12, 10.5) in run._curves.losses
    assert (5, 5.0) in run._curves.losses


def test_stop_on_nan_reads_at_the_check_and_stops_there(reading_threads: list[str]) -> None:
    sink = RecordingSink()
    run = tracker(sink, nan_check_every=2, stop_on_nan=True)
    run.start(epochs=1)
    stops = [run.on_step(step, loss=torch.tensor(math.nan if step == 3 else 1.0)) for step in range(1, 6)]
    assert stops[:3] == [False, False, False] and stops[3] is True  # step 4 ends the window
    assert len(sink.of(EventType.NAN_DETECTED)) == 1


def test_a_loss_that_still_has_its_graph_is_kept_detached() -> None:
    weight = torch.ones(3, requires_grad=True)
    accumulator = LossAccumulator()
    accumulator.add(1, (weight * 2).sum())
    pending = accumulator.take()
    assert pending is not None and not pending.tensors[0].requires_grad
    assert pending.window().mean_loss == 6.0


@pytest.mark.parametrize(
    ("losses", "mean"),
    [
        ([torch.tensor([1.0, 3.0]), torch.tensor([5.0, 7.0])], 4.0),  # per-sample losses
        ([torch.tensor(1.0), torch.tensor([2.0, 4.0])], 2.0),  # mixed shapes
        ([torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(3.0)], 2.0),  # mixed dtypes
    ],
)
def test_a_window_gives_the_mean_of_each_steps_loss(losses: list[torch.Tensor], mean: float) -> None:
    accumulator = LossAccumulator()
    for step, loss in enumerate(losses, 1):
        accumulator.add(step, loss)
    window = accumulator.read()
    assert window is not None and window.mean_loss == pytest.approx(mean) and not window.saw_non_finite


def test_a_window_that_cannot_be_read_is_logged_once_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = RecordingSink()
    run = tracker(sink, nan_check_every=2)
    run.start(epochs=1)
    with caplog.at_level(logging.ERROR):
        for step in range(1, 7):  # meta tensors have no values to read
            assert run.on_step(step, loss=torch.empty((), device="meta")) is False
        run.completed()
    failures = [r for r in caplog.records if "could not read a loss window" in r.getMessage()]
    assert len(failures) == 1
    assert sink.of(EventType.TRAINING_COMPLETED)


def _losses(value: Callable[[int], Any]) -> list[Any]:
    return [value(step) for step in range(1, 41)]


@pytest.mark.parametrize(
    "losses",
    [
        pytest.param(_losses(lambda step: torch.tensor(float(step))), id="tensors"),
        pytest.param(_losses(lambda step: torch.tensor(math.nan if step == 17 else float(step))), id="a NaN"),
        pytest.param(_losses(float), id="floats"),
        pytest.param(_losses(lambda step: None if step % 7 == 0 else torch.tensor(float(step))), id="gaps"),
    ],
)
def test_steps_counted_a_window_at_a_time_tell_what_steps_counted_one_by_one_tell(losses) -> None:
    """``on_steps`` takes a window of tensors at once (only its last step through
    ``on_step``): the loss curve, the NaN report and the counts are those of step by step."""
    one_sink, many_sink = RecordingSink(), RecordingSink()
    one, many = tracker(one_sink, nan_check_every=10), tracker(many_sink, nan_check_every=10)
    one.start(epochs=1)
    many.start(epochs=1)
    for step, loss in enumerate(losses, 1):
        one.on_step(step, loss=loss)
    for first, size in ((1, 10), (11, 4), (15, 6), (21, 10), (31, 1), (32, 9)):  # none past a check
        many.on_steps(first, losses[first - 1 : first - 1 + size])
    one.completed()
    many.completed()

    assert many._curves.losses == one._curves.losses and len(one._curves.losses) >= 4
    assert (many.state().step, many._steps) == (one.state().step, one._steps) == (40, 40)

    def nans(sink: RecordingSink) -> list[tuple[Any, Any]]:
        return [
            (event.context["step"], event.context["seen_step"]) for event in sink.of(EventType.NAN_DETECTED)
        ]

    assert nans(many_sink) == nans(one_sink)
