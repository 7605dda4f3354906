"""AFSNotify for Keras 3 on the torch backend: real ``fit()`` runs of a tiny model on CPU,
whose events travel through the real outbox and a real webhook channel to a loopback
HTTP receiver.

Crashes are reported through ``afs_callbacks.watch`` here; the excepthook fallback and
SIGTERM, which need a process of their own, are in ``integrations/scenario_keras_crash.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from afs_callbacks import EventType, watch  # noqa: E402
from afs_callbacks.integrations.keras import AFSNotify  # noqa: E402
from afs_callbacks.tracking import RunTracker  # noqa: E402
from tests.integrations.conftest import SECRET_TOKEN, delivered, of_type  # noqa: E402

# Keras' torch backend converts tensors with a NumPy 1 idiom; not this project's concern.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BATCH = 8


class Misbehave(keras.layers.Layer):  # type: ignore[misc]
    """Passes its input through; at training call ``raise_at`` raises what ``error`` returns."""

    def __init__(self, raise_at: int | None = None, error: Callable[[], BaseException] | None = None) -> None:
        super().__init__()
        self.raise_at, self.error, self.calls = raise_at, error, 0

    def call(self, inputs: Any, training: bool = False) -> Any:
        if training:
            self.calls += 1
            if self.calls == self.raise_at and self.error is not None:
                raise self.error()
        return inputs


def make_model(name: str = "tiny", misbehave: Misbehave | None = None) -> Any:
    layers = [keras.Input((1,)), keras.layers.Dense(1)]
    if misbehave is not None:
        layers.append(misbehave)
    model = keras.Sequential(layers, name=name)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def points(count: int = 64, nan_batch: int | None = None) -> tuple[Any, Any]:
    """y = 3x + 1; with ``nan_batch``, that batch (0-based, unshuffled) holds a NaN input."""
    x = np.random.default_rng(0).random((count, 1)).astype("float32")
    y = 3 * x + 1
    if nan_batch is not None:
        x[nan_batch * BATCH] = np.nan
    return x, y


def fit(model: Any, callback: Any, epochs: int = 2, nan_batch: int | None = None, **options: Any) -> Any:
    x, y = points(nan_batch=nan_batch)
    callbacks = callback if isinstance(callback, list) else [callback]
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


# A run, end to end -----------------------------------------------------------------------


def test_run_reports_started_epochs_and_completed_with_metrics(manager, receiver):
    history = fit(make_model(), AFSNotify(manager), epochs=3, validation_split=0.25)

    events = delivered(manager, receiver)
    kinds = [event.event_type for event in events]
    assert kinds[0] is EventType.TRAINING_STARTED and kinds[-1] is EventType.TRAINING_COMPLETED
    started, completed = events[0], events[-1]
    assert started.model == "tiny" and started.context["epochs"] == 3
    assert started.context["max_steps"] == 18 and started.context["backend"] == "torch"
    assert {event.run_id for event in events} == {started.run_id}

    epochs = of_type(events, EventType.EPOCH_COMPLETED)
    assert [event.context["epoch"] for event in epochs] == [1, 2, 3]  # 1-based, as the titles
    assert [event.metrics["val_loss"] for event in epochs] == pytest.approx(history.history["val_loss"])
    assert completed.metrics["loss"] == pytest.approx(history.history["loss"][-1])
    assert completed.context["steps"] == 18 and "val_loss" in completed.context["best"]
    assert not of_type(events, EventType.EVALUATION_COMPLETED)  # validation belongs to the epoch


# NaN ----------------------------------------------------------------------------------------


def test_nan_is_reported_once_at_its_step(manager, receiver):
    fit(make_model(), AFSNotify(manager), epochs=2, nan_batch=3)

    events = delivered(manager, receiver)
    [nan] = of_type(events, EventType.NAN_DETECTED)
    # Keras' logged loss is the epoch's running mean: NaN from the bad batch (step 4) on.
    # Batch hooks run on a worker thread, so a later step may be seen first.
    assert 4 <= nan.context["step"] <= 8
    assert events[-1].event_type is EventType.TRAINING_COMPLETED


def test_stop_on_nan_stops_training(manager, receiver):
    history = fit(make_model(), AFSNotify(manager, stop_on_nan=True), epochs=5, nan_batch=1)

    assert len(history.history["loss"]) == 1
    assert len(of_type(delivered(manager, receiver), EventType.NAN_DETECTED)) == 1


def test_batch_hooks_keep_keras_asynchronous(manager):
    from keras.callbacks import Callback, CallbackList

    class Synchronous(Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            pass

    model = make_model()
    assert CallbackList([AFSNotify(manager)], model=model)._async_train is True
    assert CallbackList([Synchronous()], model=model)._async_train is False

    class Probe(AFSNotify):
        threads: ClassVar[set[str]] = set()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.threads.add(threading.current_thread().name)
            super().on_train_batch_end(batch, logs)

    fit(model, Probe(manager), epochs=1)
    assert threading.main_thread().name not in Probe.threads  # off the training loop


# Crashes, through watch() ---------------------------------------------------------------------


def test_out_of_memory_is_reported_with_the_device(manager, receiver):
    def oom() -> BaseException:
        return torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8 GiB total)"
        )

    model = make_model(misbehave=Misbehave(raise_at=5, error=oom))
    with pytest.raises(torch.cuda.OutOfMemoryError), watch():
        fit(model, AFSNotify(manager))

    events = delivered(manager, receiver)
    assert events[-1].event_type is EventType.OUT_OF_MEMORY
    assert events[-1].context["device"] == "GPU 0" and events[-1].run_id == events[0].run_id
    assert not of_type(events, EventType.TRAINING_FAILED)


def test_keyboard_interrupt_is_an_interruption_not_a_failure(manager, receiver):
    model = make_model(misbehave=Misbehave(raise_at=3, error=KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt), watch():
        fit(model, AFSNotify(manager))

    events = delivered(manager, receiver)
    assert events[-1].event_type is EventType.TRAINING_INTERRUPTED
    assert "KeyboardInterrupt" in events[-1].context["reason"]


def test_a_crash_is_reported_once_with_a_redacted_traceback_tail(manager, receiver):
    def crash() -> BaseException:
        return ValueError(f"bad batch; config was {receiver.url(f'/hooks/{SECRET_TOKEN}')}")

    model = make_model(misbehave=Misbehave(raise_at=2, error=crash))
    callback = AFSNotify(manager)
    with pytest.raises(ValueError, match="bad batch"), watch():
        fit(model, callback)

    [failed] = of_type(delivered(manager, receiver), EventType.TRAINING_FAILED)
    assert "ValueError" in failed.message
    assert SECRET_TOKEN not in failed.to_json()

    x, y = points(16)
    model.evaluate(x, y, verbose=0, callbacks=[callback])  # after the crash: standalone again
    assert of_type(delivered(manager, receiver), EventType.EVALUATION_COMPLETED)


# Resume, evaluation --------------------------------------------------------------------------


def test_fit_starting_past_epoch_zero_is_a_resume(manager, receiver):
    fit(make_model(), AFSNotify(manager), epochs=4, initial_epoch=2)

    events = delivered(manager, receiver)
    assert events[0].event_type is EventType.TRAINING_RESUMED
    assert events[0].context["initial_epoch"] == 2
    assert [e.context["epoch"] for e in of_type(events, EventType.EPOCH_COMPLETED)] == [3, 4]


def test_a_standalone_evaluation_is_reported(manager, receiver):
    model = make_model()
    x, y = points(16)
    loss = model.evaluate(x, y, verbose=0, callbacks=[AFSNotify(manager)])

    events = delivered(manager, receiver)
    assert [e.event_type for e in events] == [EventType.EVALUATION_STARTED, EventType.EVALUATION_COMPLETED]
    assert events[1].metrics == {"loss": pytest.approx(loss)}


# The rules --------------------------------------------------------------------------------------


def test_a_failing_tracker_never_breaks_training(manager, caplog):
    class BrokenTracker(RunTracker):
        def on_step(self, step: int, loss: Any = None, grad_norm: Any = None) -> bool:
            raise RuntimeError("tracker bug")

        def epoch_end(self, epoch: int, metrics: Any = None) -> None:
            raise RuntimeError("tracker bug")

    with caplog.at_level(logging.ERROR, logger="afs_callbacks"):
        history = fit(make_model(), AFSNotify(tracker=BrokenTracker(manager)), epochs=2)

    assert len(history.history["loss"]) == 2  # training ran to the end
    failures = [r for r in caplog.records if "AFSNotify.on_train_batch_end failed" in r.getMessage()]
    assert len(failures) == 1  # logged once, not once per batch


def test_a_second_fit_call_is_a_new_run(manager, receiver):
    callback = AFSNotify(manager)
    model = make_model()
    fit(model, callback, epochs=1)
    fit(model, callback, epochs=1)

    events = delivered(manager, receiver)
    started = of_type(events, EventType.TRAINING_STARTED)
    assert len(started) == 2 and len(of_type(events, EventType.TRAINING_COMPLETED)) == 2
    assert started[0].run_id != started[1].run_id


def test_bad_arguments_are_quoted_in_the_error():
    with pytest.raises(ValueError, match=r"AFSNotify\(mode='best'\)"):
        AFSNotify(mode="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"AFSNotify\(patience=-1\)"):
        AFSNotify(patience=-1)


def test_no_secret_in_repr_history_or_log(manager, receiver, caplog):
    callback = AFSNotify(manager)
    with caplog.at_level(logging.DEBUG):
        fit(make_model(), callback, nan_batch=2)
    delivered(manager, receiver)
    for text in (repr(callback), repr(manager.outbox.history(limit=100)), caplog.text):
        assert SECRET_TOKEN not in text


def test_channels_come_from_the_environment_without_arguments(receiver, monkeypatch):
    monkeypatch.setenv("WEBHOOK_URL", receiver.url("/from-env"))
    callback = AFSNotify()
    fit(make_model(), callback, epochs=1)

    receiver.wait_for(predicate=lambda r: r.json()["event_type"] == "training_completed")
    assert {request.path for request in receiver.requests} == {"/from-env"}
    callback.tracker.manager.close()
