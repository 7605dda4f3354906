"""Scenario: a Keras ``fit()`` dies — of a crash nobody caught, or of SIGTERM.

Keras has no exception hook: ``on_train_end`` never runs when ``fit()`` raises. What a
user sees anyway, because ``AFSNotify`` installed its fallbacks when training began:

* ``--stop crash``: the model raises in batch 3. The usual traceback is printed, then
  "Training failed" (with the traceback's tail) is delivered before the process exits
  with status 1 — through the ``sys.excepthook`` fallback.
* ``--stop sigterm``: the scheduler sends SIGTERM mid-run. SIGTERM raises in the training
  loop, "Training interrupted (SIGTERM ...)" is delivered, and the process exits with
  status 143, as a SIGTERM death would.

The training script is this file: ``python integrations/scenario_keras_crash.py --stop
crash|sigterm``, with ``WEBHOOK_URL`` (or any channel) and ``KERAS_BACKEND`` in the
environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
READY = "TRAINING-IS-RUNNING"
BAD_BATCH = 3


def train(stop: str) -> None:
    """The job: a tiny regression that crashes, or waits for SIGTERM, at batch 3."""
    import time

    import keras
    import numpy as np

    from afs_callbacks.integrations.keras import AFSNotify

    class Breaks(keras.layers.Layer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def call(self, inputs: Any, training: bool = False) -> Any:
            self.calls += int(bool(training))
            if stop == "crash" and self.calls == BAD_BATCH:
                raise ValueError("a corrupt record in batch 3")
            return inputs

    class SlowBatch(keras.callbacks.Callback):  # type: ignore[misc]
        """Tells the test (on stdout) that training runs, then takes a long batch."""

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if stop == "sigterm" and batch == BAD_BATCH:
                print(READY, flush=True)
                # A long batch is work, not one blocking call: the kernel may hand SIGTERM
                # to any thread (torch's, the library's), and Python runs the handler when
                # the main thread next runs bytecode, which one 60 s sleep would postpone.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    time.sleep(0.05)

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1), Breaks()], name="fragile")
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).random((64, 1)).astype("float32")
    # Deliberately not wrapped in afs_callbacks.watch(): the fallbacks do the reporting.
    model.fit(x, 3 * x + 1, epochs=3, batch_size=8, verbose=0, callbacks=[AFSNotify(), SlowBatch()])


# The tests -----------------------------------------------------------------------------


def _job(receiver: Any, stop: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "WEBHOOK_URL": receiver.url("/hook"),
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, __file__, "--stop", stop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _received(receiver: Any) -> list[Any]:
    from afs_callbacks import NotificationEvent

    return [NotificationEvent.from_dict(request.json()) for request in receiver.requests]


@pytest.mark.slow
def test_keras_crash_without_a_wrapper_is_reported_by_the_excepthook(receiver):
    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("keras")
    job = _job(receiver, "crash")
    try:
        _, stderr = job.communicate(timeout=120)
    finally:
        job.kill()

    assert job.returncode == 1, stderr[-3000:]
    assert "a corrupt record in batch 3" in stderr and "Traceback" in stderr  # the previous hook ran
    events = _received(receiver)  # no waiting: delivered before the process exited
    assert [event.event_type.value for event in events] == ["training_started", "training_failed"], stderr
    assert "a corrupt record" in events[1].message and events[1].run_id == events[0].run_id


@pytest.mark.slow
def test_keras_sigterm_is_reported_before_the_process_exits(receiver):
    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("keras")
    job = _job(receiver, "sigterm")
    try:
        assert job.stdout is not None
        assert job.stdout.readline().strip() == READY
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=60)
    finally:
        job.kill()

    assert job.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    events = _received(receiver)
    assert [event.event_type.value for event in events] == ["training_started", "training_interrupted"], (
        stderr
    )
    assert "SIGTERM" in events[1].context["reason"] and events[1].context["step"] == BAD_BATCH


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop", choices=["crash", "sigterm"], required=True)
    train(parser.parse_args().stop)
