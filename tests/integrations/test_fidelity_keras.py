"""Keras 3 (torch backend) runs whose messages a researcher can trust: the reason a run
ended, a crash the caller catches closed at once, ``evaluate()`` named right and
``ModelCheckpoint`` saves recorded.

Each test is a real tiny ``fit()`` on CPU; what reached the channel goes through the real
manager, outbox and sender, and what did *not* reach it is checked too.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from afs_callbacks import EventType, watch  # noqa: E402
from afs_callbacks.formatting import format_value  # noqa: E402
from afs_callbacks.integrations.keras import AFSNotify  # noqa: E402
from tests.integrations.conftest import (  # noqa: E402
    assert_ended_as,
    history,
    in_order,
    kinds,
    make_manager,
    of_type,
    only,
    settle,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BATCH = 8


class Misbehave(keras.layers.Layer):  # type: ignore[misc]
    """Passes its input through; training call ``raise_at`` raises, and from training call
    ``nan_from`` on the output is NaN."""

    def __init__(self, raise_at: int | None = None, nan_from: int | None = None) -> None:
        super().__init__()
        self.raise_at, self.nan_from, self.calls = raise_at, nan_from, 0

    def call(self, inputs: Any, training: bool = False) -> Any:
        if training:
            self.calls += 1
            if self.calls == self.raise_at:
                raise RuntimeError("the data went wrong")
            if self.nan_from is not None and self.calls >= self.nan_from:
                return inputs * float("nan")
        return inputs


def make_model(name: str = "tiny", misbehave: Misbehave | None = None) -> Any:
    layers = [keras.Input((1,)), keras.layers.Dense(1)]
    if misbehave is not None:
        layers.append(misbehave)
    model = keras.Sequential(layers, name=name)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def points(count: int = 32) -> tuple[Any, Any]:
    x = np.linspace(0, 1, count, dtype="float32").reshape(-1, 1)
    return x, 3 * x + 1


def fit(model: Any, callbacks: list[Any], epochs: int = 2, **options: Any) -> Any:
    x, y = points()
    return model.fit(
        x, y, epochs=epochs, batch_size=BATCH, verbose=0, shuffle=False, callbacks=callbacks, **options
    )


@pytest.fixture(autouse=True)
def restore_process_hooks() -> Iterator[None]:
    """A training that crashes never reaches on_train_end, which would have put back the
    SIGTERM handling the callback changed; keep other tests' process as it was."""
    handler, excepthook = signal.getsignal(signal.SIGTERM), sys.excepthook
    yield
    signal.signal(signal.SIGTERM, handler)
    sys.excepthook = excepthook


# 3. Why the run ended -----------------------------------------------------------------------


class StopAfterFirstEpoch(keras.callbacks.Callback):  # type: ignore[misc]
    """The user's own reason to stop."""

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.model.stop_training = True


def _early_stopping() -> Any:
    # min_delta larger than any change: only the first epoch counts as an improvement.
    return keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, min_delta=100.0)


@pytest.mark.parametrize(
    "case", ["max_epochs", "early_stopping", "terminate_on_nan", "stop_on_nan", "should_stop"]
)
def test_the_completion_says_why_the_run_ended(tmp_path: Path, case: str) -> None:
    manager, channel = make_manager(tmp_path)
    callbacks: list[Any] = [AFSNotify(manager, stop_on_nan=case == "stop_on_nan")]
    model, epochs = make_model(), 20
    if case == "max_epochs":
        epochs = 2
    elif case == "early_stopping":
        callbacks.append(_early_stopping())
    elif case in ("terminate_on_nan", "stop_on_nan"):
        model = make_model(misbehave=Misbehave(nan_from=3))
        if case == "terminate_on_nan":
            callbacks.append(keras.callbacks.TerminateOnNaN())
    elif case == "should_stop":
        callbacks.append(StopAfterFirstEpoch())
    with manager:
        fit(model, callbacks, epochs=epochs, validation_split=0.25)
        settle(manager)
    completed = only(channel.events, EventType.TRAINING_COMPLETED)
    expected = case
    if case == "early_stopping":
        stopper = callbacks[1]
        expected = f"early_stopping (val_loss, patience 2, best {format_value(stopper.best)})"
    assert completed.context["end_reason"] == expected
    assert_ended_as(completed, case, expected)


# 4. A crash the caller catches --------------------------------------------------------------


@pytest.mark.parametrize("watched", [False, True], ids=["bare", "watch"])
def test_a_caught_crash_closes_the_run_at_once_and_the_next_fit_is_a_new_run(
    tmp_path: Path, watched: bool
) -> None:
    manager, channel = make_manager(tmp_path)
    callback = AFSNotify(manager, stall_timeout=1.0)
    model = make_model(misbehave=Misbehave(raise_at=3))
    with manager:
        with pytest.raises(RuntimeError, match="the data went wrong"):
            if watched:
                with watch():
                    fit(model, [callback])
            else:
                fit(model, [callback])  # a notebook cell: the caller sees the error, nothing else runs
        [failed] = channel.wait_for(lambda e: e.event_type is EventType.TRAINING_FAILED, timeout=5)
        assert failed.context["error_type"] == "RuntimeError"
        time.sleep(2.5)  # more than the stall timeout: a watchdog still running would fire
        fit(model, [callback])  # the retry: call 3 is behind the layer now
        settle(manager)
        pushed = in_order(channel.events)
    assert not of_type(pushed, EventType.TRAINING_STALLED)
    assert kinds(pushed) == [
        EventType.TRAINING_STARTED,
        EventType.TRAINING_FAILED,
        EventType.TRAINING_STARTED,
        EventType.TRAINING_COMPLETED,
    ]
    assert pushed[0].run_id == pushed[1].run_id == failed.run_id
    assert pushed[2].run_id == pushed[3].run_id != failed.run_id


