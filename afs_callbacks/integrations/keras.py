"""Notifications from Keras 3 ``fit()`` runs, on any backend (torch, JAX, TensorFlow).

Example::

    from afs_callbacks.integrations.keras import AFSNotify

    model.fit(x, y, epochs=10, validation_split=0.1, callbacks=[AFSNotify()])

Cost per step: overriding a batch-level hook makes Keras run every batch synchronously
unless the callback declares ``async_safe = True``. This one does: its batch hooks only
read the host floats Keras already prepares for its progress bar (on a worker thread,
off the training loop where the backend allows it) and update counters under a lock.

Keras has no exception hook: when ``fit()`` raises, ``on_train_end`` never runs. The
callback installs a ``sys.excepthook`` fallback that reports an uncaught crash (and lets
SIGTERM be reported while training runs); for a crash your code catches, or in a
notebook, wrap the call: ``with afs_callbacks.watch(): model.fit(...)``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from afs_callbacks.integrations._base import NotifierBase, hook
from afs_callbacks.tracking.values import floats, positive

try:
    import keras
except ImportError as error:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "afs_callbacks.integrations.keras needs Keras 3 and a backend: pip install 'afs-callbacks[keras]'"
        " and torch, jax or tensorflow (set KERAS_BACKEND=torch|jax|tensorflow before importing keras)"
    ) from error


class AFSNotify(NotifierBase, keras.callbacks.Callback):  # type: ignore[misc]
    """Tell people what a Keras ``fit()`` run is doing, through your channels.

    Reports the start (a resume when ``fit`` starts past epoch 0), epochs, metric
    improvements and plateaus, NaN/Inf (at the batch it appears, like
    ``TerminateOnNaN``), stalls, crashes and interruptions (through the excepthook
    fallback or :func:`afs_callbacks.watch`), standalone ``evaluate()`` results, and a
    completion summary with a loss chart.

    The arguments are those of every adapter
    (:class:`~afs_callbacks.integrations._base.NotifierBase`); here ``model_name``
    defaults to the model's ``name``, and ``run_id`` should be given (a job id) under
    multi-process training so that every process shares it.

    Example::

        model.fit(x, y, epochs=50, callbacks=[AFSNotify(monitor="val_accuracy", mode="max")])
    """

    #: Batch hooks may run on Keras' worker thread: they only touch floats and counters.
    async_safe: ClassVar[bool] = True

    # Per-fit state, set again by each on_train_begin (evaluate() alone uses none of it).
    _training = False
    _announced = False
    _step_base = 0  # batches of the epochs before this one
    _last_batch = -1  # the highest batch index seen in this epoch

    # Start and end ------------------------------------------------------------------

    @hook
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """Prepare the run; it is announced at the first epoch, which tells a resume."""
        if self._tracker_ended():
            self._new_run()  # the same callback in a second fit() call: a new run
        self._resolve(model_name=str(getattr(self.model, "name", None) or type(self.model).__name__))
        rank, processes = _process_rank()
        self._bind(rank=rank, world_size=processes)
        self._batch_lock = threading.Lock()  # async dispatch may run two batch hooks at once
        self._training, self._announced = True, False
        self._step_base, self._last_batch = 0, -1
        self._install_crash_hooks()

    @hook
    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """The first epoch announces the run: TRAINING_STARTED, or TRAINING_RESUMED when
        ``fit`` starts past epoch 0 (``initial_epoch``, ``BackupAndRestore``)."""
        if self._announced:
            self.tracker.epoch_started(epoch)
            return
        self._announced = True
        tracker = self.tracker
        params = self.params or {}
        epochs, steps = positive(params.get("epochs")), positive(params.get("steps"))
        if epoch > 0 and not tracker.started:
            tracker.load_state_dict({**tracker.state_dict(), "started": True})
        self._step_base = epoch * steps if steps else 0
        tracker.start(
            epochs=epochs,
            max_steps=epochs * steps if epochs and steps else None,
            world_size=_process_rank()[1],
            initial_epoch=epoch or None,
            backend=keras.backend.backend(),
        )
        tracker.epoch_started(epoch)

    @hook
    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """TRAINING_COMPLETED with the summary (Keras skips this hook on a crash)."""
        self._training = False
        self._remove_sigterm_handler()
        # The last epoch's metrics were judged at its end: they must not count twice.
        self.tracker.completed(None)

    # Batches and epochs -------------------------------------------------------------

    @hook
    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """A batch (or ``steps_per_execution`` batches) finished; ``logs["loss"]`` is the
        epoch's running mean, so a NaN stays visible until the epoch ends."""
        loss = (logs or {}).get("loss")
        loss = float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None
        with self._batch_lock:  # async dispatch may run two of these at once
            self._last_batch = max(self._last_batch, int(batch))
            stop = self.tracker.on_step(self._step_base + int(batch) + 1, loss=loss)
        if self._stop_asked(stop):
            self.model.stop_training = True

    @hook
    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """EPOCH_COMPLETED at the configured cadence, with the epoch's metrics."""
        with self._batch_lock:  # Keras has waited for the batch hooks already
            self._step_base += self._last_batch + 1
            self._last_batch = -1
        metrics = floats(logs or {})
        tracker = self.tracker
        loss = metrics.get("loss")
        if loss is not None and not math.isfinite(loss):
            tracker.nan_detected(self._step_base, "loss")
        tracker.epoch_end(epoch, metrics)
        if self._stop_asked(tracker.stop_requested):
            self.model.stop_training = True

    # Evaluation ---------------------------------------------------------------------

    @hook
    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """A standalone ``evaluate()`` is announced; validation inside ``fit`` is not."""
        if self._in_training():
            self.tracker.heartbeat()
        else:
            self.tracker.evaluation_started()

    @hook
    def on_test_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Evaluation progress keeps the stall watchdog quiet."""
        self.tracker.heartbeat()

    @hook
    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """A standalone ``evaluate()`` reports its metrics; validation joins the epoch."""
        if self._in_training():
            self.tracker.heartbeat()
        else:
            self.tracker.evaluation_completed(floats(logs or {}))

    def _in_training(self) -> bool:
        """Inside ``fit()``: begun, and neither ended nor crashed (a crash skips
        ``on_train_end`` but ends the run)."""
        return self._training and self._tracker is not None and not self._tracker.finished


def _process_rank() -> tuple[int, int]:
    """(this process's index, process count) from Keras' distribution, when one is set."""
    try:
        distribution = keras.distribution.distribution()
    except Exception:
        return 0, 1
    if distribution is None:
        return 0, 1
    count = int(getattr(distribution, "num_processes", 1) or 1)
    return int(getattr(distribution, "_process_id", 0) or 0), count


__all__ = ["AFSNotify"]