def test_a_crash_of_a_later_fit_outside_the_training_step_is_closed_at_once(tmp_path: Path) -> None:
    """A failure in a data pipeline or another callback, not in the training step."""

    class Explode(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.armed = False

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if self.armed:
                raise ValueError("a callback failed")

    manager, channel = make_manager(tmp_path)
    callback, explode, model = AFSNotify(manager), Explode(), make_model()
    with manager:
        fit(model, [callback, explode], epochs=1)
        explode.armed = True
        with pytest.raises(ValueError, match="a callback failed"):
            fit(model, [callback, explode], epochs=1)
        [failed] = channel.wait_for(lambda e: e.event_type is EventType.TRAINING_FAILED, timeout=5)
        settle(manager)
        pushed = in_order(channel.events)
    assert failed.context["error_type"] == "ValueError"
    assert kinds(pushed) == [
        EventType.TRAINING_STARTED,
        EventType.TRAINING_COMPLETED,
        EventType.TRAINING_STARTED,
        EventType.TRAINING_FAILED,
    ]
    assert pushed[2].run_id == failed.run_id != pushed[0].run_id


# 5. Evaluation ------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [None, "tiny-regressor"])
def test_evaluate_alone_names_the_model(tmp_path: Path, given: str | None) -> None:
    manager, channel = make_manager(tmp_path, verbosity="verbose")
    x, y = points()
    with manager:
        make_model(name="tiny").evaluate(x, y, verbose=0, callbacks=[AFSNotify(manager, model_name=given)])
        settle(manager)
    expected = given or "tiny"
    completed = only(channel.events, EventType.EVALUATION_COMPLETED)
    assert completed.context["model"] == expected and completed.title.endswith(f": {expected}")
    assert only(channel.events, EventType.EVALUATION_STARTED).context["model"] == expected


# 6. Checkpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["notify-first", "checkpoint-first"])
def test_model_checkpoint_saves_are_recorded_with_their_paths_and_not_pushed(
    tmp_path: Path, order: str
) -> None:
    manager, channel = make_manager(tmp_path)
    pattern = str(tmp_path / "ckpt" / "epoch-{epoch:02d}.weights.h5")
    saver = keras.callbacks.ModelCheckpoint(pattern, save_weights_only=True)
    notify = AFSNotify(manager)
    callbacks: list[Any] = [notify, saver] if order == "notify-first" else [saver, notify]
    with manager:
        fit(make_model(), callbacks, epochs=3)
        settle(manager)
        kept = history(manager)
    saved = of_type(kept, EventType.CHECKPOINT_SAVED)
    expected = [str(tmp_path / "ckpt" / f"epoch-{epoch:02d}.weights.h5") for epoch in (1, 2, 3)]
    assert all(os.path.isfile(path) for path in expected)
    assert [event.context["checkpoint"] for event in saved] == expected
    assert not of_type(channel.events, EventType.CHECKPOINT_SAVED)  # history only, by default


# 2. One numbering ---------------------------------------------------------------------------


def test_epoch_messages_number_epochs_from_one(tmp_path: Path) -> None:
    manager, channel = make_manager(tmp_path, verbosity="verbose")
    with manager:
        fit(make_model(), [AFSNotify(manager, epoch_every=1)], epochs=1)
        settle(manager)
        # From the history: an epoch still queued when the run's end is stored (here at
        # once) is superseded rather than pushed late, at any verbosity.
        epoch = only(history(manager), EventType.EPOCH_COMPLETED)
    assert epoch.title.startswith("Epoch 1/1 completed") and epoch.context["epoch"] == 1
    assert only(channel.events, EventType.TRAINING_COMPLETED).context["end_reason"] == "max_epochs"


def test_a_first_fit_that_raised_outside_the_training_step_is_closed_by_the_next_fit(tmp_path: Path) -> None:
    """The one case no wrapper sees at once (the fit was running before the callback
    could wrap it): the next fit() closes the old run as failed and starts a new one."""

    class ExplodeOnce(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.armed = True

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if self.armed:
                self.armed = False
                raise ValueError("a callback failed")

    manager, channel = make_manager(tmp_path)
    callback, explode, model = AFSNotify(manager, stall_timeout=None), ExplodeOnce(), make_model()
    with manager:
        with pytest.raises(ValueError, match="a callback failed"):
            fit(model, [callback, explode], epochs=1)
        fit(model, [callback, explode], epochs=1)
        settle(manager)
        pushed = in_order(channel.events)
    assert kinds(pushed) == [
        EventType.TRAINING_STARTED,
        EventType.TRAINING_FAILED,
        EventType.TRAINING_STARTED,
        EventType.TRAINING_COMPLETED,
    ]
    assert pushed[1].run_id == pushed[0].run_id != pushed[2].run_id == pushed[3].run_id
    assert pushed[1].context["error_type"] == "FitAbandoned"
